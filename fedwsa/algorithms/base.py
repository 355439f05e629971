"""The parts an algorithm is made of (DESIGN.md, "Algorithms are parts, strategies are
compositions"), and the data they exchange.

Client side, a ``ClientTerm`` adds to each client's objective and may correct its steps; both
trainers call the same hooks, so an algorithm is written once:

- ``loss``: an extra loss term for ONE client, a pure function of that client's weights
  (no data-dependent Python control flow), so the batched trainer runs it under ``vmap``;
- ``correct_grad``: an in-place change of the gradient before each SGD step (a term whose
  gradient has a closed form, e.g. FedProx's mu (theta - theta_g), is cheaper here than through
  autograd under ``vmap``);
- ``after_step``: an in-place change of the weights after each SGD step (SCAFFOLD's
  correction);

``correct_grad`` and ``after_step`` are written with broadcasting, so they work on one client's
tensors (sequential trainer) and on a stack of clients (batched trainer);
- ``outputs``: per-client arrays returned to the server at the end of local training.

Each hook sees only its own inputs: the arrays the server part sent for every client
(``shared``) and this client's row of the per-client arrays (``own``). On the wire they are
namespaced ``"<part>/<name>"``; the trainers strip the prefix.

Server side, a ``ServerPart`` makes those inputs, may change the merged model (WSA's scope
fusion), keeps state and checkpoints it. A ``Merge`` turns the clients' stacked weights into
one model; a ``ServerOptimizer`` steps from the sent global model along the merged update.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fedwsa.maths.merging import weighted_sums
from fedwsa.maths.scope import stacked_scopes

Tensors = dict[str, Tensor]


def take_rows(arrays: Mapping[str, Tensor], index: Sequence[int],
              device: torch.device | str | None = None) -> Tensors:
    """Rows ``index`` (axis 0) of every array, moved to ``device`` when given."""
    idx = torch.as_tensor(list(index), dtype=torch.long)
    return {k: v[idx.to(v.device)].to(device or v.device) for k, v in arrays.items()}


def namespaced(part: str, arrays: Mapping[str, Tensor]) -> Tensors:
    """``arrays`` with keys prefixed ``"<part>/"`` for the wire."""
    return {f"{part}/{k}": v for k, v in arrays.items()}


def own_arrays(part: str, arrays: Mapping[str, Tensor]) -> Tensors:
    """The arrays of ``part`` (prefix stripped) among namespaced ``arrays``."""
    prefix = f"{part}/"
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


@dataclass
class ClientInputs:
    """What the server sends a cohort besides the global model, namespaced by part.

    ``shared``: one array for every client. ``per_client``: one row per client, stacked on
    axis 0 in the order of the cohort's client ids (unless a ``CohortTask.own_of`` maps the
    clients to rows that some of them share: then ``CohortTask.own_rows`` reads them)."""

    shared: Tensors = field(default_factory=dict)
    per_client: Tensors = field(default_factory=dict)

    def rows(self, index: Sequence[int]) -> ClientInputs:
        """The same inputs for the clients at positions ``index`` of the cohort."""
        return ClientInputs(dict(self.shared), take_rows(self.per_client, index))

    def merged(self, other: ClientInputs) -> ClientInputs:
        return ClientInputs({**self.shared, **other.shared},
                            {**self.per_client, **other.per_client})


TRAINING_HOOKS = ("loss", "correct_grad", "after_step", "outputs")  # called in term order


class ClientTerm:
    """The client-side piece of an algorithm; every hook's default does nothing."""

    name = ""

    def fuse_key(self) -> tuple[Any, ...]:
        """What, besides its inputs, makes this term act differently in another run (e.g. the
        layers WSA regularises): runs fuse on a node only when their terms' keys are equal."""
        return ()

    def idle_inputs(self, shared: Tensors, own: Tensors) -> tuple[Tensors, Tensors] | None:
        """Inputs under which this term changes nothing, shaped like ``shared`` and ``own``
        (one client's, from a run that uses the term), or None if there are none. Clients of a
        run WITHOUT the term can then train in the same batched call as clients of runs with
        it (``fedwsa.clients.fused``): every hook adds an exact zero to them."""
        return None

    def overrides(self, hook: str) -> bool:
        """Does this term define ``hook``? Trainers call only the hooks a term defines."""
        return getattr(type(self), hook) is not getattr(ClientTerm, hook)

    def hooks(self) -> frozenset[str]:
        """The training hooks (``TRAINING_HOOKS``) this term defines."""
        return frozenset(h for h in TRAINING_HOOKS if self.overrides(h))

    def loss(self, params: Mapping[str, Tensor], global_params: Mapping[str, Tensor],
             shared: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> Tensor | None:
        """An extra loss for one client, added to its mean cross-entropy (None: none)."""
        return None

    def correct_grad(self, grads: Mapping[str, Tensor], params: Mapping[str, Tensor],
                     global_params: Mapping[str, Tensor], shared: Mapping[str, Tensor],
                     own: Mapping[str, Tensor]) -> None:
        """Change the loss gradient in place before each local SGD step (no autograd)."""

    def after_step(self, params: Mapping[str, Tensor], shared: Mapping[str, Tensor],
                   own: Mapping[str, Tensor], lr: float) -> None:
        """Change the weights in place after each local SGD step (no autograd)."""

    def outputs(self, params: Mapping[str, Tensor], global_params: Mapping[str, Tensor],
                shared: Mapping[str, Tensor], own: Mapping[str, Tensor], steps: Tensor,
                lr: float) -> Tensors:
        """Per-client arrays for the server after local training (``steps``: local steps)."""
        return {}


@dataclass(frozen=True)
class ClientScopes:
    """Every client's layer scopes, [K, L] each, over the layers ``names`` (in that order)."""

    names: list[str]
    mu: Tensor
    sigma: Tensor


class SummedOnNodes(Mapping[str, Tensor]):
    """``ClientUpdates.params`` when the nodes sent only sum_i c_i theta_i: reading it fails
    loudly, where an empty dict would let a part silently compute on no clients."""

    def _refuse(self) -> Any:
        raise RuntimeError(
            "the nodes sent their clients' weighted sum (node-aggregate), not each client's "
            "weights: a server part that reads ClientUpdates.params must set "
            "needs_client_weights = True")

    def __getitem__(self, name: str) -> Tensor:
        return self._refuse()

    def __iter__(self) -> Any:
        return self._refuse()

    def __len__(self) -> int:
        return self._refuse()

    def __repr__(self) -> str:
        return "SummedOnNodes()"


@dataclass
class ClientUpdates:
    """The round's successful clients, in ascending id order, everything stacked on axis 0.

    When the nodes aggregated their clients (``sums``, see ``LinearMerge``), ``params`` is
    ``SummedOnNodes``: ``sums`` holds sum_i c_i theta_i over these clients and ``scopes`` each
    client's layer scopes, which is all a reducible strategy reads of the clients' weights."""

    client_ids: list[int]
    params: Mapping[str, Tensor]
    num_examples: Tensor
    train_loss: list[float]
    steps: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    outputs: Tensors = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    sums: Tensors | None = None
    scopes: ClientScopes | None = None

    def __post_init__(self) -> None:
        if self.sums is not None and isinstance(self.params, dict) and not self.params:
            self.params = SummedOnNodes()

    @property
    def weights(self) -> Tensor:
        """FedAvg weights p_i = n_i / sum_j n_j."""
        n = self.num_examples.to(torch.float64)
        return (n / n.sum()).to(torch.float32)

    def client_scopes(self, names: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Every client's (mu, sigma) of layers ``names``, [K, L] each: from the nodes' scopes
        when they sent them, else computed from the clients' weights."""
        if self.scopes is None:
            return stacked_scopes(self.params, names)
        rows = [self.scopes.names.index(n) for n in names]
        return self.scopes.mu[:, rows], self.scopes.sigma[:, rows]


class ServerPart:
    """The server-side piece of an algorithm; every hook's default does nothing."""

    name = ""
    needs_client_weights = False
    """Does ``after_merge`` read the clients' own weights (not only their scopes)? Then the
    nodes must send every client's weights, never their sum (``LinearMerge``)."""

    def client_inputs(self, server_round: int, global_params: Mapping[str, Tensor],
                      client_ids: Sequence[int]) -> ClientInputs:
        """This round's inputs of the part's client term (un-namespaced)."""
        return ClientInputs()

    def after_merge(self, server_round: int, global_params: Mapping[str, Tensor],
                    new_global: Tensors, updates: ClientUpdates) -> Tensors:
        """The next global model, given the merged (and server-optimised) one."""
        return new_global

    def metric_target(self, global_params: Mapping[str, Tensor]
                      ) -> tuple[list[str], Tensor, Tensor] | None:
        """The scope ``wsa-kl`` is measured against, if this part defines one."""
        return None

    def describe(self) -> str:
        """One line for the run's log."""
        return self.name

    def preflight(self, state: Mapping[str, Any] | None) -> None:
        """Check, writing nothing, that the part can start a new run (``state`` None) or resume
        from its checkpointed ``state`` (e.g. its on-disk client state); ``ConfigError``."""

    def committed(self) -> None:
        """A checkpoint holding ``state_dict()`` is safely on disk (drop what it superseded)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict``'s output."""


class Merge(ServerPart, ABC):
    """Stacked client weights -> one model."""

    @abstractmethod
    def merge(self, server_round: int, global_params: Mapping[str, Tensor],
              updates: ClientUpdates) -> Tensors:
        """The merged model of this round's clients."""


class LinearMerge(Merge):
    """A merge that is a function of sum_i c_i theta_i, with c_i from each client's example
    and step counts: a node can send that sum over its clients instead of their weights (one
    model instead of K on the wire), and the server adds the nodes' sums (``node-aggregate``).
    """

    @abstractmethod
    def coefficients(self, num_examples: Tensor, steps: Tensor) -> Tensor:
        """c_i (float64) of each client, from its example count n_i and local steps."""

    @abstractmethod
    def from_sums(self, global_params: Mapping[str, Tensor], sums: Mapping[str, Tensor],
                  updates: ClientUpdates) -> Tensors:
        """The merged model from ``sums`` = sum_i c_i theta_i (float64) over ``updates``."""

    def merge(self, server_round: int, global_params: Mapping[str, Tensor],
              updates: ClientUpdates) -> Tensors:
        sums = updates.sums
        if sums is None:
            c = self.coefficients(updates.num_examples, updates.steps)
            sums = weighted_sums(updates.params, c)
        return self.from_sums(global_params, sums, updates)


class ServerOptimizer(ServerPart, ABC):
    """One server step from the sent global model, given the merged model (METHODS.md 4)."""

    @abstractmethod
    def step(self, server_round: int, global_params: Mapping[str, Tensor],
             merged: Mapping[str, Tensor]) -> Tensors:
        """The next global model."""


def cloned_tensors(value: Mapping[str, Any]) -> Tensors:
    """A checkpointed dict of tensors as detached CPU copies (what ``state_dict`` returned)."""
    return {k: torch.as_tensor(v).detach().cpu().clone() for k, v in value.items()}

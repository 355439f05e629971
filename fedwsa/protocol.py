"""The cohort protocol: how a train Message and its reply carry a whole cohort.

The server sends each node ONE Message: the global arrays, the run config, the ids of the
clients it trains, arrays shared by all of them and per-client arrays stacked in client order
(the algorithms' inputs, namespaced by the algorithm that reads them). The node replies with
ONE Message carrying its clients' weights and per-client output arrays stacked on a leading
client axis, plus per-client scalars as lists (DESIGN.md, "The one idea"). When the request
asks for it (``reduce``; the strategy's merge is linear, ``node-aggregate``), the weights come
back summed instead: sum_i c_i theta_i over the node's clients in float64 with every client's
layer scopes, one model on the wire instead of one per client. Nothing here names an
algorithm. Both sides use the functions here, so the record keys live in one place.

One federation may serve several runs at once (``fedwsa compare`` stacks a grid's cells): the
Message to a node is then a bundle of one request per run, each under its run's tag
(``bundle``/``unbundle``), and the reply bundles one reply (or one error) per tag. A single run
is a bundle of one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedwsa.algorithms.base import ClientScopes, LinearMerge, take_rows
from fedwsa.maths.merging import finite_clients, float64_chunks, weighted_sums
from fedwsa.maths.scope import clients_layer_scope, regularised_names

ARRAYS, CONFIG, METRICS, FAILURES, STATS = "arrays", "config", "metrics", "failures", "stats"
SHARED, PER_CLIENT, OUTPUTS, SCOPES = "shared", "per-client", "outputs", "scopes"
TAGS, ERROR = "bundle-tags", "error"


@dataclass
class TrainRequest:
    """What one node is asked to do in one round."""

    server_round: int
    client_ids: list[int]
    run_config: str
    global_params: dict[str, torch.Tensor]
    shared: dict[str, torch.Tensor] = field(default_factory=dict)
    per_client: dict[str, torch.Tensor] = field(default_factory=dict)
    reduce: bool = False  # reply with the clients' weighted sum (``TrainReply.summed``)


class ClientRow(NamedTuple):
    """One client's part of a reply: what its local training produced."""

    client_id: int
    params: dict[str, torch.Tensor]
    num_examples: int
    train_loss: float
    steps: int
    outputs: dict[str, torch.Tensor]


@dataclass
class TrainReply:
    """One node's answer: the trained clients' stacked weights and per-client metrics.

    A summed reply (``summed``) has no per-client ``params``: ``sums`` holds sum_i c_i theta_i
    over ``client_ids`` (float64) and ``scopes`` each client's layer scopes."""

    client_ids: list[int]
    params: dict[str, torch.Tensor]
    num_examples: list[int]
    train_loss: list[float]
    failures: dict[int, str] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    sums: dict[str, torch.Tensor] | None = None
    scopes: ClientScopes | None = None

    def summed_with(self, merge: LinearMerge) -> TrainReply:
        """``summed`` with ``merge``'s coefficients of these clients (node or server)."""
        return self.summed(merge.coefficients(torch.tensor(self.num_examples),
                                              torch.tensor(self.steps, dtype=torch.int64)))

    def summed(self, coefficients: torch.Tensor) -> TrainReply:
        """The reply with its clients' weights replaced by sum_i c_i theta_i (float64, on
        their device) and their scopes over every regularised layer: what a linear merge and
        the scope metrics read. Computed where the weights are, so only one model is copied
        off the device and sent."""
        names = regularised_names(self.params, stacked=True)
        c = coefficients.to(torch.float64)
        sums: dict[str, torch.Tensor] = {}
        mus, sigmas = [], []
        for name, t in self.params.items():
            total = torch.zeros(t.shape[1:], dtype=torch.float64, device=t.device)
            layer_mu, layer_sigma = [], []
            for rows in float64_chunks(t):  # one float64 copy per chunk, for both
                wide = t[rows].detach().double()
                total += weighted_sums({name: wide}, c[rows])[name]
                if name in names:
                    mu, sigma = clients_layer_scope(wide)
                    layer_mu.append(mu.to(t.dtype))
                    layer_sigma.append(sigma.to(t.dtype))
            sums[name] = total
            if name in names:
                mus.append(torch.cat(layer_mu) if layer_mu else t.new_zeros(0))
                sigmas.append(torch.cat(layer_sigma) if layer_sigma else t.new_zeros(0))
        like = next(iter(self.params.values()))
        mu_all, sigma_all = ((torch.stack(v, dim=1) if v else like.new_zeros((len(like), 0)))
                             for v in (mus, sigmas))
        return TrainReply(self.client_ids, {}, self.num_examples, self.train_loss,
                          dict(self.failures), dict(self.stats), self.steps, self.outputs,
                          sums=sums, scopes=ClientScopes(names, mu_all, sigma_all))

    @classmethod
    def from_rows(cls, rows: Sequence[ClientRow], like: Mapping[str, torch.Tensor],
                  failures: Mapping[int, str] | None = None,
                  stats: Mapping[str, float] | None = None) -> TrainReply:
        """Stack per-client rows (in the given order); ``like`` gives the parameter names and
        shapes when there are no rows."""
        params = {n: torch.stack([r.params[n] for r in rows]) if rows else
                  v.new_empty((0, *v.shape)) for n, v in like.items()}
        out_names = sorted({k for r in rows for k in r.outputs})
        return cls(
            client_ids=[r.client_id for r in rows], params=params,
            num_examples=[r.num_examples for r in rows],
            train_loss=[r.train_loss for r in rows],
            failures=dict(failures or {}), stats=dict(stats or {}),
            steps=[r.steps for r in rows],
            outputs={k: torch.stack([r.outputs[k] for r in rows]) for k in out_names})

    @classmethod
    def merged(cls, replies: Sequence[TrainReply], like: Mapping[str, torch.Tensor],
               failures: Mapping[int, str] | None = None) -> TrainReply:
        """Several nodes' replies as one, clients sorted by id (so an aggregate does not depend
        on how clients were spread over nodes). One concatenation, and one reordering only
        when needed: a single node's reply in id order is used as it is, not copied."""
        answered = sorted((r for r in replies if r.client_ids), key=lambda r: min(r.client_ids))
        ids = [c for r in answered for c in r.client_ids]
        order = sorted(range(len(ids)), key=ids.__getitem__)

        def joined(get: Callable[[TrainReply], dict[str, torch.Tensor]],
                   names: Iterable[str]) -> dict[str, torch.Tensor]:
            if len(answered) == 1:
                out = dict(get(answered[0]))
            else:
                out = {n: torch.cat([get(r)[n] for r in answered]) for n in names}
            return out if order == list(range(len(order))) else take_rows(out, order)

        sums: dict[str, torch.Tensor] | None = None
        scopes: ClientScopes | None = None
        if not answered:
            params = {n: v.new_empty((0, *v.shape)) for n, v in like.items()}
            outputs: dict[str, torch.Tensor] = {}
        elif any(r.sums is not None for r in answered):
            summed = [(r.sums, r.scopes) for r in answered
                      if r.sums is not None and r.scopes is not None]
            if len(summed) != len(answered):
                raise ValueError("some nodes sent their clients' weights and others their sum")
            names = summed[0][1].names
            if any(sc.names != names or set(s) != set(summed[0][0]) for s, sc in summed):
                raise ValueError("the nodes' sums differ in their parameter or scope names")
            params = {}
            # Added in the order of the nodes' first client ids: the same sum whichever node
            # answered first.
            sums = {n: functools.reduce(torch.add, [s[n] for s, _ in summed])
                    for n in summed[0][0]}
            rows = joined(_scope_rows, ("mu", "sigma"))
            scopes = ClientScopes(names, rows["mu"], rows["sigma"])
            outputs = joined(lambda r: r.outputs, answered[0].outputs)
        else:
            params = joined(lambda r: r.params, like)
            outputs = joined(lambda r: r.outputs, answered[0].outputs)

        def flat(get: Callable[[TrainReply], list[Any]]) -> list[Any]:
            values = [v for r in answered for v in get(r)]
            return [values[j] for j in order]

        return cls(client_ids=[ids[j] for j in order], params=params,
                   num_examples=flat(lambda r: r.num_examples),
                   train_loss=flat(lambda r: r.train_loss), failures=dict(failures or {}),
                   steps=flat(lambda r: r.steps) if all(r.steps for r in answered) else [],
                   outputs=outputs, sums=sums, scopes=scopes)

    def rows(self) -> list[ClientRow]:
        """The reply, one client at a time."""
        if self.sums is not None:
            raise ValueError("a summed reply has no per-client weights")
        return [ClientRow(cid, {n: v[i] for n, v in self.params.items()},
                          self.num_examples[i], self.train_loss[i],
                          self.steps[i] if self.steps else 0,
                          {n: v[i] for n, v in self.outputs.items()})
                for i, cid in enumerate(self.client_ids)]

    def finite_only(self) -> TrainReply:
        """Clients whose weights or train loss are not finite moved to ``failures`` (one
        diverging client must not poison an aggregate; nodes and the server both check)."""
        if not self.client_ids:
            return self
        if self.sums is not None:  # the node checked each client; a sum is kept or dropped
            if all(math.isfinite(v) for v in self.train_loss) and all(
                    bool(torch.isfinite(v).all()) for v in self.sums.values()):
                return self
            return TrainReply([], {}, [], [], {**self.failures, **dict.fromkeys(
                self.client_ids, "non-finite weights (in its node's sum)")}, dict(self.stats))
        finite = finite_clients(self.params)
        failures = dict(self.failures)
        keep: list[int] = []
        for j, cid in enumerate(self.client_ids):
            if not bool(finite[j]):
                failures[cid] = "non-finite weights"
            elif not math.isfinite(self.train_loss[j]):
                failures[cid] = "non-finite train loss"
            else:
                keep.append(j)
        if len(keep) == len(self.client_ids):
            return self
        kept = self.select(keep)
        kept.failures = failures
        return kept

    def select(self, positions: list[int]) -> TrainReply:
        """The reply restricted to the clients at ``positions`` (failures and stats kept)."""
        if self.sums is not None:
            raise ValueError("a summed reply cannot be split by client")
        return TrainReply(
            client_ids=[self.client_ids[j] for j in positions],
            params=take_rows(self.params, positions),
            num_examples=[self.num_examples[j] for j in positions],
            train_loss=[self.train_loss[j] for j in positions],
            failures=dict(self.failures), stats=dict(self.stats),
            steps=[self.steps[j] for j in positions] if self.steps else [],
            outputs=take_rows(self.outputs, positions))


def _scope_rows(reply: TrainReply) -> dict[str, torch.Tensor]:
    """A summed reply's per-client scopes as rows, to be joined like its other rows."""
    if reply.scopes is None:
        raise ValueError("a summed reply without its clients' scopes")
    return {"mu": reply.scopes.mu, "sigma": reply.scopes.sigma}


def to_arrays(params: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in params.items()})


def from_arrays(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict())


def pack_request(req: TrainRequest) -> RecordDict:
    content = RecordDict({
        ARRAYS: to_arrays(req.global_params),
        CONFIG: ConfigRecord({
            "server-round": req.server_round,
            "client-ids": list(req.client_ids),
            "run-config": req.run_config,
            "reduce": req.reduce,
        }),
    })
    if req.shared:
        content[SHARED] = to_arrays(req.shared)
    if req.per_client:
        content[PER_CLIENT] = to_arrays(req.per_client)
    return content


def unpack_request(content: RecordDict) -> TrainRequest:
    config = content.config_records[CONFIG]
    shared, per_client = content.array_records.get(SHARED), content.array_records.get(PER_CLIENT)
    return TrainRequest(
        server_round=int(config["server-round"]),
        client_ids=[int(c) for c in config["client-ids"]],
        run_config=str(config["run-config"]),
        global_params=from_arrays(content.array_records[ARRAYS]),
        shared=from_arrays(shared) if shared is not None else {},
        per_client=from_arrays(per_client) if per_client is not None else {},
        reduce=bool(config.get("reduce", False)),
    )


def pack_reply(reply: TrainReply) -> RecordDict:
    failed = sorted(reply.failures)
    content = RecordDict({
        ARRAYS: to_arrays(reply.params if reply.sums is None else reply.sums),
        METRICS: MetricRecord({
            "client-ids": list(reply.client_ids),
            "num-examples": [int(n) for n in reply.num_examples],
            "train-loss": [float(v) for v in reply.train_loss],
            "local-steps": [int(n) for n in reply.steps],
            "failed-ids": failed,
            "summed": int(reply.sums is not None),
        }),
        FAILURES: ConfigRecord({"reasons": [reply.failures[c] for c in failed]}),
        STATS: MetricRecord({k: float(v) for k, v in reply.stats.items()}),
    })
    if reply.outputs:
        content[OUTPUTS] = to_arrays(reply.outputs)
    if reply.scopes is not None:
        content[SCOPES] = to_arrays({"mu": reply.scopes.mu, "sigma": reply.scopes.sigma})
        content[SCOPES + "-names"] = ConfigRecord({"names": list(reply.scopes.names)})
    return content


def unpack_reply(content: RecordDict) -> TrainReply:
    metrics = content.metric_records[METRICS]
    reasons = list(content.config_records[FAILURES]["reasons"])
    failed = [int(c) for c in metrics["failed-ids"]]
    stats = content.metric_records.get(STATS)
    outputs = content.array_records.get(OUTPUTS)
    arrays = from_arrays(content.array_records[ARRAYS])
    summed = bool(metrics.get("summed", 0))
    scopes = None
    if summed:
        record = from_arrays(content.array_records[SCOPES])
        names = [str(n) for n in content.config_records[SCOPES + "-names"]["names"]]
        scopes = ClientScopes(names, record["mu"], record["sigma"])
    return TrainReply(
        client_ids=[int(c) for c in metrics["client-ids"]],
        params={} if summed else arrays,
        num_examples=[int(n) for n in metrics["num-examples"]],
        train_loss=[float(v) for v in metrics["train-loss"]],
        failures=dict(zip(failed, reasons, strict=True)),
        stats={k: float(v) for k, v in (stats or {}).items()},
        steps=[int(n) for n in metrics.get("local-steps", [])],
        outputs=from_arrays(outputs) if outputs is not None else {},
        sums=arrays if summed else None,
        scopes=scopes,
    )


# --- bundles: one Message for several runs ----------------------------------------------------


def bundle(contents: Mapping[str, RecordDict]) -> RecordDict:
    """One RecordDict holding each run's content under its tag (``"<tag>/<record>"``)."""
    out = RecordDict({TAGS: ConfigRecord({"tags": list(contents)})})
    for tag, content in contents.items():
        if "/" in tag:
            raise ValueError(f"bundle tag {tag!r} contains '/'")
        for name, record in content.items():
            out[f"{tag}/{name}"] = record
    return out


def unbundle(content: RecordDict) -> dict[str, RecordDict]:
    """``bundle``'s input back: tag -> that run's content."""
    tags = [str(t) for t in content.config_records[TAGS]["tags"]]
    parts: dict[str, RecordDict] = {t: RecordDict() for t in tags}
    for key, record in content.items():
        tag, sep, name = key.partition("/")
        if sep and tag in parts:
            parts[tag][name] = record
    return parts


def error_content(reason: str) -> RecordDict:
    """A run's part of a reply when the node could not train it at all."""
    return RecordDict({ERROR: ConfigRecord({"reason": reason})})


def error_of(content: RecordDict) -> str | None:
    """The reason ``error_content`` carries, or None for a normal reply."""
    record = content.config_records.get(ERROR)
    return None if record is None else str(record["reason"])


@dataclass(frozen=True)
class NodeAnswer:
    """A node's answer for one run: its reply content, or why there is none."""

    node_id: int
    content: RecordDict | None
    error: str | None = None

"""Clients of several runs trained in ONE batched call on a node (stacked grids).

When a federation serves several runs (``fedwsa compare``'s stacked cells), runs whose clients
train alike can share the batched trainer's ``vmap``: same model, data set and pixel pipeline,
batch size and augmentation (learning rate, momentum and weight decay may differ: they enter
the step as per-client tensors; local epochs may differ: each client makes its own number of
steps, as clients of unequal sizes already do). Their clients become virtual clients of one
cohort: each keeps its own partition, its own data and augmentation stream (its run's seed and
its own id), starts from its own run's global model, and its terms see its own run's inputs (a
FedProx mu, a WSA target, SCAFFOLD's c - c_i), all as rows of one stack.

Client terms need not match either. The call runs the union of the runs' terms, and a client of
a run without one of them gets the term's idle inputs (``ClientTerm.idle_inputs``: mu = 0, beta
= 0, c - c_i = 0), under which the term adds exact zeros. So NIID-Bench's whole grid (fedavg,
fedprox, scaffold, fednova, fedwsa, cart) is one ``vmap`` call per node and round instead of one
per distinct set of terms. The price is the terms' work on every row (WSA's scope KL, a
model-sized zero c - c_i): small beside a client's forward and backward pass (on 2 CPU cores the
one call was 1.16x faster, ``benchmarks/fused_terms.py``). The zero c - c_i is one row on the
node's host for all the clients without SCAFFOLD (``CohortTask.own_of``), but a chunk on the
device holds a copy per client: negligible for the simple CNN, 45 MB per client for a ResNet-18
(large grids then train in smaller chunks). One hazard: a diverging client whose layer variance
overflows float32 (weights near 1e18) gets 0 * inf = NaN from an idle WSA term and is counted as
failed, where alone it could still be finite for a while. Runs still train apart when a term
they share acts differently (WSA on other layers), and runs with SCAFFOLD, which steps with the
learning rate itself, only train with runs of the same lr.

Clients never mix inside ``vmap``, and on a CPU every client's result is bit-identical whatever
it is batched with, so a fused run gives the numbers it would give alone
(``tests/test_stacked.py``).

What does not fuse (another model or batch size, the sequential trainer, fault injection) is
trained in its own call, as before. Another batch size is another tensor shape: padding the
smaller batches to the largest would spend the padding's compute and give up bit-identical
results, so those runs train apart. Runs that differ in lr, momentum or weight decay step with
per-client tensors; they agree with their one-by-one runs to float rounding (bit for bit on
the CPUs we measured, not guaranteed on every kernel).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from fedwsa.algorithms import ClientTerm, client_terms
from fedwsa.algorithms.base import TRAINING_HOOKS, ClientInputs, Tensors, namespaced, own_arrays
from fedwsa.clients.node import NodeData, node_data
from fedwsa.clients.trainer import CohortTask, LocalSettings
from fedwsa.clients.trainers import build_trainer
from fedwsa.config import Config
from fedwsa.data import train_set_key
from fedwsa.protocol import TrainReply, TrainRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FuseKey:
    """What decides whether a run's clients can train in a joint call (``joined``)."""

    base: tuple[Any, ...]                   # must be equal
    terms: tuple[tuple[str, Any], ...]      # (term, what must match where both runs have it)
    idle: frozenset[str]                    # its terms that have idle inputs
    lr: float | None = None                 # the lr of its terms that step with the lr
    hooks: tuple[tuple[str, frozenset[str]], ...] = ()  # (term, the training hooks it defines)


def _steps_with_lr(term: ClientTerm) -> bool:
    """Does the term use the trainer's (scalar) lr? Then its runs must share it."""
    return term.overrides("after_step") or term.overrides("outputs")


def fuse_key(config: Config, request: TrainRequest) -> FuseKey | None:
    """The run's ``FuseKey``; None: this run trains on its own."""
    if config.trainer != "batched" or config.fail_rate > 0:
        return None
    terms = client_terms(config, request.global_params)
    # lr, momentum and weight decay may differ per client (tensors in the batched step).
    settings = replace(LocalSettings.from_config(config), seed=0, local_epochs=0, lr=0.0,
                       momentum=0.0, weight_decay=0.0)
    term_keys = tuple(
        (t.name, (t.fuse_key(), tuple(sorted(own_arrays(t.name, request.shared))),
                  tuple(sorted(own_arrays(t.name, request.per_client)))))
        for t in terms)
    prefixes = tuple(f"{t.name}/" for t in terms)
    other_inputs = tuple(sorted(n for n in (*request.shared, *request.per_client)
                                if not n.startswith(prefixes)))
    base = (settings, other_inputs,
            train_set_key(config.dataset, config.data_root, config.seed), config.model,
            config.device, config.normalize, config.crop_padding, config.precision,
            config.conv_impl, config.max_batched_clients, request.server_round)
    return FuseKey(base, term_keys,
                   frozenset(t.name for t in terms if t.overrides("idle_inputs")),
                   config.lr if any(_steps_with_lr(t) for t in terms) else None,
                   tuple((t.name, t.hooks()) for t in terms))


def joined(group: FuseKey, key: FuseKey) -> FuseKey | None:
    """The key of ``group``'s joint call with ``key``'s run added, or None if it cannot join:
    the terms both have must act alike, a term only one side has must have idle inputs, and
    the union keeps each run's order of the terms that define the same training hook (the
    trainer calls a hook's terms in order; terms of other hooks never meet, so scaffold's
    after_step and WSA's loss may come in either order)."""
    if group.base != key.base or (None not in (group.lr, key.lr) and group.lr != key.lr):
        return None  # the trainer has one scalar lr for the terms that step with it
    mine, theirs = dict(group.terms), dict(key.terms)
    if any(mine[n] != theirs[n] for n in mine.keys() & theirs.keys()):
        return None
    idle = group.idle | key.idle
    if not (mine.keys() ^ theirs.keys()) <= idle:
        return None
    union = (*group.terms, *((n, k) for n, k in key.terms if n not in mine))
    hooks = dict(group.hooks) | dict(key.hooks)
    in_union = [n for n, _ in union if n in theirs]
    in_run = [n for n, _ in key.terms]
    for hook in TRAINING_HOOKS:
        if [n for n in in_union if hook in hooks[n]] != [n for n in in_run if hook in hooks[n]]:
            return None
    return FuseKey(group.base, union, idle, key.lr if group.lr is None else group.lr,
                   tuple(hooks.items()))


def _idle_inputs(runs: Sequence[tuple[TrainRequest, Config]], names: list[set[str]],
                 union: dict[str, ClientTerm]) -> dict[str, tuple[Tensors, Tensors]]:
    """Per term that some run lacks (``names``: each run's term names): its idle (shared,
    own) inputs, namespaced, shaped like those of the first run that has it."""
    idle: dict[str, tuple[Tensors, Tensors]] = {}
    for name, term in union.items():
        having = [r for r, mine in enumerate(names) if name in mine]
        if len(having) == len(runs):
            continue
        request = runs[having[0]][0]
        got = term.idle_inputs(own_arrays(name, request.shared),
                               {n: v[0] for n, v in own_arrays(name, request.per_client).items()})
        if got is None:
            raise ValueError(f"client term {name} has no idle inputs: runs without it cannot "
                             "train with runs that have it")
        idle[name] = (namespaced(name, got[0]), namespaced(name, got[1]))
    return idle


def train_fused(runs: Sequence[tuple[TrainRequest, Config]]) -> list[TrainReply]:
    """Train the clients of ``runs`` (one of ``fused_groups``) in one batched call; one reply
    per run, in order."""
    datas = [node_data(config) for _, config in runs]
    first = datas[0]
    own_terms = [client_terms(config, request.global_params) for request, config in runs]
    names = [{t.name for t in terms} for terms in own_terms]
    union: dict[str, ClientTerm] = {}
    for terms in own_terms:
        for term in terms:
            union.setdefault(term.name, term)
    idle = _idle_inputs(runs, names, union)
    partitions: list[torch.Tensor] = []
    streams: list[tuple[int, int]] = []
    owner: list[tuple[int, int]] = []  # virtual id -> (run, client id)
    starts: dict[str, list[torch.Tensor]] = {}  # per run, not per client (CohortTask.run_of)
    shared: dict[str, list[torch.Tensor]] = {}
    own: dict[str, list[torch.Tensor]] = {}  # per input: a table of rows (CohortTask.own_of)
    own_of: dict[str, list[int]] = {}         # per input: each client's row in its table
    idle_row: dict[str, int] = {}             # per idle input: its one row, for every client

    def add_row(name: str, value: torch.Tensor) -> int:
        own.setdefault(name, []).append(value)
        return len(own[name]) - 1

    for r, ((request, config), data) in enumerate(zip(runs, datas, strict=True)):
        if data.images is not first.images or not torch.equal(data.mean, first.mean):
            raise ValueError("runs fused on a node must share the train set and its pixels")
        lacking = [idle[n] for n in union if n not in names[r]]
        run_shared = dict(request.shared)
        same_own: Tensors = {}  # the idle terms' own inputs: the same for every client
        for idle_shared, idle_own in lacking:
            run_shared.update(idle_shared)
            same_own.update(idle_own)
        for arrays, rows in ((request.global_params, starts), (run_shared, shared)):
            for n, v in arrays.items():
                rows.setdefault(n, []).append(v)
        for k, cid in enumerate(request.client_ids):
            owner.append((r, cid))
            partitions.append(data.partitions[cid])
            streams.append((config.seed, cid))
            for n, v in same_own.items():  # ``_idle_inputs``: one value per term, all runs
                if n not in idle_row:
                    idle_row[n] = add_row(n, v)
                own_of.setdefault(n, []).append(idle_row[n])
            for n, v in request.per_client.items():
                own_of.setdefault(n, []).append(add_row(n, v[k]))
    fused = NodeData(first.device, first.images, first.labels, first.mean, first.std,
                     first.num_classes, tuple(partitions), first.pad_mode, tuple(streams))
    # A term that steps with the trainer's scalar lr gets its runs' lr (``fuse_key``).
    lead = next((c for (_, c), terms in zip(runs, own_terms, strict=True)
                 if any(_steps_with_lr(t) for t in terms)), runs[0][1])
    epochs = [c.local_epochs for _, c in runs]
    trainer = build_trainer(lead, fused, client_epochs=None if len(set(epochs)) == 1 else
                            tuple(epochs[r] for r, _ in owner), terms=list(union.values()))

    def stacked(rows: dict[str, list[torch.Tensor]], count: int) -> dict[str, torch.Tensor]:
        short = [n for n, v in rows.items() if len(v) != count]
        if short:  # a row per run or the rows would pair with the wrong one
            raise ValueError(f"inputs {short} are missing for some of the fused runs")
        return {n: torch.stack(v) for n, v in rows.items()}

    hyper: dict[str, torch.Tensor] | None = None
    values = [(c.lr, c.momentum, c.weight_decay) for _, c in runs]
    if len(set(values)) > 1:  # each run's own; else the trainer's scalars (same bits)
        hyper = {name: torch.tensor([v[i] for v in values], dtype=torch.float32)
                 for i, name in enumerate(("neg-lr", "momentum", "weight-decay"))}
        hyper["neg-lr"] = -hyper["neg-lr"]
    request0 = runs[0][0]
    task = CohortTask(request0.server_round, list(range(len(owner))), request0.global_params,
                      ClientInputs(per_client={n: torch.stack(v) for n, v in own.items()}),
                      run_params=stacked(starts, len(runs)),
                      run_shared=stacked(shared, len(runs)), run_of=tuple(r for r, _ in owner),
                      run_hyper=hyper, own_of={n: tuple(v) for n, v in own_of.items()})
    result = trainer.train(task).finite_only()
    rows = {owner[row.client_id]: row for row in result.rows()}
    replies = []
    for r, (request, _) in enumerate(runs):
        prefixes = tuple(f"{n}/" for n in names[r])  # not the idle terms' outputs
        mine = [rows[(r, c)]._replace(
                    client_id=c, outputs={n: v for n, v in rows[(r, c)].outputs.items()
                                          if n.startswith(prefixes)})
                for c in request.client_ids if (r, c) in rows]
        failures = {owner[v][1]: why for v, why in result.failures.items() if owner[v][0] == r}
        for cid, why in sorted(failures.items()):  # as train_cohort logs a run's own failures
            log.warning("run %d of a joint call: client %d failed in round %d: %s", r, cid,
                        request.server_round, why)
        replies.append(TrainReply.from_rows(mine, request.global_params, failures,
                                            result.stats))
    return replies


def fused_groups(keys: Sequence[FuseKey | None]) -> list[list[int]]:
    """Positions grouped into joint calls (None: alone), each run in the first group it can
    join, groups in first-seen order."""
    groups: list[tuple[FuseKey | None, list[int]]] = []
    for i, key in enumerate(keys):
        for g, (union, members) in enumerate(groups):
            both = None if key is None or union is None else joined(union, key)
            if both is not None:
                groups[g] = (both, [*members, i])
                break
        else:
            groups.append((key, [i]))
    return [members for _, members in groups]

"""Clients of several runs trained in ONE batched call on a node (stacked grids).

When a federation serves several runs (``fedwsa compare``'s stacked cells), runs whose clients
train alike can share the batched trainer's ``vmap``: same model, data set and pixel pipeline,
batch size and augmentation, the same client terms (learning rate, momentum and weight decay
may differ: they enter the step as per-client tensors; local epochs may differ: each client
makes its own number of steps, as clients of unequal sizes already do). Their clients become virtual
clients of one cohort: each keeps its own partition, its own data and augmentation stream (its
run's seed and its own id), starts from its own run's global model, and its terms see its own
run's inputs (a FedProx mu, a WSA target, SCAFFOLD's c - c_i), all as rows of one stack.
Clients never mix inside ``vmap``, and on a CPU every client's result is bit-identical whatever
it is batched with, so a fused run gives the numbers it would give alone
(``tests/test_stacked.py``).

What does not fuse (other client terms, another model or batch size, the sequential trainer,
fault injection) is trained in its own call, as before. Another batch size is another tensor
shape: padding the smaller batches to the largest would spend the padding's compute and give
up bit-identical results, so those runs train apart. Runs that differ in lr,
momentum or weight decay step with per-client tensors; they agree with their one-by-one runs
to float rounding (bit for bit on the CPUs we measured, not guaranteed on every kernel).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import torch

from fedwsa.algorithms import client_terms
from fedwsa.algorithms.base import ClientInputs
from fedwsa.clients.node import NodeData, node_data
from fedwsa.clients.trainer import CohortTask, LocalSettings
from fedwsa.clients.trainers import build_trainer
from fedwsa.config import Config
from fedwsa.data import train_set_key
from fedwsa.protocol import TrainReply, TrainRequest

log = logging.getLogger(__name__)


def fuse_key(config: Config, request: TrainRequest) -> tuple | None:
    """Runs with equal keys train together; None: this run trains on its own."""
    if config.trainer != "batched" or config.fail_rate > 0:
        return None
    terms = client_terms(config, request.global_params)
    # lr, momentum and weight decay may differ per client (tensors in the batched step),
    # unless a term steps with the learning rate itself (SCAFFOLD's correction).
    uses_lr = any(t.overrides("after_step") or t.overrides("outputs") for t in terms)
    settings = replace(LocalSettings.from_config(config), seed=0, local_epochs=0,
                       lr=config.lr if uses_lr else 0.0, momentum=0.0, weight_decay=0.0)
    return (settings, tuple((t.name, t.fuse_key()) for t in terms), tuple(sorted(request.shared)),
            tuple(sorted(request.per_client)),
            train_set_key(config.dataset, config.data_root, config.seed), config.model,
            config.device, config.normalize,
            config.crop_padding, config.precision, config.max_batched_clients,
            request.server_round)


def train_fused(runs: Sequence[tuple[TrainRequest, Config]]) -> list[TrainReply]:
    """Train the clients of ``runs`` (equal ``fuse_key``) in one batched call; one reply per
    run, in order."""
    datas = [node_data(config) for _, config in runs]
    first = datas[0]
    partitions: list[torch.Tensor] = []
    streams: list[tuple[int, int]] = []
    owner: list[tuple[int, int]] = []  # virtual id -> (run, client id)
    starts: dict[str, list[torch.Tensor]] = {n: [] for n in runs[0][0].global_params}
    shared: dict[str, list[torch.Tensor]] = {n: [] for n in runs[0][0].shared}
    own: dict[str, list[torch.Tensor]] = {n: [] for n in runs[0][0].per_client}
    for r, ((request, config), data) in enumerate(zip(runs, datas, strict=True)):
        if data.images is not first.images or not torch.equal(data.mean, first.mean):
            raise ValueError("runs fused on a node must share the train set and its pixels")
        for k, cid in enumerate(request.client_ids):
            owner.append((r, cid))
            partitions.append(data.partitions[cid])
            streams.append((config.seed, cid))
            for arrays, rows in ((request.global_params, starts), (request.shared, shared)):
                for n, v in arrays.items():
                    rows[n].append(v)
            for n, v in request.per_client.items():
                own[n].append(v[k])
    fused = NodeData(first.device, first.images, first.labels, first.mean, first.std,
                     first.num_classes, tuple(partitions), first.pad_mode, tuple(streams))
    request0, config0 = runs[0]
    epochs = [c.local_epochs for _, c in runs]
    trainer = build_trainer(config0, fused, client_epochs=None if len(set(epochs)) == 1 else
                            tuple(epochs[r] for r, _ in owner))

    def stacked(rows: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {n: torch.stack(v) for n, v in rows.items()}

    hyper: dict[str, torch.Tensor] | None = None
    values = [(c.lr, c.momentum, c.weight_decay) for _, c in runs]
    if len(set(values)) > 1:  # each client's own; else the trainer's scalars (same bits)
        per_client = [values[r] for r, _ in owner]
        hyper = {name: torch.tensor([v[i] for v in per_client], dtype=torch.float32)
                 for i, name in enumerate(("neg-lr", "momentum", "weight-decay"))}
        hyper["neg-lr"] = -hyper["neg-lr"]
    task = CohortTask(request0.server_round, list(range(len(owner))), request0.global_params,
                      ClientInputs(per_client=stacked(own)), start_params=stacked(starts),
                      shared_rows=stacked(shared), hyper_rows=hyper)
    result = trainer.train(task).finite_only()
    rows = {owner[row.client_id]: row for row in result.rows()}
    replies = []
    for r, (request, _) in enumerate(runs):
        mine = [rows[(r, c)]._replace(client_id=c) for c in request.client_ids
                if (r, c) in rows]
        failures = {owner[v][1]: why for v, why in result.failures.items() if owner[v][0] == r}
        for cid, why in sorted(failures.items()):  # as train_cohort logs a run's own failures
            log.warning("run %d of a joint call: client %d failed in round %d: %s", r, cid,
                        request.server_round, why)
        replies.append(TrainReply.from_rows(mine, request.global_params, failures,
                                            result.stats))
    return replies


def fused_groups(keys: Sequence[tuple | None]) -> list[list[int]]:
    """Positions grouped by equal key (None: alone), in first-seen order."""
    groups: dict[object, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(("alone", i) if key is None else key, []).append(i)
    return list(groups.values())

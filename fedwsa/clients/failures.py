"""Client failures on a node: fault injection, isolation of a failing client, non-finite results.

One bad client must not cost the node its cohort. ``train_cohort`` wraps whichever trainer the
run uses (sequential or batched) so that every failure is reported per client, by id, with a
reason, and the other clients' results still go back to the server:

- ``fail-rate`` fault injection: a client chosen by a draw seeded from (seed, round, client)
  raises ``InjectedFault`` when its training starts, so the same clients fail in every run and
  in a resumed run, whatever trainer or node layout.
- A trainer that raises for a cohort (the batched trainer cannot raise per client inside
  ``vmap``) is retried one client at a time, which isolates the client(s) that raise.
- A client whose weights or train loss come back non-finite is moved to the failures; clients
  trained together under ``vmap`` never mix values, so one diverging client cannot poison the
  others' weights (``TrainReply.finite_only``; the server checks again in ``collect``).
"""

from __future__ import annotations

import logging

import numpy as np

from fedwsa.clients.trainer import CohortResult, CohortTask, Trainer

log = logging.getLogger(__name__)

_FAULT_STREAM = 0xFA11  # keeps fault draws independent of every other seeded stream


class InjectedFault(RuntimeError):
    """The failure ``fail-rate`` injects into a client's training."""


def injected_fault(seed: int, server_round: int, client_id: int, fail_rate: float) -> bool:
    """Is ``client_id`` chosen to fail in ``server_round``? Depends only on its arguments."""
    if fail_rate <= 0.0:
        return False
    rng = np.random.default_rng([seed, server_round, client_id, _FAULT_STREAM])
    return bool(rng.random() < fail_rate)


def start_client(seed: int, server_round: int, client_id: int, fail_rate: float) -> None:
    """Called as a client's training starts: raises ``InjectedFault`` for a chosen client."""
    if injected_fault(seed, server_round, client_id, fail_rate):
        raise InjectedFault(f"injected failure (fail-rate={fail_rate}, round {server_round})")


def reason(err: BaseException) -> str:
    """One line saying what went wrong."""
    return f"{type(err).__name__}: {err}".replace("\n", " ")[:500]


def train_cohort(trainer: Trainer, task: CohortTask, seed: int, fail_rate: float = 0.0
                 ) -> CohortResult:
    """Train ``task``'s clients with ``trainer``; failed clients are reported, never fatal."""
    failures: dict[int, str] = {}
    healthy: list[int] = []
    for cid in task.client_ids:
        try:
            start_client(seed, task.server_round, cid, fail_rate)
            healthy.append(cid)
        except Exception as err:  # a failing client is reported, the others train
            failures[cid] = reason(err)
    result = _isolating(trainer, task.subset(healthy)) if healthy else \
        CohortResult.from_rows([], task.global_params)
    result = result.finite_only()
    result.failures = {**failures, **result.failures}
    for cid, why in sorted(result.failures.items()):
        log.warning("client %d failed in round %d: %s", cid, task.server_round, why)
    return result


def _isolating(trainer: Trainer, task: CohortTask) -> CohortResult:
    """``trainer.train(task)``; if the cohort raises, train its clients one by one."""
    try:
        return trainer.train(task)
    except Exception as err:
        if len(task.client_ids) == 1:
            return CohortResult.from_rows([], task.global_params,
                                          {task.client_ids[0]: reason(err)})
        log.warning("cohort of %d clients failed in round %d (%s); training them one by one "
                    "to isolate the failing client(s)", len(task.client_ids), task.server_round,
                    reason(err))
    parts = [_isolating(trainer, task.subset([cid])) for cid in task.client_ids]
    return merge_results(task, parts)


def merge_results(task: CohortTask, parts: list[CohortResult]) -> CohortResult:
    """Concatenate per-client results (in ``task.client_ids`` order); stats are averaged."""
    stats: dict[str, list[float]] = {}
    for p in parts:
        for k, v in p.stats.items():
            stats.setdefault(k, []).append(v)
    return CohortResult.from_rows(
        [row for p in parts for row in p.rows()], task.global_params,
        failures={cid: why for p in parts for cid, why in p.failures.items()},
        stats={k: float(np.mean(v)) for k, v in stats.items()})

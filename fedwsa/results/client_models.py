"""The sampled clients' trained weights, kept in the run directory on request.

``save-client-models`` (``none``, ``last`` or ``every-N``) chooses the rounds. Each kept round
is ONE stacked file, ``client-models/round-NNNN.npz``: ``client-ids`` and ``num-examples``
[K], and per parameter name its clients' weights [K, ...], in client-id order (the clients
that trained successfully that round, the stack the server aggregated). Plain ``.npz``, read
with ``allow_pickle=False``: a file from elsewhere cannot run code. ``fedwsa analyze`` reads
them, so every analysis works on a finished run.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedwsa.atomic import write_bytes_atomic
from fedwsa.keys import ROUND_SCHEDULE

__all__ = ["CLIENT_MODELS_DIR", "ClientModels", "disk_cost_line", "load_client_models",
           "prune_client_models", "rounds_to_save", "save_client_models", "saved_rounds",
           "saves_round"]

CLIENT_MODELS_DIR = "client-models"
_IDS, _EXAMPLES = "client-ids", "num-examples"


@dataclass(frozen=True)
class ClientModels:
    """One round's kept clients: ids, example counts and stacked weights [K, ...]."""

    round: int
    client_ids: list[int]
    num_examples: list[int]
    params: dict[str, torch.Tensor]

    def model(self, client_id: int) -> dict[str, torch.Tensor]:
        """One client's weights."""
        k = self.client_ids.index(client_id)
        return {n: v[k] for n, v in self.params.items()}


def saves_round(schedule: str, server_round: int, last_round: int) -> bool:
    """Does ``schedule`` keep the clients of ``server_round``? ``every-N`` keeps rounds N, 2N,
    ... and the last one, so the final clients are always there."""
    match = ROUND_SCHEDULE.fullmatch(schedule)
    if match is None:
        raise ValueError(f"save-client-models={schedule!r} is not a schedule; accepted: none, "
                         f"last or every-N (N >= 1)")
    if schedule == "none":
        return False
    every = int(match.group(1)) if match.group(1) else None
    return server_round == last_round or (every is not None and server_round % every == 0)


def rounds_to_save(schedule: str, last_round: int) -> list[int]:
    return [r for r in range(1, last_round + 1) if saves_round(schedule, r, last_round)]


def disk_cost_line(schedule: str, last_round: int, clients_per_round: int,
                   params: dict[str, torch.Tensor], where: Path) -> str:
    """What ``schedule`` will write, said before the run starts."""
    rounds = len(rounds_to_save(schedule, last_round))
    per_client = sum(v.numel() * v.element_size() for v in params.values())
    total = rounds * clients_per_round * per_client
    return (f"save-client-models={schedule!r}: {rounds} round(s) x up to {clients_per_round} "
            f"clients x {per_client / 1e6:.2f} MB = up to {total / 1e6:.1f} MB in {where}")


def _file(run_dir: Path, server_round: int) -> Path:
    return run_dir / CLIENT_MODELS_DIR / f"round-{server_round:04d}.npz"


def save_client_models(run_dir: Path, server_round: int, client_ids: list[int],
                       num_examples: list[int], params: dict[str, torch.Tensor]) -> Path:
    """Write one round's stacked client weights (atomically: whole file or none)."""
    for name in (_IDS, _EXAMPLES):
        if name in params:
            raise ValueError(f"a parameter may not be named {name!r}")
    arrays = {n: v.detach().cpu().numpy() for n, v in params.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **{_IDS: np.asarray(client_ids, dtype=np.int64),
                        _EXAMPLES: np.asarray(num_examples, dtype=np.int64)}, **arrays)
    path = _file(run_dir, server_round)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def saved_rounds(run_dir: Path) -> list[int]:
    """Rounds whose client models are in ``run_dir``, ascending."""
    folder = run_dir / CLIENT_MODELS_DIR
    if not folder.is_dir():
        return []
    found = (re.fullmatch(r"round-(\d+)\.npz", p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def load_client_models(run_dir: Path, server_round: int) -> ClientModels:
    """One kept round; a damaged or foreign file is a ``ValueError`` that names it."""
    path = _file(run_dir, server_round)
    try:
        with np.load(path, allow_pickle=False) as data:
            ids = data[_IDS].tolist()
            examples = data[_EXAMPLES].tolist()
            params = {n: torch.from_numpy(data[n].copy()) for n in data.files
                      if n not in (_IDS, _EXAMPLES)}
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"{path}: not a readable client-models file "
                         f"({type(err).__name__}: {err})") from err
    if any(v.shape[0] != len(ids) for v in params.values()) or len(examples) != len(ids):
        raise ValueError(f"{path}: not a client-models file: its arrays do not hold one row "
                         f"per client id ({len(ids)})")
    return ClientModels(server_round, [int(c) for c in ids], [int(n) for n in examples],
                        params)


def prune_client_models(run_dir: Path, after: int) -> None:
    """Remove kept rounds after ``after`` (a resumed run trains them again)."""
    for server_round in saved_rounds(run_dir):
        if server_round > after:
            _file(run_dir, server_round).unlink(missing_ok=True)

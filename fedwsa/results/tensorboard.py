"""TensorBoard event files for a run: ``RUN/tensorboard/`` (key ``tensorboard``, on by default).

Per evaluated round, every number of its ``metrics.jsonl`` row becomes a scalar under the same
name with its first ``-`` as TensorBoard's group separator (``test-accuracy`` is
``test/accuracy``, ``wsa-kl`` is ``wsa/kl``), at step = the round; per round, the clients'
train losses become the histogram ``clients/train-loss``. ``tensorboard --logdir EXP`` on a
``compare`` experiment shows every cell (``<strategy>_seed=<s>.../tensorboard``) overlaid.

A resumed run starts a new event file with ``purge_step`` = its first round, so TensorBoard
drops what the interrupted run had logged after its checkpoint: each round appears once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"
CLIENT_LOSS_TAG = "clients/train-loss"


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of a ``metrics.jsonl`` key (``test-accuracy`` -> ``test/accuracy``)."""
    return key.replace("-", "/", 1)


class TensorBoardLog:
    """Writes one run's event files; ``purge_step`` for a resumed run (its first round)."""

    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        # Imported here: tensorboard takes ~1.5 s to import and a run may turn it off.
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / TENSORBOARD_DIR
        self._writer = SummaryWriter(str(self.path), purge_step=purge_step, flush_secs=30)

    def record(self, row: Mapping[str, Any]) -> None:
        """One ``metrics.jsonl`` row: each finite number except ``round`` as a scalar."""
        step = int(row["round"])
        for key, value in row.items():
            if key == "round" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self._writer.add_scalar(scalar_tag(key), float(value), step)
        self._writer.flush()

    def client_losses(self, server_round: int, losses: Sequence[float]) -> None:
        """The round's per-client train losses as a histogram (non-finite ones left out)."""
        import numpy as np

        values = np.asarray([v for v in losses if math.isfinite(v)], dtype=np.float64)
        if values.size:
            self._writer.add_histogram(CLIENT_LOSS_TAG, values, server_round)

    def close(self) -> None:
        self._writer.close()

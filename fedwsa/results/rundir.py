"""Writing a run directory: resolved config, one metrics line per evaluated round, final model
and the curves picture.

Every file is replaced atomically (temp file + rename), so a run killed at any moment leaves
either the old or the new version of each file, never half of one.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import torch

from fedwsa.atomic import write_bytes_atomic, write_text_atomic
from fedwsa.config import Config
from fedwsa.results.curves import CurvesPainter
from fedwsa.results.files import NO_UPDATE, write_json_atomic
from fedwsa.results.tensorboard import TensorBoardLog

CONFIG_FILE, METRICS_FILE, RESULT_FILE, MODEL_FILE = (
    "config.json", "metrics.jsonl", "result.json", "model.pt",
)


def default_run_dir(config: Config) -> Path:
    return Path("runs") / f"{config.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"


RUN_FILES = (CONFIG_FILE, METRICS_FILE, RESULT_FILE, MODEL_FILE, "checkpoint.pt")
"""Files whose presence means a directory already holds a run."""


def run_state(path: Path) -> str:
    """``"none"`` (no run here), ``"finished"`` (result.json) or ``"unfinished"``."""
    if not path.is_dir() or not any((path / f).exists() for f in RUN_FILES):
        return "none"
    return "finished" if (path / RESULT_FILE).exists() else "unfinished"


class RunWriter:
    """Owns one run directory for the duration of a run.

    ``rows`` continues a resumed run at ``first_round``: the metrics file is rewritten at once
    to exactly these rows (those of rounds after the checkpoint are dropped), and the previous
    final model and result are removed until this run writes its own. With the ``tensorboard``
    key, every row also goes to TensorBoard (``fedwsa.results.tensorboard``).
    """

    def __init__(self, path: Path, config: Config,
                 rows: list[dict[str, object]] | None = None, first_round: int = 1) -> None:
        self.path = path
        self.rows: list[dict[str, object]] = list(rows or [])
        path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path / CONFIG_FILE, config.to_dict())
        self.curves = CurvesPainter(path)
        self.tensorboard = (TensorBoardLog(path, None if rows is None else first_round)
                            if config.tensorboard else None)
        if rows is not None:
            for stale in (RESULT_FILE, MODEL_FILE):
                (path / stale).unlink(missing_ok=True)
            self._write_metrics()
            self.curves.request()

    def append_metrics(self, row: dict[str, object]) -> None:
        """Add one evaluated round (the whole file is rewritten atomically; it is small) and
        have ``curves.png`` redrawn."""
        self.rows.append(row)
        self._write_metrics()
        self.curves.request()
        if self.tensorboard is not None:
            self.tensorboard.record(row)

    def client_losses(self, server_round: int, losses: list[float]) -> None:
        """The round's per-client train losses (TensorBoard's histogram, when it is on)."""
        if self.tensorboard is not None:
            self.tensorboard.client_losses(server_round, losses)

    def _write_metrics(self) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows)
        write_text_atomic(self.path / METRICS_FILE, text)

    def save_model(self, params: dict[str, torch.Tensor]) -> None:
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in params.items()}, buf)
        write_bytes_atomic(self.path / MODEL_FILE, buf.getvalue())

    status = "running"

    def finish(self, rounds: int, wall_s: float, rounds_without_update: int = 0) -> Path:
        """Write the result and the final curves; the curves' PNG path.

        ``status`` is ``"finished"``, or ``NO_UPDATE`` when no round updated the global model
        (every client of every round failed): such a run is over but trained nothing."""
        self.status = NO_UPDATE if rounds and rounds_without_update >= rounds else "finished"
        write_json_atomic(self.path / RESULT_FILE, {
            "status": self.status, "rounds": rounds,
            "rounds-without-update": rounds_without_update, "wall-s": wall_s})
        return self.close()

    def close(self) -> Path:
        """Draw the curves a last time and close the event files (again: a no-op); the
        curves' PNG path."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        return self.curves.close()

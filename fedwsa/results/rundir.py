"""Writing a run directory: resolved config, one metrics line per evaluated round, final model
and the curves picture.

Every file is replaced atomically (temp file + rename), so a run killed at any moment leaves
either the old or the new version of each file, never half of one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from fedwsa.atomic import write_text_atomic
from fedwsa.config import Config
from fedwsa.results.curves import CurvesPainter
from fedwsa.results.files import write_json_atomic

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

    ``rows`` continues a resumed run: the metrics file is rewritten at once to exactly these
    rows (those of rounds after the checkpoint are dropped), and the previous final model and
    result are removed until this run writes its own.
    """

    def __init__(self, path: Path, config: Config,
                 rows: list[dict[str, object]] | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, object]] = list(rows or [])
        path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path / CONFIG_FILE, config.to_dict())
        self.curves = CurvesPainter(path)
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

    def _write_metrics(self) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.rows)
        write_text_atomic(self.path / METRICS_FILE, text)

    def save_model(self, params: dict[str, torch.Tensor]) -> None:
        tmp = self.path / (MODEL_FILE + ".tmp")
        torch.save({k: v.detach().cpu() for k, v in params.items()}, tmp)
        tmp.replace(self.path / MODEL_FILE)

    def finish(self, rounds: int, wall_s: float) -> Path:
        """Write the result and the final curves; the curves' PNG path."""
        write_json_atomic(self.path / RESULT_FILE,
                          {"status": "finished", "rounds": rounds, "wall-s": wall_s})
        return self.curves.close()

"""A picture in every run: ``RUN/curves.png`` and ``.svg`` (test accuracy and loss per round),
redrawn after each evaluated round and at the end.

Drawing takes about 0.4 s on a CPU core, longer than a batched round on a GPU, so it happens
in a background thread: the run asks for a redraw after each evaluated round and goes on; the
thread draws the latest metrics whenever it is free (requests that arrive while it draws are
merged into one). The last draw, when the run finishes, happens before ``close`` returns. A
picture that cannot be drawn is logged and never takes the run down.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

log = logging.getLogger(__name__)

CURVES_STEM = "curves"


class CurvesPainter:
    """Keeps ``run_dir/curves.png`` and ``.svg`` up to date with ``run_dir/metrics.jsonl``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._wanted = threading.Event()
        self._closing = False
        self._drawing = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"curves {run_dir.name}")
        self._thread.start()

    @property
    def path(self) -> Path:
        return self.run_dir / f"{CURVES_STEM}.png"

    def request(self) -> None:
        """Redraw soon (in the background) from the metrics written so far."""
        self._wanted.set()

    def close(self) -> Path:
        """Stop the background thread and draw once more, now; the PNG's path."""
        self._closing = True
        self._wanted.set()
        self._thread.join()
        self._draw()
        return self.path

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            if self._closing:
                return
            self._wanted.clear()
            self._draw()

    def _draw(self) -> None:
        from fedwsa.results.plots import plot_accuracy_and_loss, save_figure

        with self._drawing:
            try:
                save_figure(plot_accuracy_and_loss([self.run_dir]), self.run_dir / CURVES_STEM)
            except Exception as err:  # a picture never takes a run down
                log.warning("could not draw %s: %s: %s", self.path, type(err).__name__, err)

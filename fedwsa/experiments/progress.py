"""Progress of a grid of runs: one bar over all runs and rounds, fed by the runs' own files.

The runs execute in-process through Flower's simulation engine, which gives no callback per
round. The run directory does: the server rewrites ``metrics.jsonl`` atomically after every
evaluated round, so a background thread polls the current run's file and advances the bar.
That keeps the training code unaware of any progress display.

On a terminal this is a ``tqdm`` bar on stderr (Flower's log lines are printed above it); when
stderr is not a terminal (a log file, CI, a notebook's captured output) it prints one plain line
per evaluated round instead, because carriage-return redraws turn a log file into noise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from fedwsa.results.files import is_number, read_metrics

POLL_S = 0.5


def last_round(run_dir: Path) -> tuple[int | None, float | None]:
    """The last evaluated round of a run and its test accuracy, from ``metrics.jsonl``.

    ``(None, None)`` before the first evaluation (or if the file cannot be read right now).
    """
    try:
        records = read_metrics(run_dir)
    except (OSError, ValueError):
        return None, None
    for record in reversed(records):
        if is_number(record.get("round")):
            acc = record.get("test-accuracy")
            return int(record["round"]), float(acc) if is_number(acc) else None
    return None, None


class GridProgress:
    """A progress display over ``total_rounds`` rounds of ``total_runs`` runs.

    Use ``skip`` for runs that are already finished and ``track`` (a context manager) around
    each run that executes. Rounds count from the run's ``metrics.jsonl``: round ``r`` of a
    run with ``R`` rounds means ``r`` of its ``R`` rounds are done (round 0 is the evaluation
    before training).
    """

    def __init__(
        self,
        total_runs: int,
        total_rounds: int,
        *,
        stream: TextIO | None = None,
        mode: str = "auto",
        poll_s: float = POLL_S,
    ) -> None:
        if mode not in ("auto", "bar", "lines", "off"):
            raise ValueError(f"progress mode {mode!r}: expected auto, bar, lines or off")
        self.stream = sys.stderr if stream is None else stream
        if mode == "auto":
            mode = "bar" if _isatty(self.stream) else "lines"
        self.mode = mode
        self.total_runs, self.total_rounds = total_runs, total_rounds
        self.poll_s = poll_s
        self.runs_done = 0  # runs finished or skipped
        self.rounds_done = 0  # rounds of the runs counted in runs_done
        self._current = 0  # rounds done in the run being tracked
        self._label, self._rounds, self._index = "", 0, 0
        self._seen: int | None = None
        self._acc: float | None = None
        self._lock = threading.Lock()
        self._bar = None
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_rounds, unit="round", file=self.stream, dynamic_ncols=True,
                desc="compare", bar_format="{desc} {percentage:3.0f}%|{bar}| "
                "{n_fmt}/{total_fmt} rounds [{elapsed}<{remaining}]{postfix}",
            )  # fmt: skip

    # ------------------------------------------------------------------------------------
    def write(self, text: str) -> None:
        """Print a message line without breaking the bar."""
        if self.mode == "off":
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def skip(self, rounds: int) -> None:
        """Count a run that needs no work (already finished)."""
        with self._lock:
            self.runs_done += 1
            self.rounds_done += rounds
            self._refresh()

    @contextlib.contextmanager
    def track(self, run_dir: Path, rounds: int, label: str) -> Iterator[None]:
        """Follow the run writing to ``run_dir`` (``rounds`` in total) while the body runs."""
        index = self.runs_done + 1
        with self._lock:
            self._label, self._rounds, self._index = label, rounds, index
            self._current, self._seen, self._acc = 0, None, None
            self._refresh()
        stop = threading.Event()
        thread = threading.Thread(
            target=self._poll_loop, args=(run_dir, stop), name="fedwsa-progress", daemon=True
        )
        thread.start()
        redirect = self._redirect_logs() if self._bar is not None else contextlib.nullcontext()
        try:
            with redirect:
                yield
        finally:
            stop.set()
            thread.join()
            self._poll(run_dir)  # the last round may have landed after the last poll
            with self._lock:
                self.runs_done += 1
                self.rounds_done += rounds
                self._current = 0
                self._refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # ------------------------------------------------------------------------------------
    def _poll_loop(self, run_dir: Path, stop: threading.Event) -> None:
        while not stop.wait(self.poll_s):
            self._poll(run_dir)

    def _poll(self, run_dir: Path) -> None:
        rnd, acc = last_round(run_dir)
        with self._lock:
            if rnd is None or rnd == self._seen:
                return
            self._seen, self._acc = rnd, acc
            self._current = min(rnd, self._rounds)
            if self.mode == "lines":
                acc_text = "" if acc is None else f", test accuracy {100 * acc:.1f}%"
                print(
                    f"compare: run {self._index}/{self.total_runs} {self._label}: round "
                    f"{rnd}/{self._rounds}{acc_text} "
                    f"({self.rounds_done + self._current}/{self.total_rounds} grid rounds)",
                    file=self.stream, flush=True,
                )  # fmt: skip
            self._refresh()

    def _refresh(self) -> None:
        """Redraw the bar (caller holds the lock)."""
        if self._bar is None:
            return
        done = self.rounds_done + self._current
        self._bar.n = min(done, self.total_rounds)
        if self.runs_done < self.total_runs and self._label:
            run = min(self.runs_done + 1, self.total_runs)
            self._bar.set_description_str(f"run {run}/{self.total_runs} {self._label}", False)
            post = f"round {self._current}/{self._rounds}"
            if self._acc is not None:
                post += f" acc {100 * self._acc:.1f}%"
            self._bar.set_postfix_str(post, refresh=False)
        self._bar.refresh()

    @contextlib.contextmanager
    def _redirect_logs(self) -> Iterator[None]:
        """Route Flower's console log lines through the bar so they print above it."""
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(loggers=[logging.getLogger("flwr")]):
            yield


def _isatty(stream: TextIO) -> bool:
    """A terminal a bar can be drawn on: a TTY that reports a width (a bare pty says 0)."""
    try:
        return bool(stream.isatty()) and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):
        return False

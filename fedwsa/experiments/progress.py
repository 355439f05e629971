"""Progress of a grid of runs: one bar over all runs and rounds, fed by the runs' own files.

The runs execute in-process through Flower's simulation engine, which gives no callback per
round. The run directory does: the server rewrites ``metrics.jsonl`` atomically after every
evaluated round, so a background thread polls the current runs' files and advances the bar.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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


@dataclass
class _Tracked:
    """A run being followed: its directory, rounds, label, index, and what was seen."""

    run_dir: Path
    rounds: int
    label: str
    index: int
    seen: int | None = None
    current: int = 0
    acc: float | None = None


class GridProgress:
    """A progress display over ``total_rounds`` rounds of ``total_runs`` runs.

    Use ``skip`` for runs that are already finished and ``track`` (a context manager) around
    runs that execute, one at a time or several together (the stacked cells of one
    federation). Rounds count from each run's ``metrics.jsonl``: round ``r`` of a run with
    ``R`` rounds means ``r`` of its ``R`` rounds are done (round 0 is the evaluation before
    training).
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
        self._tracked: list[_Tracked] = []
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
    def track(self, runs: Sequence[tuple[Path, int, str]]) -> Iterator[None]:
        """Follow the runs writing to each ``(run_dir, rounds, label)`` while the body runs."""
        with self._lock:
            first = self.runs_done + 1
            self._tracked = [_Tracked(d, r, label, first + i)
                             for i, (d, r, label) in enumerate(runs)]
            self._refresh()
        stop = threading.Event()
        thread = threading.Thread(target=self._poll_loop, args=(stop,), name="fedwsa-progress",
                                  daemon=True)
        thread.start()
        redirect = self._redirect_logs() if self._bar is not None else contextlib.nullcontext()
        try:
            with redirect:
                yield
        finally:
            stop.set()
            thread.join()
            self._poll()  # the last rounds may have landed after the last poll
            with self._lock:
                self.runs_done += len(self._tracked)
                self.rounds_done += sum(t.rounds for t in self._tracked)
                self._tracked = []
                self._refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # ------------------------------------------------------------------------------------
    def _poll_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.poll_s):
            self._poll()

    def _poll(self) -> None:
        for t in list(self._tracked):
            rnd, acc = last_round(t.run_dir)
            with self._lock:
                if rnd is None or rnd == t.seen:
                    continue
                t.seen, t.acc, t.current = rnd, acc, min(rnd, t.rounds)
                if self.mode == "lines":
                    acc_text = "" if acc is None else f", test accuracy {100 * acc:.1f}%"
                    print(
                        f"compare: run {t.index}/{self.total_runs} {t.label}: round "
                        f"{rnd}/{t.rounds}{acc_text} "
                        f"({self._done()}/{self.total_rounds} grid rounds)",
                        file=self.stream, flush=True,
                    )  # fmt: skip
                self._refresh()

    def _done(self) -> int:
        return self.rounds_done + sum(t.current for t in self._tracked)

    def _refresh(self) -> None:
        """Redraw the bar (caller holds the lock)."""
        if self._bar is None:
            return
        self._bar.n = min(self._done(), self.total_rounds)
        if self._tracked:
            t = max(self._tracked, key=lambda t: (t.seen is not None, t.index))
            together = f" (+{len(self._tracked) - 1} together)" if len(self._tracked) > 1 else ""
            self._bar.set_description_str(
                f"run {t.index}/{self.total_runs} {t.label}{together}", False)
            post = f"round {t.current}/{t.rounds}"
            if t.acc is not None:
                post += f" acc {100 * t.acc:.1f}%"
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

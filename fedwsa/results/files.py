"""Reading run directories and grouping runs into experiment cells.

This module only knows the on-disk run format (``config.json``, ``metrics.jsonl``,
``result.json``, optional ``grid.json`` in the experiment directory). It must not import torch
or Flower, so that summaries and plots work on any machine that has the result files.

Run directory::

    RUN/config.json     resolved config, kebab-case keys
    RUN/metrics.jsonl   one JSON object per evaluated round (``round``, ``elapsed-s``, ...)
    RUN/result.json     only when the run ended: {"status": "finished" (or "no-update": no
                        round updated the model), "rounds", "rounds-without-update", "wall-s"}

An experiment directory holds run directories as immediate subfolders and optionally
``grid.json`` (``{"strategies", "seeds", "sweep": {key: [values]}, "base"}``). Folder names are
never parsed: groups come from the configs themselves.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fedwsa.atomic import write_text_atomic
from fedwsa.keys import HARMLESS_KEYS

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
GRID_FILE = "grid.json"

# Config keys that never distinguish experiment cells: seeds are the replicates, the run
# directory is different for every run by construction, and the harmless keys change neither
# what a run trains nor what it records (a run made before such a key existed lacks it).
IGNORED_KEYS: frozenset[str] = frozenset({"seed", "run-dir"}) | HARMLESS_KEYS

PathLike = Path | str





def write_json_atomic(path: PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Serialise ``obj`` as JSON (plus a trailing newline) and write it atomically.

    NaN/inf are allowed (Python's JSON dialect) because a diverged loss must not make the
    writer crash; ``json.loads`` reads them back.
    """
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


# --------------------------------------------------------------------------------------------
# Single run
# --------------------------------------------------------------------------------------------


def read_config(run_dir: PathLike) -> dict[str, Any]:
    """Return the resolved config of a run (``RUN/config.json``)."""
    path = Path(run_dir) / CONFIG_FILE
    obj = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_metrics(run_dir: PathLike) -> list[dict[str, Any]]:
    """Return the per-round metric records of a run, in file order.

    A run that is still going (or was killed) may have a torn last line; it is skipped, since
    it is simply a record that was not complete yet, with a ``TruncatedMetricsWarning`` naming
    the file. A malformed line anywhere else means the file is corrupt and raises
    ``ValueError``. A missing file means no round was evaluated yet and gives ``[]``.
    """
    path = Path(run_dir) / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    records: list[dict[str, Any]] = []
    for i, (lineno, line) in enumerate(lines):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:
                _warn_truncated(path, lineno)  # torn last line of a file being written
                break
            raise ValueError(f"{path}:{lineno}: malformed metrics line: {exc}") from exc
        if not isinstance(obj, dict):
            if i == len(lines) - 1:
                _warn_truncated(path, lineno)  # a truncated record can parse as a number
                break
            raise ValueError(f"{path}:{lineno}: expected a JSON object per line")
        records.append(obj)
    return records


class TruncatedMetricsWarning(UserWarning):
    """A metrics file's last line was cut off (its run is writing it, or was killed)."""


def _warn_truncated(path: Path, lineno: int) -> None:
    warnings.warn(TruncatedMetricsWarning(
        f"{path}:{lineno}: skipped a truncated last line (the run is still writing it, or "
        "was stopped while writing it)"), stacklevel=3)


def read_result(run_dir: PathLike) -> dict[str, Any] | None:
    """Return ``RUN/result.json``, or ``None`` while the run has not finished (or if unreadable)."""
    path = Path(run_dir) / RESULT_FILE
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


NO_UPDATE = "no-update"
"""``result.json`` status of a run that ended without any round updating its model."""
ENDED = ("finished", NO_UPDATE)
"""``result.json`` statuses of a run that went through all its rounds (a ``no-update`` run
would repeat itself if re-run)."""


def is_finished(run_dir: PathLike) -> bool:
    """True when the run wrote ``result.json`` with a status of ``ENDED``."""
    result = read_result(run_dir)
    return result is not None and result.get("status") in ENDED


def wall_seconds(run_dir: PathLike, metrics: Sequence[dict[str, Any]] | None = None) -> float:
    """Wall time of a run: ``result.json`` ``wall-s``, else the last ``elapsed-s`` (else NaN).

    The fallback lets an unfinished run report how long it has been going so far.
    """
    result = read_result(run_dir)
    if result is not None and is_number(result.get("wall-s")):
        return float(result["wall-s"])
    if metrics is None:
        metrics = read_metrics(run_dir)
    for record in reversed(metrics):
        if is_number(record.get("elapsed-s")):
            return float(record["elapsed-s"])
    return math.nan


def is_number(value: Any) -> bool:
    """True for real numbers (not bools, not None): what can be averaged over seeds."""
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Finding and grouping runs
# --------------------------------------------------------------------------------------------


def is_run_dir(path: PathLike) -> bool:
    """A run directory is any directory holding ``config.json``."""
    return (Path(path) / CONFIG_FILE).is_file()


def find_runs(paths: Sequence[PathLike] | PathLike) -> list[Path]:
    """Expand run and experiment directories into a de-duplicated list of run directories.

    Each path may be a run directory itself or an experiment directory whose immediate
    subfolders are run directories. Raises ``FileNotFoundError`` for a path that is neither,
    because silently summarising nothing hides typos.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    found: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise FileNotFoundError(f"not a directory: {path}")
        if is_run_dir(path):
            candidates = [path]
        else:
            candidates = sorted(p for p in path.iterdir() if p.is_dir() and is_run_dir(p))
            if not candidates:
                raise FileNotFoundError(f"no run directories (with {CONFIG_FILE}) in {path}")
        for run in candidates:
            key = run.resolve()
            if key not in seen:
                seen.add(key)
                found.append(run)
    return found


def read_grid(exp_dir: PathLike) -> dict[str, Any] | None:
    """Return ``EXP/grid.json`` or ``None`` when the experiment has none."""
    path = Path(exp_dir) / GRID_FILE
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return obj if isinstance(obj, dict) else None


def hashable(value: Any) -> Any:
    """Turn a JSON value into something usable in a dict key (lists -> tuples, dicts -> items)."""
    if isinstance(value, list | tuple):
        return tuple(hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, hashable(v)) for k, v in value.items()))
    return value


def format_value(value: Any) -> str:
    """Compact text for a config value in labels: strings bare, everything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return json.dumps(_unhashable(value))
    return json.dumps(value)


def _unhashable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_unhashable(v) for v in value]
    return value


def infer_swept_keys(runs: Sequence[PathLike]) -> list[str]:
    """The config keys that define experiment cells for these runs (besides ``strategy``).

    When every run sits in an experiment directory with ``grid.json``, the union of the grids'
    strategy entries' own keys (``{strategy = "fedwsa", wsa-beta = 0.1}``) and ``sweep`` keys
    is used (in grid order), so incidental config differences do not split groups. Otherwise
    every config key whose value differs between runs, except ``seed``, ``run-dir`` and
    ``strategy``, in sorted order.
    """
    run_paths = [Path(r) for r in runs]
    grids = [read_grid(r.parent) for r in {r.parent.resolve(): r for r in run_paths}.values()]
    if run_paths and all(g is not None for g in grids):
        keys: list[str] = []
        for grid in grids:
            assert grid is not None
            entries = [e for e in grid.get("strategies") or [] if isinstance(e, dict)]
            for key in [*(k for e in entries for k in e), *(grid.get("sweep") or {})]:
                if key not in keys and key not in IGNORED_KEYS and key != "strategy":
                    keys.append(key)
        return keys
    configs = [read_config(r) for r in run_paths]
    all_keys = sorted({k for c in configs for k in c} - IGNORED_KEYS - {"strategy"})
    missing = object()
    differing: list[str] = []
    for key in all_keys:
        values = {hashable(c[key]) if key in c else missing for c in configs}
        if len(values) > 1:
            differing.append(key)
    return differing


class GroupKey(tuple):
    """Key of one experiment cell: ``(("strategy", s), (swept_key, value), ...)``.

    It is a plain tuple (hashable, comparable, usable as a dict key) that also knows how to
    print itself, so callers never have to rebuild labels.
    """

    __slots__ = ()

    @property
    def params(self) -> dict[str, Any]:
        """The key as a dict, e.g. ``{"strategy": "fedwsa", "alpha": 0.1}``."""
        return {k: _unhashable(v) for k, v in self}

    @property
    def strategy(self) -> str:
        """The strategy name of the group."""
        return str(self[0][1]) if self else ""

    @property
    def label(self) -> str:
        """Readable group name, e.g. ``"fedwsa alpha=0.1"``."""
        return group_label(self)

    def __str__(self) -> str:
        return self.label


def group_label(key: Sequence[tuple[str, Any]]) -> str:
    """Readable label for a group key: the strategy, then ``key=value`` for each swept key."""
    parts: list[str] = []
    for name, value in key:
        if name == "strategy":
            parts.append(format_value(value))
        elif value is not None:  # None: a key that is not this group's (see group_runs)
            parts.append(f"{name}={format_value(value)}")
    return " ".join(parts)


def _sort_token(value: Any) -> tuple[int, Any]:
    """Sort mixed JSON values: None, then numbers numerically, then strings, then the rest."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if is_number(value):
        return (2, float(value))
    if isinstance(value, str):
        return (3, value)
    return (4, json.dumps(_unhashable(value), sort_keys=True))


def group_runs(
    runs: Sequence[PathLike], swept_keys: Sequence[str] | None = None
) -> dict[GroupKey, list[Path]]:
    """Group run directories into experiment cells; seeds of the same cell are replicates.

    The key is the strategy plus the value of each swept key (``None`` when a config lacks
    it); see ``infer_swept_keys`` for the default. Groups are ordered by the strategy order of
    ``grid.json`` when available (else alphabetically), then by swept values; runs inside a
    group are ordered by seed. ``key.label`` gives e.g. ``"fedwsa alpha=0.1"``.
    """
    run_paths = [Path(r) for r in runs]
    keys = list(infer_swept_keys(run_paths) if swept_keys is None else swept_keys)
    strategy_order = _strategy_order(run_paths)
    groups: dict[GroupKey, list[tuple[Any, Path]]] = {}
    for run in run_paths:
        config = read_config(run)
        others = _other_entries_keys(run)
        pairs = [("strategy", config.get("strategy", "unknown"))]
        pairs += [(k, None if k in others else hashable(config.get(k))) for k in keys]
        groups.setdefault(GroupKey(pairs), []).append((config.get("seed"), run))

    def order(key: GroupKey) -> tuple[Any, ...]:
        strategy = key.strategy
        rank = strategy_order.index(strategy) if strategy in strategy_order else len(strategy_order)
        return (rank, strategy, *(_sort_token(v) for _, v in key[1:]))

    def by_seed(seed_run: tuple[Any, Path]) -> tuple[Any, ...]:
        return (_sort_token(seed_run[0]), str(seed_run[1]))

    return {
        key: [run for _, run in sorted(groups[key], key=by_seed)]
        for key in sorted(groups, key=order)
    }


def _other_entries_keys(run: Path) -> set[str]:
    """Keys that other strategy entries of ``run``'s grid set for themselves and ``run``'s own
    cell neither sets nor sweeps (fedwsa's ``wsa-beta`` for a fedavg run): they must not split
    or label its group. Empty outside a grid."""
    grid = read_grid(run.parent)
    if grid is None:
        return set()
    entries = {k for e in grid.get("strategies") or [] if isinstance(e, dict) for k in e}
    for cell in grid.get("cells") or []:
        if isinstance(cell, dict) and cell.get("run-dir") == run.name:
            own = {*(cell.get("sweep") or {}), *(grid.get("sweep") or {})}
            return entries - own - {"strategy"}
    return set()


def _strategy_order(runs: Iterable[Path]) -> list[str]:
    """Strategy order as listed in the experiments' ``grid.json`` files (first seen first)."""
    order: list[str] = []
    for parent in dict.fromkeys(r.parent.resolve() for r in runs):
        grid = read_grid(parent)
        for entry in (grid or {}).get("strategies") or []:
            strategy = entry.get("strategy") if isinstance(entry, dict) else entry
            if isinstance(strategy, str) and strategy not in order:
                order.append(strategy)
    return order

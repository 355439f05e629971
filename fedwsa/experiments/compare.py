"""Run a grid of strategies x seeds x swept config values, one run directory per cell.

``fedwsa compare`` is how a researcher answers "which strategy wins on this partition, and by
how much": every cell shares the same base config, differs only in the strategy, the seed and
the swept keys, and lands in its own run directory under one experiment directory::

    EXP/grid.json                      the grid: strategies, seeds, sweep, base, cells
    EXP/fedavg_alpha=0.1_seed=1/       one run directory per cell (config.json, metrics.jsonl, ...)
    EXP/summary.md, EXP/summary.csv    written after the grid (``fedwsa.results.summary``),
    EXP/runs.csv                       with every run's final and best accuracy
    EXP/curves.png, EXP/curves.svg     test accuracy and loss per round (``fedwsa.results.plots``)

Why the grid is checked as a whole first: a typo in the fifth strategy must not surface hours
later, after four strategies' runs. Every cell's config goes through ``make_config`` (and the
strategy and data are checked) before the first run starts.

Re-running the same command is safe and cheap: finished cells are skipped, unfinished cells
with a checkpoint are resumed (``resume=true``), and unfinished cells without one are cleared
and run again.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import shutil
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fedwsa import stop
from fedwsa.algorithms import unused_keys
from fedwsa.config import HARMLESS_KEYS, KEYS_BY_NAME, Config, ConfigError, make_config
from fedwsa.data import train_set_key
from fedwsa.dirs import check_writable, exclusive
from fedwsa.results.files import (
    ENDED,
    GRID_FILE,
    NO_UPDATE,
    format_value,
    is_finished,
    read_config,
    read_result,
    write_json_atomic,
)

# Keys the grid sets per cell itself; they cannot be shared base keys or swept keys.
_CELL_KEYS = {
    "strategy": "not set here: list strategies with --strategies (or `strategies` in the TOML)",
    "seed": "not set here: list seeds with --seeds (or `seeds` in the TOML)",
    "run-dir": "not set: every cell gets its own directory under --out",
    "resume": "not set: compare resumes unfinished cells by itself",
    "scaffold-store": "not set: each cell keeps SCAFFOLD's client state in its run directory",
}
_GRID_FILE_KEYS = ("out", "strategies", "seeds", "sweep", "base")
CURVES_STEM = "curves"


@dataclass(frozen=True)
class Variant:
    """A strategy of the grid, with keys of its own: ``"fedavg"``, or in TOML
    ``{strategy = "fedwsa", wsa-beta = 0.1}``, so one grid compares settings a sweep cannot
    express as a product (each method at its own knobs)."""

    strategy: str
    keys: dict[str, Any] = field(default_factory=dict)

    def record(self) -> str | dict[str, Any]:
        """As a grid file spells it."""
        return {"strategy": self.strategy, **self.keys} if self.keys else self.strategy


@dataclass(frozen=True)
class GridSpec:
    """What to run: strategies x seeds x every combination of the swept values, over ``base``.

    ``sweep`` maps config keys to the values to try (in order); ``base`` holds the config keys
    every cell shares. Values are as the user gave them; ``expand`` validates them.
    """

    strategies: tuple[Variant, ...]
    seeds: tuple[int, ...]
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its validated config and its directory under the experiment."""

    strategy: str
    seed: int
    params: dict[str, Any]  # the strategy entry's keys and swept keys -> resolved value
    config: Config
    path: Path

    @property
    def label(self) -> str:
        """``fedwsa alpha=0.1 seed=1``: how the cell is named in progress and errors."""
        swept = [f"{k}={format_value(v)}" for k, v in self.params.items()]
        return " ".join([self.strategy, *swept, f"seed={self.seed}"])


@dataclass
class Plan:
    """What ``run_grid`` will do with each cell: skip, resume, restart or start it."""

    cells: list[Cell]
    actions: list[str]  # "skip" | "resume" | "restart" | "new", one per cell
    resume_rounds: list[int | None]  # the checkpoint's round for "resume", else None
    stale: list[Path]  # run directories in the experiment that are not cells of this grid

    def count(self, action: str) -> int:
        return sum(a == action for a in self.actions)


@dataclass
class GridResult:
    """Outcome of ``run_grid``: the plan, the cells that did not finish, the summary text."""

    out: Path
    plan: Plan
    failed: list[tuple[Cell, str]]
    summary: str | None
    figures: list[Path]


# --------------------------------------------------------------------------------------------
# Building the grid from flags or a TOML file
# --------------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """One value as TOML would read it (``0.1``, ``true``, ``'iid'``); bare words are strings."""
    text = text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_list(text: str, what: str) -> list[Any]:
    """A comma-separated list (``"0.1,0.5"``) or a TOML array (``"['a,b', 'c']"``)."""
    text = text.strip()
    if text.startswith("["):
        value = parse_value(text)
        if not isinstance(value, list):
            raise ConfigError(what, text, "a TOML array such as [0.1, 0.5]")
        return value
    items = [item for item in (part.strip() for part in text.split(",")) if item]
    if not items:
        raise ConfigError(what, text, "a non-empty comma-separated list")
    return [parse_value(item) for item in items]


def parse_sweep(texts: Sequence[str] | None) -> dict[str, list[Any]]:
    """``["alpha=0.1,0.5 lr=0.01,0.05"]`` -> ``{"alpha": [0.1, 0.5], "lr": [0.01, 0.05]}``.

    Each text holds one or more space-separated ``key=v1,v2`` items; ``--sweep`` may repeat.
    """
    sweep: dict[str, list[Any]] = {}
    for text in texts or []:
        for item in _split_items(text):
            key, sep, values = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError("--sweep", item, "key=v1,v2 (e.g. alpha=0.1,0.5)")
            key = key.strip()
            if key in sweep:
                raise ConfigError("--sweep", item, f"each key once ({key!r} is repeated)")
            sweep[key] = parse_list(values, key)
    return sweep


def _split_items(text: str) -> list[str]:
    """Split on spaces outside brackets and quotes, so ``k=['a b','c']`` stays one item."""
    items, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char.isspace() and depth == 0:
            if current:
                items.append("".join(current))
                current = []
            continue
        current.append(char)
    if current:
        items.append("".join(current))
    return items


def read_grid_file(path: Path) -> dict[str, Any]:
    """Read a grid TOML file (format in the README, "Comparing strategies")."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ValueError(f"grid file not found: {path}") from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from err
    unknown = sorted(set(data) - set(_GRID_FILE_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: {unknown[0]}",
            data[unknown[0]],
            f"one of the grid file keys {', '.join(_GRID_FILE_KEYS)}",
        )
    for table in ("sweep", "base"):
        if table in data and not isinstance(data[table], dict):
            raise ConfigError(f"{path}: {table}", data[table], "a TOML table")
    return data


def build_spec(
    strategies: Sequence[Any] | None,
    seeds: Sequence[Any] | None,
    sweep: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> GridSpec:
    """Check the grid's shape (names, lists, duplicates) and return a ``GridSpec``.

    The values themselves are checked per cell by ``expand``.
    """
    if not strategies:
        raise ConfigError("strategies", strategies, "at least one strategy, e.g. fedavg,fedwsa")
    if not seeds:
        raise ConfigError("seeds", seeds, "at least one seed, e.g. 1,2,3")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError("seeds", seed, "integers >= 0, e.g. 1,2,3")
    if len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", list(seeds), "each value once in seeds")
    sweep = dict(sweep or {})
    base = dict(base or {})
    variants = tuple(_variant(entry, sweep) for entry in strategies)
    records = [json.dumps(v.record(), sort_keys=True) for v in variants]
    if len(set(records)) != len(records):
        raise ConfigError("strategies", list(strategies), "each value once in strategies")
    for key, values in sweep.items():
        if key in _CELL_KEYS:
            raise ConfigError(key, values, _CELL_KEYS[key])
        if key not in KEYS_BY_NAME:
            raise ConfigError(key, values, "a known key (see `fedwsa keys` or the README)")
        if not isinstance(values, list) or not values:
            raise ConfigError(key, values, "a non-empty list of values to sweep")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(key, values, "each swept value once")
    for key, value in base.items():
        if key in _CELL_KEYS:
            raise ConfigError(key, value, _CELL_KEYS[key])
    # A swept key overrides the same key in base (a TOML base plus a --sweep on the CLI).
    base = {k: v for k, v in base.items() if k not in sweep}
    return GridSpec(variants, tuple(int(s) for s in seeds), sweep, base)


def _variant(entry: Any, sweep: Mapping[str, Any]) -> Variant:
    """A ``strategies`` entry: a preset name, or a table with ``strategy`` and its own keys."""
    if isinstance(entry, str):
        return Variant(entry)
    accepted = ("a strategy name, or a table such as {strategy = \"fedwsa\", wsa-beta = 0.1}")
    if not isinstance(entry, Mapping) or not isinstance(entry.get("strategy"), str):
        raise ConfigError("strategies", entry, accepted)
    keys = {k: v for k, v in entry.items() if k != "strategy"}
    for key in keys:
        if key in _CELL_KEYS:
            raise ConfigError(key, keys[key], _CELL_KEYS[key])
        if key not in KEYS_BY_NAME:
            raise ConfigError(key, keys[key], "a known key (see `fedwsa keys` or the README)")
        if key in sweep:
            raise ConfigError(key, keys[key], "set by the strategy entry or swept, not both")
    return Variant(entry["strategy"], keys)


# --------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------


def cell_name(strategy: str, params: Mapping[str, Any], seed: int) -> str:
    """Directory name of a cell, e.g. ``fedwsa_alpha=0.1_seed=1`` (only for people to read:
    the configs, not the names, define groups)."""
    parts = [strategy, *(f"{k}={format_value(v)}" for k, v in params.items()), f"seed={seed}"]
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(parts))


def expand(spec: GridSpec, out: Path) -> list[Cell]:
    """Every cell of the grid with its validated config; raises ``ConfigError`` on the first
    bad cell, before anything runs.

    Order: strategy, then the swept values (first key slowest), then seed; so the seeds of a
    cell group run back to back.
    """
    keys = list(spec.sweep)
    cells: list[Cell] = []
    names: set[str] = set()
    for variant in spec.strategies:
        strategy = variant.strategy
        for combo in itertools.product(*(spec.sweep[k] for k in keys)):
            for seed in spec.seeds:
                values = {**spec.base, **variant.keys, **dict(zip(keys, combo, strict=True))}
                values.update(strategy=strategy, seed=seed)
                config = make_config(values)
                resolved = config.to_dict()
                params = {k: resolved[k] for k in [*variant.keys, *keys]}
                name = cell_name(strategy, params, seed)
                while name in names:  # two values that print alike after sanitising
                    name += "+"
                names.add(name)
                path = out / name
                cells.append(Cell(strategy, seed, params, config.replace(run_dir=str(path)), path))
    return cells


def grid_record(spec: GridSpec, cells: Sequence[Cell]) -> dict[str, Any]:
    """The ``EXP/grid.json`` object: the grid as run, with resolved swept values and cells."""
    sweep: dict[str, list[Any]] = {key: [] for key in spec.sweep}
    for cell in cells:
        for key, value in cell.params.items():
            if key in sweep and value not in sweep[key]:
                sweep[key].append(value)
    return {
        "strategies": [v.record() for v in spec.strategies],
        "seeds": list(spec.seeds),
        "sweep": sweep,
        "base": dict(spec.base),
        "cells": [
            {
                "run-dir": cell.path.name,
                "strategy": cell.strategy,
                "seed": cell.seed,
                "sweep": cell.params,
            }
            for cell in cells
        ],  # fmt: skip
    }


# --------------------------------------------------------------------------------------------
# Checks before the first run, and what to do with each cell
# --------------------------------------------------------------------------------------------


def _config_differences(cell: Cell) -> dict[str, tuple[Any, Any]]:
    """Keys whose value in the cell directory's ``config.json`` differs from the grid's:
    key -> (there, here). Empty when the directory holds no config."""
    try:
        stored = read_config(cell.path)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        return {"config.json": (f"unreadable ({err})", "a readable config")}
    wanted = cell.config.to_dict()
    diff = {}
    # Keys the cell's strategy never reads (a changed default of a CART knob in a FedAvg
    # cell, say) cannot make the stored run another run.
    unused = unused_keys(cell.config.strategy, cell.config.server_opt)
    for key in sorted((set(stored) | set(wanted)) - HARMLESS_KEYS - unused):
        default = KEYS_BY_NAME[key].default if key in KEYS_BY_NAME else None
        old, new = stored.get(key, default), wanted.get(key, default)
        if old != new:
            diff[key] = (old, new)
    return diff


def make_plan(cells: Sequence[Cell], out: Path) -> Plan:
    """Decide per cell: skip (finished), resume (has a checkpoint), restart or new.

    A cell directory holding a run of a *different* config is an error: the grid changed
    under an existing experiment, and mixing the two would make the summary lie. The one
    exception is a larger ``num-server-rounds``: a cell with a checkpoint is then resumed to
    the new end (finished or not), so a grid can be extended. An unusable checkpoint is an
    error too (``fedwsa.server.checkpoint`` says why): discarding it silently could throw away days
    of training.
    """
    from fedwsa.results.rundir import run_state
    from fedwsa.server.checkpoint import checkpoint_path, load_checkpoint

    actions: list[str] = []
    resume_rounds: list[int | None] = []
    for cell in cells:
        diff = _config_differences(cell)
        finished = is_finished(cell.path)
        has_checkpoint = checkpoint_path(cell.path).is_file()
        # Finished cells of an unchanged grid need no checkpoint read (it can be large).
        needed = has_checkpoint and (bool(diff) or not finished)
        round_ = load_checkpoint(cell.path).round if needed else None
        extend = (
            set(diff) == {"num-server-rounds"}
            and round_ is not None
            and cell.config.num_server_rounds >= round_
        )
        if diff and not extend:
            key, (old, new) = next(iter(diff.items()))
            raise ValueError(
                f"{cell.path} holds a run with a different config ({key}: {old!r} there, "
                f"{new!r} in this grid); remove that directory or choose another --out"
            )
        if run_state(cell.path) == "none":
            action = "new"
        elif finished and not extend:
            action = "skip"
        elif has_checkpoint:
            action = "resume"
        else:
            action = "restart"
        actions.append(action)
        resume_rounds.append(round_ if action == "resume" else None)
    names = {cell.path.name for cell in cells}
    stale = []
    if out.is_dir():
        stale = sorted(
            p
            for p in out.iterdir()
            if p.is_dir() and p.name not in names and (p / "config.json").is_file()
        )
    return Plan(list(cells), actions, resume_rounds, stale)


def cell_config(cell: Cell, action: str) -> Config:
    """The config a cell runs with: ``resume=true`` when it continues from its checkpoint."""
    return cell.config.replace(resume=True) if action == "resume" else cell.config


def check_cells(plan: Plan) -> None:
    """``fedwsa.server.preflight``'s checks for every cell that will run, before the first one does.

    Keys, data and partitions, model and strategy, and the run directory (for a resumed cell:
    that its checkpoint loads and matches its config). Data and model checks are shared by the
    cells they cannot tell apart, so a grid costs one dataset load per dataset.
    """
    from fedwsa.server.preflight import (
        check_data,
        check_keys,
        check_model_and_strategy,
        check_run_dir,
    )
    from fedwsa.strategies import build_strategy

    classes: dict[tuple[Any, ...], int] = {}
    models: set[str] = set()
    for cell, action in zip(plan.cells, plan.actions, strict=True):
        if action == "skip":
            continue
        config = cell_config(cell, action)
        check_keys(config)
        c = config
        data_key = (c.dataset, c.data_root, c.seed, c.partition, c.partition_rng, c.alpha,
                    c.classes_per_client, c.min_partition_size, c.num_clients)  # fmt: skip
        if data_key not in classes:
            classes[data_key] = check_data(config)
        model_key = config.replace(seed=0, run_dir="", resume=False).to_json()
        if model_key not in models:
            models.add(model_key)
            check_model_and_strategy(config, classes[data_key])
        if action != "restart":  # a restarted cell's directory is cleared first
            ckpt = check_run_dir(config)
            # The strategy's own storage (SCAFFOLD's client state), as preflight checks it.
            build_strategy(config).preflight(None if ckpt is None else ckpt.strategy)


def prepare(spec: GridSpec, out: Path) -> tuple[list[Cell], Plan]:
    """Expand and check the whole grid and decide what to do per cell; writes nothing."""
    cells = expand(spec, out)
    plan = make_plan(cells, out)
    check_cells(plan)
    return cells, plan


def describe_plan(plan: Plan) -> str:
    """One line per cell: what will happen to it."""
    lines = []
    for cell, action, rnd in zip(plan.cells, plan.actions, plan.resume_rounds, strict=True):
        what = {
            "skip": "finished, skipped",
            "resume": f"resumed from its round-{rnd} checkpoint",
            "restart": "unfinished without a checkpoint, cleared and run again",
            "new": "new",
        }[action]
        lines.append(f"  {cell.path.name}: {what}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def run_grid(
    spec: GridSpec,
    out: Path | str,
    *,
    num_supernodes: int = 1,
    num_gpus: float = 0.0,
    target_accuracy: float | None = None,
    progress: str = "auto",
    stream: TextIO | None = None,
    one_by_one: bool = False,
    simulate: Callable[[Config, int, float], Path] | None = None,
    simulate_cells: Callable[[list[Config], int, float], dict[str, str | None]] | None = None,
    ray_address: str | None = None,
) -> GridResult:
    """Run every unfinished cell of ``spec`` under ``out``, then write summary and figures.

    By default the cells that can share a federation (``stack_groups``) run as ONE Flower run
    per group through ``simulate_cells`` (default ``fedwsa.server.simulation.simulate_cells``):
    one start-up and one Message per node and round for all of them, each cell with its own
    strategy, model, RNG streams, run directory and checkpoints. ``one_by_one`` runs them one
    after another through ``simulate`` instead (today's layout, one Flower start per run). A
    cell whose run fails or ends without ``result.json`` is reported in ``GridResult.failed``;
    the other cells still run. ``out`` is held for this process (``fedwsa.dirs.exclusive``);
    SIGINT/SIGTERM stop the grid at the next round or cell and raise ``Interrupted``.
    """
    out = Path(out)
    stream = sys.stderr if stream is None else stream
    if num_supernodes < 1:
        raise ConfigError("--num-supernodes", num_supernodes, "an integer >= 1")
    if num_gpus < 0:
        raise ConfigError("--num-gpus", num_gpus, "a number >= 0")
    check_writable("--out", out)
    cells, plan = prepare(spec, out)
    with exclusive(out, "--out"):  # a second compare on this --out stops here, status 2
        return _run_plan(spec, out, cells, plan, stream, num_supernodes, num_gpus,
                         target_accuracy, progress, one_by_one, simulate, simulate_cells,
                         ray_address)


class Interrupted(Exception):
    """The grid stopped at a safe point on SIGINT/SIGTERM (``fedwsa.stop``)."""


def _run_plan(spec: GridSpec, out: Path, cells: list[Cell], plan: Plan, stream: TextIO,
              num_supernodes: int, num_gpus: float, target_accuracy: float | None,
              progress: str, one_by_one: bool,
              simulate: Callable[..., Path] | None,
              simulate_cells: Callable[..., dict[str, str | None]] | None,
              ray_address: str | None) -> GridResult:
    from fedwsa.experiments.progress import GridProgress
    from fedwsa.server import simulation

    write_json_atomic(out / GRID_FILE, grid_record(spec, cells))
    print(
        f"compare: {len(cells)} run(s) in {out}: {plan.count('skip')} finished, "
        f"{plan.count('resume')} to resume, {plan.count('restart')} to restart, "
        f"{plan.count('new')} new",
        file=stream, flush=True,
    )  # fmt: skip
    if plan.stale:
        print(
            f"compare: note: {len(plan.stale)} run directory(ies) in {out} are not cells of "
            f"this grid and will be included in the summary: "
            + ", ".join(p.name for p in plan.stale),
            file=stream, flush=True,
        )  # fmt: skip

    bar = GridProgress(
        len(cells), sum(c.config.num_server_rounds for c in cells), stream=stream, mode=progress
    )
    failed: list[tuple[Cell, str]] = []
    todo: list[tuple[Cell, Config]] = []
    for cell, action, rnd in zip(cells, plan.actions, plan.resume_rounds, strict=True):
        if action == "skip":
            bar.skip(cell.config.num_server_rounds)
            continue
        if action == "resume":
            bar.write(f"compare: {cell.label}: resuming from round {rnd} in {cell.path}")
        elif action == "restart":
            shutil.rmtree(cell.path)
            bar.write(f"compare: {cell.label}: unfinished without a checkpoint, restarting")
        todo.append((cell, cell_config(cell, action)))
    run_one = simulate or functools.partial(simulation.simulate, ray_address=ray_address)
    run_many = simulate_cells or functools.partial(simulation.simulate_cells,
                                                   ray_address=ray_address)
    groups = [[item] for item in todo] if one_by_one else stack_groups(todo)
    try:
        for group in groups:
            if stop.requested() is not None:  # asked between two groups: start no other
                raise Interrupted(None)
            if len(group) > 1:
                bar.write(f"compare: {len(group)} runs as one federation: "
                          + ", ".join(cell.label for cell, _ in group))
            with bar.track([(c.path, c.config.num_server_rounds, c.label) for c, _ in group]):
                try:
                    if one_by_one:
                        run_one(group[0][1], num_supernodes, num_gpus)
                        errors: dict[str, str | None] = {}
                    else:
                        errors = run_many([config for _, config in group], num_supernodes,
                                          num_gpus)
                except Exception as err:  # one failed federation must not cost the others
                    errors = {str(c.path): f"{type(err).__name__}: {err}" for c, _ in group}
            if stop.requested() is not None:  # the runs stopped at a round, or between cells
                raise Interrupted(stop.stopped_after())
            for cell, _ in group:
                error = errors.get(str(cell.path))
                status = (read_result(cell.path) or {}).get("status")
                if error is None and status == NO_UPDATE:
                    error = "no round updated the global model (every client failed)"
                elif error is None and status not in ENDED:
                    error = "the run ended without result.json"
                if error is not None:
                    failed.append((cell, error))
                    bar.write(f"compare: {cell.label}: FAILED: {error}")
    finally:
        bar.close()

    from fedwsa.results.summary import write_summary

    summary = write_summary(out, target_accuracy)
    figures = _write_figures(out, stream)
    return GridResult(out, plan, failed, summary, figures)


def stack_groups(todo: Sequence[tuple[Cell, Config]]) -> list[list[tuple[Cell, Config]]]:
    """The cells that run as one federation: those of one train set (a node keeps one copy
    of it for all of them; the synthetic set is drawn from the seed, so one per seed), in grid
    order."""
    groups: dict[tuple[str, str, int | None], list[tuple[Cell, Config]]] = {}
    for cell, config in todo:
        key = train_set_key(config.dataset, config.data_root, config.seed)
        groups.setdefault(key, []).append((cell, config))
    return list(groups.values())


def _write_figures(out: Path, stream: TextIO) -> list[Path]:
    from fedwsa.results.plots import plot_accuracy_and_loss, save_figure

    try:
        fig = plot_accuracy_and_loss([out])
    except ValueError as err:  # no run evaluated anything yet
        print(f"compare: no figure: {err}", file=stream)
        return []
    return save_figure(fig, out / CURVES_STEM)

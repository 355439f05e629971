"""The result-side ``fedwsa`` subcommands: ``compare``, ``summarize`` and ``plot``.

Kept out of ``fedwsa/cli.py`` so that module stays a short list of commands; ``cli`` adds these
through ``add_result_commands``. Errors in the input (a bad key, a bad path) raise
``ConfigError``/``ValueError`` and become one line with exit status 2 in ``cli.main``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from fedwsa import stop
from fedwsa.config import STRATEGIES, ConfigError, parse_overrides
from fedwsa.dirs import check_writable

COMPARE_HELP = """\
Run every combination of strategies x seeds x swept values over shared base keys, one run
directory per cell under --out, then write EXP/grid.json, EXP/summary.md/.csv and
EXP/curves.png/.svg. The whole grid is validated before the first run. Re-running the same
command skips finished runs, resumes unfinished ones from their checkpoint, and restarts
unfinished ones that have none.

examples:
  fedwsa compare --strategies fedavg,fedwsa --seeds 1,2,3 --sweep "alpha=0.1,0.5" \\
      -c "dataset='cifar10' num-server-rounds=100" --out runs/exp1
  fedwsa compare grid.toml            # the same grid from a TOML file (see the README)
"""


def parse_target(text: str | None) -> float | None:
    """``0.6`` or ``60%`` -> 0.6: a target accuracy as a fraction in (0, 1]."""
    if text is None:
        return None
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise ConfigError("--target", text, "a fraction in (0, 1] or a percentage, e.g. 0.6 or 60%")
    return value


@contextlib.contextmanager
def _missing_dirs_are_bad_input() -> Iterator[None]:
    """A path that holds no runs is a typo on the command line: one line, exit status 2."""
    try:
        yield
    except FileNotFoundError as err:
        raise ValueError(str(err)) from err


def cmd_compare(args: argparse.Namespace) -> int:
    from fedwsa.experiments.compare import (
        Interrupted,
        build_spec,
        describe_plan,
        parse_list,
        parse_sweep,
        prepare,
        read_grid_file,
        run_grid,
    )

    spec_file = read_grid_file(Path(args.grid)) if args.grid else {}
    strategies = (parse_list(args.strategies, "--strategies") if args.strategies
                  else spec_file.get("strategies"))  # fmt: skip
    seeds = parse_list(args.seeds, "--seeds") if args.seeds else spec_file.get("seeds")
    sweep = {**spec_file.get("sweep", {}), **parse_sweep(args.sweep)}
    base = {**spec_file.get("base", {}), **parse_overrides(args.config)}
    out = args.out or spec_file.get("out")
    if not out:
        raise ConfigError("--out", out, "an experiment directory (or `out` in the grid file)")
    spec = build_spec(strategies, seeds, sweep, base)
    target = parse_target(args.target)
    if args.dry_run:
        cells, plan = prepare(spec, Path(out))
        print(f"{len(cells)} run(s) in {out} (nothing run, nothing written):")
        print(describe_plan(plan))
        return 0
    stop.clear()
    try:
        with stop.on_signals():  # between cells; simulation.ray_session takes over in a run
            result = run_grid(
                spec, out, num_supernodes=args.num_supernodes, num_gpus=args.num_gpus,
                target_accuracy=target, progress=args.progress, one_by_one=args.one_by_one,
                ray_address=args.ray_address,
            )  # fmt: skip
    except (Interrupted, KeyboardInterrupt) as err:
        after = err.args[0] if isinstance(err, Interrupted) and err.args[0] is not None else None
        where = "" if after is None else f" after round {after}"
        print(f"fedwsa: interrupted{where}; re-run the same command to skip the finished runs "
              "and resume the rest", file=sys.stderr)  # fmt: skip
        return stop.exit_status()
    print(result.summary)
    print(f"summary: {result.out / 'summary.md'}, {result.out / 'summary.csv'}, "
          f"{result.out / 'runs.csv'}")
    if result.figures:
        print("figure: " + ", ".join(str(p) for p in result.figures))
    if any(result.out.glob("*/tensorboard")):
        print(f"tensorboard: tensorboard --logdir {result.out}")
    for cell, reason in result.failed:
        print(f"fedwsa: run failed: {cell.path}: {reason}", file=sys.stderr)
    if result.failed:
        print(f"fedwsa: {len(result.failed)} run(s) did not finish; re-run the same command "
              "to resume or restart them", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    from fedwsa.results.summary import write_summary

    exp = Path(args.dir)
    if exp.is_dir():  # a missing one is reported below, as "not a directory"
        check_writable("summarize DIR", exp)
    with _missing_dirs_are_bad_input():
        markdown = write_summary(exp, parse_target(args.target),
                                 include_unfinished=args.include_unfinished)  # fmt: skip
    print(markdown)
    print(f"summary: {exp / 'summary.md'}, {exp / 'summary.csv'}, {exp / 'runs.csv'}")
    return 0


def default_plot_stem(dirs: list[str], metric: str | None) -> Path:
    """``DIR/curves`` for one directory (``DIR/curves-<metric>`` with --metric), else
    ``./curves``: figures land next to the runs they show."""
    name = "curves" if metric is None else f"curves-{metric}"
    return Path(dirs[0]) / name if len(dirs) == 1 else Path(name)


def cmd_plot(args: argparse.Namespace) -> int:
    from fedwsa.results.plots import plot_accuracy_and_loss, plot_runs, save_figure

    include = not args.finished_only
    stem = Path(args.out) if args.out else default_plot_stem(args.dirs, args.metric)
    check_writable("--out" if args.out else "plot DIR", stem.parent)
    with _missing_dirs_are_bad_input():
        if args.metric is None:
            fig = plot_accuracy_and_loss(args.dirs, title=args.title, include_unfinished=include)
        else:
            fig = plot_runs(args.dirs, args.metric, title=args.title, include_unfinished=include)
    for path in save_figure(fig, stem):
        print(f"figure: {path}")
    return 0


def add_result_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``compare``, ``summarize`` and ``plot`` to the ``fedwsa`` command."""
    compare = sub.add_parser(
        "compare", help="run a grid of strategies x seeds x swept keys, then summarise it",
        description=COMPARE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    compare.add_argument("grid", nargs="?", help="grid TOML file (flags given too override it)")
    compare.add_argument("--strategies", help="comma-separated strategy presets among "
                         + ", ".join(STRATEGIES) + " (e.g. fedavg,fedprox,fedwsa), or a TOML "
                         "array whose entries may carry their own keys, e.g. \"['fedavg', "
                         "{strategy='fedwsa', wsa-beta=0.1}]\"")
    compare.add_argument("--seeds", help="comma-separated seeds, e.g. 1,2,3")
    compare.add_argument(
        "--sweep",
        action="append",
        help='swept keys, e.g. "alpha=0.1,0.5 lr=0.01,0.05" (repeatable)',
    )
    compare.add_argument(
        "-c",
        "--config",
        action="append",
        help='base config keys shared by every run, e.g. "num-clients=20"',
    )
    compare.add_argument("--out", help="experiment directory (one run directory per cell)")
    compare.add_argument(
        "--target",
        help="accuracy for 'rounds to target', e.g. 0.6 or 60%% "
        "(default: 0.9 x the best final mean accuracy)",
    )
    compare.add_argument(
        "--num-supernodes", type=int, default=1, help="Flower SuperNodes per run (default 1)"
    )
    compare.add_argument(
        "--num-gpus", type=float, default=0.0, help="GPUs per SuperNode in Flower's backend config"
    )
    compare.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "off"),
        default="auto",
        help="progress on stderr: a bar on a terminal, else a line per round",
    )
    compare.add_argument(
        "--one-by-one",
        action="store_true",
        help="run the cells one after another, one Flower run each (default: the cells of "
        "one dataset run together as one federation)",
    )
    compare.add_argument("--ray-address", help="join this running Ray cluster (e.g. auto, or "
                         "HEAD_IP:6379) instead of starting Ray here")
    compare.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the grid and print what would run; run nothing",
    )
    compare.set_defaults(func=cmd_compare)

    summ = sub.add_parser("summarize", help="summary table (Markdown + CSV) of an experiment")
    summ.add_argument("dir", help="experiment directory (or a run directory)")
    summ.add_argument("--target", help="accuracy for 'rounds to target', e.g. 0.6 or 60%%")
    summ.add_argument(
        "--include-unfinished",
        action="store_true",
        help="count unfinished runs with their last evaluated round",
    )
    summ.set_defaults(func=cmd_summarize)

    plot = sub.add_parser("plot", help="test accuracy (and loss) per round, PNG + SVG")
    plot.add_argument("dirs", nargs="+", help="run or experiment directories")
    plot.add_argument(
        "--metric",
        help="one metric of metrics.jsonl, e.g. test-accuracy "
        "(default: a two-panel figure of test accuracy and test loss)",
    )
    plot.add_argument(
        "--out",
        help="output path without suffix; writes STEM.png and STEM.svg "
        "(default: DIR/curves for one DIR, else ./curves)",
    )
    plot.add_argument("--title", help="figure title (default: the shared setting)")
    plot.add_argument(
        "--finished-only", action="store_true", help="leave out runs that have not finished"
    )
    plot.set_defaults(func=cmd_plot)

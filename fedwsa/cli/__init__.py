"""The ``fedwsa`` command: run, partitions, keys (and the result tools of later issues)."""

from __future__ import annotations

import argparse
import functools
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedwsa import stop
from fedwsa.config import (
    RESUMABLE_KEYS,
    Config,
    ConfigError,
    make_config,
    markdown_table,
    parse_overrides,
)
from fedwsa.dirs import exclusive
from fedwsa.results.files import NO_UPDATE, TruncatedMetricsWarning, read_result
from fedwsa.results.tensorboard import TENSORBOARD_DIR
from fedwsa.server.checkpoint import CHECKPOINT_FILE
from fedwsa.server.simulation import simulate

# Flower's own key=value pattern (flwr.common.config.parse_config_args), which silently drops
# any text it does not match: a forgotten '=' would otherwise run with the default.
_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    seen: set[str] = set()
    for text in args.config or []:
        leftover = [] if text.endswith(".toml") else _PAIR.sub(" ", text).split()
        if leftover:
            raise ConfigError("run-config", leftover[0],
                              "space-separated key=value pairs, e.g. \"num-clients=20 "
                              "dataset='cifar10'\"")
        for key, value in [] if text.endswith(".toml") else _PAIR.findall(text):
            if key in seen:
                raise ConfigError(key, value, "one value: the key is given twice in -c")
            seen.add(key)
    return parse_overrides(args.config)


def _config_from(args: argparse.Namespace) -> Config:
    return make_config(_overrides(args))


def check_inputs(config: Config) -> Config:
    """Every check of ``fedwsa.server.preflight`` (data, model, run directory, checkpoint), before
    Flower or Ray start and before anything is written; returns the config with run-dir set."""
    from fedwsa.server.preflight import preflight

    return preflight(config).config


def cmd_run(args: argparse.Namespace) -> int:
    stop.clear()
    with stop.on_signals():  # until Ray starts, and again after (simulation.ray_session)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.resume:
        from fedwsa.server.preflight import resume_config

        config = resume_config(args.resume, _overrides(args))
    else:
        config = _config_from(args)
    if args.num_supernodes < 1:
        raise ConfigError("--num-supernodes", args.num_supernodes, "an integer >= 1")
    if args.num_gpus < 0:
        raise ConfigError("--num-gpus", args.num_gpus, "a number >= 0")
    if args.num_gpus > 0:
        import torch

        if not torch.cuda.is_available():  # Ray would build no actor and the run would hang
            raise ConfigError("--num-gpus", args.num_gpus, "0 (no CUDA device is visible here)")
    config = check_inputs(config)
    run_dir = Path(config.run_dir)  # checked writable by preflight
    if stop.requested() is not None:
        print("fedwsa: interrupted before the run started; nothing was written",
              file=sys.stderr)
        return stop.exit_status()
    with exclusive(run_dir, "run-dir"):  # a second writer of run_dir stops here, status 2
        simulate(config, args.num_supernodes, args.num_gpus, ray_address=args.ray_address)
    if stop.stopped_after() is not None:
        return _interrupted(run_dir, stop.stopped_after() or 0)
    result = read_result(run_dir) or {}
    print(f"run directory: {run_dir}")
    print(f"curves: {run_dir / 'curves.png'}")
    if (run_dir / TENSORBOARD_DIR).is_dir():
        print(f"tensorboard: tensorboard --logdir {run_dir}")
    kept, rounds = result.get("rounds-without-update", 0), result.get("rounds", 0)
    if result.get("status") == NO_UPDATE:
        print(f"fedwsa: error: no round updated the global model ({kept} of {rounds} rounds "
              f"without an update: every client failed); see {run_dir / 'result.json'}",
              file=sys.stderr)
        return NO_UPDATE_STATUS
    print(f"rounds without an update: {kept} of {rounds}")
    return 0


NO_UPDATE_STATUS = 3
"""Exit status of ``fedwsa run`` when no round updated the model (2 is bad input)."""


def _interrupted(run_dir: Path, after: int) -> int:
    if (run_dir / CHECKPOINT_FILE).is_file():
        hint = f"continue with `fedwsa run --resume {run_dir}`"
    else:
        hint = (f"{run_dir} holds no checkpoint to resume from (checkpoint-every=0, or no "
                "round had finished): remove it and start again")
    print(f"fedwsa: interrupted after round {after}; {hint}", file=sys.stderr)
    return stop.exit_status()


def cmd_partitions(args: argparse.Namespace) -> int:
    from fedwsa.clients.node import client_partitions
    from fedwsa.data import load_dataset
    from fedwsa.partitions import class_counts, format_summary, partition_summary, plot_heatmap

    config = _config_from(args)
    data = load_dataset(config.dataset, config.data_root, config.seed)
    labels = data.y_train.numpy()
    parts = client_partitions(config, labels)
    print(format_summary(partition_summary(parts, labels, data.num_classes)))
    out = Path(args.out or f"partitions-{config.dataset}-{config.partition}.png")
    title = (f"{config.dataset}: {config.partition} partition over {config.num_clients} clients"
             + (f" (alpha={config.alpha})" if config.partition in ("dirichlet", "quantity")
                else ""))
    plot_heatmap(class_counts(parts, labels, data.num_classes), out, title)
    print(f"heat map: {out}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from fedwsa.analysis import analyze

    try:
        clients = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError as err:
        raise ValueError(f"--clients={args.clients!r}: expected client ids like 3,7") from err
    written = analyze(args.run_dirs, [w.strip() for w in args.what.split(",") if w.strip()],
                      server_round=args.server_round, between=args.between, client_ids=clients,
                      points=args.points, device=args.device)
    for path in written:
        print(path)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    print(markdown_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedwsa", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a simulation in-process (same keys as flwr run)")
    run.add_argument("-c", "--config", action="append",
                     help="run-config overrides, e.g. \"num-clients=20 dataset='synthetic'\"")
    run.add_argument("--num-supernodes", type=int, default=1,
                     help="Flower SuperNodes; the cohort is split over them (default 1)")
    run.add_argument("--num-gpus", type=float, default=0.0,
                     help="GPUs per SuperNode in Flower's backend config (1 = a node per GPU)")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue RUN_DIR from its last checkpoint (its config; -c may only "
                          "change " + ", ".join(sorted(RESUMABLE_KEYS - {"resume", "run-dir"}))
                          + ")")
    run.add_argument("--ray-address", help="join this running Ray cluster (e.g. auto, or "
                     "HEAD_IP:6379) instead of starting Ray here; Ray's RAY_ADDRESS works too")
    run.set_defaults(func=cmd_run)

    parts = sub.add_parser("partitions", help="partition statistics and a heat map")
    parts.add_argument("-c", "--config", action="append")
    parts.add_argument("--out", help="heat-map PNG path")
    parts.set_defaults(func=cmd_partitions)

    analyze = sub.add_parser(
        "analyze", help="the papers' analyses on a finished run's models (PNG, SVG, JSON, CSV)",
        description="Analyses of why weight averaging works, on the models of finished runs "
                    "(METHODS.md section 3); files go to RUN_DIR/analysis/. Client models are "
                    "kept by running with save-client-models='last' or 'every-N'.")
    analyze.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                         help="a run directory, or two to compare (e.g. a fedavg and a fedwsa "
                              "run)")
    analyze.add_argument("--what", required=True,
                         help="comma-separated analyses: scopes (per-layer weight histograms "
                              "with fitted Gaussians, per round and across kept rounds), "
                              "barrier (loss and accuracy on the line between two models), "
                              "feature-averaging (weight average vs logit and feature "
                              "ensembles of N clients), magnitude (accuracy with all weights "
                              "scaled 0.5-100), patterns (first-layer filters, class templates)")
    analyze.add_argument("--round", type=int, dest="server_round",
                         help="which kept round's clients (default: the last kept)")
    analyze.add_argument("--between", default="clients",
                         help="barrier: clients (two clients of the run), client-global (a "
                              "client and the final global model) or runs (the global models "
                              "of two runs); default clients")
    analyze.add_argument("--clients", default="",
                         help="barrier: client ids, e.g. 3,7 (default: the first kept)")
    analyze.add_argument("--points", type=int, default=11,
                         help="barrier: models evaluated on the line, ends included (default 11)")
    analyze.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, "
                                                          "cuda")
    analyze.set_defaults(func=cmd_analyze)

    keys = sub.add_parser("keys", help="print every config key with its default")
    keys.set_defaults(func=cmd_keys)

    from fedwsa.cli.commands import add_result_commands  # compare, summarize, plot

    add_result_commands(sub)
    from fedwsa.cli.supernode import add_supernode_command

    add_supernode_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "passthrough", False):  # fedwsa supernode: the rest is flower-supernode's
        args.func = functools.partial(args.func, flower_args=rest)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    with warnings.catch_warnings():
        warnings.simplefilter("always", TruncatedMetricsWarning)
        warnings.showwarning = _one_line_warning(warnings.showwarning)
        return _main(args)


def _one_line_warning(fallback: Callable[..., None]) -> Callable[..., None]:
    """Show fedwsa's own warnings as one ``fedwsa: warning:`` line each, once per command."""
    shown: set[str] = set()

    def show(message: Warning | str, category: type[Warning], *args: Any, **kw: Any) -> None:
        if not issubclass(category, TruncatedMetricsWarning):
            fallback(message, category, *args, **kw)
        elif str(message) not in shown:
            shown.add(str(message))
            print(f"fedwsa: warning: {message}", file=sys.stderr)

    return show


def _main(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except (ConfigError, ValueError) as err:  # bad input: one clear line, status 2
        text = " ".join(str(err).split())  # one line, whatever the message holds
        print(f"fedwsa: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a run's safe points (fedwsa.stop): nothing half-done
        print("fedwsa: interrupted", file=sys.stderr)
        return 130



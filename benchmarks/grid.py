"""Wall time of a whole ``fedwsa compare`` grid, stacked (one federation) vs one by one.

The same grid (strategies x seeds over one base config) runs twice through Flower's
simulation engine, each time into a fresh experiment directory:

- one by one (``--one-by-one``): one Flower run per cell, each with its own Ray start-up;
- stacked (the default): every cell in ONE Flower run, one Message per node and round for all
  cells, each cell still with its own strategy, model, run directory and checkpoints.

The figure is the wall time of the whole grid (``run_grid``, summary and figures included) and
the ratio one-by-one / stacked. It also checks that both layouts wrote the same final test
accuracy for every cell (they must: stacking changes only the time).

    python benchmarks/grid.py --quick                  # 2-core CPU: 2 x 2 grid, 10 clients
    python benchmarks/grid.py --device cuda --data-root /tmp/cifar10.npz --out grid.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# Before torch loads OpenMP, here and (inherited) in the Ray actors: see fedwsa/clients/__init__.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from fedwsa.experiments.compare import build_spec, run_grid  # noqa: E402


def grid_spec(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    base = {
        "dataset": "cifar10" if args.data_root else "synthetic",
        "data-root": args.data_root,
        "num-clients": args.clients,
        "partition": "dirichlet",
        "alpha": 0.5,
        "local-epochs": args.local_epochs,
        "batch-size": 64,
        "lr": 0.01,
        "momentum": 0.9,
        "num-server-rounds": args.rounds,
        "device": args.device,
        "checkpoint-every": 1,
    }
    return build_spec(args.strategies.split(","), list(range(args.seeds)), {}, base)


def final_accuracies(exp: Path) -> dict[str, float]:
    out = {}
    for run in sorted(exp.glob("*_seed=*")):
        rows = (run / "metrics.jsonl").read_text().splitlines()
        out[run.name] = json.loads(rows[-1])["test-accuracy"]
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2-core CPU size: fedavg,fedprox x 2 seeds, 10 clients, 3 rounds "
                             "of 1 epoch on the synthetic set (under 5 minutes)")
    parser.add_argument("--strategies", default="fedavg,fedprox")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 (default 2)")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, help="rounds per cell (default 5; 3 with --quick)")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--num-gpus", type=float, default=None,
                        help="GPUs per SuperNode (default 1 with --device cuda, else 0)")
    parser.add_argument("--data-root", default="", help="CIFAR-10 .npz or torchvision folder; "
                        "default: the synthetic set")
    parser.add_argument("--out", help="write the figures as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = build_parser().parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 5)
    num_gpus = args.num_gpus if args.num_gpus is not None else (
        1.0 if args.device == "cuda" else 0.0)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    spec = grid_spec(args)
    cells = len(spec.strategies) * len(spec.seeds)
    wall: dict[str, float] = {}
    accuracies: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="fedwsa-grid-") as tmp:
        for layout, one_by_one in (("one-by-one", True), ("stacked", False)):
            print(f"running {cells} cells {layout} ...", file=sys.stderr, flush=True)
            exp = Path(tmp) / layout
            start = time.perf_counter()
            with open(os.devnull, "w") as quiet:
                result = run_grid(spec, exp, num_gpus=num_gpus, progress="off",
                                  one_by_one=one_by_one, stream=quiet)
            wall[layout] = time.perf_counter() - start
            if result.failed:
                raise SystemExit(f"{layout}: {len(result.failed)} cell(s) failed: "
                                 f"{result.failed[0][1]}")
            accuracies[layout] = final_accuracies(exp)
            print(f"done {layout}: {wall[layout]:.1f} s", file=sys.stderr, flush=True)
    same = accuracies["stacked"] == accuracies["one-by-one"]
    ratio = wall["one-by-one"] / wall["stacked"]
    print(f"config: {'cifar10' if args.data_root else 'synthetic'}, "
          f"{args.strategies} x {args.seeds} seeds = {cells} cells, {args.clients} clients, "
          f"{args.rounds} rounds x {args.local_epochs} epoch(s), batch 64, device "
          f"{args.device}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"one by one {wall['one-by-one']:.1f} s, stacked {wall['stacked']:.1f} s: "
          f"stacked/one-by-one speedup {ratio:.2f}x; same final accuracies: {same}")
    report: dict[str, object] = {
        "config": {"strategies": args.strategies.split(","), "seeds": args.seeds,
                   "cells": cells, "clients": args.clients, "rounds": args.rounds,
                   "local_epochs": args.local_epochs, "device": args.device,
                   "dataset": "cifar10" if args.data_root else "synthetic"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "wall_s": wall,
        "speedup_stacked": ratio,
        "same_final_accuracies": same,
        "final_accuracies": accuracies,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if not same:
        raise SystemExit("stacked and one-by-one final accuracies differ")
    return report


if __name__ == "__main__":
    main()

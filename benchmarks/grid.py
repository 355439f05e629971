"""Wall time of a whole ``fedwsa compare`` grid, stacked (one federation) vs one by one.

The same grid (strategies x seeds over one base config) runs twice through Flower's
simulation engine, each time into a fresh experiment directory:

- one by one (``--one-by-one``): one Flower run per cell, each with its own Ray start-up;
- stacked (the default): every cell in ONE Flower run, one Message per node and round for all
  cells, each cell still with its own strategy, model, run directory and checkpoints.

The figure is the wall time of the whole grid (``run_grid``, summary and figures included) and
the ratio one-by-one / stacked. It also checks that both layouts wrote the same final test
accuracy for every cell (they must: stacking changes only the time). ``--layouts stacked``
runs the stacked grid alone, and ``--project-rounds N`` turns a short run into the wall time
of an N-round grid: the measured wall time plus (N - R) rounds at the mean round time of rounds
2..R (round 1 holds the start-up), which is how a GPU check of a few minutes answers "does
NIID-Bench's whole 50-round grid take at most 10 minutes".

    python benchmarks/grid.py --quick                  # 2-core CPU: 2 x 2 grid, 10 clients
    python benchmarks/grid.py --device cuda --data-root /tmp/cifar10.npz --out grid.json
    python benchmarks/grid.py --device cuda --layouts stacked --strategies \
        fedavg,fedprox,scaffold,fednova,fedwsa,cart --seeds 3 --local-epochs 10 --rounds 3 \
        --project-rounds 50 -c "augment=true crop-padding='reflect' normalize=false \
        weight-decay=1e-5"                             # NIID-Bench's grid, projected
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

from fedwsa.config import parse_overrides  # noqa: E402
from fedwsa.experiments.compare import build_spec, run_grid  # noqa: E402
from fedwsa.results.files import read_metrics  # noqa: E402


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
        **parse_overrides(args.config),
    }
    return build_spec(args.strategies.split(","), list(range(args.seeds)), {}, base)


def final_accuracies(exp: Path) -> dict[str, float]:
    return {run.name: read_metrics(run)[-1]["test-accuracy"]
            for run in sorted(exp.glob("*_seed=*"))}


def round_seconds(exp: Path, stacked: bool) -> list[float]:
    """Wall seconds of rounds 2..R of a grid (round 1 holds the start-up: Ray, the node, the
    data). Stacked cells share each round: the step of the latest ``elapsed-s`` over the cells.
    One-by-one cells run in turn: their steps add up."""
    elapsed = [{row["round"]: row["elapsed-s"] for row in read_metrics(run)}
               for run in sorted(exp.glob("*_seed=*"))]
    if not elapsed:
        return []
    rounds = sorted(r for r in set.intersection(*(set(e) for e in elapsed)) if r >= 1)
    combine = max if stacked else sum  # one by one: the sum of the cells' steps
    return [combine(e[r] for e in elapsed) - combine(e[prev] for e in elapsed)
            for prev, r in zip(rounds, rounds[1:], strict=False)]


def projected_wall(wall_s: float, rounds: int, steps: list[float], target_rounds: int) -> float:
    """``wall_s`` of an R-round grid extended to ``target_rounds`` at the mean of ``steps``."""
    if not steps:
        raise ValueError("projecting needs at least 2 timed rounds (--rounds >= 3)")
    return wall_s + (target_rounds - rounds) * sum(steps) / len(steps)


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
    parser.add_argument("--layouts", default="one-by-one,stacked",
                        help="comma-separated among one-by-one, stacked (default both; the "
                             "ratio and the accuracy check need both)")
    parser.add_argument("--project-rounds", type=int, default=0,
                        help="also print each layout's wall time projected to this many rounds")
    parser.add_argument("-c", "--config", default="",
                        help="more base keys for every cell, e.g. \"precision='bf16' "
                             "augment=true\" (they override the benchmark's own)")
    parser.add_argument("--out", help="write the figures as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = build_parser().parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 5)
    layouts = args.layouts.split(",")
    if not layouts or any(layout not in ("one-by-one", "stacked") for layout in layouts):
        raise SystemExit(f"--layouts {args.layouts!r}: must be one-by-one, stacked or both")
    if args.project_rounds and args.rounds < 3:
        raise SystemExit(f"--rounds {args.rounds}: must be >= 3 with --project-rounds "
                         "(round 1 holds the start-up; two rounds are timed)")
    num_gpus = args.num_gpus if args.num_gpus is not None else (
        1.0 if args.device == "cuda" else 0.0)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    spec = grid_spec(args)
    cells = len(spec.strategies) * len(spec.seeds)
    wall: dict[str, float] = {}
    steps: dict[str, list[float]] = {}
    accuracies: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="fedwsa-grid-") as tmp:
        for layout in layouts:
            one_by_one = layout == "one-by-one"
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
            steps[layout] = round_seconds(exp, stacked=not one_by_one)
            print(f"done {layout}: {wall[layout]:.1f} s", file=sys.stderr, flush=True)
    both = len(accuracies) == 2
    same = accuracies["stacked"] == accuracies["one-by-one"] if both else None
    ratio = wall["one-by-one"] / wall["stacked"] if both else None
    print(f"config: {'cifar10' if args.data_root else 'synthetic'}, "
          f"{args.strategies} x {args.seeds} seeds = {cells} cells, {args.clients} clients, "
          f"{args.rounds} rounds x {args.local_epochs} epoch(s), batch 64, device "
          f"{args.device}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    round_ratio = None
    if both:
        print(f"one by one {wall['one-by-one']:.1f} s, stacked {wall['stacked']:.1f} s: "
              f"stacked/one-by-one speedup {ratio:.2f}x; same final accuracies: {same}")
        if steps["stacked"] and steps["one-by-one"]:
            # rounds per second of the whole grid, start-ups left out (issue 15's 5x goal)
            round_ratio = (sum(steps["one-by-one"]) / len(steps["one-by-one"])
                           / (sum(steps["stacked"]) / len(steps["stacked"])))
            print(f"rounds/s stacked/one-by-one (rounds 2..R, start-ups left out): "
                  f"{round_ratio:.2f}x")
    projected = {}
    for layout in layouts:
        timed = steps[layout]
        mean = sum(timed) / len(timed) if timed else float("nan")
        line = f"{layout}: {wall[layout]:.1f} s wall, {mean:.2f} s per round after round 1"
        if args.project_rounds:
            projected[layout] = projected_wall(wall[layout], args.rounds, timed,
                                               args.project_rounds)
            line += (f"; projected to {args.project_rounds} rounds: "
                     f"{projected[layout]:.0f} s ({projected[layout] / 60:.1f} min)")
        print(line)
    report: dict[str, object] = {
        "config": {"strategies": args.strategies.split(","), "seeds": args.seeds,
                   "cells": cells, "clients": args.clients, "rounds": args.rounds,
                   "local_epochs": args.local_epochs, "device": args.device,
                   "extra_keys": parse_overrides(args.config),
                   "dataset": "cifar10" if args.data_root else "synthetic"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "wall_s": wall,
        "round_s": steps,
        "projected_wall_s": projected,
        "project_rounds": args.project_rounds,
        "speedup_stacked": ratio,
        "round_speedup_stacked": round_ratio,
        "same_final_accuracies": same,
        "final_accuracies": accuracies,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if both and not same:
        raise SystemExit("stacked and one-by-one final accuracies differ")
    return report


if __name__ == "__main__":
    main()

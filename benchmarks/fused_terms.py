"""A/B: runs with other client terms in ONE batched call per node and round, or one call per
set of terms (the grouping before idle term inputs, ``fedwsa.clients.fused``).

The same stacked grid (one seed, the given strategies, in-process federation, no Ray) runs
alternately with each grouping; the figure is the wall time of rounds 2..R (round 1 holds the
start-up). Both groupings give every cell the same numbers; only the time may differ.

    python benchmarks/fused_terms.py --strategies fedavg,fedwsa,scaffold        # CPU
    python benchmarks/fused_terms.py --device cuda --clients 100 --repeats 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import fedwsa.clients.client_app as client_app
from fedwsa.clients.fused import FuseKey, fused_groups
from fedwsa.experiments.compare import build_spec, run_grid
from fedwsa.results.files import read_metrics
from fedwsa.server.inprocess import run_cells_in_process


def per_term_set(keys: Sequence[FuseKey | None]) -> list[list[int]]:
    """The old grouping: runs fuse only when their whole keys (terms included) are equal."""
    groups: dict[object, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(("alone", i) if key is None else key, []).append(i)
    return list(groups.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="fedavg,fedprox,fedwsa,scaffold")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    base = {"dataset": "synthetic", "num-clients": args.clients, "partition": "dirichlet",
            "alpha": 0.5, "local-epochs": 1, "batch-size": 64,
            "num-server-rounds": args.rounds, "device": args.device, "checkpoint-every": 0}
    spec = build_spec(args.strategies.split(","), [0], {}, base)
    totals: dict[str, float] = {"one call": 0.0, "call per term set": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for mode, grouping in (("one call", fused_groups),
                                   ("call per term set", per_term_set)):
                client_app.fused_groups = grouping
                out = Path(tmp) / "grid"
                shutil.rmtree(out, ignore_errors=True)
                run_grid(spec, out, progress="off",
                         simulate_cells=lambda cs, n, g: run_cells_in_process(cs, num_nodes=n))
                run = next(p for p in sorted(out.iterdir()) if (p / "metrics.jsonl").exists())
                rows = read_metrics(run)
                seconds = rows[-1]["elapsed-s"] - rows[1]["elapsed-s"]
                totals[mode] += seconds
                print(f"{mode}: rounds 2..{args.rounds} {seconds:.2f} s", flush=True)
    one, split = totals["one call"], totals["call per term set"]
    print(f"{args.strategies} x {args.clients} clients on {args.device}, {args.repeats} "
          f"repeats: one call {one:.1f} s, a call per term set {split:.1f} s, "
          f"speedup {split / one:.2f}x")


if __name__ == "__main__":
    main()

"""Where a batched round's time goes outside training: a cProfile of one federation in-process.

Runs ``benchmarks/speed.py``'s config (FedAvg, simple CNN, Dirichlet 0.5, 1 local epoch, batch
32, every client every round) with ``run_in_process``: the ServerApp's and the ClientApp's own
code, with a direct call in place of Flower's transport (Ray, the SuperLink), so what it shows
is fedwsa's share of a round; Flower's share is ``speed.py``'s (c) minus (d) minus this. It
prints milliseconds per round (mean over rounds 2..R; round 1 loads data and warms up) for the
stages below and writes the whole profile (``pstats``) with ``--out``::

    python benchmarks/round_cost.py --clients 100            # CPU, synthetic data, ~10 s
    python benchmarks/round_cost.py --clients 100 --device cuda --out round.pstats

On a GPU, kernels run asynchronously: a stage's time lands where the next synchronisation
(``.cpu()`` when the reply is packed) waits for it, so read the node's total there.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speed import bench_config  # noqa: E402

# (label, file suffix, function name): cumulative time of that function, per round.
STAGES = (
    ("node: whole ClientApp call", "clients/client_app.py", "train"),
    ("node: the trainer", "clients/batched.py", "train"),
    ("node: clients summed (node-aggregate)", "fedwsa/protocol.py", "summed"),
    ("node: reply packed (to numpy)", "fedwsa/protocol.py", "pack_reply"),
    ("server: aggregate (all of it)", "strategies/cohort.py", "aggregate_answers"),
    ("server: replies merged", "strategies/cohort.py", "collect"),
    ("server: reply unpacked", "fedwsa/protocol.py", "unpack_reply"),
    ("node + server: finiteness checks", "fedwsa/protocol.py", "finite_only"),
    ("server: scope metrics", "strategies/cohort.py", "round_metrics"),
    ("server: new global model", "strategies/cohort.py", "aggregate"),
    ("server: central evaluation", "server/app.py", "evaluate_runs"),
)


def stage_ms(stats: pstats.Stats, rounds: int) -> dict[str, float]:
    """Each stage's cumulative milliseconds per round."""
    table = stats.stats  # type: ignore[attr-defined]
    out = {}
    for label, suffix, name in STAGES:
        total = sum(cum for (file, _, func), (_, _, _, cum, _) in table.items()
                    if func == name and file.endswith(suffix))
        out[label] = 1000.0 * total / rounds
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4, help=">= 2; round 1 is not counted")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--data-root", default="")
    parser.add_argument("--strategy", default="fedavg")
    parser.add_argument("--out", help="write the profile (pstats) here")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error(f"--rounds={args.rounds}: at least 2 (round 1 is not counted)")
    from fedwsa.server.inprocess import run_in_process

    ns = argparse.Namespace(data_root=args.data_root, clients=args.clients, rounds=1,
                            max_batched_clients=0, precision="fp32", conv_impl="auto",
                            device=args.device, seed=0, strategy=args.strategy)
    with tempfile.TemporaryDirectory() as tmp:
        run_in_process(bench_config(ns, f"{tmp}/warm", "batched"))  # data, imports, warm-up
        ns.rounds = args.rounds - 1
        config = bench_config(ns, f"{tmp}/run", "batched")
        profile = cProfile.Profile()
        profile.runcall(run_in_process, config)
    stats = pstats.Stats(profile)
    figures = stage_ms(stats, ns.rounds)
    print(f"{args.clients} clients, {args.device}, {args.strategy}, ms per round "
          f"(mean of {ns.rounds} rounds after a warm-up run):")
    for label, ms in figures.items():
        print(f"  {label:36s} {ms:8.1f}")
    around = figures["node: whole ClientApp call"] - figures["node: the trainer"]
    server = figures["server: aggregate (all of it)"]
    print(f"fedwsa's own cost outside training: node {around:.1f} ms + server {server:.1f} ms "
          f"per round (central evaluation not counted)")
    if args.out:
        stats.dump_stats(args.out)
        print(f"profile: {args.out}")
    return figures


if __name__ == "__main__":
    main()

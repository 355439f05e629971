"""Round time of one FedAvg config under three node layouts, and of the batched trainer alone.

One config (CIFAR-shaped data, the NIID-Bench simple CNN, Dirichlet alpha 0.5, 1 local epoch,
batch 32, every client trained every round) runs through Flower's simulation engine
(``fedwsa.cli.simulate``) three times, with the same seed, and once without Flower:

(a) classic Flower: one client per SuperNode (``--num-supernodes`` = number of clients),
    sequential trainer. Ray runs ``cpu_count`` actors of 1 CPU each (on a GPU, actors of 0.25
    GPU), each process trains one client per Message.
(b) one SuperNode holding every client, sequential trainer (one Message per round).
(c) one SuperNode, batched trainer (``vmap`` over the stacked clients). The node replies
    with its clients' weighted sum (``node-aggregate``, on by default).
(c') the same with ``node-aggregate=false``: every client's weights go back to the server, as
    before the node summed them; ``node-sums`` is (c')'s round time over (c)'s.
(d) the batched trainer alone: ``BatchedTrainer.train`` called directly on the same cohort in
    this process, no Flower, no Messages, no serialisation.

How a round is timed. Each run evaluates centrally every round (``eval-every=1``) and writes
``elapsed-s`` (seconds since the ServerApp started, stamped after that round's evaluation) to
``metrics.jsonl``. Round r's time is ``elapsed(r) - elapsed(r-1) - eval(r)``: configure, send,
train on the node(s), receive, aggregate. ``eval(r)``, the duration of round r's central
evaluation, is measured by wrapping ``fedwsa.server.app.evaluate_many`` in this process (the
ServerApp runs in-process with ``run_simulation``), so evaluation never counts. Round 1 is left
out: it includes starting the Ray actors, importing torch in them and loading the dataset onto
each node. The figure per layout is the mean over rounds 2..R (R = ``--rounds`` >= 3); (d) times R
calls and also drops the first. Checkpoints are off (``checkpoint-every=0``). Images per second
are the round's training examples (sum of the sampled clients' partition sizes times local
epochs) over that time. ``flower-overhead`` is the share of (c)'s round time not spent in (d):
messages, (de)serialising weights, the node's per-call setup, aggregation.

    python benchmarks/speed.py --quick                     # 2-core CPU: 20 clients, synthetic
    python benchmarks/speed.py --device cuda --data-root /tmp/cifar10.npz --out speed.json

Without ``--data-root`` the data are fedwsa's synthetic CIFAR-shaped set (5,000 train images);
with it, CIFAR-10 from that ``.npz`` (50,000 train images, i.e. 500 per client at 100 clients).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

# Before torch loads OpenMP, here and (inherited) in the Ray actors: see fedwsa/clients/__init__.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from fedwsa.config import CONV_IMPLS, Config, make_config  # noqa: E402

LAYOUTS = ("classic", "sequential", "batched", "trainer", "weights")
LABELS = {
    "classic": "(a) classic: 1 client per SuperNode, sequential",
    "sequential": "(b) 1 SuperNode, sequential trainer",
    "batched": "(c) 1 SuperNode, batched trainer",
    "trainer": "(d) batched trainer alone, no Flower",
    "weights": "(c') (c), every client's weights sent back",
}
CLASSIC_GPU_SHARE = 0.25  # (a) on a GPU: 4 client actors share each GPU, as Flower's examples do


def bench_config(args: argparse.Namespace, run_dir: str, trainer: str,
                 node_aggregate: bool = True) -> Config:
    """The benchmark's one config; only the trainer, what a node sends back (``weights``
    layout) and the run directory change per layout."""
    return make_config({
        "dataset": "cifar10" if args.data_root else "synthetic",
        "data-root": args.data_root,
        "num-clients": args.clients,
        "fraction-train": 1.0,
        "partition": "dirichlet",
        "alpha": 0.5,
        "model": "simple-cnn",
        "local-epochs": 1,
        "batch-size": 32,
        "num-server-rounds": args.rounds,
        "eval-every": 1,
        "checkpoint-every": 0,
        "trainer": trainer,
        "max-batched-clients": args.max_batched_clients,
        "precision": args.precision,
        "conv-impl": args.conv_impl if trainer == "batched" else "auto",
        "device": args.device,
        "seed": args.seed,
        "run-dir": run_dir,
        "strategy": args.strategy,
        "node-aggregate": node_aggregate,
    })


@contextlib.contextmanager
def timed_evaluations() -> Iterator[list[float]]:
    """Record the duration of every central evaluation the in-process ServerApp runs."""
    import fedwsa.server.app as server_app

    durations: list[float] = []
    original = server_app.evaluate_many

    def timed(*a, **kw):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        out = original(*a, **kw)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        durations.append(time.perf_counter() - start)
        return out

    server_app.evaluate_many = timed
    try:
        yield durations
    finally:
        server_app.evaluate_many = original


def round_seconds(run_dir: Path, eval_s: list[float]) -> list[float]:
    """Rounds 2..R: elapsed-s differences minus that round's evaluation."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    elapsed = {int(r["round"]): float(r["elapsed-s"]) for r in rows}
    rounds = sorted(elapsed)
    if rounds != list(range(len(rounds))) or len(eval_s) != len(rounds):
        raise RuntimeError(f"{run_dir}: expected one evaluated row per round 0..R with one "
                           f"timed evaluation each, got rounds {rounds} and {len(eval_s)} timings")
    return [elapsed[r] - elapsed[r - 1] - eval_s[r] for r in rounds[2:]]


def images_per_round(config: Config) -> int:
    """Training examples one round processes: the sampled clients' partitions x epochs."""
    from fedwsa.clients.node import client_partitions
    from fedwsa.data import load_dataset
    from fedwsa.strategies import sample_clients

    data = load_dataset(config.dataset, config.data_root, config.seed)
    parts = client_partitions(config, data.y_train.numpy())
    cohort = sample_clients(config.seed, 1, config.num_clients, config.fraction_train)
    return config.local_epochs * sum(len(parts[c]) for c in cohort)


def run_flower(args: argparse.Namespace, layout: str, workdir: Path) -> dict[str, object]:
    """One simulated run of the layout; its per-round seconds (rounds 2..R)."""
    from fedwsa.server.simulation import simulate

    trainer = "batched" if layout in ("batched", "weights") else "sequential"
    nodes = args.clients if layout == "classic" else 1
    gpus = 0.0
    if args.device == "cuda":
        gpus = CLASSIC_GPU_SHARE if layout == "classic" else 1.0
    config = bench_config(args, str(workdir / layout), trainer,
                          node_aggregate=layout != "weights")
    start = time.perf_counter()
    with timed_evaluations() as eval_s:
        run_dir = simulate(config, num_supernodes=nodes, num_gpus=gpus,
                           cpus_per_node=args.node_cpus)
    wall = time.perf_counter() - start
    seconds = round_seconds(run_dir, eval_s)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"layout": layout, "supernodes": nodes, "trainer": trainer, "num_gpus": gpus,
            "node_cpus": args.node_cpus,
            "round_s": seconds, "eval_s": eval_s, "wall_s": wall,
            "test_accuracy": [r["test-accuracy"] for r in rows],
            "wasted_fraction": rows[-1].get("node-wasted-fraction")}


def run_trainer_alone(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    """(d): the batched trainer on the same cohort, called directly R times."""
    from fedwsa.clients.node import node_data
    from fedwsa.clients.trainer import CohortTask
    from fedwsa.clients.trainers import build_trainer
    from fedwsa.models import build_model
    from fedwsa.strategies import build_strategy, sample_clients

    config = bench_config(args, str(workdir / "trainer"), "batched")
    data = node_data(config)
    trainer = build_trainer(config, data)
    model = build_model(config.model, data.num_classes, seed=config.seed)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    strategy = build_strategy(config)
    seconds, wasted = [], None
    for server_round in range(1, config.num_server_rounds + 1):
        cohort = sample_clients(config.seed, server_round, config.num_clients,
                                config.fraction_train)
        inputs = strategy.client_inputs(server_round, params, cohort)
        start = time.perf_counter()
        result = trainer.train(CohortTask(server_round, cohort, params, inputs))
        if data.device.type == "cuda":
            torch.cuda.synchronize(data.device)
        seconds.append(time.perf_counter() - start)
        wasted = result.stats.get("wasted-fraction")
    return {"layout": "trainer", "supernodes": 0, "trainer": "batched", "num_gpus": 0.0,
            "round_s": seconds[1:], "first_round_s": seconds[0], "wasted_fraction": wasted,
            "conv_impl": trainer.conv_impl}  # auto's choice, once it has timed them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2-core CPU size: 20 clients (synthetic unless --data-root), "
                             "3 rounds")
    parser.add_argument("--clients", type=int, help="clients, all trained every round "
                        "(default 100; 20 with --quick)")
    parser.add_argument("--rounds", type=int, help="rounds per run, >= 3 (default 4; 3 with "
                        "--quick); round 1 is not timed")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--data-root", default="", help="CIFAR-10 .npz or torchvision folder; "
                        "default: the synthetic set")
    parser.add_argument("--layouts", default=",".join(LAYOUTS),
                        help=f"comma-separated subset of {','.join(LAYOUTS)}")
    parser.add_argument("--node-cpus", type=int, default=None,
                        help="CPUs (= torch threads) per SuperNode; default: fedwsa run's "
                             "(CPUs / SuperNodes, at least 1; 1 with a GPU)")
    parser.add_argument("--max-batched-clients", type=int, default=0)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--conv-impl", default="auto", choices=CONV_IMPLS,
                        help="the batched layouts' convolutions (config key conv-impl)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default="fedavg",
                        help="strategy preset (its keys at their defaults)")
    parser.add_argument("--out", help="write the figures as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = build_parser().parse_args(argv)
    args.clients = args.clients or (20 if args.quick else 100)
    args.rounds = args.rounds or (3 if args.quick else 4)
    if args.rounds < 3:
        raise SystemExit("--rounds must be >= 3 (round 1 is not timed, and one round is noise)")
    layouts = [x for x in args.layouts.split(",") if x]
    if unknown := sorted(set(layouts) - set(LAYOUTS)):
        raise SystemExit(f"--layouts: unknown {unknown}; accepted: {', '.join(LAYOUTS)}")
    logging.getLogger("flwr").setLevel(logging.WARNING)

    images = images_per_round(bench_config(args, "", "batched"))
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="fedwsa-speed-") as tmp:
        for layout in layouts:
            print(f"running {LABELS[layout]} ...", file=sys.stderr, flush=True)
            rec = (run_trainer_alone(args, Path(tmp)) if layout == "trainer"
                   else run_flower(args, layout, Path(tmp)))
            rec["mean_round_s"] = statistics.fmean(rec["round_s"])  # type: ignore[arg-type]
            rec["images_per_s"] = images / float(rec["mean_round_s"])  # type: ignore[arg-type]
            results[layout] = rec
            # Each layout's figure as soon as it is known: a run cut short still reports.
            print(f"done {layout}: {rec['mean_round_s']:.3f} s/round "
                  f"{rec['images_per_s']:.0f} img/s", file=sys.stderr, flush=True)

    print(f"config: {'cifar10' if args.data_root else 'synthetic'}, {args.strategy}, "
          f"simple-cnn, "
          f"{args.clients} clients/round, dirichlet 0.5, 1 epoch, batch 32, "
          f"{images} images/round, {args.rounds} rounds (round 1 not timed), "
          f"device {args.device}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    for layout, rec in results.items():
        times = ", ".join(f"{t:.2f}" for t in rec["round_s"])  # type: ignore[union-attr]
        pad = rec.get("wasted_fraction")
        print(f"{LABELS[layout]:<46} {rec['mean_round_s']:8.2f} s/round "
              f"{rec['images_per_s']:9.0f} img/s   (rounds 2..R: {times})"
              + ("" if pad is None else f" padding {100 * float(pad):.0f}%"))
    summary: dict[str, float] = {}
    t = {k: float(v["mean_round_s"]) for k, v in results.items()}  # type: ignore[arg-type]
    if "batched" in t:
        parts = []
        if "classic" in t:
            summary["speedup_batched_vs_classic"] = t["classic"] / t["batched"]
            parts.append(f"batched/classic={summary['speedup_batched_vs_classic']:.1f}x")
        if "sequential" in t:
            summary["speedup_batched_vs_sequential"] = t["sequential"] / t["batched"]
            parts.append(f"batched/sequential={summary['speedup_batched_vs_sequential']:.1f}x")
        if "trainer" in t:
            summary["flower_overhead"] = 1.0 - t["trainer"] / t["batched"]
            parts.append(f"flower-overhead={100 * summary['flower_overhead']:.0f}%")
        if "weights" in t:
            summary["node_sums_speedup"] = t["weights"] / t["batched"]
            parts.append(f"node-sums={summary['node_sums_speedup']:.2f}x")
            if "trainer" in t:
                summary["flower_overhead_weights"] = 1.0 - t["trainer"] / t["weights"]
                parts.append(f"(flower-overhead with every client's weights "
                             f"{100 * summary['flower_overhead_weights']:.0f}%)")
        print("speedup " + " ".join(parts))
    report: dict[str, object] = {
        "config": {"dataset": "cifar10" if args.data_root else "synthetic",
                   "data_root": args.data_root, "clients_per_round": args.clients,
                   "rounds": args.rounds, "images_per_round": images, "device": args.device,
                   "max_batched_clients": args.max_batched_clients,
                   "precision": args.precision, "conv_impl": args.conv_impl,
                   "seed": args.seed,
                   "strategy": args.strategy},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "layouts": results,
        "summary": summary,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()

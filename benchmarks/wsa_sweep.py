"""Accuracy sweep of Weight Scope Alignment (METHODS.md section 1, "Weight scope").

Test accuracy after N rounds on CIFAR-10 with Dirichlet label skew (alpha 0.1 and 0.5) for
FedAvg and FedWSA at several ``wsa-beta`` values (``mean`` fusion), and for every
``wsa-fusion`` rule at one beta (``--fusion-beta``); ``--full-grid`` runs every (beta, fusion)
pair instead. Every run is a real federation (``run_federation``, the ClientApp's train
handler, the configured trainer) driven in-process by ``fedwsa.server.inprocess`` so that no
simulation engine starts per run; all runs of one alpha share the seed, hence the partition,
the initial model and the clients' data order.

    # GPU-sized: 10 clients, 50 rounds, full CIFAR-10
    python benchmarks/wsa_sweep.py --data-root /data/cifar10.npz --device cuda --out wsa.json
    # CPU smoke size (a few minutes on 2 cores): a class-balanced subset, 3 rounds
    python benchmarks/wsa_sweep.py --quick --data-root /tmp/cifar10.npz --out wsa_quick.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fedwsa.config import FUSION_RULES, make_config

FULL = {"rounds": 50, "train_subset": 0, "test_subset": 0, "local_epochs": 10, "batch_size": 64,
        "threads": 0}
"""Default sizes: NIID-Bench's CIFAR-10 recipe (10 local epochs, batch 64, lr 0.01, 50 rounds)."""
QUICK = {"rounds": 3, "train_subset": 5000, "test_subset": 2000, "local_epochs": 2,
         "batch_size": 32, "threads": 1}
"""``--quick`` sizes (each can still be overridden by its own option)."""


def write_subset(src: Path, dst: Path, train: int, test: int, seed: int) -> Path:
    """A class-balanced random subset of an .npz CIFAR copy (``train``/``test`` examples)."""
    rng = np.random.default_rng(seed)
    with np.load(src, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}

    def pick(y: np.ndarray, n: int) -> np.ndarray:
        if n <= 0 or n >= len(y):
            return np.arange(len(y))
        classes = np.unique(y)
        per = n // len(classes)
        idx = [rng.choice(np.flatnonzero(y == c), size=per, replace=False) for c in classes]
        return np.sort(np.concatenate(idx))

    tr, te = pick(arrays["y_train"], train), pick(arrays["y_test"], test)
    np.savez(dst, x_train=arrays["x_train"][tr], y_train=arrays["y_train"][tr],
             x_test=arrays["x_test"][te], y_test=arrays["y_test"][te])
    return dst


def grid(betas: Sequence[float], fusions: Sequence[str], fusion_beta: float, full: bool
         ) -> list[tuple[str, float, str]]:
    """(strategy, wsa-beta, wsa-fusion) of every run, FedAvg first."""
    runs: list[tuple[str, float, str]] = [("fedavg", 0.0, "-")]
    pairs = [(b, f) for b in betas for f in fusions] if full else (
        [(b, "mean") for b in betas] + [(fusion_beta, f) for f in fusions if f != "mean"])
    for beta, fusion in pairs:
        if beta > 0 and ("fedwsa", beta, fusion) not in runs:
            runs.append(("fedwsa", beta, fusion))
    return runs


def run_one(base: dict[str, object], strategy: str, beta: float, fusion: str, run_dir: Path
            ) -> dict[str, object]:
    """One federation; returns its settings, final metrics and per-round accuracy."""
    from fedwsa.server.inprocess import run_in_process

    keys = dict(base, strategy=strategy, **{"run-dir": str(run_dir)})
    if strategy == "fedwsa":
        keys.update({"wsa-beta": beta, "wsa-fusion": fusion})
    t0 = time.perf_counter()
    out = run_in_process(make_config(keys))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    return {
        "strategy": strategy, "wsa-beta": beta, "wsa-fusion": fusion,
        "alpha": base["alpha"], "rounds": last["round"],
        "test-accuracy": last["test-accuracy"], "test-loss": last["test-loss"],
        "best-accuracy": max(r["test-accuracy"] for r in rows),
        "scope-sigma-spread": last.get("scope-sigma-spread"), "wsa-kl": last.get("wsa-kl"),
        "accuracy-per-round": [r["test-accuracy"] for r in rows],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def label(r: dict[str, object]) -> str:
    if r["strategy"] == "fedavg":
        return "fedavg"
    return f"fedwsa beta={r['wsa-beta']:g} {r['wsa-fusion']}"


def table(results: list[dict[str, object]], alphas: Sequence[float]) -> str:
    """Markdown: one row per configuration, final accuracy and sigma spread per alpha."""
    head = "| run | " + " | ".join(f"acc a={a:g} | spread a={a:g}" for a in alphas) \
        + " | mean acc |"
    lines = [head, "|---" * (2 + 2 * len(alphas)) + "|"]
    labels = list(dict.fromkeys(label(r) for r in results))
    for name in labels:
        cells, accs = [], []
        for a in alphas:
            r = next((x for x in results if label(x) == name and x["alpha"] == a), None)
            if r is None:
                cells += ["-", "-"]
                continue
            accs.append(float(r["test-accuracy"]))
            spread = r["scope-sigma-spread"]
            cells += [f"{100 * float(r['test-accuracy']):.1f}",
                      "-" if spread is None else f"{float(spread):.2e}"]
        mean = f"{100 * statistics.fmean(accs):.1f}" if accs else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="CIFAR-10 .npz or torchvision root")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.001, 0.01, 0.1, 1.0])
    parser.add_argument("--fusions", nargs="+", choices=FUSION_RULES, default=list(FUSION_RULES))
    parser.add_argument("--fusion-beta", type=float, default=0.1,
                        help="wsa-beta of the fusion-rule runs (without --full-grid)")
    parser.add_argument("--full-grid", action="store_true", help="every (beta, fusion) pair")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=None, help="default 50 (quick: 3)")
    parser.add_argument("--local-epochs", type=int, default=None, help="default 10 (quick: 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 (quick: 32)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--model", default="simple-cnn")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-subset", type=int, default=None,
                        help="class-balanced train examples (0 = all; quick: 5000)")
    parser.add_argument("--test-subset", type=int, default=None,
                        help="class-balanced test examples (0 = all; quick: 2000)")
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke size: 3 rounds, 2 epochs, batch 32, 5000/2000 examples")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (0 = torch's default; quick: 1, see below)")
    parser.add_argument("--workdir", help="where run directories go (default: a temp dir)")
    parser.add_argument("--out", metavar="JSON", help="write every run's results here")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = build_parser().parse_args(argv)
    quick = QUICK if args.quick else FULL
    rounds = args.rounds or quick["rounds"]
    epochs = args.local_epochs or quick["local_epochs"]
    batch = args.batch_size or quick["batch_size"]
    threads = quick["threads"] if args.threads is None else args.threads
    if threads:
        # On a CPU shared with other jobs, two OpenMP threads per process were 10x slower than
        # one here (spin-waiting on a busy core): 1 thread is the quick default.
        torch.set_num_threads(threads)
    train_n = quick["train_subset"] if args.train_subset is None else args.train_subset
    test_n = quick["test_subset"] if args.test_subset is None else args.test_subset
    work = Path(args.workdir or tempfile.mkdtemp(prefix="wsa_sweep_"))
    work.mkdir(parents=True, exist_ok=True)
    data_root = args.data_root
    if train_n or test_n:
        if not data_root.lower().endswith(".npz"):
            raise SystemExit("--train-subset/--test-subset (and --quick) need an .npz data-root")
        data_root = str(write_subset(Path(data_root), work / "subset.npz", train_n, test_n,
                                     args.seed))
    runs = grid(args.betas, args.fusions, args.fusion_beta, args.full_grid)
    results: list[dict[str, object]] = []
    for alpha in args.alphas:
        base: dict[str, object] = {
            "dataset": "cifar10", "data-root": data_root, "partition": "dirichlet",
            "alpha": alpha, "num-clients": args.clients, "num-server-rounds": rounds,
            "local-epochs": epochs, "batch-size": batch, "lr": args.lr,
            "model": args.model, "device": args.device, "seed": args.seed,
            "eval-every": max(1, rounds // 10), "checkpoint-every": 0,
        }
        for i, (strategy, beta, fusion) in enumerate(runs):
            run_dir = work / f"a{alpha:g}-{i:02d}-{strategy}-b{beta:g}-{fusion}"
            r = run_one(base, strategy, beta, fusion, run_dir)
            results.append(r)
            print(f"alpha={alpha:<4g} {label(r):32s} acc={100 * float(r['test-accuracy']):5.1f}% "
                  f"spread={r['scope-sigma-spread']:.2e} ({r['seconds']} s)", flush=True)
    text = table(results, args.alphas)
    print(f"\nCIFAR-10, {args.clients} clients, {rounds} rounds, {epochs} local epoch(s), "
          f"batch {batch}, lr {args.lr}, train subset {train_n or 'all'}, "
          f"test subset {test_n or 'all'}, seed {args.seed}: "
          "test accuracy (%) after the last round and scope-sigma-spread\n")
    print(text)
    report: dict[str, object] = {
        "benchmark": "wsa_sweep", "quick": args.quick, "clients": args.clients,
        "rounds": rounds, "local_epochs": epochs, "train_subset": train_n,
        "test_subset": test_n, "seed": args.seed, "model": args.model, "lr": args.lr,
        "batch_size": batch, "threads": torch.get_num_threads(), "results": results, "table": text,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()

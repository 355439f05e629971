"""CART (METHODS.md section 2, "Centred low-rank aggregation, CART"): aggregation cost and an
accuracy sweep over (cart-rank, cart-lambda).

``time``: seconds for one server aggregation of K stacked client models with
``weighted_average`` (FedAvg), ``cart`` with the exact batched SVD and ``cart`` with the
randomized SVD. Weights are random: the cost depends on the shapes, K and the rank, not on the
values.

``sweep``: final central test accuracy of ``strategy="cart"`` for every (rank, lambda) of a
grid, next to FedAvg with the same seed, on CIFAR-10 split over clients by Dirichlet(alpha)
label skew. Each run is a whole federation (``run_federation`` with in-process nodes, the code
``flwr run`` executes). ``--quick`` is a CPU-sized version on a random subset of CIFAR-10.

    python benchmarks/cart.py time --quick
    python benchmarks/cart.py time --device cuda --clients 100 --repeats 5 --out timing.json
    python benchmarks/cart.py sweep --quick --data-root /tmp/cifar10.npz --out sweep.json
    python benchmarks/cart.py sweep --data-root /tmp/cifar10.npz --device cuda --out sweep.json

``python benchmarks/cart.py --quick`` (no subcommand) is ``time --quick``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fedwsa.maths.merging import cart, weighted_average

Shapes = list[tuple[str, tuple[int, ...]]]

METHODS = ("weighted_average", "cart_exact", "cart_randomized")

# K per model for the CPU smoke run (--quick): exact CART on ResNet-18 costs a 512 x 512 float64
# eigendecomposition per client and layer4 conv, about 1 s per client on one thread.
QUICK_CLIENTS = {"simple-cnn": 20, "cnn": 10, "resnet18": 10}


def model_shapes(name: str, num_classes: int = 10) -> Shapes:
    """Parameter shapes of fedwsa's model ``name``, built on the meta device (no weights)."""
    from fedwsa.models import build_model

    with torch.device("meta"):
        model = build_model(name, num_classes)
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def random_stacked(
    shapes: Shapes, clients: int, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> dict[str, Tensor]:
    """Random stacked weights [K, *shape] per parameter (values do not affect the cost)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return {
        name: 0.05 * torch.randn((clients, *shape), generator=gen, device=device, dtype=dtype)
        for name, shape in shapes
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: bool
          ) -> list[float]:
    """Wall seconds per call, after one untimed warm-up call (allocator, cuSOLVER setup)."""
    if warmup:
        fn()
        _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def time_aggregation(
    shapes: Shapes,
    clients: int,
    *,
    device: str | torch.device = "cpu",
    repeats: int = 3,
    warmup: bool = True,
    rank: float = 0.08,
    lam: float = 1.9,
    dtype: torch.dtype = torch.float32,
    methods: Sequence[str] = METHODS,
    seed: int = 0,
) -> list[dict[str, object]]:
    """Seconds per aggregation of ``clients`` stacked models for each method.

    Returns one record per method with mean/min seconds and the ratio of the mean to
    ``weighted_average``'s mean (when that method is timed).
    """
    dev = torch.device(device)
    stacked = random_stacked(shapes, clients, dev, dtype, seed)
    weights = torch.rand(clients, generator=torch.Generator().manual_seed(seed)) + 0.5
    weights = weights.to(dev)
    calls: dict[str, Callable[[], object]] = {
        "weighted_average": lambda: weighted_average(stacked, weights),
        "cart_exact": lambda: cart(stacked, weights, rank, lam, svd="exact"),
        "cart_randomized": lambda: cart(stacked, weights, rank, lam, svd="randomized", seed=seed),
    }
    unknown = [m for m in methods if m not in calls]
    if unknown:
        raise ValueError(f"methods={unknown} unknown; accepted: {tuple(calls)}")
    n_params = sum(int(torch.Size(s).numel()) for _, s in shapes)
    records: list[dict[str, object]] = []
    for method in methods:
        times = _time(calls[method], dev, repeats, warmup)
        records.append({
            "method": method,
            "clients": clients,
            "params_per_model": n_params,
            "seconds_mean": statistics.fmean(times),
            "seconds_min": min(times),
            "repeats": repeats,
            "warmup": warmup,
        })
    base = next((r["seconds_mean"] for r in records if r["method"] == "weighted_average"), None)
    for r in records:
        r["ratio_vs_weighted_average"] = (
            float(r["seconds_mean"]) / float(base) if base else None  # type: ignore[arg-type]
        )
    return records


def _device_info(device: str) -> dict[str, object]:
    return {
        "device": device,
        "device_name": (torch.cuda.get_device_name() if device == "cuda"
                        else platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _write_json(path: str | None, report: dict[str, object]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)


def cmd_time(args: argparse.Namespace) -> dict[str, object]:
    """Time every (model, method) pair, print one line each and optionally write JSON."""
    repeats = 1 if args.quick else args.repeats
    results: list[dict[str, object]] = []
    for model in args.models.split(","):
        clients = min(args.clients, QUICK_CLIENTS.get(model, 3)) if args.quick else args.clients
        for rec in time_aggregation(model_shapes(model), clients, device=args.device,
                                    repeats=repeats, warmup=not args.quick, rank=args.rank,
                                    lam=args.lam):
            rec["model"] = model
            results.append(rec)
            ratio = rec["ratio_vs_weighted_average"]
            print(f"{model:10s} {rec['method']:17s} K={clients:<4d} "
                  f"{rec['seconds_mean']:10.4f} s/aggregation  x{ratio:8.1f} vs weighted_average",
                  flush=True)
    report: dict[str, object] = {
        "benchmark": "cart_aggregation_time", **_device_info(args.device), "rank": args.rank,
        "lam": args.lam, "quick": args.quick, "results": results,
    }
    _write_json(args.out, report)
    return report


# ---------------------------------------------------------------------------------------------
# (rank, lambda) accuracy sweep
# ---------------------------------------------------------------------------------------------

QUICK_SWEEP = {"rounds": 10, "train_subset": 3000, "test_subset": 1000, "batch_size": 32,
               "ranks": "0.04,0.16,0.32", "lambdas": "1.0,1.5"}


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def subset_npz(source: str, train: int, test: int, seed: int, folder: Path) -> str:
    """A seeded random subset of an .npz dataset, written to ``folder``; returns its path.

    The subset keeps the source's arrays and dtypes, so it loads through ``data-root`` like the
    whole set. 0 keeps a split whole.
    """
    rng = np.random.default_rng([seed, 0xC1FA])
    out: dict[str, np.ndarray] = {}
    with np.load(source, allow_pickle=False) as npz:
        for split, size in (("train", train), ("test", test)):
            x, y = npz[f"x_{split}"], npz[f"y_{split}"]
            idx = np.sort(rng.permutation(len(y))[:size]) if 0 < size < len(y) else slice(None)
            out[f"x_{split}"], out[f"y_{split}"] = x[idx], y[idx]
    path = folder / f"{Path(source).stem}-train{train}-test{test}-seed{seed}.npz"
    np.savez(path, **out)
    return str(path)


def _final_metrics(run_dir: Path) -> dict[str, object]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    accs = [float(r["test-accuracy"]) for r in rows[1:]]
    return {"final_accuracy": float(rows[-1]["test-accuracy"]),
            "final_loss": float(rows[-1]["test-loss"]),
            "best_accuracy": max(accs) if accs else float("nan"),
            "curve": [(int(r["round"]), float(r["test-accuracy"])) for r in rows]}


def _finished_run(run_dir: Path, config_dict: dict[str, object]) -> float | None:
    """Wall seconds of a finished run of exactly this config in ``run_dir``, else None.

    Lets a sweep be extended (more seeds, more grid points) without redoing finished runs.
    """
    try:
        result = json.loads((run_dir / "result.json").read_text())
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    same = {k: v for k, v in saved.items() if k != "run-dir"} == {
        k: v for k, v in config_dict.items() if k != "run-dir"}
    return float(result.get("wall-s", 0.0)) if same and result.get("status") == "finished" \
        else None


def run_sweep(base: dict[str, object], ranks: Sequence[float], lambdas: Sequence[float],
              seeds: Sequence[int], runs_dir: Path) -> list[dict[str, object]]:
    """One federation per (seed, FedAvg or grid point); ``base`` keys are shared by all.

    A run directory that already holds a finished run of the same config is read, not rerun.
    """
    from fedwsa.config import make_config
    from fedwsa.server.inprocess import run_in_process

    plan: list[tuple[str, dict[str, object]]] = []
    for seed in seeds:
        plan.append((f"fedavg-s{seed}", {"strategy": "fedavg", "seed": seed}))
        for r in ranks:
            for lam in lambdas:
                plan.append((f"cart-r{r:g}-l{lam:g}-s{seed}", {
                    "strategy": "cart", "cart-rank": r, "cart-lambda": lam, "seed": seed}))
    records = []
    for i, (label, keys) in enumerate(plan, 1):
        config = make_config({**base, **keys, "run-dir": str(runs_dir / label)})
        seconds = _finished_run(runs_dir / label, config.to_dict())
        reused = seconds is not None
        if seconds is None:
            start = time.perf_counter()
            run_in_process(config)
            seconds = time.perf_counter() - start
        rec = {"label": label, "strategy": config.strategy, "seed": config.seed,
               "rank": keys.get("cart-rank"), "lambda": keys.get("cart-lambda"),
               "seconds": seconds, "reused": reused, **_final_metrics(runs_dir / label)}
        records.append(rec)
        print(f"[{i}/{len(plan)}] {label:22s} final acc {100 * rec['final_accuracy']:6.2f}%  "
              f"best {100 * rec['best_accuracy']:6.2f}%  ({seconds:.0f} s"
              f"{', reused' if reused else ''})", flush=True)
    return records


def _mean(records: Sequence[dict[str, object]], key: str) -> float:
    return statistics.fmean(float(r[key]) for r in records)  # type: ignore[arg-type]


def _cell(records: Sequence[dict[str, object]], key: str) -> str:
    """Mean over seeds in %, and each seed's value in brackets when there are several."""
    text = f"{100 * _mean(records, key):.2f}"
    if len(records) > 1:
        text += " (" + ", ".join(f"{100 * float(r[key]):.1f}"  # type: ignore[arg-type]
                                 for r in records) + ")"
    return text


def _point(r: dict[str, object]) -> tuple[float, float]:
    return float(r["rank"]), float(r["lambda"])  # type: ignore[arg-type]


def sweep_table(records: Sequence[dict[str, object]], key: str = "final_accuracy") -> str:
    """rank x lambda markdown table of ``key`` in % (mean over seeds), FedAvg underneath."""
    cart_recs = [r for r in records if r["strategy"] == "cart"]
    ranks = sorted({_point(r)[0] for r in cart_recs})
    lambdas = sorted({_point(r)[1] for r in cart_recs})
    lines = ["| cart-rank \\ cart-lambda | " + " | ".join(f"{lam:g}" for lam in lambdas) + " |",
             "|---|" + "---|" * len(lambdas)]
    for rank in ranks:
        cells = [[r for r in cart_recs if _point(r) == (rank, lam)] for lam in lambdas]
        lines.append(f"| {rank:g} | " + " | ".join(_cell(c, key) if c else "-" for c in cells)
                     + " |")
    fedavg = [r for r in records if r["strategy"] == "fedavg"]
    if fedavg:
        lines.append(f"| FedAvg | {_cell(fedavg, key)} |" + " |" * (len(lambdas) - 1))
    return "\n".join(lines)


def best_point(records: Sequence[dict[str, object]], key: str = "final_accuracy",
               rule: str = "mean") -> tuple[tuple[float, float], float]:
    """The (rank, lambda) with the highest mean (``rule="mean"``) or highest worst-seed
    (``rule="worst"``, ties broken by the mean) ``key``, and that value."""
    groups: dict[tuple[float, float], list[dict[str, object]]] = {}
    for r in records:
        if r["strategy"] == "cart":
            groups.setdefault(_point(r), []).append(r)

    def worst(p: tuple[float, float]) -> float:
        return min(float(r[key]) for r in groups[p])  # type: ignore[arg-type]

    if rule == "mean":
        point = max(groups, key=lambda p: _mean(groups[p], key))
        return point, _mean(groups[point], key)
    if rule == "worst":
        point = max(groups, key=lambda p: (worst(p), _mean(groups[p], key)))
        return point, worst(point)
    raise ValueError(f"rule={rule!r} unknown; accepted: mean, worst")


def cmd_sweep(args: argparse.Namespace) -> dict[str, object]:
    """Run the grid, print a table per metric and the best point, optionally write JSON."""
    for name, value in QUICK_SWEEP.items():
        if args.quick and getattr(args, name) is None:
            setattr(args, name, value)
    defaults = {"rounds": 50, "train_subset": 0, "test_subset": 0, "batch_size": 64,
                "eval_every": 5, "ranks": "0.02,0.04,0.08,0.16,0.32", "lambdas": "1.0,1.5,1.9"}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    work = Path(args.runs_dir) if args.runs_dir else Path(tempfile.mkdtemp(prefix="cart-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    data_root = args.data_root
    if args.train_subset or args.test_subset:
        if not data_root.endswith(".npz"):
            raise SystemExit("--train-subset/--test-subset need an .npz --data-root")
        # One subset for every seed: seeds vary partitions, sampling and training, not the data.
        data_root = subset_npz(data_root, args.train_subset, args.test_subset, 0, work)
    base: dict[str, object] = {
        "dataset": "cifar10", "data-root": data_root, "partition": "dirichlet",
        "alpha": args.alpha, "num-clients": args.clients, "fraction-train": 1.0,
        "num-server-rounds": args.rounds, "model": args.model,
        "local-epochs": args.local_epochs, "batch-size": args.batch_size, "lr": args.lr,
        "trainer": args.trainer, "device": args.device, "eval-every": args.eval_every,
        "checkpoint-every": 0, "cart-svd": args.svd,
    }
    ranks, lambdas = _floats(args.ranks), _floats(args.lambdas)
    print(f"sweep: ({len(ranks) * len(lambdas)} CART points + FedAvg) x {len(seeds)} seed(s), "
          f"runs in {work}", flush=True)
    start = time.perf_counter()
    records = run_sweep(base, ranks, lambdas, seeds, work)
    (rank, lam), best_acc = best_point(records)
    (w_rank, w_lam), worst_acc = best_point(records, rule="worst")
    fedavg = [r for r in records if r["strategy"] == "fedavg"]
    fedavg_acc = _mean(fedavg, "final_accuracy")
    fedavg_worst = min(float(r["final_accuracy"]) for r in fedavg)  # type: ignore[arg-type]
    title = (f"CIFAR-10 Dirichlet alpha={args.alpha}, {args.clients} clients x {args.rounds} "
             f"rounds, {args.model}, train subset {args.train_subset or 'all'}, "
             f"seeds {','.join(map(str, seeds))}")
    print(f"\n{title}\nfinal test accuracy (%, mean over seeds):\n{sweep_table(records)}")
    print(f"\nbest test accuracy over evaluated rounds (%, mean over seeds):\n"
          f"{sweep_table(records, 'best_accuracy')}")
    print(f"\nbest mean final accuracy: cart-rank={rank:g} cart-lambda={lam:g} "
          f"{100 * best_acc:.2f}% vs FedAvg {100 * fedavg_acc:.2f}%")
    print(f"best worst-seed final accuracy: cart-rank={w_rank:g} cart-lambda={w_lam:g} "
          f"{100 * worst_acc:.2f}% vs FedAvg {100 * fedavg_worst:.2f}%")
    print(f"(total {time.perf_counter() - start:.0f} s)")
    report: dict[str, object] = {
        "benchmark": "cart_rank_lambda_sweep", **_device_info(args.device), "title": title,
        "config": base, "seeds": seeds, "quick": args.quick, "ranks": ranks,
        "lambdas": lambdas, "results": records,
        "best_mean": {"rank": rank, "lambda": lam, "final_accuracy": best_acc},
        "best_worst_seed": {"rank": w_rank, "lambda": w_lam, "final_accuracy": worst_acc},
        "fedavg_final_accuracy": fedavg_acc, "fedavg_worst_seed": fedavg_worst,
    }
    _write_json(args.out, report)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("time", help="aggregation seconds: weighted average vs exact/randomized")
    t.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    t.add_argument("--models", default="simple-cnn,resnet18",
                   help="comma-separated fedwsa models (simple-cnn, cnn, resnet18)")
    t.add_argument("--clients", type=int, default=100, help="K stacked client models")
    t.add_argument("--repeats", type=int, default=3, help="timed calls after a warm-up")
    t.add_argument("--rank", type=float, default=0.08, help="cart-rank r in (0, 1]")
    t.add_argument("--lam", type=float, default=1.9, help="cart-lambda")
    t.add_argument("--quick", action="store_true",
                   help="CPU smoke run: 1 repeat, no warm-up, K capped per model "
                   f"({', '.join(f'{m} {k}' for m, k in QUICK_CLIENTS.items())})")
    t.add_argument("--out", metavar="JSON", help="write the results to this JSON file")
    t.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; --quick: 1, since on shared, busy "
                   "cores extra threads wait on each other: SVDs ran ~15x slower with 2)")
    t.set_defaults(func=cmd_time)

    s = sub.add_parser("sweep", help="CIFAR-10 accuracy over a (cart-rank, cart-lambda) grid")
    s.add_argument("--data-root", default="", help="CIFAR-10 data-root (torchvision or .npz)")
    s.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    s.add_argument("--clients", type=int, default=10)
    s.add_argument("--rounds", type=int, default=None,
                   help=f"default 50 (--quick: {QUICK_SWEEP['rounds']})")
    s.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration")
    s.add_argument("--model", default="simple-cnn")
    s.add_argument("--local-epochs", type=int, default=1)
    s.add_argument("--batch-size", type=int, default=None, help="default 64 (--quick: 32)")
    s.add_argument("--lr", type=float, default=0.01)
    s.add_argument("--trainer", choices=("batched", "sequential"), default="batched")
    s.add_argument("--svd", choices=("exact", "randomized"), default="exact")
    s.add_argument("--seeds", default="0",
                   help="comma-separated seeds; tables show the mean (and each seed)")
    s.add_argument("--eval-every", type=int, default=None,
                   help="central evaluation every N rounds and the last (default 5)")
    s.add_argument("--ranks", default=None, help="default 0.02,0.04,0.08,0.16,0.32 "
                   f"(--quick: {QUICK_SWEEP['ranks']})")
    s.add_argument("--lambdas", default=None,
                   help=f"default 1.0,1.5,1.9 (--quick: {QUICK_SWEEP['lambdas']})")
    s.add_argument("--train-subset", type=int, default=None,
                   help="random train images kept (.npz data-root; default all, --quick: "
                   f"{QUICK_SWEEP['train_subset']})")
    s.add_argument("--test-subset", type=int, default=None,
                   help=f"random test images kept (default all, --quick: "
                   f"{QUICK_SWEEP['test_subset']})")
    s.add_argument("--quick", action="store_true",
                   help="CPU size: fewer rounds, a smaller grid, a random CIFAR-10 subset")
    s.add_argument("--runs-dir", default="", help="run directories (default: a temp folder)")
    s.add_argument("--out", metavar="JSON", help="write the results to this JSON file")
    s.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; --quick: 1, since on shared, busy "
                   "cores extra threads wait on each other: SVDs ran ~15x slower with 2)")
    s.set_defaults(func=cmd_sweep)
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("time", "sweep", "-h", "--help"):
        argv.insert(0, "time")  # the original interface: options only, timing
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    threads = args.threads if args.threads is not None else (1 if args.quick else 0)
    if threads > 0:
        torch.set_num_threads(threads)
    return args.func(args)


if __name__ == "__main__":
    main()

"""CART aggregation cost vs weighted averaging (METHODS.md section 2, "Centred low-rank
aggregation, CART").

Times one server aggregation of K stacked client models: ``weighted_average`` (FedAvg), ``cart``
with the exact batched SVD and ``cart`` with the randomized SVD. Weights are random: the cost of
an aggregation depends on the shapes, K and the rank, not on the values. An accuracy sweep will
be added to this file later; keep ``time_aggregation`` reusable.

    python benchmarks/cart.py --quick
    python benchmarks/cart.py --device cuda --clients 100 --repeats 5 --out cart_timing.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fedwsa.merging import cart, weighted_average

Shapes = list[tuple[str, tuple[int, ...]]]

# NIID-Bench simple CNN for 32x32x3 inputs and 10 classes (Li, Diao, Chen, He 2022).
SIMPLE_CNN_SHAPES: Shapes = [
    ("conv1.weight", (6, 3, 5, 5)),
    ("conv1.bias", (6,)),
    ("conv2.weight", (16, 6, 5, 5)),
    ("conv2.bias", (16,)),
    ("fc1.weight", (120, 400)),
    ("fc1.bias", (120,)),
    ("fc2.weight", (84, 120)),
    ("fc2.bias", (84,)),
    ("fc3.weight", (10, 84)),
    ("fc3.bias", (10,)),
]

METHODS = ("weighted_average", "cart_exact", "cart_randomized")

# Exact CART on ResNet-18 costs about one 512 x 4608 SVD per client and layer4 conv (~1 s each on
# 2 CPU cores), so the CPU smoke run keeps K small there.
QUICK_RESNET_CLIENTS = 10


def resnet18_shapes(num_classes: int = 10, groups: int = 2) -> Shapes:
    """Parameter shapes of the CIFAR ResNet-18 with GroupNorm (3x3 stride-1 stem, no maxpool).

    Built on the meta device so no memory or init time is spent on weights.
    """
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.resnet18(
            num_classes=num_classes, norm_layer=lambda c: torch.nn.GroupNorm(groups, c)
        )
        model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = torch.nn.Identity()
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


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


def build_parser() -> argparse.ArgumentParser:
    """CLI options; an accuracy sweep can add its own options here later."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--clients", type=int, default=100, help="K stacked client models")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after a warm-up")
    parser.add_argument("--rank", type=float, default=0.08, help="cart-rank r in (0, 1]")
    parser.add_argument("--lam", type=float, default=1.9, help="cart-lambda")
    parser.add_argument(
        "--quick", action="store_true",
        help=f"1 repeat, no warm-up, at most {QUICK_RESNET_CLIENTS} clients for ResNet-18 "
        "(CPU smoke run, < 2 min)",
    )
    parser.add_argument("--out", metavar="JSON", help="write the results to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Time every (model, method) pair, print one line each and optionally write JSON."""
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    repeats = 1 if args.quick else args.repeats
    models: list[tuple[str, Shapes, int]] = [
        ("simple_cnn", SIMPLE_CNN_SHAPES, args.clients),
        ("resnet18_gn", resnet18_shapes(),
         min(args.clients, QUICK_RESNET_CLIENTS) if args.quick else args.clients),
    ]
    results: list[dict[str, object]] = []
    for model, shapes, clients in models:
        for rec in time_aggregation(shapes, clients, device=args.device, repeats=repeats,
                                    warmup=not args.quick, rank=args.rank, lam=args.lam):
            rec["model"] = model
            results.append(rec)
            ratio = rec["ratio_vs_weighted_average"]
            print(f"{model:12s} {rec['method']:17s} K={clients:<4d} "
                  f"{rec['seconds_mean']:10.4f} s/aggregation  x{ratio:8.1f} vs weighted_average",
                  flush=True)
    report: dict[str, object] = {
        "benchmark": "cart_aggregation_time",
        "device": args.device,
        "device_name": (torch.cuda.get_device_name() if args.device == "cuda"
                        else platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rank": args.rank,
        "lam": args.lam,
        "quick": args.quick,
        "results": results,
    }
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    return report


if __name__ == "__main__":
    main()

"""Tests for fedwsa.partitions: the four methods, their guarantees, statistics and heat map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from niid_bench import niid_bench_client_sets

from fedwsa.partitions import (
    PARTITIONS,
    class_counts,
    format_summary,
    partition_labels,
    partition_summary,
    plot_heatmap,
)

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """5,000 labels over 10 classes, unevenly sized, in random order (like a real train set)."""
    return np.random.default_rng(0).integers(0, NUM_CLASSES, 5000)


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)  # Sorted, no repeats.
    assert sum(len(p) for p in parts) == n
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def _tv_mean(parts: list[np.ndarray], labels: np.ndarray) -> float:
    return float(partition_summary(parts, labels, NUM_CLASSES)["label_distance_mean"])


@pytest.mark.parametrize("method", PARTITIONS)
def test_every_example_assigned_once(labels: np.ndarray, method: str) -> None:
    parts = partition_labels(labels, 10, method, seed=1)
    assert len(parts) == 10
    _assert_exact_cover(parts, len(labels))


@pytest.mark.parametrize("method", PARTITIONS)
def test_seeded_and_deterministic(labels: np.ndarray, method: str) -> None:
    a = partition_labels(labels, 10, method, seed=7)
    b = partition_labels(labels, 10, method, seed=7)
    c = partition_labels(labels, 10, method, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_skew_grows_as_alpha_falls(labels: np.ndarray) -> None:
    def skew(alpha: float) -> float:
        return np.mean(
            [
                _tv_mean(partition_labels(labels, 10, "dirichlet", alpha=alpha, seed=s), labels)
                for s in range(4)
            ]
        )

    low, mid, high = skew(0.1), skew(1.0), skew(100.0)
    assert low > mid > high
    assert high < 0.1 and low > 0.5


@pytest.mark.parametrize(("method", "alpha"), [("dirichlet", 0.3), ("quantity", 2.0)])
def test_min_partition_size_is_honoured(labels: np.ndarray, method: str, alpha: float) -> None:
    """Settings where a single Dirichlet draw usually leaves some client below 60 examples."""
    for seed in range(3):
        parts = partition_labels(labels, 20, method, alpha=alpha, min_partition_size=60, seed=seed)
        assert min(len(p) for p in parts) >= 60
        _assert_exact_cover(parts, len(labels))


@pytest.mark.parametrize("method", ["dirichlet", "quantity"])
def test_unreachable_min_partition_size_fails_fast(labels: np.ndarray, method: str) -> None:
    with pytest.raises(ValueError, match="min-partition-size=300.*num-clients=20"):
        partition_labels(labels, 20, method, min_partition_size=300)  # 6,000 > 5,000 needed.
    # Possible in principle, practically never drawn: bounded resampling, then a clear error.
    with pytest.raises(ValueError, match="min-partition-size=200.*alpha=0.01.*num-clients=25"):
        partition_labels(labels, 25, method, alpha=0.01, min_partition_size=200)


def test_dirichlet_at_cifar_scale(labels: np.ndarray) -> None:
    """50,000 labels x 100 clients, alpha 0.1: fast, and no seed runs out of resamplings.

    flwr-datasets' DirichletPartitioner (10 resamplings) fails here for some seeds.
    """
    big = np.random.default_rng(1).integers(0, NUM_CLASSES, 50_000)
    for seed in range(10):
        parts = partition_labels(big, 100, "dirichlet", alpha=0.1, seed=seed)
        assert min(len(p) for p in parts) >= 10
    _assert_exact_cover(parts, len(big))
    assert _tv_mean(parts, big) > 0.5


def test_iid_is_balanced_and_unskewed(labels: np.ndarray) -> None:
    parts = partition_labels(labels, 7, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert _tv_mean(parts, labels) < 0.05


@pytest.mark.parametrize("classes_per_client", [1, 2, 3])
def test_shards_give_at_most_classes_per_client(
    labels: np.ndarray, classes_per_client: int
) -> None:
    parts = partition_labels(labels, 20, "shards", classes_per_client=classes_per_client, seed=3)
    counts = class_counts(parts, labels, NUM_CLASSES)
    assert ((counts > 0).sum(axis=1) <= classes_per_client).all()
    _assert_exact_cover(parts, len(labels))


def test_shards_follow_fedavg_on_balanced_labels() -> None:
    balanced = np.repeat(np.arange(NUM_CLASSES), 500)
    np.random.default_rng(0).shuffle(balanced)
    parts = partition_labels(balanced, 10, "shards", classes_per_client=2, seed=0)
    assert [len(p) for p in parts] == [500] * 10  # 20 shards of 250, two per client.
    counts = class_counts(parts, balanced, NUM_CLASSES)
    assert set(np.unique(counts)) <= {0, 250, 500}


def test_shards_with_very_unequal_classes() -> None:
    skewed = np.concatenate([np.zeros(3000, int), np.ones(30, int), np.full(5, 2)])
    parts = partition_labels(skewed, 4, "shards", classes_per_client=1, seed=0)
    _assert_exact_cover(parts, len(skewed))
    assert ((class_counts(parts, skewed, 3) > 0).sum(axis=1) == 1).all()


def test_quantity_skews_sizes_not_labels(labels: np.ndarray) -> None:
    parts = partition_labels(labels, 10, "quantity", alpha=0.5, seed=2)
    sizes = np.array([len(p) for p in parts])
    assert sizes.max() > 3 * sizes.min()
    large = [p for p in parts if len(p) >= 300]
    assert large and _tv_mean(large, labels) < 0.1
    dirichlet = partition_labels(labels, 10, "dirichlet", alpha=0.5, seed=2)
    assert _tv_mean(parts, labels) < 0.5 * _tv_mean(dirichlet, labels)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_clients": 0}, "num-clients=0"),
        ({"num_clients": 2.5}, "num-clients=2.5"),
        ({"num_clients": 6000}, "num-clients=6000"),
        ({"alpha": 0.0}, "alpha=0.0"),
        ({"alpha": -1.0}, "alpha=-1.0"),
        ({"alpha": float("nan")}, "alpha=nan"),
        ({"method": "pathological"}, "partition='pathological'"),
        ({"min_partition_size": -1}, "min-partition-size=-1"),
        ({"classes_per_client": 0}, "classes-per-client=0"),
        ({"method": "shards", "classes_per_client": 11}, "classes-per-client=11"),
        ({"method": "shards", "num_clients": 3, "classes_per_client": 3}, "classes-per-client=3"),
        ({"seed": -1}, "seed=-1"),
        ({"seed": 2**32, "rng": "niid-bench"}, "seed=4294967296"),  # RandomState's limit
    ],
)
def test_bad_arguments_name_the_key(labels: np.ndarray, kwargs: dict, key: str) -> None:
    args = {"num_clients": 10, "method": "dirichlet", **kwargs}
    with pytest.raises(ValueError, match="accepted") as info:
        partition_labels(labels, args.pop("num_clients"), args.pop("method"), **args)
    assert key in str(info.value)


def test_bad_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        partition_labels(np.array([0.5, 1.0]), 1, "iid")
    with pytest.raises(ValueError, match="labels"):
        partition_labels(np.zeros((2, 2), int), 1, "iid")


def test_class_counts_and_summary(labels: np.ndarray) -> None:
    parts = partition_labels(labels, 8, "dirichlet", alpha=0.5, seed=0)
    counts = class_counts(parts, labels, NUM_CLASSES)
    assert counts.shape == (8, NUM_CLASSES) and counts.dtype == np.int64
    assert counts.sum(axis=1).tolist() == [len(p) for p in parts]
    assert np.array_equal(counts.sum(axis=0), np.bincount(labels, minlength=NUM_CLASSES))
    for client, part in enumerate(parts):
        assert np.array_equal(counts[client], np.bincount(labels[part], minlength=NUM_CLASSES))

    summary = partition_summary(parts, labels, NUM_CLASSES)
    sizes = np.array([len(p) for p in parts])
    assert summary["num_clients"] == 8 and summary["num_examples"] == len(labels)
    assert summary["num_unassigned"] == 0 and summary["empty_clients"] == 0
    assert summary["size_min"] == sizes.min() and summary["size_max"] == sizes.max()
    assert summary["size_mean"] == pytest.approx(sizes.mean())
    assert summary["size_median"] == pytest.approx(np.median(sizes))
    assert summary["size_std"] == pytest.approx(sizes.std())
    assert summary["classes_per_client_mean"] == pytest.approx((counts > 0).sum(1).mean())
    global_dist = np.bincount(labels) / len(labels)
    tv = [0.5 * np.abs(c / c.sum() - global_dist).sum() for c in counts]
    assert summary["label_distance"] == "total variation"
    assert summary["label_distance_mean"] == pytest.approx(np.mean(tv))
    assert summary["label_distance_max"] == pytest.approx(np.max(tv))

    text = format_summary(summary)
    assert "clients:" in text and "total variation" in text and len(text.splitlines()) == 4
    assert f"max {sizes.max()}" in text


def test_class_counts_rejects_labels_beyond_num_classes(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="num_classes=5"):
        class_counts([np.arange(100)], labels, 5)


@pytest.mark.parametrize("num_clients", [6, 100])
def test_heatmap_png(labels: np.ndarray, tmp_path: Path, num_clients: int) -> None:
    parts = partition_labels(labels, num_clients, "dirichlet", alpha=0.3, min_partition_size=5)
    counts = class_counts(parts, labels, NUM_CLASSES)
    path = tmp_path / "plots" / "heat.png"
    fig = plot_heatmap(counts, path, "dirichlet, alpha=0.3")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["heat.png"]  # No temp file left.
    ax = fig.axes[0]
    image = ax.images[0].get_array()
    assert image.shape == (num_clients, NUM_CLASSES)
    assert np.array_equal(np.asarray(image), counts)
    assert ax.get_xlabel() == "class" and ax.get_ylabel() == "client"
    assert ax.get_title() == "dirichlet, alpha=0.3"
    assert len(fig.axes) == 2  # The colour bar.
    assert len(ax.texts) == (counts.size if num_clients == 6 else 0)


# --------------------------------------------------------------------------------------------
# partition-rng='niid-bench': NIID-Bench's own code is the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "name", "num_clients", "alpha", "seed"),
    [
        ("dirichlet", "noniid-labeldir", 10, 0.5, 0),  # NIID-Bench's 10-client setting
        ("dirichlet", "noniid-labeldir", 10, 0.5, 2),
        ("dirichlet", "noniid-labeldir", 100, 0.1, 1),  # resamples several times
        ("dirichlet", "noniid-labeldir", 10, 0.1, 3),
        ("iid", "homo", 10, 0.5, 0),
        ("quantity", "iid-diff-quantity", 10, 0.5, 1),
        ("quantity", "iid-diff-quantity", 100, 2.0, 0),
        ("quantity", "iid-diff-quantity", 10, 0.1, 4),
    ],
)
def test_niid_bench_rng_gives_niid_bench_client_sets(
    method: str, name: str, num_clients: int, alpha: float, seed: int
) -> None:
    # CIFAR-10-sized labels in an unsorted order, as torchvision's train set is.
    y = np.random.default_rng(7).permutation(np.repeat(np.arange(10), 5000))
    expected = niid_bench_client_sets(y, name, num_clients, alpha, seed)
    parts = partition_labels(y, num_clients, method, alpha=alpha, seed=seed, rng="niid-bench")
    assert len(parts) == num_clients
    for client, part in enumerate(parts):
        assert np.array_equal(part, np.sort(np.asarray(expected[client], dtype=np.int64)))
    if method != "iid":  # and it is not the generator's split
        other = partition_labels(y, num_clients, method, alpha=alpha, seed=seed)
        assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_niid_bench_rng_refuses_a_split_niid_bench_lacks(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="partition-rng='niid-bench' with partition='shards'"):
        partition_labels(labels, 10, "shards", rng="niid-bench")
    with pytest.raises(ValueError, match="partition-rng='numpy' is not known"):
        partition_labels(labels, 10, "iid", rng="numpy")


def test_niid_bench_rng_refuses_negative_labels() -> None:
    """NIID-Bench splits classes 0..max(label): a -1 (unlabelled) example would be in no client."""
    labels = np.arange(-1, 19)
    with pytest.raises(ValueError, match="labels hold -1: partition-rng='niid-bench'"):
        partition_labels(labels, 2, "dirichlet", min_partition_size=0, rng="niid-bench")
    parts = partition_labels(labels, 2, "dirichlet", min_partition_size=0)  # generator: fine
    _assert_exact_cover(parts, len(labels))


def test_niid_bench_rng_leaves_the_global_numpy_state_alone(labels: np.ndarray) -> None:
    before = np.random.get_state()[1].copy()
    partition_labels(labels, 10, "dirichlet", rng="niid-bench")
    assert np.array_equal(np.random.get_state()[1], before)

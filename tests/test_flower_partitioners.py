"""Tests for fedwsa.partitions.flower: fedwsa's partitions as a flwr-datasets Partitioner.

The partitioner must hand out exactly the rows ``partition_labels`` picks for the same arguments
(checked through an ``idx`` column), and NIID-Bench's own client sets with ``rng='niid-bench'``.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
from niid_bench import niid_bench_client_sets

from fedwsa.partitions import NIID_BENCH_PARTITIONS, PARTITIONS, partition_labels
from fedwsa.partitions.flower import FedwsaPartitioner

datasets.disable_progress_bars()

# Every (method, rng) pair the partitioner accepts: NIID-Bench has no shards.
COMBOS = [(method, "generator") for method in PARTITIONS] + [
    (method, "niid-bench") for method in NIID_BENCH_PARTITIONS
]


def _labels(size: str) -> np.ndarray:
    if size == "small":  # 2,000 labels over 10 uneven classes, in random order
        return np.random.default_rng(0).integers(0, 10, 2000)
    # CIFAR-10-sized: 5,000 of each class, unsorted as torchvision's train set is.
    return np.random.default_rng(7).permutation(np.repeat(np.arange(10), 5000))


def _dataset(labels: np.ndarray) -> datasets.Dataset:
    """Rows that say where they came from (``idx``), with a stand-in image column."""
    n = len(labels)
    return datasets.Dataset.from_dict(
        {"idx": np.arange(n), "img": (np.arange(n) % 251).astype(np.uint8), "label": labels}
    )


def _column(partition: datasets.Dataset, name: str) -> np.ndarray:
    return partition.with_format("numpy", columns=[name])[:][name]


@pytest.fixture(scope="module", params=["small", "cifar"])
def data(request: pytest.FixtureRequest) -> tuple[np.ndarray, datasets.Dataset]:
    labels = _labels(request.param)
    return labels, _dataset(labels)


@pytest.mark.parametrize(("method", "rng"), COMBOS)
def test_partitions_are_partition_labels(
    data: tuple[np.ndarray, datasets.Dataset], method: str, rng: str
) -> None:
    labels, ds = data
    num_partitions, seed = 10, 3
    partitioner = FedwsaPartitioner(num_partitions, "label", method, alpha=0.3, seed=seed, rng=rng)
    partitioner.dataset = ds
    expected = partition_labels(labels, num_partitions, method, alpha=0.3, seed=seed, rng=rng)
    seen = []
    for partition_id in range(partitioner.num_partitions):
        partition = partitioner.load_partition(partition_id)
        idx = _column(partition, "idx")
        assert np.array_equal(idx, expected[partition_id])
        assert np.array_equal(_column(partition, "label"), labels[idx])  # whole rows
        assert partition.column_names == ["idx", "img", "label"]
        seen.append(idx)
    # Disjoint, and together every row.
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(labels)))


def test_niid_bench_rng_gives_niid_bench_client_sets() -> None:
    """Independent of partition_labels: NIID-Bench's transcribed code is the reference."""
    labels = _labels("cifar")
    expected = niid_bench_client_sets(labels, "noniid-labeldir", 10, 0.5, 0)
    partitioner = FedwsaPartitioner(10, "label", "dirichlet", alpha=0.5, seed=0, rng="niid-bench")
    partitioner.dataset = _dataset(labels)
    for partition_id in range(10):
        idx = _column(partitioner.load_partition(partition_id), "idx")
        assert np.array_equal(idx, np.sort(np.asarray(expected[partition_id])))


def test_computed_once_lazily_and_read_only() -> None:
    partitioner = FedwsaPartitioner(5, method="iid")  # no dataset needed to build it
    assert not partitioner.is_dataset_assigned()
    partitioner.dataset = _dataset(_labels("small"))
    first = partitioner.partition_indices
    partitioner.load_partition(4)
    assert all(a is b for a, b in zip(first, partitioner.partition_indices, strict=True))
    with pytest.raises(ValueError, match="read-only"):
        first[0][0] = 7


def test_federated_dataset_uses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's use, on a local file instead of the Hub: FederatedDataset sets the dataset
    and asks for a partition; shuffle=False keeps the rows in the file's order."""
    from flwr_datasets import FederatedDataset
    from flwr_datasets.common import telemetry

    monkeypatch.setattr(telemetry, "FLWR_TELEMETRY_ENABLED", "0")  # no network here
    labels = _labels("small")
    path = tmp_path / "train.parquet"
    _dataset(labels).to_parquet(path)
    partitioner = FedwsaPartitioner(20, "label", "dirichlet", alpha=0.1, seed=1, rng="niid-bench")
    fds = FederatedDataset(
        dataset="parquet", data_files={"train": str(path)}, partitioners={"train": partitioner},
        shuffle=False, cache_dir=str(tmp_path / "cache"),
    )
    partition = fds.load_partition(3)
    expected = partition_labels(labels, 20, "dirichlet", alpha=0.1, seed=1, rng="niid-bench")
    assert np.array_equal(_column(partition, "idx"), expected[3])


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"num_partitions": 0}, "num_partitions=0"),
        ({"num_partitions": 2.5}, "num_partitions=2.5"),
        ({"method": "pathological"}, "method='pathological'"),
        ({"alpha": 0.0}, "alpha=0.0"),
        ({"alpha": float("inf")}, "alpha=inf"),
        ({"min_partition_size": -1}, "min_partition_size=-1"),
        ({"classes_per_client": 0}, "classes_per_client=0"),
        ({"seed": -1}, "seed=-1"),
        ({"seed": 2**32, "rng": "niid-bench"}, "seed=4294967296 is too large for rng="),
        ({"rng": "numpy"}, "rng='numpy'"),
        ({"method": "shards", "rng": "niid-bench"}, "rng='niid-bench' with method='shards'"),
        ({"partition_by": ""}, "partition_by=''"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict, named: str) -> None:
    args = {"num_partitions": 10, **kwargs}
    with pytest.raises(ValueError, match="accepted") as info:
        FedwsaPartitioner(**args)
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "labels", "named"),
    [
        ({"num_partitions": 2001}, None, "num_partitions=2001 exceeds the 2000 examples"),
        ({"min_partition_size": 300}, None, "min_partition_size=300 with num_partitions=10"),
        ({"method": "shards", "classes_per_client": 11}, None, "classes_per_client=11"),
        ({"partition_by": "lable"}, None, "partition_by='lable' is not a column"),
        ({"partition_by": "img"}, None, None),  # uint8 labels are integers: accepted
        ({}, np.array(["cat", "dog"] * 10), "partition_by='label' holds <U3 values"),
        ({"rng": "niid-bench"}, np.arange(-1, 19), "labels hold -1: rng='niid-bench'"),
        ({"alpha": 0.01, "min_partition_size": 190}, None, "could not give every client "
                                                           "min_partition_size=190"),
    ],
)
def test_data_dependent_errors_at_first_load(
    kwargs: dict, labels: np.ndarray | None, named: str | None
) -> None:
    partitioner = FedwsaPartitioner(**{"num_partitions": 10, **kwargs})
    partitioner.dataset = _dataset(_labels("small") if labels is None else labels)
    if named is None:
        assert len(partitioner.load_partition(0)) > 0
        return
    with pytest.raises(ValueError, match="accepted|lower") as info:
        partitioner.load_partition(0)
    assert named in str(info.value)


@pytest.mark.parametrize("partition_id", [-1, 10, 2.0, True, "3"])
def test_out_of_range_partition_id(partition_id: object) -> None:
    partitioner = FedwsaPartitioner(10, method="iid")
    partitioner.dataset = _dataset(_labels("small"))
    with pytest.raises(ValueError, match=r"partition_id=.* out of range; accepted: .* 0\.\.9"):
        partitioner.load_partition(partition_id)  # type: ignore[arg-type]
    assert len(partitioner.load_partition(np.int64(9))) > 0  # numpy integers are fine

"""fedwsa's partitions as a flwr-datasets ``Partitioner``, for any Flower app.

``FedwsaPartitioner`` hands the index sets of ``partition_labels`` to flwr-datasets, so a plain
Flower app gets the clients a fedwsa run makes (same labels in the same order, same arguments
and seed: same client sets) and, with ``rng="niid-bench"``, NIID-Bench's own client sets.
``methods``' docstring says why fedwsa does not use flwr-datasets' own partitioners.

This module imports flwr-datasets and Hugging Face ``datasets`` (not Flower itself). They take
about 1.5 s to import, so ``fedwsa.partitions`` does not re-export it: import it from here.
"""

from __future__ import annotations

from numbers import Integral
from types import MappingProxyType

import datasets
import numpy as np
from flwr_datasets.partitioner import Partitioner

from fedwsa.partitions.methods import check_partition_args, partition_labels

__all__ = ["FedwsaPartitioner"]

# How errors name the arguments: as this class's signature spells them.
_ARG_NAMES = MappingProxyType({
    "num_clients": "num_partitions",
    "method": "method",
    "rng": "rng",
    "alpha": "alpha",
    "classes_per_client": "classes_per_client",
    "min_partition_size": "min_partition_size",
    "seed": "seed",
})


class FedwsaPartitioner(Partitioner):
    """Partition a dataset by its label column with ``fedwsa.partitions.partition_labels``.

    Parameters
    ----------
    num_partitions : int
        Number of partitions (clients), fedwsa's ``num-clients``.
    partition_by : str
        The column of integer class labels to split by (a ``ClassLabel`` such as CIFAR-10's
        ``"label"``).
    method : str
        ``"dirichlet"`` (NIID-Bench's ``noniid-labeldir``), ``"iid"`` (``homo``), ``"quantity"``
        (``iid-diff-quantity``) or ``"shards"`` (FedAvg's pathological split); fedwsa's
        ``partition``.
    alpha : float
        Dirichlet concentration: label skew for ``dirichlet``, size skew for ``quantity``.
    classes_per_client : int
        Shards, so at most classes, per client (``shards``).
    min_partition_size : int
        Smallest partition (``dirichlet``, ``quantity``); resampled up to 1,000 times.
    seed : int
        Seed of the draws, fedwsa's ``seed`` (NIID-Bench's ``--init_seed`` with ``niid-bench``).
    rng : str
        ``"generator"`` (fedwsa's default draws) or ``"niid-bench"`` (NIID-Bench's own
        ``np.random`` calls in its order: its exact client sets for ``dirichlet``, ``iid`` and
        ``quantity``, when the rows are in NIID-Bench's order, torchvision's for CIFAR).

    The partitions are disjoint and cover every row. They are computed once, on the first
    ``load_partition`` (or ``partition_indices``), from the whole label column. Bad arguments
    raise ``ValueError`` here, before any work, naming the argument, its value and what is
    accepted; those that depend on the data (too few rows, say) on the first load.

    Examples
    --------
    >>> from flwr_datasets import FederatedDataset
    >>> from fedwsa.partitions.flower import FedwsaPartitioner
    >>>
    >>> partitioner = FedwsaPartitioner(100, "label", "dirichlet", alpha=0.1, rng="niid-bench")
    >>> fds = FederatedDataset(dataset="uoft-cs/cifar10", partitioners={"train": partitioner},
    >>>                        shuffle=False)
    >>> partition = fds.load_partition(0)
    """

    def __init__(
        self,
        num_partitions: int,
        partition_by: str = "label",
        method: str = "dirichlet",
        *,
        alpha: float = 0.5,
        classes_per_client: int = 2,
        min_partition_size: int = 10,
        seed: int = 0,
        rng: str = "generator",
    ) -> None:
        super().__init__()
        # The keyword arguments of partition_labels, checked now (those not needing the data).
        self._options = {
            "alpha": alpha,
            "classes_per_client": classes_per_client,
            "min_partition_size": min_partition_size,
            "seed": seed,
            "rng": rng,
            "arg_names": _ARG_NAMES,
        }
        check_partition_args(num_partitions, method, **self._options)
        if not isinstance(partition_by, str) or not partition_by:
            raise ValueError(
                f"partition_by={partition_by!r} is invalid; accepted: the name of a column of "
                f"integer class labels"
            )
        self._num_partitions = int(num_partitions)
        self._partition_by = partition_by
        self._method = method
        self._indices: list[np.ndarray] | None = None

    @property
    def num_partitions(self) -> int:
        """Total number of partitions."""
        return self._num_partitions

    @property
    def partition_indices(self) -> list[np.ndarray]:
        """Each partition's row indices into ``dataset``: sorted, read-only int64 arrays.

        What ``partition_labels`` returns for the label column, computed once; pass it to
        ``fedwsa.partitions.partition_summary`` or ``plot_heatmap`` to inspect the split.
        """
        if self._indices is None:
            parts = partition_labels(
                self._labels(), self._num_partitions, self._method, **self._options
            )
            for part in parts:
                part.flags.writeable = False
            self._indices = parts
        return list(self._indices)

    def load_partition(self, partition_id: int) -> datasets.Dataset:
        """The rows of partition ``partition_id`` (``0 .. num_partitions - 1``), in dataset order.

        Parameters
        ----------
        partition_id : int
            The partition (client) to load, e.g. ``context.node_config["partition-id"]``.

        Returns
        -------
        dataset_partition : Dataset
            ``dataset.select`` of the partition's indices.
        """
        if (
            not isinstance(partition_id, Integral)
            or isinstance(partition_id, bool)
            or not 0 <= partition_id < self._num_partitions
        ):
            raise ValueError(
                f"partition_id={partition_id!r} is out of range; accepted: an integer in "
                f"0..{self._num_partitions - 1} (num_partitions={self._num_partitions})"
            )
        return self.dataset.select(self.partition_indices[int(partition_id)])

    def _labels(self) -> np.ndarray:
        """The ``partition_by`` column as a numpy array, or a ValueError naming it."""
        dataset = self.dataset
        column = self._partition_by
        if column not in dataset.column_names:
            raise ValueError(
                f"partition_by={column!r} is not a column of the dataset; accepted: one of "
                f"{', '.join(dataset.column_names)}"
            )
        # One Arrow-to-numpy conversion (a plain ``dataset[column]`` converts row by row).
        labels = np.asarray(dataset.with_format("numpy", columns=[column])[:][column])
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"partition_by={column!r} holds {labels.dtype} values of shape "
                f"{labels.shape[1:]}; accepted: a column of integer class labels (a ClassLabel)"
            )
        return labels

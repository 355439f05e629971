"""Partitions of a dataset's labels over clients, and how to inspect them.

Pure numpy (plus matplotlib for the heat map): no models, clients or Flower. For a Flower app,
``fedwsa.partitions.flower.FedwsaPartitioner`` offers the same partitions as a flwr-datasets
``Partitioner``; import it from there (it pulls in flwr-datasets, ~1.5 s, so it is not here).
"""

from fedwsa.partitions.methods import (
    MAX_SAMPLING_TRIES,
    NIID_BENCH_PARTITIONS,
    PARTITION_RNGS,
    PARTITIONS,
    partition_labels,
)
from fedwsa.partitions.stats import (
    class_counts,
    format_summary,
    partition_summary,
    plot_heatmap,
)

__all__ = [
    "MAX_SAMPLING_TRIES",
    "NIID_BENCH_PARTITIONS",
    "PARTITIONS",
    "PARTITION_RNGS",
    "class_counts",
    "format_summary",
    "partition_summary",
    "partition_labels",
    "plot_heatmap",
]

"""What a node keeps between rounds: the dataset on its device and every client's partition.

Built once per process and cached: Flower calls the ClientApp once per round, and reloading or
re-partitioning 50k images each time would dominate a round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedwsa.config import Config
from fedwsa.data import load_dataset, pixel_stats, train_set_key
from fedwsa.device import resolve_device
from fedwsa.partitions import partition_labels


@dataclass(frozen=True)
class NodeData:
    """The train set on ``device`` (uint8 images), and each client's example indices there."""

    device: torch.device
    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    num_classes: int
    partitions: tuple[torch.Tensor, ...]
    pad_mode: str = "reflect"  # how augmentation's random crop pads (``crop-padding``)
    # Per partition, the (seed, client id) its data order and augmentation are drawn from,
    # when the partitions are several runs' clients side by side (``fedwsa.clients.fused``);
    # None: partition i is client i of the run, drawn with the run's seed.
    streams: tuple[tuple[int, int], ...] | None = None

    def client_size(self, client_id: int) -> int:
        return int(self.partitions[client_id].numel())

    def stream(self, client_id: int, seed: int) -> tuple[int, int]:
        """The (seed, client id) that seed ``client_id``'s shuffling and augmentation."""
        return (seed, client_id) if self.streams is None else self.streams[client_id]


def client_partitions(config: Config, labels: np.ndarray) -> list[np.ndarray]:
    """The run's partition of the train labels over ``num-clients`` clients."""
    return partition_labels(
        labels, config.num_clients, config.partition, alpha=config.alpha,
        classes_per_client=config.classes_per_client,
        min_partition_size=config.min_partition_size, seed=config.seed,
        rng=config.partition_rng,
    )


# Two levels, so the runs of a stacked federation (a grid's seeds, partitions and sweeps) share
# the node's copy of the train set: the images on the device are kept per dataset (two at most:
# each is a whole train set on the device), and each run's partition (small: indices) per the
# keys that decide it. Runs that differ in other keys (lr, say) share both.
_PARTITION_KEYS = ("seed", "partition", "partition_rng", "alpha", "classes_per_client",
                   "min_partition_size", "num_clients", "normalize", "crop_padding")
_CACHE: dict[tuple, dict[tuple, NodeData]] = {}


def node_data(config: Config) -> NodeData:
    """The cached ``NodeData`` for the data, partition and device keys of ``config``."""
    image_key = (*train_set_key(config.dataset, config.data_root, config.seed), config.device)
    if image_key not in _CACHE:
        if len(_CACHE) >= 2:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[image_key] = {}
    runs = _CACHE[image_key]
    key = tuple(getattr(config, k) for k in _PARTITION_KEYS)
    if key not in runs:
        shared = next(iter(runs.values()), None)
        runs[key] = _build_node_data(config, shared)
    return runs[key]


def _build_node_data(config: Config, shared: NodeData | None) -> NodeData:
    """The run's NodeData; the images and labels on the device come from ``shared`` when
    another run of the same dataset has put them there already."""
    data = load_dataset(config.dataset, config.data_root, config.seed)
    device = resolve_device(config.device)
    parts = client_partitions(config, data.y_train.numpy())
    mean, std = pixel_stats(data, config.normalize)
    return NodeData(
        device=device,
        images=data.x_train.to(device) if shared is None else shared.images,
        labels=data.y_train.to(device) if shared is None else shared.labels,
        mean=mean.to(device),
        std=std.to(device),
        num_classes=data.num_classes,
        partitions=tuple(torch.as_tensor(p, dtype=torch.long, device=device) for p in parts),
        pad_mode=config.crop_padding,
    )

"""What a node keeps between rounds: the dataset on its device and every client's partition.

Built once per process and cached: Flower calls the ClientApp once per round, and reloading or
re-partitioning 50k images each time would dominate a round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedwsa.config import Config
from fedwsa.data import load_dataset, pixel_stats
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

    def client_size(self, client_id: int) -> int:
        return int(self.partitions[client_id].numel())


def client_partitions(config: Config, labels: np.ndarray) -> list[np.ndarray]:
    """The run's partition of the train labels over ``num-clients`` clients."""
    return partition_labels(
        labels, config.num_clients, config.partition, alpha=config.alpha,
        classes_per_client=config.classes_per_client,
        min_partition_size=config.min_partition_size, seed=config.seed,
    )


# Keyed on the keys that decide data and partitions only, so runs in one process that differ
# in other keys (a sweep over lr, say) share the node's copy. Two entries at most: each holds a
# whole train set on the device.
_DATA_KEYS = ("dataset", "data_root", "seed", "partition", "alpha", "classes_per_client",
              "min_partition_size", "num_clients", "device", "normalize", "crop_padding")
_CACHE: dict[tuple, NodeData] = {}


def node_data(config: Config) -> NodeData:
    """The cached ``NodeData`` for the data, partition and device keys of ``config``."""
    key = tuple(getattr(config, k) for k in _DATA_KEYS)
    if key not in _CACHE:
        if len(_CACHE) >= 2:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _build_node_data(config)
    return _CACHE[key]


def _build_node_data(config: Config) -> NodeData:
    data = load_dataset(config.dataset, config.data_root, config.seed)
    device = resolve_device(config.device)
    parts = client_partitions(config, data.y_train.numpy())
    mean, std = pixel_stats(data, config.normalize)
    return NodeData(
        device=device,
        images=data.x_train.to(device),
        labels=data.y_train.to(device),
        mean=mean.to(device),
        std=std.to(device),
        num_classes=data.num_classes,
        partitions=tuple(torch.as_tensor(p, dtype=torch.long, device=device) for p in parts),
        pad_mode=config.crop_padding,
    )

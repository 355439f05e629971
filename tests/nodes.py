"""A node with hand-made partitions of the synthetic set, for trainer tests."""

from __future__ import annotations

import torch

from fedwsa.clients.node import NodeData
from fedwsa.data import load_dataset


def make_node(sizes: tuple[int, ...], seed: int = 0) -> NodeData:
    """Clients of exactly ``sizes`` examples, drawn without overlap from the synthetic set."""
    data = load_dataset("synthetic", "", 0)
    perm = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for n in sizes:
        parts.append(perm[start:start + n].sort().values)
        start += n
    return NodeData(torch.device("cpu"), data.x_train, data.y_train, data.mean, data.std,
                    data.num_classes, tuple(parts))

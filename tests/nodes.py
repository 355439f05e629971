"""A node with hand-made partitions of the synthetic set, for trainer tests."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fedwsa.clients.node import NodeData
from fedwsa.clients.trainer import LocalSettings, epoch_generator
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


def reference_batches(node: NodeData, cid: int, settings: LocalSettings, server_round: int
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A client's normalised (x, y) batches, epoch by epoch, in the order the trainers draw
    them (no augmentation): the only thing hand-written reference loops share with fedwsa."""
    part = node.partitions[cid]
    for epoch in range(settings.local_epochs):
        gen = epoch_generator(settings.seed, server_round, cid, epoch)
        order = part[torch.randperm(len(part), generator=gen)]
        for start in range(0, len(order), settings.batch_size):
            idx = order[start:start + settings.batch_size]
            x = (node.images[idx].float() / 255 - node.mean.view(-1, 1, 1)) \
                / node.std.view(-1, 1, 1)
            yield x, node.labels[idx]

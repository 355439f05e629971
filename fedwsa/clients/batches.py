"""A client's local data stream: seeded shuffling, gathering by index on the device, augmentation.

Shared by both trainers so that a client sees the same batches whichever trainer runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedwsa.clients.node import NodeData
from fedwsa.clients.trainer import epoch_generator
from fedwsa.data import augment, normalize, sample_augmentation


@dataclass(frozen=True)
class EpochPlan:
    """One client's epoch: dataset indices in visiting order and their augmentation draws."""

    order: torch.Tensor
    offsets: torch.Tensor | None
    flips: torch.Tensor | None


def epoch_plan(data: NodeData, client_id: int, seed: int, server_round: int, epoch: int,
               with_augment: bool) -> EpochPlan:
    """The shuffled indices (and augmentation parameters) of a client's epoch, on the device."""
    stream_seed, stream_id = data.stream(client_id, seed)
    gen = epoch_generator(stream_seed, server_round, stream_id, epoch)
    part = data.partitions[client_id]
    # Drawn on the CPU from the CPU generator and moved: a client sees the same batches and
    # augmentation on every device (a CPU generator cannot draw on a GPU anyway).
    perm = torch.randperm(part.numel(), generator=gen).to(data.device)
    offsets = flips = None
    if with_augment:
        offsets, flips = sample_augmentation(part.numel(), gen)
        offsets, flips = offsets.to(data.device), flips.to(data.device)
    return EpochPlan(part[perm], offsets, flips)


def load_images(data: NodeData, indices: torch.Tensor, offsets: torch.Tensor | None,
                flips: torch.Tensor | None) -> torch.Tensor:
    """Gather uint8 images by index, augment (in 0..255 pixel units) and normalise, in batch.

    ``indices`` may carry leading batch dimensions ([B] or [K, B]).
    """
    x = data.images[indices].float()
    if offsets is not None and flips is not None:
        x = augment(x, offsets, flips, data.pad_mode)
    return normalize(x, data.mean, data.std)

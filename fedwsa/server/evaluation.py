"""Central evaluation of a model's weights on a test set, in large batches on the device."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from fedwsa.data import normalize


@torch.no_grad()
def evaluate(model: nn.Module, params: dict[str, torch.Tensor], images: torch.Tensor,
             labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
             batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` with ``params`` on uint8 ``images``."""
    device = images.device
    params = {k: v.to(device) for k, v in params.items()}
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].float(), mean, std)
        y = labels[start:start + batch_size]
        logits = functional_call(model, params, (x,))
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(dim=1) == y).sum()
    n = max(len(images), 1)
    return float(loss_sum) / n, float(correct) / n

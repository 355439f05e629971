"""Central evaluation of models' weights on a test set, in large batches on the device.

On a GPU, several models of one architecture (the global models of a stacked grid's runs) are
evaluated together: ``torch.func.vmap`` over their stacked weights, one pass over the test
images for all of them, so a grid's evaluation fills the device instead of leaving it idle
between small launches. On a CPU, vmap turns the convolutions into grouped ones, which run
slower there than one model at a time (simple CNN, 5 models, 2 cores: 0.85 s against 0.65 s),
so each model gets its own pass; a single model is a stack of one either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from fedwsa.data import normalize

EVAL_BATCH = 1000
"""Test images per model per forward pass."""

MAX_MODELS_PER_PASS = 16
"""Models evaluated in one vmap call on a GPU: bounds the activations held (models x
EVAL_BATCH)."""


def models_per_pass(device: torch.device) -> int:
    """How many models one evaluation pass stacks on ``device`` (see the module's docstring)."""
    return MAX_MODELS_PER_PASS if device.type == "cuda" else 1


@torch.no_grad()
def evaluate_many(model: nn.Module, params: Sequence[dict[str, torch.Tensor]],
                  images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
                  std: torch.Tensor, per_pass: int | None = None) -> list[tuple[float, float]]:
    """Mean cross-entropy and accuracy of ``model`` under each weight set of ``params``, on
    uint8 ``images``: one (loss, accuracy) per weight set, in order. ``per_pass`` models are
    stacked in one pass (default: ``models_per_pass`` of the images' device)."""
    step = per_pass or models_per_pass(images.device)
    results: list[tuple[float, float]] = []
    for first in range(0, len(params), step):
        results += _evaluate_stack(model, params[first:first + step], images, labels, mean, std)
    return results


def evaluate(model: nn.Module, params: dict[str, torch.Tensor], images: torch.Tensor,
             labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` with ``params`` on uint8 ``images``."""
    return evaluate_many(model, [params], images, labels, mean, std)[0]


def _evaluate_stack(model: nn.Module, params: Sequence[dict[str, torch.Tensor]],
                    images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
                    std: torch.Tensor) -> list[tuple[float, float]]:
    loss_sum, correct = _stack_sums(model, params, images, labels, mean, std)
    n = max(len(images), 1)
    return [(float(loss) / n, float(right) / n)
            for loss, right in zip(loss_sum.tolist(), correct.tolist(), strict=True)]


def _stack_sums(model: nn.Module, params: Sequence[dict[str, torch.Tensor]],
               images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
               std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per weight set, the summed cross-entropy (float64) and the number of correct
    predictions (int64) over ``images``, both on the images' device (weights and labels are
    moved there)."""
    device = images.device
    labels = labels.to(device)
    stacked = {k: torch.stack([p[k].to(device) for p in params]) for k in params[0]}
    num_models = len(params)
    forward = vmap(lambda p, x: functional_call(model, p, (x,)), in_dims=(0, None))
    loss_sum = torch.zeros(num_models, dtype=torch.float64, device=device)
    correct = torch.zeros(num_models, dtype=torch.int64, device=device)
    for start in range(0, len(images), EVAL_BATCH):
        x = normalize(images[start:start + EVAL_BATCH].float(), mean, std)
        y = labels[start:start + EVAL_BATCH]
        logits = forward(stacked, x)  # (models, images, classes)
        losses = F.cross_entropy(logits.flatten(0, 1), y.repeat(num_models), reduction="none")
        loss_sum += losses.view(num_models, -1).sum(dim=1).double()
        correct += (logits.argmax(dim=2) == y).sum(dim=1)
    return loss_sum, correct

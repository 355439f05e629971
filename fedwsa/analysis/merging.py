"""Weight averaging against feature and logit averaging, and the magnitude sensitivity of
single models against their weight average ("Rethinking Weight-Averaged Model-merging",
METHODS.md section 3)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from fedwsa.analysis.sources import EvalData, Weights
from fedwsa.data import normalize

EVAL_BATCH = 1000
MAGNITUDES = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
"""Factors every weight is scaled by (the paper's code spans 0.5 to 100)."""


def head_of(model: nn.Module) -> nn.Linear:
    """The classifier: the model's last ``nn.Linear`` (its input is the penultimate feature)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear classifier to split off")
    return linears[-1]


def mean_weights(models: Sequence[Weights]) -> Weights:
    """The uniform weight average (the paper's merge)."""
    return {n: torch.stack([m[n] for m in models]).mean(dim=0) for n in models[0]}


@torch.no_grad()
def _outputs(model: nn.Module, weights: Weights, x: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and penultimate features (the head's input) of ``model`` under ``weights``."""
    seen: list[torch.Tensor] = []
    hook = head_of(model).register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        logits = functional_call(model, weights, (x,))
    finally:
        hook.remove()
    return logits, seen[-1]


@torch.no_grad()
def _head(model: nn.Module, weights: Weights, features: torch.Tensor) -> torch.Tensor:
    """The head of ``model`` (with ``weights``' head parameters) applied to ``features``."""
    head = head_of(model)
    prefix = next(n for n, m in model.named_modules() if m is head)
    params = {n[len(prefix) + 1:]: v for n, v in weights.items() if n.startswith(prefix + ".")}
    return functional_call(head, params, (features,))


@dataclass(frozen=True)
class MergeAccuracy:
    """Test accuracy of N models merged three ways."""

    n: int
    weight_average: float
    logit_ensemble: float
    feature_average: float


def merge_accuracies(model: nn.Module, models: Sequence[Weights], data: EvalData,
                     sizes: Sequence[int]) -> list[MergeAccuracy]:
    """For each N in ``sizes``, the first N of ``models``: the accuracy of their uniform weight
    average, of the ensemble averaging their logits, and of the one averaging their penultimate
    features through the weight-averaged model's head (the shared head)."""
    out = []
    for n in sizes:
        chosen = list(models[:n])
        merged = mean_weights(chosen)
        right = torch.zeros(3, dtype=torch.int64)
        for start in range(0, len(data.images), EVAL_BATCH):
            x = normalize(data.images[start:start + EVAL_BATCH], data.mean, data.std)
            y = data.labels[start:start + EVAL_BATCH]
            averaged, _ = _outputs(model, merged, x)
            pairs = [_outputs(model, w, x) for w in chosen]
            logits = torch.stack([lg for lg, _ in pairs]).mean(dim=0)
            features = torch.stack([f for _, f in pairs]).mean(dim=0)
            via_head = _head(model, merged, features)
            for i, z in enumerate((averaged, logits, via_head)):
                right[i] += int((z.argmax(dim=1) == y).sum())
        acc = (right.double() / max(len(data.images), 1)).tolist()
        out.append(MergeAccuracy(n, acc[0], acc[1], acc[2]))
    return out


@dataclass(frozen=True)
class MagnitudeCurve:
    """One model's test accuracy, and the share of predictions that differ from its unscaled
    predictions, with every weight scaled by each factor."""

    label: str
    factors: list[float]
    accuracy: list[float]
    changed: list[float]


@torch.no_grad()
def magnitude_curve(model: nn.Module, weights: Weights, data: EvalData, label: str,
                    factors: Sequence[float] = MAGNITUDES) -> MagnitudeCurve:
    """Scale all of ``weights`` (biases included) by each factor and evaluate."""
    def predictions(w: Weights) -> torch.Tensor:
        return torch.cat([functional_call(model, w, (normalize(
            data.images[s:s + EVAL_BATCH], data.mean, data.std),)).argmax(dim=1)
            for s in range(0, len(data.images), EVAL_BATCH)])

    base = predictions(weights)
    accuracy, changed = [], []
    for c in factors:
        pred = predictions({n: c * v for n, v in weights.items()})
        accuracy.append(float((pred == data.labels).double().mean()))
        changed.append(float((pred != base).double().mean()))
    return MagnitudeCurve(label, list(factors), accuracy, changed)

"""Weight averaging against feature and logit averaging, and the magnitude sensitivity of
single models against their weight average ("Rethinking Weight-Averaged Model-merging",
METHODS.md section 3)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from fedwsa.analysis.sources import EvalData, Weights
from fedwsa.data import normalize
from fedwsa.server.evaluation import EVAL_BATCH, models_per_pass

MAGNITUDES = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
"""Factors every weight is scaled by (the paper's code spans 0.5 to 100)."""


def head_of(model: nn.Module) -> nn.Linear:
    """The classifier: the model's last ``nn.Linear`` (its input is the penultimate feature)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear classifier to split off")
    return linears[-1]


def head_prefix(model: nn.Module) -> str:
    head = head_of(model)
    return next(n for n, m in model.named_modules() if m is head)


def mean_weights(models: Sequence[Weights]) -> Weights:
    """The uniform weight average (the paper's merge)."""
    return {n: torch.stack([m[n] for m in models]).mean(dim=0) for n in models[0]}


def body_of(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose classifier is the identity: it outputs penultimate features."""
    body = copy.deepcopy(model)
    parent_name, _, attr = head_prefix(model).rpartition(".")
    setattr(body.get_submodule(parent_name) if parent_name else body, attr, nn.Identity())
    return body


@torch.no_grad()
def stacked_outputs(module: nn.Module, weights: Sequence[Weights], x: torch.Tensor
                    ) -> torch.Tensor:
    """``module``'s outputs on ``x`` under each weight set, stacked [M, ...]: with ``vmap``
    over the stacked weights on a GPU, one weight set at a time on a CPU (where vmap's grouped
    convolutions are slower; ``fedwsa.server.evaluation``)."""
    step = models_per_pass(x.device)
    outs = []
    for first in range(0, len(weights), step):
        chunk = weights[first:first + step]
        if len(chunk) == 1:
            outs.append(functional_call(module, chunk[0], (x,)).unsqueeze(0))
            continue
        stacked = {n: torch.stack([w[n] for w in chunk]) for n in chunk[0]}
        outs.append(vmap(lambda p, inp: functional_call(module, p, (inp,)),
                         in_dims=(0, None))(stacked, x))
    return torch.cat(outs)


def _split(model: nn.Module, weights: Sequence[Weights]
           ) -> tuple[nn.Module, list[Weights], list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """The body, each weight set's body parameters, and each one's head (weight, bias)."""
    prefix = head_prefix(model) + "."
    bodies = [{n: v for n, v in w.items() if not n.startswith(prefix)} for w in weights]
    heads = [(w[prefix + "weight"], w.get(prefix + "bias")) for w in weights]
    return body_of(model), bodies, heads


def _apply_head(features: torch.Tensor, head: tuple[torch.Tensor, torch.Tensor | None]
                ) -> torch.Tensor:
    return F.linear(features, head[0], head[1])


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
    features through the weight-averaged model's head (the shared head). Every model's features
    are computed once per test batch, all models together (``stacked_outputs``)."""
    merged = [mean_weights(list(models[:n])) for n in sizes]
    body, bodies, heads = _split(model, [*models[:max(sizes)], *merged])
    count = max(sizes)
    # Counted on the test images' device: no host sync per batch.
    right = torch.zeros(len(sizes), 3, dtype=torch.int64, device=data.images.device)
    for start in range(0, len(data.images), EVAL_BATCH):
        x = normalize(data.images[start:start + EVAL_BATCH], data.mean, data.std)
        y = data.labels[start:start + EVAL_BATCH]
        features = stacked_outputs(body, bodies, x)  # [clients + merges, batch, features]
        logits = [_apply_head(f, h) for f, h in zip(features, heads, strict=True)]
        for i, n in enumerate(sizes):
            averaged = logits[count + i]
            ensemble = torch.stack(logits[:n]).mean(dim=0)
            via_head = _apply_head(features[:n].mean(dim=0), heads[count + i])
            for j, z in enumerate((averaged, ensemble, via_head)):
                right[i, j] += (z.argmax(dim=1) == y).sum()
    acc = (right.double() / max(len(data.images), 1)).tolist()
    return [MergeAccuracy(n, *acc[i]) for i, n in enumerate(sizes)]


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
    """Scale all of ``weights`` (biases included) by each factor and evaluate; the scaled
    models run together (``stacked_outputs``)."""
    scaled = [weights] + [{n: c * v for n, v in weights.items()} for c in factors]
    predictions = torch.cat([
        stacked_outputs(model, scaled, normalize(data.images[s:s + EVAL_BATCH], data.mean,
                                                 data.std)).argmax(dim=2)
        for s in range(0, len(data.images), EVAL_BATCH)], dim=1)  # [1 + factors, images]
    base = predictions[0]
    accuracy = [float((p == data.labels).double().mean()) for p in predictions[1:]]
    changed = [float((p != base).double().mean()) for p in predictions[1:]]
    return MagnitudeCurve(label, list(factors), accuracy, changed)

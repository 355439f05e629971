"""Weight patterns: the first layer's filters and the classifier's per-class weight templates of
clients and the global model ("Rethinking Weight-Averaged Model-merging", METHODS.md 3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedwsa.analysis.merging import head_prefix
from fedwsa.analysis.sources import Weights


def first_layer(weights: Weights) -> tuple[str, torch.Tensor]:
    """The first convolution's filters [C_out, C_in, k, k] (the first 4-D weight)."""
    for name, value in weights.items():
        if name.endswith("weight") and value.dim() == 4:
            return name, value
    raise ValueError("the model has no convolution whose filters could be shown")


def classifier(model: nn.Module, weights: Weights) -> tuple[str, torch.Tensor]:
    """The classifier's weight [classes, features] (the last linear layer's)."""
    name = f"{head_prefix(model)}.weight"
    return name, weights[name]


def filter_images(filters: torch.Tensor) -> torch.Tensor:
    """Filters as images [C_out, k, k, C_in] scaled to [0, 1] each (for ``imshow``)."""
    x = filters.detach().double().cpu()
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x - lo) / (hi - lo).clamp_min(1e-12)).permute(0, 2, 3, 1)


@dataclass(frozen=True)
class TemplateSimilarity:
    """Per class: the cosine similarity of each model's class template to the reference's."""

    labels: list[str]
    cosine: list[list[float]]  # [model][class]


def template_similarity(templates: list[torch.Tensor], reference: torch.Tensor,
                        labels: list[str]) -> TemplateSimilarity:
    ref = reference.detach().double().cpu()
    rows = [torch.nn.functional.cosine_similarity(t.detach().double().cpu(), ref, dim=1).tolist()
            for t in templates]
    return TemplateSimilarity(labels, rows)

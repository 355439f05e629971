"""Architectures by name, all usable with ``torch.func.functional_call``.

None of them keeps running statistics (no BatchNorm), so a model is fully described by its
parameters and can be trained functionally on stacked client weights.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

MODELS = ("simple-cnn", "cnn", "resnet18")
"""Architectures by name (the ``model`` key)."""


class SimpleCNN(nn.Module):
    """NIID-Bench's simple CNN (Li et al. 2022): two 5x5 convs (6, 16) and three FC layers."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class FedAvgCNN(nn.Module):
    """The CIFAR CNN of McMahan et al. 2017 (TensorFlow tutorial model, without LRN).

    Two 5x5 convs with 64 channels, each followed by a 3x3 stride-2 max-pool, then FC 384, FC 192
    and the linear classifier.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 5, padding=2)
        self.conv2 = nn.Conv2d(64, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * 8 * 8, 384)
        self.fc2 = nn.Linear(384, 192)
        self.fc3 = nn.Linear(192, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 3, stride=2, padding=1)
        x = F.max_pool2d(F.relu(self.conv2(x)), 3, stride=2, padding=1)
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def resnet18_gn(num_classes: int, groups: int = 2) -> nn.Module:
    """ResNet-18 for 32x32 inputs with GroupNorm (Hsieh et al. 2020 use 2 groups in FL).

    The CIFAR variant: a 3x3 stride-1 stem and no max-pool.
    """
    model = torchvision.models.resnet18(
        num_classes=num_classes, norm_layer=lambda c: nn.GroupNorm(groups, c)
    )
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_model(name: str, num_classes: int, seed: int | None = None) -> nn.Module:
    """The model ``name`` with ``num_classes`` outputs; ``seed`` fixes its initial weights."""
    builders = {"simple-cnn": SimpleCNN, "cnn": FedAvgCNN, "resnet18": resnet18_gn}
    if name not in builders:
        raise ValueError(f"model {name!r} is unknown: expected one of {', '.join(MODELS)}")
    if seed is None:
        return builders[name](num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builders[name](num_classes)


def check_functional(model: nn.Module) -> None:
    """Refuse models with running statistics: they cannot be trained on stacked weights."""
    for name, buf in model.named_buffers():
        raise ValueError(
            f"model buffer {name!r} (shape {tuple(buf.shape)}) is not supported: fedwsa trains "
            "models functionally, use GroupNorm instead of BatchNorm"
        )

"""Loss and accuracy along the straight line between two models, and the barrier on it
(METHODS.md section 3, the WSA paper's interpolation analysis)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedwsa.analysis.sources import EvalData, Weights
from fedwsa.server.evaluation import evaluate_many


@dataclass(frozen=True)
class LinearPath:
    """Central test loss and accuracy of (1 - t) a + t b at each t."""

    t: list[float]
    loss: list[float]
    accuracy: list[float]

    @property
    def loss_barrier(self) -> float:
        """Highest loss on the path minus the mean of the two ends' (0 for a flat path)."""
        return max(self.loss) - (self.loss[0] + self.loss[-1]) / 2

    @property
    def accuracy_barrier(self) -> float:
        """The same for accuracy, as a drop: the ends' mean minus the lowest accuracy."""
        return (self.accuracy[0] + self.accuracy[-1]) / 2 - min(self.accuracy)


def linear_path(model: nn.Module, a: Weights, b: Weights, test: EvalData,
                points: int = 11) -> LinearPath:
    """Evaluate ``points`` (>= 2) evenly spaced models from ``a`` (t = 0) to ``b`` (t = 1);
    the models are evaluated together (stacked with vmap on a GPU)."""
    if points < 2:
        raise ValueError(f"--points={points}: at least 2 (the two ends)")
    ts = [i / (points - 1) for i in range(points)]
    models = [{n: torch.lerp(a[n], b[n], t) for n in a} for t in ts]
    results = evaluate_many(model, models, test.images, test.labels, test.mean, test.std)
    return LinearPath(ts, [loss for loss, _ in results], [acc for _, acc in results])

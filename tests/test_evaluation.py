"""Central evaluation (fedwsa.server.evaluation): stacked passes over many models against a
plain loop that evaluates each model as an ``nn.Module`` on the whole test set at once."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from fedwsa.models import build_model
from fedwsa.server.evaluation import evaluate, evaluate_many, models_per_pass


def _reference(model: torch.nn.Module, params: dict[str, torch.Tensor], images: torch.Tensor,
               labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> tuple[float, float]:
    model.load_state_dict(params)
    with torch.no_grad():
        logits = model((images.float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))
    loss = F.cross_entropy(logits.double(), labels).item()
    accuracy = (logits.argmax(dim=1) == labels).double().mean().item()
    return loss, accuracy


@pytest.mark.parametrize("per_pass", [1, 3, 16])
def test_stacked_passes_match_evaluating_each_model_alone(per_pass: int) -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2500, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (2500,))
    mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
    model = build_model("simple-cnn", 10, seed=0)
    weights = [{k: v.detach().clone() for k, v in build_model("simple-cnn", 10, seed=s)
                .named_parameters()} for s in range(5)]
    weights[3] = {k: 3.0 * v for k, v in weights[3].items()}  # a confident, distinct model
    got = evaluate_many(model, weights, images, labels, mean, std, per_pass=per_pass)
    want = [_reference(model, w, images, labels, mean, std) for w in weights]
    assert len(got) == 5
    for (loss, acc), (ref_loss, ref_acc) in zip(got, want, strict=True):
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        assert acc == ref_acc
    assert len({acc for _, acc in got}) > 2  # the models really differ
    assert evaluate(model, weights[2], images, labels, mean, std) == got[2]


def test_stacking_is_for_gpus() -> None:
    assert models_per_pass(torch.device("cpu")) == 1
    assert models_per_pass(torch.device("cuda")) > 1

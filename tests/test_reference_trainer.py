"""Both trainers against a hand-written reference: a plain ``nn.Module`` and ``torch.optim.SGD``
loop per client with its loss written out by hand (cross-entropy from log-softmax, FedProx's
proximal term and the WSA KL term from the formulas of METHODS.md sections 1.1 and 4).

The sequential and batched trainers share the client-term code (``fedwsa.algorithms``), so
checking one against the other cannot catch a wrong term; this reference shares none of it.
Only the data order is taken from the same seeded generator, so the same batches are seen.
"""

from __future__ import annotations

import math

import nodes
import pytest
import torch
from torch.nn import functional as F

from fedwsa.algorithms import client_terms
from fedwsa.algorithms.base import ClientInputs
from fedwsa.clients.batched import BatchedTrainer
from fedwsa.clients.sequential import SequentialTrainer
from fedwsa.clients.trainer import CohortTask, LocalSettings
from fedwsa.config import make_config
from fedwsa.models import build_model

SIZES = (37, 5, 64, 20)
LAYERS = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"]
SETTINGS = LocalSettings(local_epochs=2, batch_size=16, lr=0.05, momentum=0.9,
                         weight_decay=1e-3, augment=False, seed=7)
ROUND = 3


def hand_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
              global_params: dict[str, torch.Tensor], mu: float, beta: float,
              target: tuple[list[float], list[float]]) -> torch.Tensor:
    """CE + mu/2 ||theta - theta_g||^2 + beta sum_l KL(N(m_l, s_l^2) || N(m*_l, s*_l^2))."""
    logits = model(x)
    ce = -logits.log_softmax(dim=1)[torch.arange(len(y)), y].mean()
    params = dict(model.named_parameters())
    prox = sum(((params[n] - global_params[n]) ** 2).sum() for n in params)
    kl = torch.zeros(())
    for j, name in enumerate(LAYERS):
        w = params[name].flatten()
        m = w.mean()
        s = ((w - m) ** 2).mean().sqrt()
        mt, st = target[0][j], target[1][j]
        kl = kl + math.log(st) - torch.log(s) + (s**2 + (m - mt) ** 2) / (2 * st**2) - 0.5
    return ce + mu / 2 * prox + beta * kl


def reference_client(node, cid: int, global_params: dict[str, torch.Tensor], mu: float,
                     beta: float, target: tuple[list[float], list[float]]
                     ) -> dict[str, torch.Tensor]:
    s = SETTINGS
    model = build_model("simple-cnn", node.num_classes)
    model.load_state_dict(global_params)
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum,
                          weight_decay=s.weight_decay)
    for x, y in nodes.reference_batches(node, cid, s, ROUND):
        loss = hand_loss(model, x, y, global_params, mu, beta, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("strategy", ["fedprox", "fedwsa", "fedavg"])
@pytest.mark.parametrize("trainer", ["sequential", "batched"])
def test_trainer_matches_the_hand_written_loop(strategy: str, trainer: str) -> None:
    node = nodes.make_node(SIZES, seed=0)
    model = build_model("simple-cnn", node.num_classes, seed=1)
    g = {k: v.detach().clone() for k, v in model.named_parameters()}
    mu = 0.3 if strategy == "fedprox" else 0.0
    beta = 0.5 if strategy == "fedwsa" else 0.0
    target = ([0.01, -0.02, 0.0, 0.005, 0.01], [0.08, 0.1, 0.03, 0.07, 0.2])
    inputs = ClientInputs(shared={
        "fedprox/mu": torch.tensor(mu), "wsa/beta": torch.tensor(beta),
        "wsa/mu": torch.tensor(target[0]), "wsa/sigma": torch.tensor(target[1])})
    config = make_config({"strategy": strategy, "prox-mu": mu, "wsa-beta": beta})
    terms = client_terms(config, g)
    assert [t.name for t in terms] == {"fedprox": ["fedprox"], "fedwsa": ["wsa"],
                                       "fedavg": []}[strategy]
    task = CohortTask(ROUND, list(range(len(SIZES))), g, inputs)
    if trainer == "batched":
        got = BatchedTrainer(model, node, SETTINGS, max_clients=3, terms=terms).train(task)
    else:
        got = SequentialTrainer(model, node, SETTINGS, terms).train(task)
    for k, cid in enumerate(task.client_ids):
        ref = reference_client(node, cid, g, mu, beta, target)
        for name in g:
            torch.testing.assert_close(got.params[name][k], ref[name], rtol=1e-4, atol=1e-5,
                                       msg=lambda m, n=name, c=cid: f"client {c} {n}: {m}")
    # The terms moved the weights: the same loop without them ends elsewhere.
    if strategy != "fedavg":
        plain = reference_client(node, 0, g, 0.0, 0.0, target)
        assert (plain["fc1.weight"] - got.params["fc1.weight"][0]).abs().max() > 1e-4


def test_hand_ce_is_torch_cross_entropy() -> None:
    logits, y = torch.randn(6, 10), torch.randint(0, 10, (6,))
    hand = -logits.log_softmax(dim=1)[torch.arange(6), y].mean()
    torch.testing.assert_close(hand, F.cross_entropy(logits, y))

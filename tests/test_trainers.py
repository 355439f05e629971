"""Batched vs sequential trainer: the same per-client weights for a ragged cohort, with and
without the algorithms' client terms (loss terms, per-client inputs, step corrections and
per-client outputs)."""

from __future__ import annotations

import nodes
import pytest
import torch

from fedwsa.algorithms.base import ClientInputs, ClientTerm, namespaced
from fedwsa.algorithms.fedprox import ProxTerm
from fedwsa.algorithms.wsa import WsaTerm
from fedwsa.clients.batched import BatchedTrainer, plan_chunks
from fedwsa.clients.node import NodeData
from fedwsa.clients.sequential import SequentialTrainer
from fedwsa.clients.trainer import CohortTask, LocalSettings
from fedwsa.maths.scope import model_scopes, regularised_names
from fedwsa.models import build_model

SIZES = (37, 5, 64, 1, 20)  # ragged: short last batches, a 1-example client, an exact multiple


def make_node(sizes: tuple[int, ...] = SIZES) -> NodeData:
    return nodes.make_node(sizes, seed=0)


def settings(augment: bool, epochs: int = 2) -> LocalSettings:
    return LocalSettings(local_epochs=epochs, batch_size=16, lr=0.05, momentum=0.9,
                         weight_decay=1e-3, augment=augment, seed=7)


class AnchorTerm(ClientTerm):
    """A test term that uses every hook: a per-client anchor pulls fc3's bias (loss), each
    step shrinks fc3's weight by a per-client factor (after_step), and the client reports its
    drift from the global model over its step count (outputs), as SCAFFOLD will."""

    name = "anchor"

    def loss(self, params, global_params, shared, own):
        return shared["scale"] * ((params["fc3.bias"] - own["bias"]) ** 2).sum()

    def after_step(self, params, shared, own, lr):
        f = own["shrink"]  # [] on one client, [k] on a stack: broadcast over the weight's dims
        params["fc3.weight"].mul_((1 - lr * f).reshape(*f.shape, 1, 1))

    def outputs(self, params, global_params, shared, own, steps, lr):
        return {"drift": (global_params["fc3.bias"] - params["fc3.bias"]) / (steps * lr)}


def wsa_inputs(global_params) -> ClientInputs:
    names = regularised_names(global_params)
    mu, sigma = model_scopes(global_params, names)
    return ClientInputs(shared=namespaced("wsa", {
        "beta": torch.tensor(0.5), "mu": mu * 0 + 0.01, "sigma": sigma * 1.5}))


def run_both(augment: bool, wsa: bool = False, max_clients: int = 0, prox: bool = False,
             anchor: bool = False):
    node = make_node()
    model = build_model("simple-cnn", node.num_classes, seed=1)
    global_params = {k: v.detach().clone() for k, v in model.named_parameters()}
    terms: list[ClientTerm] = []
    inputs = ClientInputs()
    K = len(SIZES)
    if wsa:
        terms.append(WsaTerm(regularised_names(global_params)))
        inputs = inputs.merged(wsa_inputs(global_params))
    if prox:
        terms.append(ProxTerm())
        inputs = inputs.merged(ClientInputs(shared={"fedprox/mu": torch.tensor(0.3)}))
    if anchor:
        terms.append(AnchorTerm())
        gen = torch.Generator().manual_seed(5)
        inputs = inputs.merged(ClientInputs(
            shared={"anchor/scale": torch.tensor(0.2)},
            per_client={"anchor/bias": torch.randn(K, 10, generator=gen),
                        "anchor/shrink": torch.rand(K, generator=gen)}))
    task = CohortTask(3, list(range(K)), global_params, inputs)
    s = settings(augment)
    seq = SequentialTrainer(model, node, s, terms).train(task)
    bat = BatchedTrainer(model, node, s, max_clients=max_clients, terms=terms).train(task)
    return seq, bat


def assert_same_clients(seq, bat) -> None:
    assert seq.client_ids == bat.client_ids and seq.num_examples == bat.num_examples
    for name in seq.params:
        torch.testing.assert_close(bat.params[name], seq.params[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(bat.train_loss), torch.tensor(seq.train_loss),
                               rtol=1e-4, atol=1e-5)
    assert seq.steps == bat.steps
    assert set(seq.outputs) == set(bat.outputs)
    for name in seq.outputs:
        torch.testing.assert_close(bat.outputs[name], seq.outputs[name], rtol=1e-4, atol=1e-5)


def test_batched_equals_sequential_per_client() -> None:
    assert_same_clients(*run_both(augment=False))


def test_batched_equals_sequential_with_flips(monkeypatch: pytest.MonkeyPatch) -> None:
    """Augmentation on, crops centred: the same images reach both trainers, float-exactly."""
    import fedwsa.clients.batches as batches

    draw = batches.sample_augmentation

    def centred(n: int, gen: torch.Generator):
        offsets, flips = draw(n, gen)
        assert n < 16 or (flips.any() and not flips.all())
        return torch.full_like(offsets, 4), flips

    monkeypatch.setattr(batches, "sample_augmentation", centred)
    assert_same_clients(*run_both(augment=True))


def test_batched_equals_sequential_with_random_crops() -> None:
    """Random crops and flips. On a CPU both trainers run the same per-client convolution
    kernels (fedwsa.clients.per_client_conv), so even the near-tied max-pool windows that the
    crops' zero border creates break the same way, and the results agree to float noise.
    (With vmap's grouped convolutions they did not: a tie broken differently moved ~1e-3 of
    the update.)"""
    assert_same_clients(*run_both(augment=True))


def test_batched_equals_sequential_with_wsa_and_chunks() -> None:
    assert_same_clients(*run_both(augment=False, wsa=True, max_clients=2))


def test_batched_equals_sequential_with_prox_and_wsa() -> None:
    seq, bat = run_both(augment=False, wsa=True, prox=True, max_clients=3)
    assert_same_clients(seq, bat)
    plain, _ = run_both(augment=False)
    assert not torch.allclose(seq.params["fc1.weight"], plain.params["fc1.weight"])


def test_every_term_hook_runs_the_same_in_both_trainers() -> None:
    """Per-client inputs in, a step correction, per-client outputs back: ragged clients in
    chunks of 2 (so the batched trainer reorders them) give the same rows as one by one."""
    seq, bat = run_both(augment=False, anchor=True, max_clients=2)
    assert_same_clients(seq, bat)
    assert seq.steps == [2 * -(-n // 16) for n in SIZES]
    assert seq.outputs["anchor/drift"].shape == (len(SIZES), 10)


def test_clients_train_independently_of_their_cohort() -> None:
    """A client's result does not depend on which other clients share its batch."""
    node = make_node()
    model = build_model("simple-cnn", node.num_classes, seed=1)
    g = {k: v.detach().clone() for k, v in model.named_parameters()}
    s = settings(augment=False)
    alone = BatchedTrainer(model, node, s).train(CohortTask(1, [2], g))
    together = BatchedTrainer(model, node, s).train(CohortTask(1, [0, 1, 2, 3], g))
    for name in g:
        torch.testing.assert_close(together.params[name][2], alone.params[name][0],
                                   rtol=1e-4, atol=1e-5)


def test_chunks_group_similar_step_counts() -> None:
    sizes = {0: 100, 1: 3, 2: 90, 3: 5, 4: 50}
    chunks = plan_chunks(sizes, settings(False, epochs=1), max_clients=2)
    assert chunks == [[0, 2], [4, 1], [3]]  # ties (1 step each) by id
    assert plan_chunks(sizes, settings(False, epochs=1), max_clients=0) == [[0, 2, 4, 1, 3]]


def test_wasted_fraction_counts_padding_only() -> None:
    _, bat = run_both(augment=False)
    # Only the short last batches are padded: real = 2 epochs x 127 examples.
    B = 16
    padded = sum(2 * (-(-n // B)) * B for n in SIZES)
    assert bat.stats["wasted-fraction"] == pytest.approx(1 - 2 * sum(SIZES) / padded)

"""Every tensor the maths, the algorithms, the trainers and evaluation create lives on the device
of their inputs (issue 17, item 7).

Most tests run on the ``meta`` device, on any machine: meta tensors carry shape, dtype and
device but no data, and an op that mixes a meta tensor with a non-scalar CPU tensor raises.
Not every mismatch raises there (``torch.tensordot`` of a CPU and a meta tensor returns a CPU
tensor; the ``_foreach`` ops accept CPU operands), so every test asserts its outputs' devices
and dtypes. Inputs the server holds on the CPU in a real run (client weights p_i, step counts,
the WSA target, optimiser state restored from a checkpoint) are CPU tensors here, next to model
weights on meta: the CPU-weights-next-to-GPU-model case of a GPU run.

Meta tensors cannot be read back to the host (``bool``, ``float``, ``.tolist()``, ``.cpu()``
raise), so what does that runs in the ``*_on_device`` tests instead, parametrized over the CPU
and CUDA (the CUDA case is skipped without a GPU; the CPU case checks the test itself):
``finite_clients`` and ``sigma_spread``; WSA's and SCAFFOLD's server parts (they keep their
state on the CPU) and so every preset's ``aggregate`` with them; ``round_metrics``; both
trainers end to end (the sequential trainer and the batched trainer's chunk bookkeeping read
losses back); ``evaluate_many``; the analysis' ``merge_accuracies`` and ``magnitude_curve``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nodes
import pytest
import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

import fedwsa.algorithms.cart as cart_module
import fedwsa.analysis.merging as analysis_merging
from fedwsa.algorithms import ClientInputs, ClientUpdates
from fedwsa.algorithms.base import ClientTerm, take_rows
from fedwsa.algorithms.client_state import ClientStateStore
from fedwsa.algorithms.fednova import normaliser
from fedwsa.algorithms.fedprox import ProxTerm
from fedwsa.algorithms.scaffold import ScaffoldTerm
from fedwsa.algorithms.wsa import WsaTerm
from fedwsa.analysis.merging import (
    magnitude_curve,
    mean_weights,
    merge_accuracies,
    stacked_outputs,
)
from fedwsa.analysis.sources import EvalData
from fedwsa.clients.batched import BatchedTrainer, layout_chunk, longest_first
from fedwsa.clients.batches import epoch_plan, load_images
from fedwsa.clients.failures import train_cohort
from fedwsa.clients.node import NodeData
from fedwsa.clients.per_client_conv import with_per_client_convs
from fedwsa.clients.sequential import SequentialTrainer
from fedwsa.clients.trainer import CohortTask, LocalSettings
from fedwsa.config import make_config
from fedwsa.maths import merging
from fedwsa.maths.merging import cart, finite_clients, weighted_average
from fedwsa.maths.scope import (
    align_to_scope,
    fuse_scopes,
    layer_scope,
    model_scopes,
    regularised_names,
    scope_kl,
    sigma_spread,
    stacked_scopes,
    wsa_penalty,
)
from fedwsa.models import build_model
from fedwsa.protocol import TrainReply
from fedwsa.server.evaluation import _stack_sums, evaluate_many
from fedwsa.strategies import CohortStrategy

META = torch.device("meta")
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(
               not torch.cuda.is_available(), reason="needs a CUDA device"))]
K = 3  # clients


def tensors_of(obj: Any) -> list[Tensor]:
    """Every tensor in a (nested) tensor, mapping, list or tuple."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors_of(v)]
    return []


def assert_on(obj: Any, device: torch.device | str) -> None:
    """``obj`` holds tensors, every one of them on ``device`` (any index of its type)."""
    found = tensors_of(obj)
    assert found, "no tensor to check"
    assert {t.device.type for t in found} == {torch.device(device).type}, \
        [(t.device, tuple(t.shape)) for t in found]


def assert_like(out: Mapping[str, Tensor], ref: Mapping[str, Tensor], merged: bool = False
                ) -> None:
    """``out`` has ``ref``'s names, and each tensor its device, dtype and shape (``merged``:
    ``out`` merges ``ref``'s client stacks, so without their leading axis)."""
    assert list(out) == list(ref)
    for n, v in out.items():
        shape = ref[n].shape[1:] if merged else ref[n].shape
        assert (v.device, v.dtype, v.shape) == (ref[n].device, ref[n].dtype, shape), n


def stacked_weights(device: torch.device | str) -> dict[str, Tensor]:
    """K clients' weights of a small model: a conv kernel, a linear matrix (float64), a float16
    vector and an integer counter."""
    return {
        "conv.weight": torch.randn(K, 4, 2, 3, 3, device=device),
        "conv.bias": torch.randn(K, 4, device=device),
        "fc.weight": torch.randn(K, 5, 6, dtype=torch.float64, device=device),
        "fc.bias": torch.randn(K, 5, device=device).half(),
        "norm.count": torch.randint(0, 9, (K,), device=device),
    }


CPU_WEIGHTS = torch.tensor([1.0, 2.0, 3.0])  # as the server holds them: on the CPU


# --- fedwsa.maths.merging ----------------------------------------------------------------------

def test_weighted_average_follows_the_weights_not_p() -> None:
    stacked = stacked_weights(META)
    assert_like(weighted_average(stacked, CPU_WEIGHTS), stacked, merged=True)


@pytest.mark.parametrize(("svd", "seed"), [("exact", None), ("randomized", None),
                                            ("randomized", 7)])
@pytest.mark.parametrize("conv", [True, False])
def test_cart_follows_the_weights_in_every_path(svd: str, seed: int | None, conv: bool) -> None:
    """The randomized path scaled its singular values by p on the weights' device (the CPU
    here, the GPU's deltas next to it): the issue's example."""
    stacked = stacked_weights(META)
    out = cart(stacked, CPU_WEIGHTS, rank=0.5, lam=0.3, conv=conv, svd=svd, seed=seed)
    assert_like(out, stacked, merged=True)


@pytest.mark.parametrize("device", DEVICES)
def test_merging_on_device(device: str) -> None:
    """CPU weights p next to the device's stacked weights; ``finite_clients`` answers on the
    CPU (it is read there), whatever the weights' device."""
    stacked = stacked_weights(device)
    assert_like(weighted_average(stacked, CPU_WEIGHTS), stacked, merged=True)
    for svd in ("exact", "randomized"):
        assert_like(cart(stacked, CPU_WEIGHTS, 0.5, 0.3, svd=svd, seed=1), stacked,
                    merged=True)
    assert_like(cart(stacked, CPU_WEIGHTS.to(device), 0.5, 0.3), stacked, merged=True)
    flags = finite_clients(stacked)
    assert (flags.device.type, flags.dtype, flags.tolist()) == ("cpu", torch.bool, [True] * K)


@pytest.mark.parametrize("device", DEVICES)
def test_a_node_sums_its_clients_on_their_device(device: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``node-aggregate``: the sum and the scopes are made where the clients' weights are, in
    float64 chunks of clients, and equal a float64 loop over the clients on the CPU."""
    monkeypatch.setattr(merging, "FLOAT64_CHUNK_BYTES", 8 * 4 * 2 * 3 * 3 * 2)  # 2 conv rows
    cpu = {n: v for n, v in stacked_weights("cpu").items() if v.is_floating_point()}
    reply = TrainReply([0, 1, 2], {n: v.to(device) for n, v in cpu.items()}, [10, 20, 30],
                       [0.1] * K, steps=[1] * K)
    c = torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64)
    summed = reply.summed(c)
    assert summed.sums is not None and summed.scopes is not None
    assert_on(summed.sums, device)
    assert_on([summed.scopes.mu, summed.scopes.sigma], device)
    for name, t in cpu.items():
        reference = sum(c[i] * t[i].double() for i in range(K))
        torch.testing.assert_close(summed.sums[name].cpu(), reference, rtol=1e-12, atol=1e-12)
    for j, name in enumerate(summed.scopes.names):
        w = cpu[name].double().reshape(K, -1)
        torch.testing.assert_close(summed.scopes.mu[:, j].cpu().double(), w.mean(1),
                                   rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(summed.scopes.sigma[:, j].cpu().double(),
                                   w.std(1, correction=0), rtol=1e-6, atol=1e-7)


# --- fedwsa.maths.scope ------------------------------------------------------------------------

def model_weights(device: torch.device | str, dtype: torch.dtype = torch.float32
                  ) -> dict[str, Tensor]:
    return {"conv.weight": torch.randn(4, 2, 3, 3, dtype=dtype, device=device),
            "conv.bias": torch.randn(4, dtype=dtype, device=device),
            "fc.weight": torch.randn(5, 6, dtype=dtype, device=device)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scopes_follow_the_weights(dtype: torch.dtype) -> None:
    params = model_weights(META, dtype)
    names = regularised_names(params)
    stacked = {n: v.unsqueeze(0).expand(K, *v.shape) for n, v in params.items()}
    for mu, sigma, shape in [(*layer_scope(params["fc.weight"]), ()),
                             (*model_scopes(params, names), (2,)),
                             (*model_scopes(params, []), (0,)),
                             (*stacked_scopes(stacked, names), (K, 2)),
                             (*stacked_scopes(stacked, []), (K, 0))]:
        for t in (mu, sigma):
            assert (t.device, t.dtype, tuple(t.shape)) == (META, dtype, shape)


def test_kl_and_penalty_follow_the_weights_also_under_vmap() -> None:
    params = model_weights(META)
    names = regularised_names(params)
    mu_t, sigma_t = torch.zeros(2, device=META), torch.ones(2, device=META)
    kl = scope_kl(*model_scopes(params, names), mu_t, sigma_t)
    assert (kl.device, kl.dtype, tuple(kl.shape)) == (META, torch.float32, (2,))
    for penalty in (wsa_penalty(params, names, mu_t, sigma_t), wsa_penalty(params, [], mu_t,
                                                                             sigma_t)):
        assert (penalty.device, penalty.dtype, penalty.shape) == (META, torch.float32, ())
    stacked = {n: v.unsqueeze(0).expand(K, *v.shape) for n, v in params.items()}
    per_client = vmap(lambda p: wsa_penalty(p, names, mu_t, sigma_t))(stacked)
    assert (per_client.device, tuple(per_client.shape)) == (META, (K,))


@pytest.mark.parametrize("rule", ["mean", "mixture"])
def test_fused_scopes_follow_the_client_scopes_not_the_weights(rule: str) -> None:
    mu = torch.randn(K, 2, dtype=torch.float64, device=META)
    sigma = torch.rand(K, 2, dtype=torch.float64, device=META)
    for t in fuse_scopes(mu, sigma, CPU_WEIGHTS, rule):
        assert (t.device, t.dtype, tuple(t.shape)) == (META, torch.float64, (2,))


def test_align_to_scope_follows_the_weights_not_the_cpu_target() -> None:
    params = model_weights(META)
    names = regularised_names(params)
    out = align_to_scope(params, names, torch.zeros(2, dtype=torch.float64), torch.ones(2))
    assert_like(out, params)


@pytest.mark.parametrize("device", DEVICES)
def test_scope_maths_on_device(device: str) -> None:
    params = model_weights(device)
    names = regularised_names(params)
    stacked = {n: torch.stack([v, v * 2, v * 3]) for n, v in params.items()}
    mu, sigma = stacked_scopes(stacked, names)
    assert_on(fuse_scopes(mu, sigma, CPU_WEIGHTS, "mixture"), device)
    assert_like(align_to_scope(params, names, torch.zeros(2), torch.ones(2)), params)
    assert isinstance(sigma_spread(sigma), float)


# --- fedwsa.algorithms: the data the parts exchange, the client terms --------------------------

def test_client_updates_rows_and_the_fednova_normaliser_follow_their_inputs() -> None:
    updates = ClientUpdates([0, 1, 2], stacked_weights(META),
                            torch.tensor([4, 5, 6], device=META), [0.0] * K)
    assert (updates.weights.device, updates.weights.dtype) == (META, torch.float32)
    rows = take_rows(updates.params, [2, 0])
    assert_on(rows, META)
    assert_on(take_rows(stacked_weights("cpu"), [1], device=META), META)  # CPU rows to a chunk
    assert_on(ClientInputs(per_client=updates.params).rows([1, 2]).per_client, META)
    for momentum in (0.0, 0.9):
        a = normaliser(torch.tensor([3, 4, 5], device=META), momentum)
        assert (a.device, a.dtype) == (META, torch.float64)


def test_the_client_state_store_reads_onto_the_asked_device(tmp_path: Path) -> None:
    layout = model_weights(META)
    store = ClientStateStore(tmp_path / "store", layout, "scaffold-store")
    rows = store.read([3, 1], device=META)
    assert_like(rows, {n: v.unsqueeze(0).expand(2, *v.shape) for n, v in layout.items()})


def test_client_terms_stay_on_the_clients_device() -> None:
    """Each hook on a stack of clients, inputs as the trainers pass them (on the device)."""
    params = {n: v.float() for n, v in stacked_weights(META).items() if n != "norm.count"}
    global_params = {n: v[0].clone() for n, v in params.items()}
    grads = {n: torch.zeros_like(v) for n, v in params.items()}
    for mu in (torch.tensor(0.01, device=META), torch.full((K,), 0.01, device=META)):
        ProxTerm().correct_grad(grads, params, global_params, {"mu": mu}, {})
    ScaffoldTerm().after_step(params, {}, {n: torch.ones_like(v) for n, v in params.items()},
                              0.1)
    assert_like(grads, params)
    assert_on(params, META)
    names = regularised_names(global_params)
    shared = {"beta": torch.tensor(0.1, device=META), "mu": torch.zeros(2, device=META),
              "sigma": torch.ones(2, device=META)}
    loss = WsaTerm(names).loss(global_params, global_params, shared, {})
    assert (loss.device, loss.dtype, loss.shape) == (META, torch.float32, ())


# --- fedwsa.algorithms + fedwsa.strategies: the server side ------------------------------------

def strategy_config(preset: str, tmp_path: Path, **keys: Any) -> Any:
    values: dict[str, Any] = {"strategy": preset, "run-dir": str(tmp_path), "momentum": 0.9}
    if preset == "fedavgm":
        values.update({"server-momentum": 0.9, "server-lr": 0.5})
    values.update(keys)
    return make_config(values)


def simple_cnn_updates(device: torch.device | str, seed: int = 0
                       ) -> tuple[dict[str, Tensor], ClientUpdates]:
    """A simple CNN's global model and K clients' weights near it, on ``device``; example and
    step counts on the CPU (as ``collect`` builds them)."""
    gen = torch.Generator().manual_seed(seed)
    layout = {n: torch.randn(p.shape, generator=gen) * 0.1
              for n, p in build_model("simple-cnn", 10).named_parameters()}
    params = {n: torch.stack([v + 0.01 * torch.randn(v.shape, generator=gen) for _ in range(K)])
              for n, v in layout.items()}
    updates = ClientUpdates([0, 1, 2], {n: v.to(device) for n, v in params.items()},
                            torch.tensor([30, 20, 50]), [1.0] * K, steps=torch.tensor([3, 2, 5]))
    return {n: v.to(device) for n, v in layout.items()}, updates


META_PRESETS = ["fedavg", "fedprox", "cart", "fednova", "fedavgm", "fedadam", "fedyogi",
                "fedadagrad"]


@pytest.mark.parametrize("preset", META_PRESETS)
def test_aggregate_follows_the_clients_weights(preset: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Two rounds (the server optimisers' state comes in round 2), CPU weights and steps next
    to weights on meta; CART's merge device resolves to meta."""
    monkeypatch.setattr(cart_module, "resolve_device", lambda name: META)
    strategy = CohortStrategy(strategy_config(preset, tmp_path))
    for server_round in (1, 2):
        global_params, updates = simple_cnn_updates(META)
        new_global = strategy.aggregate(server_round, global_params, updates)
        assert_like(new_global, global_params)


@pytest.mark.parametrize("preset", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_optimiser_state_restored_on_the_cpu_follows_the_model(preset: str,
                                                               tmp_path: Path) -> None:
    """A checkpoint's state comes back on the CPU (``cloned_tensors``); the next step runs on
    the model's device."""
    strategy = CohortStrategy(strategy_config(preset, tmp_path))
    global_params, updates = simple_cnn_updates(META)
    cpu = {n: torch.zeros(v.shape) for n, v in global_params.items()}
    state = {"velocity": cpu} if preset == "fedavgm" else {"m": cpu, "v": cpu}
    strategy.load_state_dict({strategy.composition.optimizer.name: state})  # type: ignore[union-attr]
    new_global = strategy.aggregate(3, global_params, updates)
    assert_like(new_global, global_params)


ALL_PRESETS = [*META_PRESETS, "fedwsa", "fedwsa-cart", "fedwsa-fednova", "scaffold",
               "fedwsa-scaffold"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_aggregate_and_round_metrics_on_device(device: str, preset: str,
                                               tmp_path: Path) -> None:
    """Every preset, global model and clients on the device (WSA aligning the new model to a
    target fused by the ``global`` rule); the parts' own state stays on the CPU."""
    keys = {"wsa-align-global": True, "wsa-fusion": "global"} if "wsa" in preset else {}
    strategy = CohortStrategy(strategy_config(preset, tmp_path, **keys))
    for server_round in (1, 2):
        global_params, updates = simple_cnn_updates(device, seed=server_round)
        metrics = strategy.round_metrics(server_round, global_params, updates)
        assert all(isinstance(v, float) for v in metrics.values())
        new_global = strategy.aggregate(server_round, global_params, updates)
        assert_like(new_global, global_params)
    if "wsa" in preset:
        assert_on(strategy.part("wsa").target, "cpu")
    if "scaffold" in preset:
        assert_on(strategy.part("scaffold").c, "cpu")


# --- fedwsa.clients ----------------------------------------------------------------------------

SETTINGS = LocalSettings(local_epochs=2, batch_size=4, lr=0.05, momentum=0.9,
                         weight_decay=1e-3, augment=True, seed=3)
SIZES = (5, 9, 3)


def meta_node() -> NodeData:
    """A node whose data live on meta; pixel statistics on the CPU (``normalize`` moves them)."""
    n, parts, start = sum(SIZES), [], 0
    for size in SIZES:
        parts.append(torch.arange(start, start + size, device=META))
        start += size
    return NodeData(META, torch.empty(n, 3, 32, 32, dtype=torch.uint8, device=META),
                    torch.empty(n, dtype=torch.long, device=META), torch.full((3,), 120.0),
                    torch.full((3,), 60.0), 10, tuple(parts))


@pytest.mark.parametrize("augment", [True, False])
def test_an_epoch_plan_and_a_chunk_layout_live_on_the_node_device(augment: bool) -> None:
    """The draws are made on the CPU (reproducible on every device) and moved; the layout's
    step counts stay on the CPU (the host reads them)."""
    node, settings = meta_node(), dataclasses.replace(SETTINGS, augment=augment)
    plan = epoch_plan(node, 1, 3, 1, 0, augment)
    assert_on([plan.order, plan.offsets, plan.flips], META)
    ids = longest_first({c: node.client_size(c) for c in range(len(SIZES))}, settings)
    layout = layout_chunk(node, ids, settings, 1)
    want = {"indices": torch.long, "labels": torch.long, "sample_weight": torch.float32,
            "loss_mask": torch.float32}
    if augment:
        want.update({"offsets": torch.long, "flips": torch.bool})
    else:
        assert layout.offsets is None and layout.flips is None
    for field, dtype in want.items():
        t = getattr(layout, field)
        assert (t.device, t.dtype) == (META, dtype), field
    assert layout.steps.device.type == "cpu"
    x = load_images(node, layout.indices[:, 0], layout.offsets[:, 0] if augment else None,
                    layout.flips[:, 0] if augment else None)
    assert (x.device, x.dtype, tuple(x.shape)) == (META, torch.float32, (K, 4, 3, 32, 32))


class StepsTerm(ClientTerm):
    """A term with an output: each client's step count times lr (checks ``steps``' device)."""

    name = "steps"

    def outputs(self, params: Mapping[str, Tensor], global_params: Mapping[str, Tensor],
                shared: Mapping[str, Tensor], own: Mapping[str, Tensor], steps: Tensor,
                lr: float) -> dict[str, Tensor]:
        return {"lr-steps": steps.to(torch.float32) * lr}


def terms_and_inputs(global_params: Mapping[str, Tensor]
                     ) -> tuple[list[ClientTerm], dict[str, Tensor], dict[str, Tensor]]:
    """WSA, FedProx, SCAFFOLD and an output term; their inputs as they come off the wire (CPU):
    shared, and per client."""
    names = regularised_names(global_params)
    terms = [WsaTerm(names), ProxTerm(), ScaffoldTerm(), StepsTerm()]
    shared = {"wsa/beta": torch.tensor(0.1), "wsa/mu": torch.zeros(len(names)),
              "wsa/sigma": torch.full((len(names),), 0.05), "fedprox/mu": torch.tensor(0.01)}
    per_client = {f"scaffold/{n}": torch.full((K, *v.shape), 1e-3)
                  for n, v in global_params.items()}
    return terms, shared, per_client


def cohort_task(global_params: dict[str, Tensor], fused: bool) -> tuple[list[ClientTerm],
                                                                        CohortTask]:
    """All inputs on the CPU; ``fused``: as ``train_fused`` builds it (per-run start weights,
    shared inputs and lr/momentum/weight decay rows, and a table of per-client rows that two
    clients share)."""
    terms, shared, per_client = terms_and_inputs(global_params)
    if not fused:
        return terms, CohortTask(1, [0, 1, 2], global_params, ClientInputs(shared, per_client))
    hyper = {"neg-lr": torch.tensor([-0.05, -0.1]), "momentum": torch.tensor([0.9, 0.0]),
             "weight-decay": torch.tensor([1e-3, 0.0])}
    table = {n: v[:2] for n, v in per_client.items()}
    return terms, CohortTask(1, [0, 1, 2], global_params, ClientInputs(per_client=table),
                             own_of={n: (0, 1, 1) for n in table},
                             run_params={n: torch.stack([v, v + 0.01])
                                         for n, v in global_params.items()},
                             run_shared={n: torch.stack([v] * 2) for n, v in shared.items()},
                             run_of=(0, 1, 1), run_hyper=hyper)


@pytest.mark.parametrize("fused", [False, True])
def test_the_batched_step_maths_run_on_the_node_device(fused: bool) -> None:
    """A chunk's local SGD (``_run_steps``: gathers, augmentation, ``vmap(grad)`` with the WSA
    loss, FedProx's gradient, momentum and weight decay (per client when fused), SCAFFOLD's
    step) and the terms' outputs, from CPU inputs on a meta node. The chunk's bookkeeping
    (``_train_chunk``) reads losses back, so it runs in the on-device test only."""
    node = meta_node()
    global_params = {n: v.detach() for n, v in build_model("simple-cnn", 10).named_parameters()}
    terms, task = cohort_task(global_params, fused)
    trainer = BatchedTrainer(build_model("simple-cnn", 10), node, SETTINGS, terms=terms)
    ids = longest_first({c: node.client_size(c) for c in task.client_ids}, SETTINGS)
    inputs = trainer._chunk_inputs(trainer._round(task), ids)
    assert_on([inputs.global_params, inputs.shared, inputs.own, inputs.hyper or {}], META)
    layout = layout_chunk(node, ids, SETTINGS, 1)
    params, ce = trainer._run_steps(
        inputs, layout, trainer._grad_fn("grouped", 0, inputs.per_client))
    assert_like(params, {n: v.unsqueeze(0).expand(K, *v.shape).to(META)
                         for n, v in global_params.items()})
    assert (ce.device, ce.dtype, tuple(ce.shape)) == (META, torch.float32, (K,))
    outputs = trainer._outputs(inputs, params, layout.steps)
    assert list(outputs) == ["steps/lr-steps"]
    assert (outputs["steps/lr-steps"].device, outputs["steps/lr-steps"].shape) == (META, (K,))


def test_per_client_convolutions_run_on_the_weights_device() -> None:
    model = with_per_client_convs(build_model("simple-cnn", 10)).to(META)
    params = {n: v.detach().unsqueeze(0).expand(K, *v.shape).clone()
              for n, v in model.named_parameters()}
    x = torch.empty(K, 4, 3, 32, 32, device=META)
    y = torch.zeros(K, 4, dtype=torch.long, device=META)

    def loss(p: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, p, (xb,)), yb)

    grads = vmap(grad(loss))(params, x, y)
    assert_like(grads, params)


def node_on(device: str) -> NodeData:
    node = nodes.make_node(SIZES)
    return dataclasses.replace(
        node, device=torch.device(device), images=node.images.to(device),
        labels=node.labels.to(device), partitions=tuple(p.to(device) for p in node.partitions))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["sequential", "batched"])
def test_trainers_return_their_clients_on_the_node_device(device: str, kind: str) -> None:
    """Both trainers end to end (through ``train_cohort``), every input from the CPU."""
    node = node_on(device)
    model = build_model("simple-cnn", node.num_classes, seed=0)
    global_params = {n: v.detach() for n, v in model.named_parameters()}
    terms, task = cohort_task(global_params, fused=False)
    trainer = (SequentialTrainer(model, node, SETTINGS, terms) if kind == "sequential"
               else BatchedTrainer(model, node, SETTINGS, cpu_workers=1, terms=terms))
    result = train_cohort(trainer, task, seed=0)
    assert result.client_ids == [0, 1, 2] and not result.failures
    assert_on([result.params, result.outputs], device)
    assert all(isinstance(v, float) for v in result.train_loss)


# --- fedwsa.server.evaluation and fedwsa.analysis.merging --------------------------------------

def test_evaluation_sums_live_on_the_images_device() -> None:
    """Weights and labels on the CPU are moved to the images' device."""
    model = build_model("simple-cnn", 10).to(META)
    cpu_weights = {n: v.detach() for n, v in build_model("simple-cnn", 10).named_parameters()}
    meta_weights = {n: torch.empty_like(v, device=META) for n, v in cpu_weights.items()}
    images = torch.empty(7, 3, 32, 32, dtype=torch.uint8, device=META)
    loss_sum, correct = _stack_sums(model, [cpu_weights, meta_weights], images,
                                    torch.zeros(7, dtype=torch.long), torch.full((3,), 120.0),
                                    torch.full((3,), 60.0))
    assert (loss_sum.device, loss_sum.dtype, tuple(loss_sum.shape)) == (META, torch.float64, (2,))
    assert (correct.device, correct.dtype, tuple(correct.shape)) == (META, torch.int64, (2,))


@pytest.mark.parametrize("per_pass", [1, 2])
def test_analysis_outputs_live_on_the_inputs_device(per_pass: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """One weight set per pass (a CPU) or several under ``vmap`` (a GPU)."""
    monkeypatch.setattr(analysis_merging, "models_per_pass", lambda device: per_pass)
    model = build_model("simple-cnn", 10).to(META)
    models = [{n: torch.empty_like(v) for n, v in model.named_parameters()} for _ in range(K)]
    merged = mean_weights(models)
    assert_like(merged, models[0])
    out = stacked_outputs(model, [*models, merged], torch.empty(6, 3, 32, 32, device=META))
    assert (out.device, out.dtype, tuple(out.shape)) == (META, torch.float32, (K + 1, 6, 10))


@pytest.mark.parametrize("device", DEVICES)
def test_evaluation_and_analysis_on_device(device: str) -> None:
    """The images' device; labels and weights given on the CPU are moved there."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (12,), generator=gen)
    mean, std = torch.full((3,), 120.0), torch.full((3,), 60.0)
    model = build_model("simple-cnn", 10, seed=0).to(device)
    weights = [{n: v.detach() * (1 + 0.1 * i) for n, v in build_model(
        "simple-cnn", 10, seed=0).named_parameters()} for i in range(K)]
    loss_sum, correct = _stack_sums(model, weights, images.to(device), labels, mean, std)
    assert_on([loss_sum, correct], device)
    results = evaluate_many(model, weights, images.to(device), labels, mean, std)
    assert len(results) == K and all(0.0 <= acc <= 1.0 for _, acc in results)
    on_device = [{n: v.to(device) for n, v in w.items()} for w in weights]
    data = EvalData(images.to(device), labels.to(device), mean.to(device), std.to(device))
    accuracies = merge_accuracies(model, on_device, data, [1, K])
    assert [a.n for a in accuracies] == [1, K]
    assert all(0.0 <= a.weight_average <= 1.0 for a in accuracies)
    curve = magnitude_curve(model, on_device[0], data, "client 0", factors=(0.5, 2.0))
    assert len(curve.accuracy) == len(curve.changed) == 2

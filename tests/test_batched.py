"""The batched trainer beyond per-client equivalence: a whole round through the ClientApp,
bf16 autocast, models it must refuse, ResNet-18 with GroupNorm, and its reported statistics."""

from __future__ import annotations

import pytest
import torch
from fakes import FakeGrid, train_reply
from torch import nn

from fedwsa.algorithms import client_terms
from fedwsa.algorithms.base import ClientTerm
from fedwsa.clients import batched
from fedwsa.clients.batched import BatchedTrainer, layout_chunk, plan_chunks
from fedwsa.clients.node import NodeData, node_data
from fedwsa.clients.sequential import SequentialTrainer
from fedwsa.clients.trainer import CohortTask, LocalSettings
from fedwsa.config import make_config
from fedwsa.data import load_dataset
from fedwsa.models import build_model
from fedwsa.protocol import from_arrays, to_arrays, unpack_reply
from fedwsa.strategies import CohortStrategy, build_strategy

# 6 of 40 clients (77..139 examples, 3-5 steps each) over two nodes.
ROUND = {"dataset": "synthetic", "num-clients": 40, "fraction-train": 0.15, "seed": 4,
         "alpha": 0.5, "batch-size": 32, "lr": 0.05, "momentum": 0.9, "weight-decay": 1e-3,
         "local-epochs": 1, "device": "cpu"}


def one_round(trainer: str):
    """Round 1 through FedAvg.configure_train -> ClientApp train -> FedAvg.aggregate_train."""
    config = make_config({**ROUND, "trainer": trainer})
    strategy = CohortStrategy(config)
    g = {k: v.detach().clone()
         for k, v in build_model("simple-cnn", 10, seed=config.seed).named_parameters()}
    messages = list(strategy.configure_train(1, to_arrays(g), None, FakeGrid()))
    replies = [train_reply(msg) for msg in messages]
    arrays, metrics = strategy.aggregate_train(1, replies)
    return config, from_arrays(arrays), metrics, [unpack_reply(r.content) for r in replies]


def test_full_round_batched_equals_sequential(flower_identity: None) -> None:
    _, seq_global, seq_metrics, _ = one_round("sequential")
    config, bat_global, bat_metrics, bat_replies = one_round("batched")
    for name, value in seq_global.items():
        torch.testing.assert_close(bat_global[name], value, rtol=1e-4, atol=1e-5)
    assert bat_metrics["train-loss"] == pytest.approx(seq_metrics["train-loss"], rel=1e-4)
    assert bat_metrics["clients-sampled"] == 6 and bat_metrics["clients-failed"] == 0

    # Each node reports the share of computed samples that were padding: its clients' short
    # last batches, counted here from the partition sizes alone.
    data = node_data(config)
    B = config.batch_size
    expected = []
    for reply in bat_replies:
        sizes = [data.client_size(c) for c in reply.client_ids]
        padded = sum(-(-n // B) * B for n in sizes)
        expected.append(1 - sum(sizes) / padded)
        assert reply.stats["wasted-fraction"] == pytest.approx(expected[-1])
    assert bat_metrics["node-wasted-fraction"] == pytest.approx(sum(expected) / len(expected))
    assert "node-wasted-fraction" not in seq_metrics  # the sequential trainer pads nothing


# --- shared small node -----------------------------------------------------------------------

def tiny_node(sizes: tuple[int, ...]) -> NodeData:
    data = load_dataset("synthetic", "", 0)
    parts, start = [], 0
    for n in sizes:
        parts.append(torch.arange(start, start + n))
        start += n
    return NodeData(torch.device("cpu"), data.x_train, data.y_train, data.mean, data.std,
                    data.num_classes, tuple(parts))


def settings(batch_size: int = 16, epochs: int = 1) -> LocalSettings:
    return LocalSettings(local_epochs=epochs, batch_size=batch_size, lr=0.05, momentum=0.9,
                         weight_decay=1e-3, augment=False, seed=5)


def initial(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def relative_update_error(result, reference, g: dict[str, torch.Tensor], k: int) -> float:
    """|w - w_ref| / |w_ref - w_0| for client k: the error relative to the local update."""
    diff = torch.cat([(result.params[n][k] - reference.params[n][k]).flatten() for n in g])
    update = torch.cat([(reference.params[n][k] - g[n]).flatten() for n in g])
    return float(diff.norm() / update.norm())


def test_bf16_autocast_runs_on_cpu_and_stays_close_to_fp32() -> None:
    """bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2%) in every conv/linear input
    and output, while the weights, the loss and the SGD update stay fp32. Near initialisation
    the loss is ~ln 10 and each gradient is a small sum of large terms that mostly cancel, so
    that rounding shows up as several % of the local update (3-12% measured over two seeds and
    four clients here), mostly in its length: its direction and the loss barely move. Hence
    the loose bounds: the update within 25% and at cosine > 0.97 of the fp32 sequential
    reference, the loss within 0.2%, and bf16 visibly not fp32 (error > 0.1%)."""
    sizes = (40, 17, 33)
    node = tiny_node(sizes)
    model = build_model("simple-cnn", node.num_classes, seed=2)
    g = initial(model)
    task = CohortTask(1, [0, 1, 2], g)
    ref = SequentialTrainer(model, node, settings()).train(task)
    fp32 = BatchedTrainer(model, node, settings(), precision="fp32").train(task)
    bf16 = BatchedTrainer(model, node, settings(), precision="bf16").train(task)
    for k in range(len(sizes)):
        assert relative_update_error(fp32, ref, g, k) < 1e-4
        assert 1e-3 < relative_update_error(bf16, ref, g, k) < 0.25
        ref_update = torch.cat([(ref.params[n][k] - g[n]).flatten() for n in g])
        bf16_update = torch.cat([(bf16.params[n][k] - g[n]).flatten() for n in g])
        assert float(torch.cosine_similarity(bf16_update, ref_update, dim=0)) > 0.97
    torch.testing.assert_close(torch.tensor(bf16.train_loss), torch.tensor(ref.train_loss),
                               rtol=2e-3, atol=0)
    assert all(v.dtype == torch.float32 for v in bf16.params.values())


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


def test_batchnorm_model_is_refused_with_a_clear_message() -> None:
    node = tiny_node((8,))
    with pytest.raises(ValueError, match=r"buffer 'bn\.running_mean'.*use GroupNorm"):
        BatchedTrainer(BatchNormNet(), node, settings())


def test_resnet18_groupnorm_trains_batched_like_sequential() -> None:
    """One SGD step per client (sizes <= batch size; one full batch, one short): GroupNorm has
    no running statistics, so ResNet-18 trains on stacked weights."""
    node = tiny_node((4, 3))
    model = build_model("resnet18", node.num_classes, seed=0)
    assert not list(model.buffers())
    g = initial(model)
    task = CohortTask(1, [0, 1], g)
    s = settings(batch_size=4)
    seq = SequentialTrainer(model, node, s).train(task)
    bat = BatchedTrainer(model, node, s).train(task)
    for name in g:
        torch.testing.assert_close(bat.params[name], seq.params[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(bat.train_loss), torch.tensor(seq.train_loss),
                               rtol=1e-4, atol=1e-6)
    for k in range(2):  # the step did move the weights, and by what SGD says it should
        assert relative_update_error(bat, seq, g, k) < 1e-3


def test_layout_counts_active_clients_per_step() -> None:
    """The active prefix at step t: clients with more than t steps (a Python loop reference)."""
    sizes = (70, 5, 33, 16, 17)
    node = tiny_node(sizes)
    s = settings(batch_size=16, epochs=2)
    [chunk] = plan_chunks({c: n for c, n in enumerate(sizes)}, s, 0)
    layout = layout_chunk(node, chunk, s, server_round=1)
    steps = [2 * -(-sizes[c] // 16) for c in chunk]
    assert steps == sorted(steps, reverse=True)
    assert layout.active == [sum(1 for n in steps if n > t) for t in range(max(steps))]
    # Labels are those of the laid-out indices; the loss mask covers the last epoch's samples.
    assert torch.equal(layout.labels, node.labels[layout.indices])
    for i, c in enumerate(chunk):
        assert int(layout.loss_mask[i].sum()) == sizes[c]


def test_cpu_trains_a_large_cohort_in_chunks_with_the_same_results() -> None:
    """max-batched-clients=0 on a CPU means chunks of CPU_CHUNK; results are per client."""
    from fedwsa.clients.batched import CPU_CHUNK

    sizes = tuple(range(1, CPU_CHUNK + 4))  # 19 clients: two chunks
    node = tiny_node(sizes)
    model = build_model("simple-cnn", node.num_classes, seed=3)
    g = initial(model)
    task = CohortTask(2, list(range(len(sizes))), g)
    trainer = BatchedTrainer(model, node, settings(batch_size=8))
    assert trainer.max_clients == CPU_CHUNK
    bat = trainer.train(task)
    seq = SequentialTrainer(model, node, settings(batch_size=8)).train(task)
    for name in g:
        torch.testing.assert_close(bat.params[name], seq.params[name], rtol=1e-4, atol=1e-5)


def test_cpu_results_do_not_depend_on_workers_threads_or_chunks() -> None:
    """On a CPU every op of the batched trainer runs single-threaded, and clients never mix, so
    a client's weights are bit-identical whatever the node's CPU count, worker threads and
    chunk size (augmentation on, two epochs, ragged clients)."""
    sizes = (77, 100, 139, 50, 20, 64, 90)
    node = tiny_node(sizes)
    model = build_model("simple-cnn", node.num_classes, seed=0)
    g = initial(model)
    s = LocalSettings(local_epochs=2, batch_size=32, lr=0.05, momentum=0.9, weight_decay=1e-3,
                      augment=True, seed=0)
    task = CohortTask(1, list(range(len(sizes))), g)
    before = torch.get_num_threads()
    try:
        runs = []
        for workers, threads, chunk in [(1, 1, 0), (2, 2, 0), (3, 2, 0), (1, 2, 2), (2, 1, 3)]:
            torch.set_num_threads(threads)
            runs.append(BatchedTrainer(model, node, s, max_clients=chunk,
                                       cpu_workers=workers).train(task))
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before
    for other in runs[1:]:
        assert other.client_ids == runs[0].client_ids
        assert other.train_loss == runs[0].train_loss
        for name in g:
            assert torch.equal(other.params[name], runs[0].params[name]), name


def test_cpu_workers_share_the_clients_and_run_single_threaded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers: each trains its share in a thread of its own, with one torch thread."""
    import threading

    from fedwsa.clients.batched import share_out

    sizes = {0: 70, 1: 5, 2: 33, 3: 16, 4: 17, 5: 90}
    groups = share_out(sizes, settings(batch_size=16), workers=2)
    # Dealt round-robin by steps (6, 5, 3, 2, 1, 1; ties by id), longest first.
    assert groups == [{5: 90, 2: 33, 1: 5}, {0: 70, 4: 17, 3: 16}]
    assert share_out({0: 10}, settings(), workers=4) == [{0: 10}]

    seen: list[tuple[int, int]] = []
    original = BatchedTrainer._train_group

    def spy(self, task, group, worker):  # type: ignore[no-untyped-def]
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return original(self, task, group, worker)

    monkeypatch.setattr(BatchedTrainer, "_train_group", spy)
    node = tiny_node(tuple(sizes.values()))
    model = build_model("simple-cnn", node.num_classes, seed=0)
    result = BatchedTrainer(model, node, settings(), cpu_workers=2).train(
        CohortTask(1, list(sizes), initial(model)))
    assert result.client_ids == list(sizes)
    assert len({ident for ident, _ in seen}) == 2 and all(n == 1 for _, n in seen)


def wsa_round() -> tuple[NodeData, nn.Module, dict[str, torch.Tensor], CohortTask,
                         list[ClientTerm]]:
    """Four ragged clients' round 1 of fedwsa (beta 0.5): the node, model, weights, task and
    client terms."""
    sizes = (40, 17, 33, 8)
    data = tiny_node(sizes)
    model = build_model("simple-cnn", data.num_classes, seed=0)
    g = initial(model)
    config = make_config({"strategy": "fedwsa", "wsa-beta": 0.5})
    ids = list(range(len(sizes)))
    task = CohortTask(1, ids, g, build_strategy(config).client_inputs(1, g, ids))
    return data, model, g, task, client_terms(config, g)


@pytest.mark.parametrize("conv_impl", ["grouped", "unfold"])
def test_every_conv_impl_trains_clients_like_the_sequential_trainer(conv_impl: str) -> None:
    """vmap's grouped convolutions and unfold + batched matmul (the GPU candidates), run on the
    CPU: every client's weights after a round are the sequential trainer's (nn.Conv2d, one
    client at a time) up to float noise, with WSA's loss term through the convolutions."""
    data, model, g, task, terms = wsa_round()
    ref = SequentialTrainer(model, data, settings(), terms).train(task)
    trainer = BatchedTrainer(model, data, settings(), terms=terms, conv_impl=conv_impl)
    bat = trainer.train(task)
    assert trainer.conv_impl == conv_impl
    for name in g:
        torch.testing.assert_close(bat.params[name], ref.params[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("timings", "chosen"), [
    ((1.0, 0.5), "unfold"),              # clearly faster: taken
    ((1.0, 0.95), "per-client"),         # within TUNE_MARGIN: the first choice stays
    ((1.0, "oom"), "per-client"),        # out of memory: out
    (("oom", "oom", 1.0, 0.5), "unfold"),  # both out: the chunk is halved and timed again
])
def test_auto_conv_impl_keeps_the_fastest_of_its_timed_choices(
        monkeypatch: pytest.MonkeyPatch, timings: tuple[float | str, ...], chosen: str) -> None:
    """conv-impl='auto' where a device has several choices (a GPU's grouped and unfold; here
    the CPU given per-client and unfold): one real step of the first chunk with each, timed
    (scripted here), the fastest kept; the clients are those of an explicit run with the
    chosen one, bit for bit; a later trainer of the same shapes does not time again."""
    monkeypatch.setattr(batched, "AUTO_CONV_IMPLS", {"cpu": ("per-client", "unfold")})
    monkeypatch.setattr(batched, "TUNED_CONV_IMPL", {})
    monkeypatch.setattr(batched, "LEARNED_CHUNK", {})
    timed: list[int] = []

    def scripted(fn, device: torch.device, repeats: int = 3) -> float:
        grads, ce = fn()  # the real step runs: a gradient for every weight of every client
        assert set(grads) == set(g) and ce.shape[0] == grads["fc1.weight"].shape[0]
        value = timings[len(timed)]
        timed.append(ce.shape[0])
        if value == "oom":
            raise torch.OutOfMemoryError("scripted")
        return float(value)

    monkeypatch.setattr(batched, "time_call", scripted)
    data, model, g, task, terms = wsa_round()

    def trainer(conv_impl: str = "auto") -> BatchedTrainer:
        return BatchedTrainer(model, data, settings(), terms=terms, cpu_workers=1,
                              conv_impl=conv_impl)

    auto = trainer()
    assert auto.conv_impl is None
    got = auto.train(task)
    assert auto.conv_impl == chosen and len(timed) == len(timings)
    # 4 clients timed at once; after both ran out of memory, a chunk of 2
    assert timed == [4] * min(len(timings), 2) + [2] * (len(timings) - 2)
    ref = trainer(chosen).train(task)
    for name in g:
        assert torch.equal(got.params[name], ref.params[name]), name
    again = trainer()
    again.train(task)
    assert again.conv_impl == chosen and len(timed) == len(timings)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("conv_impl", ["auto", "unfold"])
@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedwsa"])
def test_cuda_batched_trainer_matches_the_cpu_sequential_trainer(strategy: str,
                                                                 conv_impl: str) -> None:
    """On a GPU the batched trainer runs vmap's grouped convolutions (cuDNN) or unfold +
    batched matmul (auto times both) and no worker threads; its clients must still
    be the CPU reference's up to float noise (TF32 off), with the algorithms' client terms too
    (inputs sent from the CPU, as the ClientApp gets them)."""
    sizes = (40, 17, 33, 8)
    cpu = tiny_node(sizes)
    gpu = NodeData(torch.device("cuda"), cpu.images.cuda(), cpu.labels.cuda(), cpu.mean.cuda(),
                   cpu.std.cuda(), cpu.num_classes, tuple(p.cuda() for p in cpu.partitions))
    model = build_model("simple-cnn", cpu.num_classes, seed=0)
    g = initial(model)
    config = make_config({"strategy": strategy, "prox-mu": 0.5, "wsa-beta": 0.5})
    strategy_ = build_strategy(config)
    ids = list(range(len(sizes)))
    task = CohortTask(1, ids, g, strategy_.client_inputs(1, g, ids))
    terms = client_terms(config, g)
    ref = SequentialTrainer(model, cpu, settings(), terms).train(task)
    allow_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        trainer = BatchedTrainer(model, gpu, settings(), terms=terms, conv_impl=conv_impl)
        bat = trainer.train(task)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    assert trainer.workers == 1 and trainer.max_clients == 0
    for name in g:
        torch.testing.assert_close(bat.params[name].cpu(), ref.params[name], rtol=1e-4,
                                   atol=1e-5)


def test_worker_threads_build_the_modules_once_however_many_ask_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers ask for their gradient function at once. Without the build lock both built
    the modules, the second copying the first worker's module while that one may already
    train with it (vmap's wrappers swapped in: "Cannot access storage of TensorWrapper", seen
    in a loaded CI run). With it the modules are built once (one copy for the second worker)
    and both get functions over that one set. A slow copy holds the first builder in the
    window where the second asks."""
    import copy
    import threading
    import time

    real = copy.deepcopy
    copies: list[int] = []

    def slow_deepcopy(obj, memo=None):  # type: ignore[no-untyped-def]
        if memo is None and isinstance(obj, nn.Module):  # a top-level copy of a module
            copies.append(threading.get_ident())
            time.sleep(0.5)
        return real(obj, memo)

    monkeypatch.setattr(batched.copy, "deepcopy", slow_deepcopy)
    node = tiny_node((40, 40))
    trainer = BatchedTrainer(build_model("simple-cnn", node.num_classes, seed=0), node,
                             settings(), cpu_workers=2)
    barrier = threading.Barrier(2)
    got: dict[int, object] = {}

    def ask(worker: int) -> None:
        barrier.wait()
        got[worker] = trainer._grad_fn("grouped", worker, False)

    threads = [threading.Thread(target=ask, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(copies) == 1  # one build: the second worker's module, copied once
    assert trainer._modules["grouped"][0] is trainer.model
    assert got == dict(enumerate(trainer._grads["grouped", False]))

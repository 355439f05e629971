"""The batched trainer: a node trains its whole cohort at once with ``torch.func``.

The clients' weights are stacked on a leading axis (``stack_module_state``-style) and one
``vmap(grad(loss))`` call computes every client's gradient for its own mini-batch; SGD with
momentum and weight decay is applied to the stacked tensors. It computes, per client, what the
sequential trainer computes:

- Ragged clients: every client's batches are laid out on a step axis; clients are sorted by
  step count, longest first, so the clients still training at step t are always a prefix of the
  stack and only that prefix is computed (a finished client gets no update and costs nothing).
- A short last batch is padded and weighted per sample (weight 1/b on its b real examples, 0 on
  padding), which gives the same mean loss and gradient as the short batch itself.
- Batches are gathered by index from the uint8 train set on the device, augmented there in batch
  with each client's own seeded draws (the same draws the sequential trainer makes).
- Cohorts larger than ``max-batched-clients`` are trained in chunks of similar step counts
  (0: the whole cohort on a GPU, ``CPU_CHUNK`` clients at a time on a CPU); a cohort that runs
  the device out of memory is trained again in chunks half as large (``LEARNED_CHUNK``).
- On a CPU, convolutions run one client at a time inside ``vmap`` (``per_client_conv``: oneDNN's
  grouped convolutions are slow), and each of the node's cores trains a share of the clients in
  a thread of its own with single-threaded ops (``cpu_workers``): the small convolutions of FL
  models barely speed up with a second intra-op thread (measured 1.3x), two independent chunks
  do (1.6-1.8x).
- SGD (momentum, weight decay) runs on the stacked tensors with the ``_foreach`` kernels that
  ``torch.optim.SGD`` uses, one call per operation for all parameters.

Everything that does not change during a chunk (active clients per step, labels, which samples
count towards the reported loss) is laid out once per chunk, so a step is one ``vmap(grad)``
call, one image gather and four update calls.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from fedwsa.algorithms.base import ClientTerm, namespaced, take_rows
from fedwsa.clients.batches import epoch_plan, load_images
from fedwsa.clients.node import NodeData
from fedwsa.clients.per_client_conv import PerClientConv2d, swap_convs
from fedwsa.clients.trainer import (
    CohortResult,
    CohortTask,
    LocalSettings,
    num_batches,
    term_inputs,
)
from fedwsa.clients.unfold_conv import UnfoldConv2d
from fedwsa.models import check_functional
from fedwsa.protocol import ClientRow

log = logging.getLogger(__name__)


@dataclass
class ChunkLayout:
    """A chunk's batches on a step axis: client x step x slot (padded), longest client first."""

    client_ids: list[int]
    steps: torch.Tensor          # [K] local steps per client, descending
    active: list[int]            # [T] clients still training at step t (a prefix of the stack)
    indices: torch.Tensor        # [K, T, B] dataset indices (0 on padding)
    labels: torch.Tensor         # [K, T, B] their labels
    sample_weight: torch.Tensor  # [K, T, B] 1/b on real samples, 0 on padding
    loss_mask: torch.Tensor      # [K, T, B] 1 on real samples of the last epoch (reported loss)
    offsets: torch.Tensor | None  # [K, T, B, 2] crop offsets when augmenting
    flips: torch.Tensor | None    # [K, T, B]


def longest_first(sizes: dict[int, int], settings: LocalSettings) -> list[int]:
    """Client ids by local steps, most first (ties by id)."""
    return sorted(sizes, key=lambda c: (
        -settings.epochs_of(c) * num_batches(sizes[c], settings.batch_size), c))


def plan_chunks(sizes: dict[int, int], settings: LocalSettings, max_clients: int
                ) -> list[list[int]]:
    """Client ids in chunks of at most ``max_clients`` (0 = one chunk), longest first.

    Sorting by step count puts clients of similar length together, so little of a chunk's time
    is spent on clients that have already finished.
    """
    order = longest_first(sizes, settings)
    size = max_clients if max_clients > 0 else max(len(order), 1)
    return [order[i:i + size] for i in range(0, len(order), size)]


def share_out(sizes: dict[int, int], settings: LocalSettings, workers: int) -> list[dict[int, int]]:
    """The clients dealt round-robin, longest first, to ``workers`` groups of similar work."""
    order = longest_first(sizes, settings)
    groups = [{c: sizes[c] for c in order[w::workers]} for w in range(workers)]
    return [g for g in groups if g]


def layout_chunk(data: NodeData, client_ids: list[int], settings: LocalSettings,
                 server_round: int) -> ChunkLayout:
    """Lay out every client's epochs (same seeded order and draws as the sequential trainer)."""
    s, dev = settings, data.device
    B = s.batch_size
    epochs = [s.epochs_of(c) for c in client_ids]
    steps = [e * num_batches(data.client_size(c), B) for e, c in zip(epochs, client_ids,
                                                                      strict=True)]
    K, T = len(client_ids), max(steps)
    indices = torch.zeros(K, T * B, dtype=torch.long, device=dev)
    weight = torch.zeros(K, T * B, dtype=torch.float32, device=dev)
    last = torch.zeros(K, T, dtype=torch.bool, device=dev)
    offsets = torch.full((K, T * B, 2), 4, dtype=torch.long, device=dev) if s.augment else None
    flips = torch.zeros(K, T * B, dtype=torch.bool, device=dev) if s.augment else None
    for k, cid in enumerate(client_ids):
        n = data.client_size(cid)
        per_epoch = num_batches(n, B)
        # Slot of each example in a padded epoch: batch j holds examples j*B ... j*B+b-1.
        slot = torch.arange(n, device=dev)
        last_size = n - (per_epoch - 1) * B
        w = torch.full((n,), 1.0 / B, dtype=torch.float32, device=dev)
        w[(per_epoch - 1) * B:] = 1.0 / last_size
        for epoch in range(epochs[k]):
            plan = epoch_plan(data, cid, s.seed, server_round, epoch, s.augment)
            pos = epoch * per_epoch * B + slot
            indices[k, pos] = plan.order
            weight[k, pos] = w
            if offsets is not None and flips is not None:
                offsets[k, pos] = plan.offsets
                flips[k, pos] = plan.flips
        last[k, (epochs[k] - 1) * per_epoch: epochs[k] * per_epoch] = True
    shape = (K, T, B)
    weight = weight.view(shape)
    steps_t = torch.tensor(steps)  # on the CPU: bookkeeping the host reads (``active``, losses)
    return ChunkLayout(
        client_ids=list(client_ids),
        steps=steps_t,
        active=(steps_t.unsqueeze(1) > torch.arange(T)).sum(dim=0).tolist(),
        indices=indices.view(shape),
        labels=data.labels[indices].view(shape),
        sample_weight=weight,
        loss_mask=((weight > 0) & last.unsqueeze(-1)).float(),
        offsets=None if offsets is None else offsets.view(*shape, 2),
        flips=None if flips is None else flips.view(shape),
    )


LEARNED_CHUNK: dict[tuple[Any, ...], int] = {}
"""Per device, model, batch size, precision, convolutions and client terms
(``BatchedTrainer._memory_key``):
the chunk size an out-of-memory error halved the cohort to. A stacked grid can put hundreds of
clients in one call; the node learns once what fits instead of failing every round."""

CPU_CHUNK = 16
"""Clients per chunk and worker on a CPU when ``max-batched-clients`` is 0. Small chunks pay
more Python per client-step, large ones outgrow the caches: for CIFAR-10's 100 clients (500
images each, 2 workers) a round took 11.2 s in chunks of 4 and 6.7-8.5 s in chunks of 8 to 50,
a flat optimum within this machine's noise. A GPU wants the whole cohort."""

# How vmap runs a convolution: one grouped convolution (PyTorch's own rule, None), one
# ordinary convolution per client (per_client_conv), or unfold + batched matmul (unfold_conv).
CONV_IMPLS: dict[str, Callable[[nn.Conv2d], nn.Module] | None] = {
    "grouped": None, "per-client": PerClientConv2d, "unfold": UnfoldConv2d}

AUTO_CONV_IMPLS: dict[str, tuple[str, ...]] = {"cpu": ("per-client",),
                                                "cuda": ("grouped", "unfold")}
"""What ``conv-impl='auto'`` picks from, per device type (others: grouped). On a CPU
per-client convolutions, measured (``per_client_conv``). On a GPU it depends on the model, the
clients per chunk, the precision and the chip (cuDNN's grouped kernels are slow for a few
channels per group; unfold runs one wide matmul but keeps 9-25x the input for the backward),
so the node times one step of its first chunk with each (``BatchedTrainer._tune``) and keeps
the fastest, as ``torch.backends.cudnn.benchmark`` does for kernels. The first candidate
stays unless another is ``TUNE_MARGIN`` faster, so a near tie does not flip between runs."""

TUNE_MARGIN = 0.9

TUNED_CONV_IMPL: dict[tuple[Any, ...], str] = {}
"""auto's choice per memory key (``BatchedTrainer._memory_key``) and chunk size: timed once
per process (a fused call of a stacked grid builds a trainer per round and finds it here)."""


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int = 3) -> float:
    """Seconds per call of ``fn`` after one warm-up call (which picks kernels and allocates)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


@contextlib.contextmanager
def single_threaded_ops() -> Iterator[None]:
    """Torch ops on one thread each while the CPU workers run (threads started meanwhile
    inherit it). Besides speed, this makes a client's CPU result independent of the node's CPU
    count, of how many clients share its chunk and of which worker trains it: every op of its
    computation runs the same single-threaded kernel (tests/test_batched.py checks bit
    equality)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


TermArrays = dict[str, dict[str, torch.Tensor]]  # term name -> its arrays


@dataclass
class _Round:
    """What every chunk of one ``train`` call shares (on the device; the per-client inputs
    stay on the host)."""

    task: CohortTask
    global_params: dict[str, torch.Tensor]
    shared: TermArrays
    row: dict[int, int]  # client id -> its position (the per-client inputs stay on the host:
    # ``CohortTask.own_rows`` sends a chunk's rows)
    # Clients of several runs: each run's model, shared inputs and lr/momentum/weight decay,
    # one row per run, moved to the device once per call (a chunk's rows are gathered there,
    # not on the host).
    run_params: dict[str, torch.Tensor] | None = None
    run_shared: dict[str, torch.Tensor] | None = None
    run_hyper: dict[str, torch.Tensor] | None = None


@dataclass
class _ChunkInputs:
    """What a chunk's terms see: the global model, their shared and their own inputs. For
    clients of several runs (``per_client``) the global model and shared inputs are rows too."""

    global_params: dict[str, torch.Tensor]
    shared: TermArrays
    own: TermArrays
    per_client: bool
    hyper: dict[str, torch.Tensor] | None = None  # per-client lr, momentum, weight-decay

    def first(self, k: int) -> _ChunkInputs:
        """The inputs of the chunk's first ``k`` clients (those still training)."""
        def rows(arrays: TermArrays) -> TermArrays:
            return {name: {a: v[:k] for a, v in part.items()} for name, part in arrays.items()}

        hyper = None if self.hyper is None else {n: v[:k] for n, v in self.hyper.items()}
        if not self.per_client:
            return _ChunkInputs(self.global_params, self.shared, rows(self.own), False, hyper)
        return _ChunkInputs({n: v[:k] for n, v in self.global_params.items()},
                            rows(self.shared), rows(self.own), True, hyper)


# Per client its result; then samples computed (padding included) and real.
_GroupResult = tuple[dict[int, ClientRow], float, float]


class BatchedTrainer:
    """Trains a node's cohort together with ``vmap`` over stacked weights."""

    def __init__(self, model: nn.Module, data: NodeData, settings: LocalSettings,
                 max_clients: int = 0, precision: str = "fp32",
                 cpu_workers: int | None = None, terms: list[ClientTerm] | None = None,
                 conv_impl: str = "auto") -> None:
        """``cpu_workers``: threads that train chunks side by side on a CPU (default: torch's
        intra-op thread count, i.e. the node's CPUs); ignored on a GPU. ``conv_impl``: how
        ``vmap`` runs the convolutions (``CONV_IMPLS``; auto: ``AUTO_CONV_IMPLS``, timed on the
        first chunk where a device has several)."""
        check_functional(model)  # running statistics cannot live on stacked weights
        on_cpu = data.device.type == "cpu"
        self._conv_choices = ((conv_impl,) if conv_impl != "auto" else
                              AUTO_CONV_IMPLS.get(data.device.type, ("grouped",)))
        # None until auto has timed its choices on the first chunk (``_tune``)
        self.conv_impl: str | None = (self._conv_choices[0] if len(self._conv_choices) == 1
                                      else None)
        self._tune_lock = threading.Lock()
        self.model = model.to(data.device)
        self.data = data
        self.settings = settings
        self.max_clients = max_clients or (CPU_CHUNK if on_cpu else 0)
        self.workers = max(1, cpu_workers or torch.get_num_threads()) if on_cpu else 1
        self.precision = precision
        self.terms = list(terms or [])
        # Only terms that add a loss enter the vmapped step (and only then do the global model
        # and the inputs): a plain FedAvg step stays as small as it was before terms existed
        # (unless it trains fused with a run whose term adds one: ``fedwsa.clients.fused``).
        self._loss_terms = [t for t in self.terms if t.overrides("loss")]
        self._corrections = [t for t in self.terms if t.overrides("correct_grad")]
        self._steps_after = [t for t in self.terms if t.overrides("after_step")]
        self._output_terms = [t for t in self.terms if t.overrides("outputs")]
        self._modules: dict[str, list[nn.Module]] = {}
        self._grads: dict[tuple[str, bool], list[Callable[..., Any]]] = {}
        # Worker threads build the modules one at a time: a thread that copied a module while
        # another trains with it (functional_call has swapped vmap's wrappers into it) fails
        # with "Cannot access storage of TensorWrapper".
        self._build_lock = threading.Lock()

    def _vmapped_grad(self, model: nn.Module, per_client: bool) -> Callable[..., Any]:
        """Per client: weights, images, labels, sample weights (and the terms' own inputs).
        Shared: the global model and the terms' shared inputs (when a term adds a loss), or
        per client too when clients of several runs train together."""
        shared = 0 if per_client else None
        in_dims = (0, 0, 0, 0, shared, shared, 0) if self._loss_terms else (0, 0, 0, 0)
        return vmap(grad(functools.partial(self._loss, model), has_aux=True), in_dims=in_dims)

    def _grad_fn(self, impl: str, worker: int, per_client: bool) -> Callable[..., Any]:
        """The vmapped gradient with convolutions run as ``impl``, for one worker thread."""
        with self._build_lock:
            if impl not in self._modules:
                make = CONV_IMPLS[impl]
                model = (self.model if make is None else swap_convs(self.model, make)).to(
                    self.data.device)
                # functional_call swaps the weights into the module while it runs, so every
                # worker thread needs a module of its own.
                self._modules[impl] = [copy.deepcopy(model) if w else model
                                       for w in range(self.workers)]
            if (impl, per_client) not in self._grads:
                self._grads[impl, per_client] = [self._vmapped_grad(m, per_client)
                                                 for m in self._modules[impl]]
            return self._grads[impl, per_client][worker]

    def _tune(self, inputs: _ChunkInputs, layout: ChunkLayout, worker: int) -> str:
        """auto's convolutions: the fastest of ``_conv_choices`` for one step of this chunk
        (its first, every client active; the gradient only, which is all that differs). A
        choice that runs the device out of memory is out; if all do, the error goes up and
        ``_train_group`` halves the chunk."""
        key = (*self._memory_key(), len(layout.client_ids))
        if key in TUNED_CONV_IMPL:
            return TUNED_CONV_IMPL[key]
        k = layout.active[0]
        now = inputs.first(k)
        args = (self._start_params(now, k), *self._batch(layout, 0, k),
                *((now.global_params, now.shared, now.own) if self._loss_terms else ()))
        seconds: dict[str, float] = {}
        for impl in self._conv_choices:
            fn = self._grad_fn(impl, worker, inputs.per_client)
            try:
                seconds[impl] = time_call(lambda fn=fn: fn(*args), self.data.device)
            except torch.OutOfMemoryError:
                if self.data.device.type == "cuda":
                    torch.cuda.empty_cache()
        if not seconds:
            raise torch.OutOfMemoryError(f"every conv-impl ran {self.data.device} out of memory "
                                         f"for {k} clients")
        first = self._conv_choices[0]
        best = min(seconds, key=seconds.__getitem__)
        if first in seconds and seconds[best] > TUNE_MARGIN * seconds[first]:
            best = first
        TUNED_CONV_IMPL[key] = best
        log.info("conv-impl auto on %s: %s (one step of %d clients: %s)", self.data.device, best,
                 k, ", ".join(f"{i} {1e3 * t:.1f} ms" for i, t in seconds.items()))
        return best

    def _loss(self, model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
              y: torch.Tensor, w: torch.Tensor,
              global_params: dict[str, torch.Tensor] | None = None,
              shared: TermArrays | None = None, own: TermArrays | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """One client's objective on one (padded) batch: weighted CE + the terms' losses."""
        autocast = (torch.autocast(self.data.device.type, dtype=torch.bfloat16)
                    if self.precision == "bf16" else contextlib.nullcontext())
        with autocast:
            logits = functional_call(model, params, (x,))
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        loss = (ce * w).sum()
        for term in self._loss_terms:
            assert global_params is not None and shared is not None and own is not None
            extra = term.loss(params, global_params, shared[term.name], own[term.name])
            if extra is not None:
                loss = loss + extra
        return loss, ce.detach()

    def _round(self, task: CohortTask) -> _Round:
        """What the chunks of ``task`` share: the global model and shared inputs on the device."""
        dev = self.data.device

        def on_device(arrays: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
            return None if arrays is None else {n: v.to(dev) for n, v in arrays.items()}

        return _Round(task, {n: v.to(dev) for n, v in task.global_params.items()},
                      term_inputs(self.terms, task.inputs.shared, dev),
                      {c: i for i, c in enumerate(task.client_ids)},
                      on_device(task.run_params), on_device(task.run_shared),
                      on_device(task.run_hyper))

    def train(self, task: CohortTask) -> CohortResult:
        sizes = {c: self.data.client_size(c) for c in task.client_ids}
        rnd = self._round(task)
        t0 = time.perf_counter()
        groups = share_out(sizes, self.settings, self.workers)
        on_cpu = self.data.device.type == "cpu"
        with single_threaded_ops() if on_cpu else contextlib.nullcontext():
            if len(groups) == 1:
                trained = [self._train_group(rnd, groups[0], 0)]
            else:
                with ThreadPoolExecutor(len(groups)) as pool:
                    trained = list(pool.map(self._train_group, [rnd] * len(groups), groups,
                                            range(len(groups))))
        results = {cid: r for out, _, _ in trained for cid, r in out.items()}
        computed = sum(c for _, c, _ in trained)
        real = sum(r for _, _, r in trained)
        return CohortResult.from_rows(
            [results[c] for c in task.client_ids], task.global_params,
            stats={"wasted-fraction": 1.0 - real / max(computed, 1.0),
                   "train-s": time.perf_counter() - t0})

    def _memory_key(self) -> tuple[Any, ...]:
        """What decides how many clients fit on the device at once."""
        size = sum(p.numel() for p in self.model.parameters())
        return (str(self.data.device), type(self.model).__name__, size,
                self.settings.batch_size, self.precision, self.conv_impl or self._conv_choices,
                tuple(t.name for t in self.terms))

    def chunk_size(self, clients: int) -> int:
        """Clients per chunk: ``max-batched-clients`` (0 = all), capped by what an earlier
        out-of-memory error showed to fit (``LEARNED_CHUNK``)."""
        size = min(self.max_clients or clients, clients)
        learned = LEARNED_CHUNK.get(self._memory_key())
        return max(1, min(size, learned) if learned else size)

    def _train_group(self, rnd: _Round, group: dict[int, int], worker: int) -> _GroupResult:
        """``_train_chunks``; when the device runs out of memory, the same clients again in
        chunks half as large (each client's result does not depend on its chunk), down to one
        client per chunk. The size that fits is kept for later rounds and calls."""
        while True:
            size = self.chunk_size(len(group))
            try:
                return self._train_chunks(rnd, group, worker, size)
            except torch.OutOfMemoryError:
                if size <= 1:
                    raise
                LEARNED_CHUNK[self._memory_key()] = size // 2
                if self.data.device.type == "cuda":
                    torch.cuda.empty_cache()
                log.warning("out of memory training %d clients at once on %s; retrying in "
                            "chunks of %d (kept for later rounds)", size, self.data.device,
                            size // 2)

    def _train_chunks(self, rnd: _Round, group: dict[int, int], worker: int, size: int
                      ) -> _GroupResult:
        """One worker's clients, chunk by chunk: their results, samples computed and real."""
        out: dict[int, ClientRow] = {}
        computed = real = 0.0
        for chunk in plan_chunks(group, self.settings, size):
            layout = layout_chunk(self.data, chunk, self.settings, rnd.task.server_round)
            inputs = self._chunk_inputs(rnd, chunk)
            with self._tune_lock:  # worker threads wait for the first one's choice
                if self.conv_impl is None:
                    self.conv_impl = self._tune(inputs, layout, worker)
            params, losses, c, r = self._train_chunk(
                inputs, layout, self._grad_fn(self.conv_impl, worker, inputs.per_client))
            computed, real = computed + c, real + r
            outputs = self._outputs(inputs, params, layout.steps)
            steps = layout.steps.tolist()
            for k, cid in enumerate(chunk):
                out[cid] = ClientRow(cid, {n: v[k] for n, v in params.items()},
                                     self.data.client_size(cid), losses[k], int(steps[k]),
                                     {n: v[k] for n, v in outputs.items()})
        return out, computed, real

    def _chunk_inputs(self, rnd: _Round, chunk: list[int]) -> _ChunkInputs:
        """The chunk's rows of the per-client inputs (and, for clients of several runs, of
        their global models and shared inputs), on the device."""
        rows, dev, task = [rnd.row[c] for c in chunk], self.data.device, rnd.task
        own = term_inputs(self.terms, task.own_rows(rows, dev), dev)
        if rnd.run_params is None or task.run_of is None:
            return _ChunkInputs(rnd.global_params, rnd.shared, own, False)
        runs = [task.run_of[r] for r in rows]  # each client's row of its run's arrays
        shared = term_inputs(self.terms, take_rows(rnd.run_shared or {}, runs), dev)
        hyper = None if rnd.run_hyper is None else take_rows(rnd.run_hyper, runs)
        return _ChunkInputs(take_rows(rnd.run_params, runs), shared, own, True, hyper)

    def _outputs(self, inputs: _ChunkInputs, params: dict[str, torch.Tensor],
                 steps: torch.Tensor) -> dict[str, torch.Tensor]:
        """The terms' per-client outputs for a chunk, each client's computed under ``vmap``."""
        out: dict[str, torch.Tensor] = {}
        steps = steps.to(self.data.device)
        shared = 0 if inputs.per_client else None
        for term in self._output_terms:
            fn = functools.partial(term.outputs, lr=self.settings.lr)
            with torch.no_grad():
                got = vmap(fn, in_dims=(0, shared, shared, 0, 0))(
                    params, inputs.global_params, inputs.shared[term.name],
                    inputs.own[term.name], steps)
            out.update(namespaced(term.name, got))
        return out

    def _train_chunk(self, inputs: _ChunkInputs, layout: ChunkLayout,
                     grad_fn: Callable[..., Any]
                     ) -> tuple[dict[str, torch.Tensor], list[float], float, float]:
        """SGD for one chunk; returns weights, last-epoch mean CE, computed and real samples."""
        params, ce_sums = self._run_steps(inputs, layout, grad_fn)
        computed = float(layout.indices.shape[2] * sum(layout.active))
        real = float((layout.sample_weight > 0).sum())
        sums = ce_sums.tolist()
        losses = [sums[i] / max(self.data.client_size(c), 1)
                  for i, c in enumerate(layout.client_ids)]
        return params, losses, computed, real

    @staticmethod
    def _start_params(inputs: _ChunkInputs, k: int) -> dict[str, torch.Tensor]:
        """The first ``k`` clients' starting weights, a stack of their own."""
        if inputs.per_client:  # clients of several runs: each from its own run's model
            return {n: v[:k].clone() for n, v in inputs.global_params.items()}
        return {n: v.unsqueeze(0).repeat(k, *([1] * v.dim()))
                for n, v in inputs.global_params.items()}

    def _batch(self, layout: ChunkLayout, t: int, k: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step ``t``'s images (augmented), labels and sample weights of the first ``k``."""
        x = load_images(self.data, layout.indices[:k, t],
                        None if layout.offsets is None else layout.offsets[:k, t],
                        None if layout.flips is None else layout.flips[:k, t])
        return x, layout.labels[:k, t], layout.sample_weight[:k, t]

    def _run_steps(self, inputs: _ChunkInputs, layout: ChunkLayout,
                   grad_fn: Callable[..., Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The chunk's local SGD, all on the device: the clients' weights and each client's
        cross-entropy summed over its last epoch ([K]); nothing here reads back to the host."""
        s, dev = self.settings, self.data.device
        K, T = layout.indices.shape[:2]
        names = list(inputs.global_params)
        params = self._start_params(inputs, K)
        bufs = {n: torch.zeros_like(v) for n, v in params.items()}
        # per client and step: CE summed over the batch
        ce_sum = torch.zeros(K, T, dtype=torch.float32, device=dev)
        now, h, last_k = inputs, {}, -1
        for t, k in enumerate(layout.active):
            x, labels, weights = self._batch(layout, t, k)
            current = {n: params[n][:k] for n in names}  # views: updated in place below
            active = list(current.values())
            if k != last_k:  # the active prefix only shrinks: slice the inputs when it does
                now, last_k = inputs.first(k), k
                h = {} if now.hyper is None else {
                    n: [v.view(-1, *[1] * (p.dim() - 1)) for p in active]
                    for n, v in now.hyper.items()}
            extra = (now.global_params, now.shared, now.own) if self._loss_terms else ()
            grads, ce = grad_fn(current, x, labels, weights, *extra)
            with torch.no_grad():
                ce_sum[:k, t] = (ce * layout.loss_mask[:k, t]).sum(dim=1)
                # torch.optim.SGD (dampening 0, no Nesterov): g += wd p; buf = m buf + g;
                # p -= lr buf. A zero buffer makes the first step buf = g, as in SGD.
                for term in self._corrections:
                    term.correct_grad(grads, current, now.global_params, now.shared[term.name],
                                      now.own[term.name])
                g = [grads[n] for n in names]
                buf = [bufs[n][:k] for n in names]
                if not h:
                    if s.weight_decay:
                        torch._foreach_add_(g, active, alpha=s.weight_decay)
                    torch._foreach_mul_(buf, s.momentum)
                    torch._foreach_add_(buf, g)
                    torch._foreach_add_(active, buf, alpha=-s.lr)
                else:  # each client's own lr, momentum and weight decay, as tensors
                    # (addcmul with a tensor factor rounds as add with a scalar alpha does:
                    # the same bits as the scalar step on this CPU)
                    torch._foreach_addcmul_(g, active, h["weight-decay"])
                    torch._foreach_mul_(buf, h["momentum"])
                    torch._foreach_add_(buf, g)
                    torch._foreach_addcmul_(active, buf, h["neg-lr"])
                for term in self._steps_after:
                    term.after_step(current, now.shared[term.name], now.own[term.name], s.lr)
        # Each client's own steps only: a sum of the same length in any chunk, so the same bits.
        steps = layout.steps.tolist()
        return params, torch.stack([ce_sum[i, :steps[i]].sum() for i in range(K)])

"""The sequential trainer: one client after another, a plain ``nn.Module`` and ``torch.optim.SGD``.

It is the reference the batched trainer is tested against, written the way a PyTorch user
would write local training, and the fallback when a cohort cannot be batched.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn import functional as F

from fedwsa.algorithms.base import ClientTerm, namespaced
from fedwsa.clients.batches import epoch_plan, load_images
from fedwsa.clients.node import NodeData
from fedwsa.clients.trainer import (
    CohortResult,
    CohortTask,
    LocalSettings,
    num_batches,
    term_inputs,
)
from fedwsa.protocol import ClientRow

log = logging.getLogger(__name__)


class SequentialTrainer:
    """Trains each client of a cohort in turn on the node's device."""

    def __init__(self, model: nn.Module, data: NodeData, settings: LocalSettings,
                 terms: list[ClientTerm] | None = None) -> None:
        self.model = copy.deepcopy(model).to(data.device)
        self.data = data
        self.settings = settings
        self.terms = list(terms or [])

    def train(self, task: CohortTask) -> CohortResult:
        results: dict[int, ClientRow] = {}
        failures: dict[int, str] = {}
        for cid in task.client_ids:
            try:
                results[cid] = self.train_client(task, cid)
            except Exception as err:  # one bad client must not end the node's cohort
                log.warning("client %d failed: %s", cid, err)
                failures[cid] = f"{type(err).__name__}: {err}"
        rows = [results[c] for c in task.client_ids if c in results]
        return CohortResult.from_rows(rows, task.global_params, failures)

    def train_client(self, task: CohortTask, cid: int) -> ClientRow:
        """Local SGD for one client: its weights, last epoch's mean loss, steps, outputs."""
        s, data = self.settings, self.data
        device = data.device
        global_params = {k: v.to(device) for k, v in task.global_params.items()}
        self.model.load_state_dict(global_params)
        self.model.train()
        opt = torch.optim.SGD(self.model.parameters(), lr=s.lr, momentum=s.momentum,
                              weight_decay=s.weight_decay)
        n = data.client_size(cid)
        row = task.client_ids.index(cid)
        shared = term_inputs(self.terms, task.inputs.shared, device)
        own = term_inputs(self.terms, {k: v[0] for k, v in task.own_rows([row]).items()},
                          device)
        params = dict(self.model.named_parameters())
        corrections = [t for t in self.terms if t.overrides("correct_grad")]
        steps_after = [t for t in self.terms if t.overrides("after_step")]
        steps = 0
        loss_sum = torch.zeros((), device=device)
        for epoch in range(s.epochs_of(cid)):
            plan = epoch_plan(data, cid, s.seed, task.server_round, epoch, s.augment)
            loss_sum = torch.zeros((), device=device)
            for b in range(num_batches(n, s.batch_size)):
                sl = slice(b * s.batch_size, (b + 1) * s.batch_size)
                idx = plan.order[sl]
                x = load_images(
                    data, idx,
                    None if plan.offsets is None else plan.offsets[sl],
                    None if plan.flips is None else plan.flips[sl],
                )
                ce = F.cross_entropy(self.model(x), data.labels[idx])
                loss = ce
                for term in self.terms:
                    extra = term.loss(params, global_params, shared[term.name], own[term.name])
                    if extra is not None:
                        loss = loss + extra
                opt.zero_grad(set_to_none=True)
                loss.backward()
                with torch.no_grad():
                    grads = {n: p.grad for n, p in params.items() if p.grad is not None}
                    for term in corrections:
                        term.correct_grad(grads, params, global_params, shared[term.name],
                                          own[term.name])
                opt.step()
                with torch.no_grad():
                    for term in steps_after:
                        term.after_step(params, shared[term.name], own[term.name], s.lr)
                steps += 1
                loss_sum += ce.detach() * idx.numel()
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        outputs: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for term in self.terms:
                outputs.update(namespaced(term.name, term.outputs(
                    weights, global_params, shared[term.name], own[term.name],
                    torch.tensor(steps, device=device), s.lr)))
        return ClientRow(cid, weights, n, float(loss_sum) / max(n, 1), steps, outputs)

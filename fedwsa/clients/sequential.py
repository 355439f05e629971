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

from fedwsa.clients.batches import epoch_plan, load_images
from fedwsa.clients.node import NodeData
from fedwsa.clients.trainer import CohortResult, CohortTask, LocalSettings, num_batches
from fedwsa.scope import wsa_penalty

log = logging.getLogger(__name__)


class SequentialTrainer:
    """Trains each client of a cohort in turn on the node's device."""

    def __init__(self, model: nn.Module, data: NodeData, settings: LocalSettings) -> None:
        self.model = copy.deepcopy(model).to(data.device)
        self.data = data
        self.settings = settings

    def train(self, task: CohortTask) -> CohortResult:
        results: dict[int, tuple[dict[str, torch.Tensor], float]] = {}
        failures: dict[int, str] = {}
        for cid in task.client_ids:
            try:
                results[cid] = self.train_client(task, cid)
            except Exception as err:  # one bad client must not end the node's cohort
                log.warning("client %d failed: %s", cid, err)
                failures[cid] = f"{type(err).__name__}: {err}"
        ids = [c for c in task.client_ids if c in results]
        names = list(task.global_params)
        stacked = {
            n: torch.stack([results[c][0][n] for c in ids]) if ids else
            task.global_params[n].new_empty((0, *task.global_params[n].shape))
            for n in names
        }
        return CohortResult(
            client_ids=ids,
            params=stacked,
            num_examples=[self.data.client_size(c) for c in ids],
            train_loss=[results[c][1] for c in ids],
            failures=failures,
        )

    def train_client(self, task: CohortTask, cid: int) -> tuple[dict[str, torch.Tensor], float]:
        """Local SGD for one client; returns its weights and its last epoch's mean loss."""
        s, data = self.settings, self.data
        device = data.device
        self.model.load_state_dict({k: v.to(device) for k, v in task.global_params.items()})
        self.model.train()
        opt = torch.optim.SGD(self.model.parameters(), lr=s.lr, momentum=s.momentum,
                              weight_decay=s.weight_decay)
        n = data.client_size(cid)
        wsa = task.wsa if task.wsa is not None and task.wsa.beta > 0 else None
        if wsa is not None:
            names, params = list(wsa.names), dict(self.model.named_parameters())
            mu, sigma = wsa.mu.to(device), wsa.sigma.to(device)
        loss_sum = torch.zeros((), device=device)
        for epoch in range(s.local_epochs):
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
                if wsa is not None:
                    loss = ce + wsa.beta * wsa_penalty(params, names, mu, sigma)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += ce.detach() * idx.numel()
        weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return weights, float(loss_sum) / max(n, 1)

"""Shared test setup: two torch threads, and a Flower task identity for building Messages."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def flower_identity() -> None:
    """Messages need a run/task identity, which Flower sets inside a real run."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0

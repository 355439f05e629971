"""What an analysis reads from a finished run: its architecture, test set, global model and
kept client models (``save-client-models``), with errors that say what to do."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedwsa.config import Config, make_config
from fedwsa.data import load_dataset, pixel_stats
from fedwsa.device import resolve_device
from fedwsa.models import build_model
from fedwsa.results.client_models import ClientModels, load_client_models, saved_rounds
from fedwsa.results.files import read_config
from fedwsa.results.rundir import MODEL_FILE

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class EvalData:
    """uint8 test images and labels on the analysis device, with the run's pixel statistics."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


@dataclass(frozen=True)
class RunModels:
    """One run directory, opened for analysis."""

    path: Path
    config: Config
    model: nn.Module  # the run's architecture, on the analysis device (weights come apart)
    device: torch.device

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def test_set(self) -> EvalData:
        c = self.config
        data = load_dataset(c.dataset, c.data_root, c.seed)
        mean, std = pixel_stats(data, c.normalize)
        return EvalData(data.x_test.to(self.device), data.y_test.to(self.device),
                       mean.to(self.device), std.to(self.device))

    def global_model(self) -> Weights:
        """The run's final global model (``model.pt``)."""
        path = self.path / MODEL_FILE
        if not path.is_file():
            raise ValueError(f"{self.path} has no final global model ({MODEL_FILE}): analyse a "
                             f"finished run")
        try:
            weights = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as err:
            raise ValueError(f"{path}: not a readable model file ({type(err).__name__}: "
                             f"{err})") from err
        return {n: v.float() for n, v in weights.items()}

    def clients(self, server_round: int | None = None) -> ClientModels:
        """The kept clients of ``server_round`` (default: the last kept round)."""
        rounds = saved_rounds(self.path)
        if not rounds:
            raise ValueError(
                f"{self.path} holds no client models: run it with "
                f"save-client-models='last' (or 'every-N') to keep them, e.g. fedwsa run -c "
                f"\"... save-client-models='last'\"")
        chosen = rounds[-1] if server_round is None else server_round
        if chosen not in rounds:
            raise ValueError(f"--round={chosen}: {self.path} keeps the client models of rounds "
                             f"{', '.join(map(str, rounds))}")
        kept = load_client_models(self.path, chosen)
        params = {n: v.to(self.device).float() for n, v in kept.params.items()}
        return ClientModels(kept.round, kept.client_ids, kept.num_examples, params)

    def kept_rounds(self) -> list[int]:
        return saved_rounds(self.path)


def open_run(path: str | Path, device: str = "auto") -> RunModels:
    """A run directory for analysis (``device``: ``auto`` = the GPU when there is one)."""
    run = Path(path)
    if not (run / "config.json").is_file():
        raise ValueError(f"{run} is not a run directory (no config.json)")
    config = make_config(read_config(run))
    where = resolve_device(device)
    data = load_dataset(config.dataset, config.data_root, config.seed)
    model = build_model(config.model, data.num_classes).to(where).eval()
    return RunModels(run, config, model, where)


def same_shapes(a: Weights, b: Weights, what_a: str, what_b: str) -> None:
    """Two weight sets of one architecture, or a ``ValueError`` naming the first mismatch."""
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))[0]
        raise ValueError(f"{what_a} and {what_b} are different architectures ({only!r} is in "
                         f"one only)")
    for name in a:
        if a[name].shape != b[name].shape:
            raise ValueError(f"{what_a} and {what_b} are different architectures: {name} has "
                             f"shape {tuple(a[name].shape)} in one and {tuple(b[name].shape)} "
                             f"in the other")

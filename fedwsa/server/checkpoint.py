"""Checkpoints: what a run needs to continue after a crash, in one file replaced atomically.

``RUN/checkpoint.pt`` (``torch.save``; read back with ``torch.load(weights_only=True)``, so
opening a checkpoint can never run code) holds:

- ``round``: the last finished round; ``params``: the global weights after it;
- ``strategy``: ``strategy.state_dict()`` (WSA targets, server optimiser state, ...);
- ``rng``: the server process's torch CPU/CUDA, numpy and Python ``random`` states;
- ``metrics``: the ``metrics.jsonl`` rows written so far (a resumed run rewrites the file from
  them, so rows of rounds after the checkpoint are dropped); ``elapsed-s``; ``config``;
  ``rounds-without-update`` (rounds whose clients all failed, so the model was kept).

Only the latest checkpoint is kept. Client sampling (``sample_clients``) and every client's data
order and augmentation (``epoch_generator``) are derived statelessly from (seed, round, client),
so no client-side RNG state needs saving: a resumed round draws exactly what the uninterrupted
run drew.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedwsa.algorithms import unused_keys
from fedwsa.atomic import write_bytes_atomic
from fedwsa.config import RESUMABLE_KEYS, ConfigError
from fedwsa.keys import AUTO

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 2  # 2: the strategy state is keyed by algorithm part (fedwsa.algorithms)




class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: missing, unreadable, or from another config."""

    def __init__(self, key: str, value: Any, accepted: str, message: str | None = None) -> None:
        super().__init__(key, value, accepted)
        if message is not None:
            self.args = (message,)


@dataclass
class Checkpoint:
    """Everything saved after a round (see the module docstring)."""

    round: int
    config: dict[str, Any]
    params: dict[str, torch.Tensor]
    strategy: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    rounds_without_update: int = 0


def checkpoint_path(run_dir: Path | str) -> Path:
    return Path(run_dir) / CHECKPOINT_FILE


# --- RNG states -------------------------------------------------------------------------------


def seed_global_rngs(seed: int) -> None:
    """Seed the server process's global RNGs at the start of a run.

    fedwsa's own randomness uses explicit seeded generators; this makes a strategy that draws
    from the global torch/numpy/``random`` RNGs reproducible too (a resumed run restores them).
    """
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def capture_rng() -> dict[str, Any]:
    """The process's global RNG states, as tensors and plain Python values (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has-gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": list(internal),
                   "gauss-next": gauss_next},
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the states ``capture_rng`` returned (CUDA only when the same GPUs are visible)."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has-gauss"], npst["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss-next"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


# --- saving and loading -----------------------------------------------------------------------


_PLAIN = (str, int, float, bool, type(None))


def _check_loadable(obj: Any, where: str) -> None:
    """Refuse, at save time, what ``torch.load(weights_only=True)`` would refuse at resume time."""
    if isinstance(obj, (torch.Tensor, *_PLAIN)):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, _PLAIN):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; checkpoints "
                                "accept str/int/float/bool keys")
            _check_loadable(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_loadable(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__name__}; a checkpoint holds tensors, dicts, "
                    "lists, tuples, str, int, float, bool and None only (convert numpy arrays "
                    "with torch.from_numpy)")


def save_checkpoint(run_dir: Path | str, ckpt: Checkpoint) -> Path:
    """Write ``RUN/checkpoint.pt`` atomically, replacing the previous one."""
    _check_loadable(ckpt.strategy, "strategy.state_dict()")
    payload = {
        "format": FORMAT,
        "round": int(ckpt.round),
        "config": json.dumps(ckpt.config, sort_keys=True),
        "params": {k: v.detach().cpu().contiguous() for k, v in ckpt.params.items()},
        "strategy": ckpt.strategy,
        "rng": ckpt.rng,
        "metrics": json.dumps(ckpt.metrics),
        "elapsed-s": float(ckpt.elapsed_s),
        "rounds-without-update": int(ckpt.rounds_without_update),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return write_bytes_atomic(checkpoint_path(run_dir), buf.getvalue())


def load_checkpoint(run_dir: Path | str) -> Checkpoint:
    """Read ``RUN/checkpoint.pt`` safely; ``CheckpointError`` (key ``run-dir``) if unusable."""
    path = checkpoint_path(run_dir)
    accepted = "a run directory holding a checkpoint.pt written by fedwsa"
    if not path.is_file():
        raise CheckpointError("run-dir", str(run_dir), accepted, (
            f"config key 'run-dir' = {str(run_dir)!r} is invalid: expected a run directory "
            f"holding {CHECKPOINT_FILE} to resume from (there is none: checkpoint-every=0, or "
            "the run stopped before its first checkpoint; start a new run instead)"))
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"not a fedwsa checkpoint of format {FORMAT}")
        params = raw["params"]
        if not isinstance(params, dict) or not all(
                isinstance(v, torch.Tensor) for v in params.values()):
            raise ValueError("'params' is not a dict of tensors")
        ckpt = Checkpoint(
            round=int(raw["round"]),
            config=dict(json.loads(raw["config"])),
            params=dict(params),
            strategy=dict(raw["strategy"]),
            rng=dict(raw["rng"]),
            metrics=list(json.loads(raw["metrics"])),
            elapsed_s=float(raw["elapsed-s"]),
            rounds_without_update=int(raw.get("rounds-without-update", 0)),
        )
    except Exception as err:  # any unpickling/zip/format error means "corrupt"
        reason = _short_reason(err)
        raise CheckpointError("run-dir", str(run_dir), accepted, (
            f"config key 'run-dir' = {str(run_dir)!r} is invalid: its {CHECKPOINT_FILE} cannot "
            f"be read ({reason}); expected {accepted}")) from err
    return ckpt


def _short_reason(err: BaseException) -> str:
    """The useful part of a load error (torch's weights-only errors run to a dozen lines)."""
    text = str(err)
    if "WeightsUnpickler error:" in text or "weights_only" in text:
        # torch's message goes on to advise weights_only=False, which would run the file's
        # code: that advice is not passed on.
        return ("it holds pickled Python objects, so it is not a fedwsa checkpoint (fedwsa "
                "reads only tensors and plain values from a checkpoint and never unpickles "
                "objects)")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(err).__name__}: {first}"[:300]


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]
                       ) -> dict[str, tuple[Any, Any]]:
    """Keys (outside ``RESUMABLE_KEYS``, and read by the run's strategy) whose values differ:
    key -> (checkpoint, now). A key no part of the strategy reads (``unused_keys``: a CART knob
    in a FedAvg run, say) cannot make the checkpoint another run's, so a changed default of it
    does not block a resume."""
    keys = (set(saved) | set(current)) - RESUMABLE_KEYS - _unused(current)
    return {k: (saved.get(k), current.get(k)) for k in sorted(keys)
            if saved.get(k) != current.get(k)}


def _unused(config: Mapping[str, Any]) -> frozenset[str]:
    try:
        return unused_keys(str(config["strategy"]), str(config.get("server-opt", AUTO)))
    except (KeyError, ConfigError):  # an unknown strategy: every key counts
        return frozenset()


def check_compatible(ckpt: Checkpoint, current: Mapping[str, Any], run_dir: str) -> None:
    """Refuse to resume ``ckpt`` under a config that trains something else."""
    diff = config_differences(ckpt.config, current)
    if diff:
        listed = "; ".join(f"{k}={now!r} (checkpoint: {then!r})"
                           for k, (then, now) in diff.items())
        key, (then, now) = next(iter(diff.items()))
        raise CheckpointError(key, now, f"{then!r} as in the checkpoint", (
            f"config key '{key}' = {now!r} is invalid: the checkpoint in {run_dir!r} was "
            f"written by another config; differing keys: {listed}; expected the checkpoint's "
            f"values (only {', '.join(sorted(RESUMABLE_KEYS))} may change on resume)"))

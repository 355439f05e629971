"""Checks a run must pass before any work starts: keys that only make sense together, the data,
the model, the strategy, the device, the run directory and (when resuming) the checkpoint.

``make_config`` checks each key on its own. What is left needs the data or the disk, and would
otherwise fail minutes into a run (or an hour, on a cluster queue). Both entry points call
``preflight`` first: ``fedwsa run`` before Flower and Ray start, the ``ServerApp`` (``flwr run``)
before it creates the run directory. Every failure is a ``ConfigError``/``ValueError`` whose
one-line message names the key, the value and what is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedwsa.config import Config, ConfigError, make_config
from fedwsa.dirs import check_writable
from fedwsa.results.rundir import CONFIG_FILE, default_run_dir, run_state
from fedwsa.results.tensorboard import TENSORBOARD_DIR
from fedwsa.server.checkpoint import Checkpoint, check_compatible, load_checkpoint

if TYPE_CHECKING:
    from fedwsa.strategies import CohortStrategy


@dataclass(frozen=True)
class RunPlan:
    """A checked run: its config (with ``run-dir`` resolved) and, when resuming, the checkpoint."""

    config: Config
    run_dir: Path
    checkpoint: Checkpoint | None


def cohort_size(config: Config) -> int:
    """Clients sampled per round (``sample_clients``'s k)."""
    return max(1, math.floor(config.fraction_train * config.num_clients + 1e-9))


def check_keys(config: Config) -> None:
    """Consistency between keys that ``make_config`` does not check."""
    k = cohort_size(config)
    if config.min_clients > k:
        raise ConfigError("min-clients", config.min_clients,
                          f"an integer in [1, {k}]: only {k} client(s) are sampled per round "
                          f"(num-clients={config.num_clients} x "
                          f"fraction-train={config.fraction_train})")
    if config.resume and not config.run_dir:
        raise ConfigError("resume", True, "false, or true together with run-dir set to the run "
                          "to continue (fedwsa run --resume RUN_DIR)")


def check_data(config: Config) -> int:
    """Load the data and partition it as the nodes will; returns the number of classes.

    Raises the data layer's one-line errors (a missing or unreadable ``data-root``, more clients
    than examples, an impossible ``min-partition-size`` ...).
    """
    from fedwsa.clients.node import client_partitions
    from fedwsa.data import DataError, load_dataset

    try:
        data = load_dataset(config.dataset, config.data_root, config.seed)
    except DataError as err:  # the data layer says what is wrong with the file; add the key
        raise ConfigError("data-root", config.data_root,
                          f"a torchvision root folder, a Hugging Face save_to_disk folder "
                          f"or an .npz file with x_train, y_train, "
                          f"x_test, y_test for dataset={config.dataset!r} ({err})") from err
    client_partitions(config, data.y_train.numpy())
    return data.num_classes


def check_model_and_strategy(config: Config, num_classes: int) -> CohortStrategy:
    """The model builds and trains functionally, wsa-layers exist, the strategy builds."""
    from fedwsa.algorithms.wsa import resolve_wsa_layers
    from fedwsa.device import resolve_device
    from fedwsa.models import build_model, check_functional
    from fedwsa.strategies import build_strategy

    resolve_device(config.device)
    model = build_model(config.model, num_classes, seed=config.seed)
    check_functional(model)
    # Checked for every strategy: a typo here is a bad value even where WSA is off.
    resolve_wsa_layers(config.wsa_layers, dict(model.named_parameters()))
    try:
        return build_strategy(config)
    except ImportError as err:
        raise ConfigError("strategy", config.strategy,
                          f"a strategy installed here (import failed: {err})") from err


def check_run_dir(config: Config) -> Checkpoint | None:
    """A new run needs a directory that holds no run; a resumed one a usable checkpoint."""
    path = Path(config.run_dir)
    check_writable("run-dir", path)
    state = run_state(path)
    if not config.resume:
        if state != "none":
            article = "an" if state == "unfinished" else "a"
            raise ConfigError("run-dir", config.run_dir,
                              f"a new or empty directory (it holds {article} {state} run; "
                              f"continue it with resume=true / fedwsa run --resume "
                              f"{config.run_dir}, or choose another run-dir)")
        return None
    ckpt = load_checkpoint(path)
    check_compatible(ckpt, config.to_dict(), config.run_dir)
    if config.num_server_rounds < ckpt.round:
        raise ConfigError("num-server-rounds", config.num_server_rounds,
                          f"an integer >= {ckpt.round}, the round checkpointed in "
                          f"{config.run_dir}")
    if state == "finished" and ckpt.round >= config.num_server_rounds:
        raise ConfigError("resume", True,
                          f"a run that has not finished: {config.run_dir} finished all "
                          f"{ckpt.round} rounds (raise num-server-rounds to extend it)")
    return ckpt


def check_tensorboard(config: Config) -> None:
    """With ``tensorboard`` on: the package imports and its log directory can be written."""
    if not config.tensorboard:
        return
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as err:
        raise ConfigError("tensorboard", True, f"false, or true with the tensorboard package "
                                               f"installed ({err})") from err
    path = Path(config.run_dir) / TENSORBOARD_DIR
    try:
        check_writable("run-dir", path)
    except ConfigError as err:  # the same check, named after the key that asked for it
        raise ConfigError("tensorboard", True, f"false, or a log directory {path} that can be "
                                               f"written ({err.accepted})") from err


def preflight(config: Config) -> RunPlan:
    """Every check, cheapest first; nothing is written. Returns the plan the run follows."""
    check_keys(config)
    if not config.run_dir:
        config = config.replace(run_dir=str(default_run_dir(config)))
    strategy = check_model_and_strategy(config, check_data(config))
    ckpt = check_run_dir(config)
    check_tensorboard(config)
    # The strategy's own storage (SCAFFOLD's client-state store): writable for a new run,
    # present, this run's and intact for a resumed one.
    strategy.preflight(None if ckpt is None else ckpt.strategy)
    return RunPlan(config, Path(config.run_dir), ckpt)


def resume_config(run_dir: str, overrides: Mapping[str, Any]) -> Config:
    """The config that continues ``run_dir``: its saved config, ``overrides`` on top.

    The checkpoint's config is the authority (``config.json`` is only read when there is no
    readable checkpoint, to give the clearer "no checkpoint" error from ``preflight``).
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError("--resume", run_dir, "an existing run directory")
    try:
        saved: dict[str, Any] = load_checkpoint(path).config
    except ConfigError:
        config_file = path / CONFIG_FILE
        if not config_file.is_file():
            raise
        try:
            saved = Config.from_json(config_file.read_text(encoding="utf-8")).to_dict()
        except (OSError, ValueError) as err:
            raise ConfigError("--resume", run_dir,
                              f"a run directory with a readable {CONFIG_FILE} ({err})") from err
    values = {**saved, **dict(overrides), "resume": True, "run-dir": str(run_dir)}
    return make_config(values)

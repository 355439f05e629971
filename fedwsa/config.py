"""The run configuration: every key, its type, default, accepted values and meaning.

One table (``KEYS``) drives validation, the typed ``Config`` object, the defaults in
``pyproject.toml`` (checked by a test) and the README's key table, so they cannot drift apart.
Keys are kebab-case, as in Flower's ``--run-config``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from fedwsa import algorithms
from fedwsa.algorithms import FUSION_RULES, STRATEGIES, SVD_METHODS
from fedwsa.data import DATASETS, PAD_MODES
from fedwsa.device import device_spec
from fedwsa.keys import (
    AUTO,
    HARMLESS_KEYS,
    ConfigError,
    Key,
    any_string,
    boolean,
    choice,
    integer,
    key,
    number,
    round_schedule,
)
from fedwsa.models import MODELS
from fedwsa.partitions import NIID_BENCH_PARTITIONS, PARTITION_RNGS, PARTITIONS

__all__ = ["AUTO", "DATASETS", "FUSION_RULES", "HARMLESS_KEYS", "KEYS", "RESUMABLE_KEYS",
           "STRATEGIES", "SVD_METHODS", "Config", "ConfigError", "Key", "make_config",
           "markdown_table", "parse_overrides"]

TRAINERS = ("batched", "sequential")
PRECISIONS = ("fp32", "bf16")
CONV_IMPLS = ("auto", "grouped", "per-client", "unfold")


KEYS: tuple[Key, ...] = (
    key("dataset", "synthetic", choice(*DATASETS), "Dataset to train on."),
    key("data-root", "", any_string(),
         "torchvision root folder, .npz file (x_train, y_train, x_test, y_test) or Hugging "
         "Face save_to_disk folder (train, test); "
         "'' = ~/.cache/fedwsa/<dataset>, downloaded when missing."),
    key("partition", "dirichlet", choice(*PARTITIONS),
         "How the train set is split over clients."),
    key("partition-rng", "generator", choice(*PARTITION_RNGS),
        "Partition draws: generator (numpy Generator) or niid-bench (NIID-Bench's np.random "
        "calls in its order: its exact client sets for --init_seed=seed; dirichlet, iid, "
        "quantity)."),
    key("alpha", 0.5, number(0.0, lo_open=True),
         "Dirichlet concentration (label skew for dirichlet, size skew for quantity)."),
    key("classes-per-client", 2, integer(1), "Classes per client for the shards partition."),
    key("min-partition-size", 10, integer(0), "Smallest client partition (dirichlet, quantity)."),
    key("num-clients", 20, integer(1), "Number of virtual clients (partitions)."),
    key("fraction-train", 1.0, number(0.0, 1.0, lo_open=True),
         "Fraction of clients sampled per round."),
    key("num-server-rounds", 5, integer(1), "Federated rounds."),
    key("model", "simple-cnn", choice(*MODELS), "Architecture."),
    key("local-epochs", 1, integer(1), "Local epochs per round."),
    key("batch-size", 32, integer(1), "Local mini-batch size."),
    key("lr", 0.01, number(0.0, lo_open=True), "Local SGD learning rate."),
    key("momentum", 0.9, number(0.0, 1.0, hi_open=True), "Local SGD momentum."),
    key("weight-decay", 1e-5, number(0.0), "Local SGD weight decay."),
    key("normalize", True, boolean(),
        "Standardise pixels per channel with the train set's mean and std (false: pixels / 255, "
        "as NIID-Bench's ToTensor without Normalize)."),
    key("crop-padding", "reflect", choice(*PAD_MODES),
        "How augment's random crop pads by 4: reflect (NIID-Bench) or zeros (torchvision's "
        "RandomCrop default)."),
    key("augment", False, boolean(),
         "Random crop (padding 4) + horizontal flip, on tensors in batch."),
    key("trainer", "batched", choice(*TRAINERS), "How a node trains its cohort."),
    key("max-batched-clients", 0, integer(0),
         "Batched trainer: most clients trained at once (0 = a node's whole cohort on a "
         "GPU, 16 per worker thread on a CPU)."),
    key("precision", "fp32", choice(*PRECISIONS), "Batched trainer: autocast precision."),
    key("conv-impl", "auto", choice(*CONV_IMPLS),
        "Batched trainer: how vmap runs convolutions (auto: per-client on a CPU; on a GPU the "
        "faster of grouped and unfold, timed on the node's first step; unfold: im2col + one "
        "batched matmul, more memory)."),
    key("node-aggregate", True, boolean(),
        "Nodes reply with the weighted sum of their clients' weights (and each client's layer "
        "scopes), one model instead of one per client, where the strategy's merge is linear "
        "in them (all but cart, fedwsa-cart, scaffold, fedwsa-scaffold; not with "
        "save-client-models); float64 sums, so the result does not depend on the nodes."),
    key("strategy", "fedavg", choice(*STRATEGIES),
        "Strategy preset (README, \"Strategies\"); combines with server-opt."),
    key("seed", 0, integer(0),
         "Fixes partitions, sampling, initial weights, data order, augmentation."),
    key("device", "auto", device_spec(),
        "Where nodes train and the server evaluates (cuda:N: GPU N; a SuperNode's --node-config "
        "may set its own)."),
    key("eval-every", 1, integer(1), "Central evaluation every N rounds (and the last round)."),
    key("run-dir", "", any_string(), "Run directory ('' = runs/<strategy>-<timestamp>)."),
    *algorithms.KEYS,
    key("checkpoint-every", 1, integer(0), "Checkpoint every N rounds (0 = never)."),
    key("save-client-models", "none", round_schedule(),
        "Keep the sampled clients' trained weights of these rounds in run-dir/client-models "
        "(every-N: rounds N, 2N, ... and the last), for fedwsa analyze."),
    key("tensorboard", True, boolean(),
        "Write TensorBoard event files to run-dir/tensorboard (tensorboard --logdir EXP "
        "overlays a compare experiment's runs)."),
    key("resume", False, boolean(),
         "Continue the run in run-dir from its last checkpoint."),
    key("min-clients", 1, integer(1),
         "Fewest successful clients for a round to update the global model."),
    key("fail-rate", 0.0, number(0.0, 1.0, hi_open=True),
         "Fault injection for tests: chance that a client's training raises (seeded)."),
)
KEYS_BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}

RESUMABLE_KEYS: frozenset[str] = frozenset({
    "resume",               # is what resuming means
    "run-dir",              # the directory may have been moved or renamed
    "num-server-rounds",    # extend a finished run, or shorten one not yet past the new end
    "eval-every",           # which rounds are evaluated, never what is trained
    "checkpoint-every",     # when checkpoints are written, never what is trained
    "device",               # continue a GPU run on another machine (numerics may differ)
    "data-root",            # the same data may live somewhere else now
    "max-batched-clients",  # a memory knob: lower it after running out of GPU memory
    "conv-impl",            # how vmap runs convolutions: speed and memory (float round-off only)
    "node-aggregate",       # where the clients' weights are summed (float64 round-off only)
    "scaffold-store",       # the store may have been moved (its id is checked on resume)
    "save-client-models",   # what is kept from now on, never what is trained
    "tensorboard",          # what is logged from now on, never what is trained
})
"""Config keys that may differ between a checkpoint and the run that resumes it.

Every other key changes what is trained, so a checkpoint written under another value of it is
refused (the message names each differing key and both values).
"""

assert HARMLESS_KEYS <= RESUMABLE_KEYS <= set(KEYS_BY_NAME)


def _attr(name: str) -> str:
    return name.replace("-", "_")


@dataclass(frozen=True)
class Config:
    """The validated run configuration (attribute = key with '-' -> '_')."""

    dataset: str
    data_root: str
    partition: str
    partition_rng: str
    alpha: float
    classes_per_client: int
    min_partition_size: int
    num_clients: int
    fraction_train: float
    num_server_rounds: int
    model: str
    local_epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    normalize: bool
    crop_padding: str
    augment: bool
    trainer: str
    max_batched_clients: int
    precision: str
    conv_impl: str
    node_aggregate: bool
    strategy: str
    seed: int
    device: str
    eval_every: int
    run_dir: str
    server_opt: str
    server_lr: float | None
    server_momentum: float | None
    server_beta1: float | None
    server_beta2: float | None
    server_tau: float | None
    prox_mu: float
    wsa_beta: float
    wsa_fusion: str
    wsa_layers: str
    wsa_align_global: bool
    cart_rank: float
    cart_lambda: float
    cart_conv: bool
    cart_svd: str
    scaffold_store: str
    checkpoint_every: int
    save_client_models: str
    tensorboard: bool
    resume: bool
    min_clients: int
    fail_rate: float

    def to_dict(self) -> dict[str, Any]:
        """Kebab-case mapping, as Flower's run config spells it."""
        values = {k.name: getattr(self, _attr(k.name)) for k in KEYS}
        return {n: AUTO if v is None and KEYS_BY_NAME[n].auto else v for n, v in values.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Config:
        return make_config(json.loads(text))

    def replace(self, **changes: Any) -> Config:
        """A validated copy with some keys changed (kebab-case or snake_case names)."""
        values = self.to_dict()
        values.update({k.replace("_", "-"): v for k, v in changes.items()})
        return make_config(values)


assert {f.name for f in fields(Config)} == {_attr(k.name) for k in KEYS}


def _coerce(key: Key, value: Any) -> Any:
    """Accept the default's type (ints for floats too); refuse anything else."""
    kind = float if key.auto else type(key.default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key.name, value, "true or false")
    if isinstance(value, bool):
        raise ConfigError(key.name, value, key.accepted)
    if kind is float and isinstance(value, int | float):
        return float(value)
    if kind is int and isinstance(value, int):
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is str and isinstance(value, str):
        return value
    raise ConfigError(key.name, value, key.accepted)


def make_config(values: Mapping[str, Any] | None = None) -> Config:
    """Validate a (partial) run config into a ``Config``; missing keys take their defaults.

    Raises ``ConfigError`` for an unknown key, a wrong type, a value out of range, or keys
    that contradict each other, before any work starts.
    """
    values = dict(values or {})
    unknown = sorted(set(values) - set(KEYS_BY_NAME))
    if unknown:
        name = unknown[0]
        raise ConfigError(name, values[name], "a known key (see `fedwsa keys` or the README)")
    resolved: dict[str, Any] = {}
    for k in KEYS:
        raw = values.get(k.name, k.default)
        if k.auto and raw == AUTO:
            resolved[_attr(k.name)] = None
            continue
        value = _coerce(k, raw)
        if not k.check(value):
            raise ConfigError(k.name, value, k.accepted)
        resolved[_attr(k.name)] = value
    config = Config(**resolved)
    _check_consistency(config)
    return config


def _check_consistency(c: Config) -> None:
    """Checks that involve more than one key."""
    if c.partition_rng == "niid-bench" and c.partition not in NIID_BENCH_PARTITIONS:
        raise ConfigError("partition-rng", c.partition_rng,
                          f"'generator' with partition={c.partition!r}, or 'niid-bench' with "
                          f"partition among {', '.join(NIID_BENCH_PARTITIONS)} (the splits "
                          f"NIID-Bench has)")
    if c.partition == "shards" and c.dataset != "synthetic":
        num_classes = 100 if c.dataset == "cifar100" else 10
        if c.classes_per_client > num_classes:
            raise ConfigError("classes-per-client", c.classes_per_client,
                              f"at most the {num_classes} classes of {c.dataset}")
    algorithms.server_opt_of(c.strategy, c.server_opt)
    if c.trainer == "sequential" and c.precision != "fp32":
        raise ConfigError("precision", c.precision, "fp32 with trainer='sequential'")
    if c.trainer == "sequential" and c.conv_impl != "auto":
        raise ConfigError("conv-impl", c.conv_impl, "auto with trainer='sequential'")


def parse_overrides(text: str | list[str] | None) -> dict[str, Any]:
    """Parse ``"k=v k2='s'"`` (Flower's ``--run-config`` syntax) or a .toml path."""
    from flwr.common.config import parse_config_args

    if not text:
        return {}
    args = [text] if isinstance(text, str) else list(text)
    try:
        return parse_config_args(args)
    except Exception as err:  # click/tomli errors: turn them into one clear line
        example = "num-clients=20 dataset='cifar10'"
        raise ConfigError("run-config", " ".join(args),
                          f"space-separated key=value pairs, e.g. \"{example}\"") from err


def markdown_table() -> str:
    """The README's key table."""
    rows = ["| key | default | accepted | meaning |", "|---|---|---|---|"]
    for k in KEYS:
        default = str(k.default).lower() if isinstance(k.default, bool) else json.dumps(k.default)
        rows.append(f"| `{k.name}` | `{default}` | {k.accepted} | {k.help} |")
    return "\n".join(rows)

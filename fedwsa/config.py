"""The run configuration: every key, its type, default, accepted values and meaning.

One table (``KEYS``) drives validation, the typed ``Config`` object, the defaults in
``pyproject.toml`` (checked by a test) and the README's key table, so they cannot drift apart.
Keys are kebab-case, as in Flower's ``--run-config``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

DATASETS = ("cifar10", "cifar100", "synthetic")
PARTITIONS = ("dirichlet", "iid", "shards", "quantity")
MODELS = ("simple-cnn", "cnn", "resnet18")
TRAINERS = ("batched", "sequential")
STRATEGIES = ("fedavg", "fedwsa", "cart", "fedwsa-cart")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
FUSION_RULES = ("mean", "mixture", "global", "fixed")
SVD_METHODS = ("exact", "randomized")


class ConfigError(ValueError):
    """A bad configuration value: names the key, the value and what is accepted."""

    def __init__(self, key: str, value: Any, accepted: str) -> None:
        self.key, self.value, self.accepted = key, value, accepted
        super().__init__(f"config key '{key}' = {value!r} is invalid: expected {accepted}")


@dataclass(frozen=True)
class Key:
    """One config key: its default, accepted values (as text) and a check."""

    name: str
    default: Any
    help: str
    accepted: str
    check: Callable[[Any], bool]


def _choice(*options: str) -> tuple[str, Callable[[Any], bool]]:
    return ", ".join(options), lambda v: v in options


def _int(lo: int, hi: float = math.inf) -> tuple[str, Callable[[Any], bool]]:
    text = f"an integer >= {lo}" if hi == math.inf else f"an integer in [{lo}, {hi}]"
    return text, lambda v: lo <= v <= hi


def _float(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    text = f"a number in {left}{lo}, {hi}{right}"

    def check(v: float) -> bool:
        above = v > lo if lo_open else v >= lo
        below = v < hi if hi_open else v <= hi
        return math.isfinite(v) and above and below

    return text, check


def _any_str() -> tuple[str, Callable[[Any], bool]]:
    return "a string", lambda v: True


def _key(name: str, default: Any, spec: tuple[str, Callable[[Any], bool]], help: str) -> Key:
    accepted, check = spec
    return Key(name, default, help, accepted, check)


KEYS: tuple[Key, ...] = (
    _key("dataset", "synthetic", _choice(*DATASETS), "Dataset to train on."),
    _key("data-root", "", _any_str(),
         "torchvision root folder or .npz file (x_train, y_train, x_test, y_test); "
         "'' = ~/.cache/fedwsa/<dataset>, downloaded when missing."),
    _key("partition", "dirichlet", _choice(*PARTITIONS),
         "How the train set is split over clients."),
    _key("alpha", 0.5, _float(0.0, lo_open=True),
         "Dirichlet concentration (label skew for dirichlet, size skew for quantity)."),
    _key("classes-per-client", 2, _int(1), "Classes per client for the shards partition."),
    _key("min-partition-size", 10, _int(0), "Smallest client partition (dirichlet, quantity)."),
    _key("num-clients", 20, _int(1), "Number of virtual clients (partitions)."),
    _key("fraction-train", 1.0, _float(0.0, 1.0, lo_open=True),
         "Fraction of clients sampled per round."),
    _key("num-server-rounds", 5, _int(1), "Federated rounds."),
    _key("model", "simple-cnn", _choice(*MODELS), "Architecture."),
    _key("local-epochs", 1, _int(1), "Local epochs per round."),
    _key("batch-size", 32, _int(1), "Local mini-batch size."),
    _key("lr", 0.01, _float(0.0, lo_open=True), "Local SGD learning rate."),
    _key("momentum", 0.9, _float(0.0, 1.0, hi_open=True), "Local SGD momentum."),
    _key("weight-decay", 1e-5, _float(0.0), "Local SGD weight decay."),
    _key("augment", False, ("true or false", lambda v: True),
         "Random crop (padding 4) + horizontal flip, on tensors in batch."),
    _key("trainer", "batched", _choice(*TRAINERS), "How a node trains its cohort."),
    _key("max-batched-clients", 0, _int(0),
         "Batched trainer: most clients trained at once (0 = a node's whole cohort on a "
         "GPU, 16 per worker thread on a CPU)."),
    _key("precision", "fp32", _choice(*PRECISIONS), "Batched trainer: autocast precision."),
    _key("strategy", "fedavg", _choice(*STRATEGIES), "Server strategy."),
    _key("seed", 0, _int(0),
         "Fixes partitions, sampling, initial weights, data order, augmentation."),
    _key("device", "auto", _choice(*DEVICES), "Where nodes train and the server evaluates."),
    _key("eval-every", 1, _int(1), "Central evaluation every N rounds (and the last round)."),
    _key("run-dir", "", _any_str(), "Run directory ('' = runs/<strategy>-<timestamp>)."),
    _key("wsa-beta", 1.0, _float(0.0), "WSA: weight of the scope KL term (0 = off)."),
    _key("wsa-fusion", "mean", _choice(*FUSION_RULES), "WSA: how client scopes become the target."),
    _key("wsa-layers", "all", _any_str(),
         "WSA: 'all' regularised layers, or comma-separated parameter names."),
    _key("wsa-align-global", False, ("true or false", lambda v: True),
         "WSA: rescale the global model's layers to the fused scope."),
    _key("cart-rank", 0.32, _float(0.0, 1.0, lo_open=True),
         "CART: kept rank as a fraction of min(rows, cols)."),
    _key("cart-lambda", 1.5, _float(0.0), "CART: scale of the low-rank centred updates."),
    _key("cart-conv", True, ("true or false", lambda v: True),
         "CART: treat conv kernels as out x (in*kh*kw) matrices."),
    _key("cart-svd", "exact", _choice(*SVD_METHODS), "CART: exact or randomized SVD."),
    _key("checkpoint-every", 1, _int(0), "Checkpoint every N rounds (0 = never)."),
    _key("resume", False, ("true or false", lambda v: True),
         "Continue the run in run-dir from its last checkpoint."),
    _key("min-clients", 1, _int(1),
         "Fewest successful clients for a round to update the global model."),
    _key("fail-rate", 0.0, _float(0.0, 1.0, hi_open=True),
         "Fault injection for tests: chance that a client's training raises (seeded)."),
)
KEYS_BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}


def _attr(name: str) -> str:
    return name.replace("-", "_")


@dataclass(frozen=True)
class Config:
    """The validated run configuration (attribute = key with '-' -> '_')."""

    dataset: str
    data_root: str
    partition: str
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
    augment: bool
    trainer: str
    max_batched_clients: int
    precision: str
    strategy: str
    seed: int
    device: str
    eval_every: int
    run_dir: str
    wsa_beta: float
    wsa_fusion: str
    wsa_layers: str
    wsa_align_global: bool
    cart_rank: float
    cart_lambda: float
    cart_conv: bool
    cart_svd: str
    checkpoint_every: int
    resume: bool
    min_clients: int
    fail_rate: float

    def to_dict(self) -> dict[str, Any]:
        """Kebab-case mapping, as Flower's run config spells it."""
        return {k.name: getattr(self, _attr(k.name)) for k in KEYS}

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
    kind = type(key.default)
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
    for key in KEYS:
        value = _coerce(key, values.get(key.name, key.default))
        if not key.check(value):
            raise ConfigError(key.name, value, key.accepted)
        resolved[_attr(key.name)] = value
    config = Config(**resolved)
    _check_consistency(config)
    return config


def _check_consistency(c: Config) -> None:
    """Checks that involve more than one key."""
    if c.partition == "shards" and c.dataset != "synthetic":
        num_classes = 100 if c.dataset == "cifar100" else 10
        if c.classes_per_client > num_classes:
            raise ConfigError("classes-per-client", c.classes_per_client,
                              f"at most the {num_classes} classes of {c.dataset}")
    if c.trainer == "sequential" and c.precision != "fp32":
        raise ConfigError("precision", c.precision, "fp32 with trainer='sequential'")


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

"""What a SuperNode is told about its own host: ``flower-supernode --node-config "..."``.

In a deployment each host keeps the dataset where it likes and has its own GPUs, so a node may
set two run-config keys for itself; the run config's values hold everywhere else (the server
evaluates with its own):

- ``data-root``: where this host keeps the dataset (a torchvision root folder or an .npz file;
  ``''``: ``~/.cache/fedwsa/<dataset>``). The node partitions its own copy with the run's
  seed, so every host must hold the same train set: a different copy gives other partitions
  (and, from an .npz, other pixel statistics), and nothing checks it. The server evaluates on
  its own copy's test set.
- ``device``: where this node trains (``cuda:1`` for the second GPU of its host).

Flower's simulation engine gives every node ``partition-id`` and ``num-partitions``; fedwsa's
server assigns the clients, so those two are accepted and ignored. Any other key is an error
that names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedwsa.device import device_spec, resolve_device
from fedwsa.keys import ConfigError, Key, any_string, key

NODE_KEYS: tuple[Key, ...] = (
    key("data-root", "", any_string(), "Where this host keeps the dataset."),
    key("device", "auto", device_spec(), "Where this node trains."),
)
FLOWER_KEYS = frozenset({"partition-id", "num-partitions"})
"""Keys Flower's simulation engine sets on every node; fedwsa does not use them."""


class NodeConfigError(ConfigError):
    """A bad ``--node-config`` entry: names the key, the value and what is accepted."""

    def __init__(self, key: str, value: Any, accepted: str) -> None:
        super().__init__(key, value, accepted)
        self.args = (f"node config key '{key}' = {value!r} (flower-supernode --node-config) "
                     f"is invalid: expected {accepted}",)


def node_overrides(node_config: Mapping[str, Any]) -> dict[str, str]:
    """The run-config keys this node sets for itself, checked; raises ``NodeConfigError``."""
    known = {k.name: k for k in NODE_KEYS}
    overrides: dict[str, str] = {}
    for name, value in sorted(node_config.items()):
        if name in FLOWER_KEYS:
            continue
        if name not in known:
            raise NodeConfigError(name, value, f"one of {', '.join(known)}")
        k = known[name]
        if not isinstance(value, str) or not k.check(value):
            raise NodeConfigError(name, value, f"{k.accepted} (quoted: {name}='...')")
        if name == "device":
            try:
                resolve_device(value)  # the GPU must exist on this host
            except ConfigError as err:
                raise NodeConfigError(name, value, err.accepted) from None
        overrides[name] = value
    return overrides


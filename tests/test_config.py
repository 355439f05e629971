"""The config table: defaults agree with pyproject.toml, bad values fail with a clear message."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedwsa.config import KEYS, ConfigError, make_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_key_with_its_default() -> None:
    app_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    assert {k.name: k.default for k in KEYS} == app_config


def test_readme_documents_every_key() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [k.name for k in KEYS if f"`{k.name}`" not in readme]
    assert not missing


def test_defaults_validate_and_round_trip() -> None:
    config = make_config()
    assert make_config(config.to_dict()) == config
    assert type(config).from_json(config.to_json()) == config


def test_overrides_parse_like_flower() -> None:
    values = parse_overrides("dataset='cifar10' num-clients=100 alpha=0.1 augment=true")
    config = make_config(values)
    assert (config.dataset, config.num_clients, config.alpha, config.augment) == (
        "cifar10", 100, 0.1, True)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1}, "alpha"),
        ({"dataset": "mnist"}, "dataset"),
        ({"num-clients": 0}, "num-clients"),
        ({"fraction-train": 1.5}, "fraction-train"),
        ({"lr": "fast"}, "lr"),
        ({"augment": 1}, "augment"),
        ({"num-clients": 2.5}, "num-clients"),
        ({"momentum": 1.0}, "momentum"),
        ({"nmu-clients": 3}, "nmu-clients"),
    ],
)
def test_bad_values_name_key_value_and_accepted(values: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(values)
    message = str(info.value)
    assert info.value.key == key
    assert f"'{key}'" in message and repr(next(iter(values.values()))) in message
    assert "expected" in message

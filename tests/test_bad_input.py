"""Bad input fails before any work: exit status 2, one line naming key and value, no run dir.

Every case goes through ``fedwsa.cli.main`` in-process with ``simulate`` replaced by a function
that fails the test, which proves each check fires before Flower or Ray start.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import fedwsa.cli
from fedwsa.cli import main
from fedwsa.config import make_config
from fedwsa.server.app import run_federation
from fedwsa.server.checkpoint import Checkpoint, capture_rng, save_checkpoint

SMALL = "dataset='synthetic' num-clients=4 num-server-rounds=2"
CIFAR = "dataset='cifar10' num-clients=4 num-server-rounds=2"
BASE = {"dataset": "'synthetic'", "num-clients": "4", "num-server-rounds": "2"}


@dataclass(frozen=True)
class Case:
    """``argv(tmp_path)`` must fail naming ``key`` and ``value``; ``prepare`` sets up disk state."""

    name: str
    argv: Callable[[Path], list[str]]
    key: str
    value: str
    prepare: Callable[[Path], None] | None = None


def run_c(extra: str) -> Callable[[Path], list[str]]:
    """``fedwsa run -c "<BASE with extra's keys replaced> run-dir=TMP/run"``."""
    values = dict(BASE)
    values.update(pair.split("=", 1) for pair in extra.split())
    text = " ".join(f"{k}={v}" for k, v in values.items())
    return lambda tmp: ["run", "-c", f"{text} run-dir='{tmp / 'run'}'"]


def write_npz(path: Path, drop: str | None = None) -> None:
    arrays = {"x_train": np.zeros((20, 32, 32, 3), np.uint8), "y_train": np.zeros(20, np.int64),
              "x_test": np.zeros((5, 32, 32, 3), np.uint8), "y_test": np.zeros(5, np.int64)}
    arrays.pop(drop or "", None)
    np.savez(path, **arrays)


def make_run(tmp: Path, finished: bool, checkpoint: bool = True, lr: float = 0.01) -> None:
    """A run directory as a run would leave it (config, metrics, checkpoint, result)."""
    run = tmp / "run"
    run.mkdir()
    config = make_config({"dataset": "synthetic", "num-clients": 4, "num-server-rounds": 2,
                          "run-dir": str(run), "lr": lr})
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    (run / "metrics.jsonl").write_text(json.dumps({"round": 0}) + "\n")
    if checkpoint:
        params = {"w": torch.zeros(2)}
        save_checkpoint(run, Checkpoint(2 if finished else 1, config.to_dict(), params, {},
                                        capture_rng(), [{"round": 0}]))
    if finished:
        (run / "result.json").write_text('{"status": "finished", "rounds": 2}')


def make_scaffold_run(tmp: Path, damage: Callable[[Path], object]) -> None:
    """A finished 2-round SCAFFOLD run in TMP/run, then ``damage`` done to its store."""
    from fedwsa.server.inprocess import run_in_process

    run_in_process(make_config({"dataset": "synthetic", "num-clients": 4,
                                "num-server-rounds": 2, "strategy": "scaffold",
                                "run-dir": str(tmp / "run")}))
    damage(tmp / "run" / "client-state")


def set_store_id(store: Path, store_id: str) -> None:
    meta = json.loads((store / "store.json").read_text())
    (store / "store.json").write_text(json.dumps({**meta, "id": store_id}))


def resume_longer(tmp: Path) -> list[str]:
    return ["run", "--resume", str(tmp / "run"), "-c", "num-server-rounds=3"]


CASES = [
    # one key at a time: type, range, unknown names
    Case("num-clients zero", run_c("num-clients=0"), "num-clients", "0"),
    Case("num-clients text", run_c("num-clients='many'"), "num-clients", "'many'"),
    Case("alpha zero", run_c("alpha=0"), "alpha", "0.0"),
    Case("alpha negative", run_c("alpha=-1"), "alpha", "-1.0"),
    Case("cart-rank zero", run_c("cart-rank=0"), "cart-rank", "0.0"),
    Case("cart-rank above one", run_c("cart-rank=1.5"), "cart-rank", "1.5"),
    Case("unknown dataset", run_c("dataset='mnist'"), "dataset", "'mnist'"),
    Case("unknown strategy", run_c("strategy='fedsgd'"), "strategy", "'fedsgd'"),
    Case("unknown server-opt", run_c("server-opt='sgd'"), "server-opt", "'sgd'"),
    Case("preset vs server-opt", run_c("strategy='fedadam' server-opt='yogi'"), "server-opt",
         "'yogi'"),
    Case("unknown crop-padding", run_c("crop-padding='edge'"), "crop-padding", "'edge'"),
    Case("normalize text", run_c("normalize='no'"), "normalize", "'no'"),
    Case("negative prox-mu", run_c("prox-mu=-0.01"), "prox-mu", "-0.01"),
    Case("server-beta1 of one", run_c("server-beta1=1.0"), "server-beta1", "1.0"),
    Case("server-tau zero", run_c("server-tau=0.0"), "server-tau", "0.0"),
    Case("server-lr negative", run_c("server-lr=-1.0"), "server-lr", "-1.0"),
    Case("unknown model", run_c("model='vgg11'"), "model", "'vgg11'"),
    Case("unknown partition", run_c("partition='pathological'"), "partition", "'pathological'"),
    Case("unknown key", run_c("num-client=5"), "num-client", "5"),
    Case("lr zero", run_c("lr=0"), "lr", "0.0"),
    Case("momentum one", run_c("momentum=1.0"), "momentum", "1.0"),
    Case("fraction-train above one", run_c("fraction-train=1.5"), "fraction-train", "1.5"),
    Case("batch-size zero", run_c("batch-size=0"), "batch-size", "0"),
    Case("fail-rate one", run_c("fail-rate=1.0"), "fail-rate", "1.0"),
    Case("min-clients zero", run_c("min-clients=0"), "min-clients", "0"),
    Case("seed negative", run_c("seed=-1"), "seed", "-1"),
    Case("eval-every zero", run_c("eval-every=0"), "eval-every", "0"),
    Case("checkpoint-every negative", run_c("checkpoint-every=-1"), "checkpoint-every", "-1"),
    Case("augment text", run_c("augment='yes'"), "augment", "'yes'"),
    Case("unknown wsa-fusion", run_c("wsa-fusion='median'"), "wsa-fusion", "'median'"),
    Case("unknown cart-svd", run_c("cart-svd='fast'"), "cart-svd", "'fast'"),
    Case("unknown device", run_c("device='tpu'"), "device", "'tpu'"),
    Case("local-epochs zero", run_c("local-epochs=0"), "local-epochs", "0"),
    Case("max-batched-clients negative", run_c("max-batched-clients=-1"),
         "max-batched-clients", "-1"),
    Case("run-config without '='", lambda tmp: ["run", "-c", f"{SMALL} num-clients"],
         "run-config", "num-clients"),
    Case("a key given twice", lambda tmp: ["run", "-c", f"{SMALL} num-clients=3"],
         "num-clients", "3"),
    Case("num-supernodes zero", lambda tmp: ["run", "-c", f"{SMALL} run-dir='{tmp / 'run'}'",
                                             "--num-supernodes", "0"], "--num-supernodes", "0"),
    # keys against each other and against the data
    Case("bf16 with sequential trainer", run_c("precision='bf16' trainer='sequential'"),
         "precision", "'bf16'"),
    Case("a conv-impl with sequential trainer",
         run_c("conv-impl='unfold' trainer='sequential'"), "conv-impl", "'unfold'"),
    Case("unknown conv-impl", run_c("conv-impl='fft'"), "conv-impl", "'fft'"),
    Case("more clients than examples", run_c("num-clients=6000"), "num-clients", "6000"),
    Case("min-clients above the cohort", run_c("min-clients=5"), "min-clients", "5"),
    Case("min-clients above a fraction's cohort", run_c("fraction-train=0.5 min-clients=3"),
         "min-clients", "3"),
    Case("min-partition-size too large", run_c("min-partition-size=2000"),
         "min-partition-size", "2000"),
    Case("classes-per-client above the classes",
         run_c("partition='shards' classes-per-client=20"), "classes-per-client", "20"),
    Case("niid-bench draws for a split NIID-Bench lacks",
         run_c("partition='shards' partition-rng='niid-bench'"), "partition-rng", "'niid-bench'"),
    Case("save-client-models every-0", run_c("save-client-models='every-0'"),
         "save-client-models", "'every-0'"),
    Case("unknown partition-rng", run_c("partition-rng='mt19937'"), "partition-rng",
         "'mt19937'"),
    Case("unknown wsa-layers name", run_c("wsa-layers='conv9.weight'"), "wsa-layers",
         "'conv9.weight'"),
    Case("missing data file",
         lambda tmp: ["run", "-c", f"{CIFAR} data-root='{tmp / 'no.npz'}' "
                      f"run-dir='{tmp / 'run'}'"], "data-root", "no.npz"),
    Case("unreadable data file",
         lambda tmp: ["run", "-c", f"{CIFAR} data-root='{tmp / 'bad.npz'}' "
                      f"run-dir='{tmp / 'run'}'"], "data-root", "bad.npz",
         prepare=lambda tmp: (tmp / "bad.npz").write_bytes(b"not a zip archive")),
    Case("data file missing an array",
         lambda tmp: ["run", "-c", f"{CIFAR} data-root='{tmp / 'part.npz'}' "
                      f"run-dir='{tmp / 'run'}'"], "data-root", "y_test",
         prepare=lambda tmp: write_npz(tmp / "part.npz", drop="y_test")),
    # run directories and checkpoints
    Case("resume without run-dir", lambda tmp: ["run", "-c", f"{SMALL} resume=true"],
         "resume", "True"),
    Case("resume without a checkpoint", run_c("resume=true"), "run-dir", "run"),
    Case("--resume of a missing directory",
         lambda tmp: ["run", "--resume", str(tmp / "run")], "--resume", "run"),
    Case("--resume of a run without checkpoint",
         lambda tmp: ["run", "--resume", str(tmp / "run")], "run-dir", "there is none",
         prepare=lambda tmp: make_run(tmp, finished=False, checkpoint=False)),
    Case("corrupt checkpoint", lambda tmp: ["run", "--resume", str(tmp / "run")], "run-dir",
         "cannot be read",
         prepare=lambda tmp: (make_run(tmp, finished=False),
                              (tmp / "run" / "checkpoint.pt").write_bytes(b"\x00" * 64))),
    Case("checkpoint from another config",
         lambda tmp: ["run", "-c", f"{SMALL} resume=true lr=0.5 run-dir='{tmp / 'run'}'"],
         "lr", "0.5", prepare=lambda tmp: make_run(tmp, finished=False)),
    Case("--resume changing a training key",
         lambda tmp: ["run", "--resume", str(tmp / "run"), "-c", "seed=9"], "seed", "9",
         prepare=lambda tmp: make_run(tmp, finished=False)),
    Case("resume a finished run", lambda tmp: ["run", "--resume", str(tmp / "run")],
         "resume", "finished all 2 rounds", prepare=lambda tmp: make_run(tmp, finished=True)),
    Case("resume with fewer rounds than checkpointed",
         lambda tmp: ["run", "--resume", str(tmp / "run"), "-c", "num-server-rounds=1"],
         "num-server-rounds", "1", prepare=lambda tmp: make_run(tmp, finished=True)),
    Case("run-dir holds a finished run", run_c(""), "run-dir", "finished run",
         prepare=lambda tmp: make_run(tmp, finished=True)),
    Case("run-dir holds another unfinished run", run_c("lr=0.3"), "run-dir", "unfinished run",
         prepare=lambda tmp: make_run(tmp, finished=False)),
    Case("run-dir is a file", run_c(""), "run-dir", "run",
         prepare=lambda tmp: (tmp / "run").write_text("x")),
    # SCAFFOLD's client-state store
    Case("scaffold-store under a file",
         lambda tmp: ["run", "-c", f"{SMALL} strategy='scaffold' run-dir='{tmp / 'run'}' "
                      f"scaffold-store='{tmp / 'file' / 'store'}'"], "scaffold-store", "file",
         prepare=lambda tmp: (tmp / "file").write_text("x")),
    Case("scaffold-store holds another store",
         lambda tmp: ["run", "-c", f"{SMALL} strategy='scaffold' run-dir='{tmp / 'run'}' "
                      f"scaffold-store='{tmp}'"], "scaffold-store", "holds files already",
         prepare=lambda tmp: (tmp / "c3.r1.npy").write_bytes(b"")),
    Case("resume with a corrupted client state", resume_longer, "scaffold-store", "c1.r2.npy",
         prepare=lambda tmp: make_scaffold_run(
             tmp, lambda s: (s / "c1.r2.npy").write_bytes(b"\x93NUMPY garbage"))),
    Case("resume with a client state missing", resume_longer, "scaffold-store", "c2.r2.npy",
         prepare=lambda tmp: make_scaffold_run(tmp, lambda s: (s / "c2.r2.npy").unlink())),
    Case("resume with another run's store", resume_longer, "scaffold-store", "another run",
         prepare=lambda tmp: make_scaffold_run(tmp, lambda s: set_store_id(s, "f" * 32))),
]


def snapshot(path: Path) -> dict[str, bytes] | None:
    """Every file under ``path`` with its bytes (None when ``path`` does not exist)."""
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_exits_2_with_one_line_and_leaves_no_run_dir(
        case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def no_simulation(*args: object, **kwargs: object) -> Path:
        raise AssertionError("the simulation started before the input was checked")

    monkeypatch.setattr(fedwsa.cli, "simulate", no_simulation)
    monkeypatch.chdir(tmp_path)  # a default run-dir would appear under tmp_path/runs
    if case.prepare is not None:
        case.prepare(tmp_path)
    before = snapshot(tmp_path / "run")

    code = main(case.argv(tmp_path))

    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedwsa: error: "), err
    line = lines[0]
    assert f"'{case.key}'" in line or f"{case.key}=" in line, line
    assert case.value in line, line
    if case.key != "run-config":  # not a syntax error that merely quotes the key
        assert "'run-config'" not in line, line
    assert snapshot(tmp_path / "run") == before  # nothing created, nothing touched
    assert not (tmp_path / "runs").exists()


def test_there_are_at_least_25_distinct_bad_inputs() -> None:
    assert len({c.name for c in CASES}) == len(CASES) >= 25


class UnusedGrid:
    """The ServerApp must fail before it asks for nodes."""

    def get_node_ids(self) -> list[int]:
        raise AssertionError("the ServerApp waited for nodes before checking its input")


@pytest.mark.parametrize("values, key", [
    ({"num-clients": 6000}, "num-clients"),
    ({"num-clients": 4, "min-clients": 5}, "min-clients"),
    ({"num-clients": 4, "resume": True}, "run-dir"),
])
def test_server_app_checks_before_creating_the_run_dir(values: dict, key: str,
                                                       tmp_path: Path) -> None:
    """``flwr run`` goes through the ServerApp: same checks, and no half-made run directory."""
    config = make_config({"dataset": "synthetic", **values, "run-dir": str(tmp_path / "run")})
    with pytest.raises(ValueError, match=key):
        run_federation(UnusedGrid(), config)  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()

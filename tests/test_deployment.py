"""Flower's deployment engine: a SuperLink, SuperNodes and ``flwr run``, and ``--node-config``.

The slow tests start real Flower processes on free localhost ports (``--insecure``), with a
Flower home in ``tmp_path`` (``FLWR_HOME``) so the user's ``~/.flwr`` is never read or written,
and stop every process they started, and every process those started, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedwsa.cli import main
from fedwsa.clients.node_config import NodeConfigError, node_overrides
from fedwsa.config import ConfigError, make_config
from fedwsa.device import resolve_device
from fedwsa.server.app import run_federation
from fedwsa.server.inprocess import InProcessGrid, server_identity

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's flower-superlink, flower-supernode, flwr
KEYS = {"dataset": "synthetic", "num-clients": 6, "num-server-rounds": 2, "seed": 5,
        "trainer": "batched", "batch-size": 32, "checkpoint-every": 0}
TIMING = {"elapsed-s", "node-train-s", "round-s"}  # wall-clock: the only keys that may differ
RUN_TIMEOUT_S = 600.0


def overrides(values: dict) -> str:
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in values.items())


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- processes ------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc (Linux)."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(pids: list[int]) -> set[int]:
    if not Path("/proc").is_dir():
        return set()
    tree, found, todo = _children(), set(), list(pids)
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Processes:
    """The Flower processes a test starts, each logging to its own file under ``logs``."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self.started: list[tuple[str, subprocess.Popen]] = []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        with (self.logs / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=out,
                                    stderr=subprocess.STDOUT, env=self.env, cwd=self.logs,
                                    start_new_session=True)
        self.started.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def report(self) -> str:
        """Every process's exit status and the tail of its log, for a failure message."""
        parts = []
        for name, proc in self.started:
            tail = "\n".join(self.log(name).splitlines()[-30:])
            parts.append(f"--- {name} (pid {proc.pid}, exit {proc.poll()}) ---\n{tail}")
        return "\n".join(parts)

    def check_running(self, *names: str) -> None:
        for name, proc in self.started:
            if name in names and proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}\n{self.report()}")

    def wait_for(self, name: str, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log(name):
            self.check_running(name)
            if time.monotonic() > deadline:
                pytest.fail(f"{name} did not log {text!r} within {timeout_s:.0f} s\n"
                            f"{self.report()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM to every started process and its descendants (a SuperLink starts a
        SuperExec in its own session, which starts the ServerApp; a SuperNode likewise), then
        SIGKILL to whatever is still alive after 15 s."""
        pids = [proc.pid for _, proc in self.started]
        everyone = set(pids) | _descendants(pids)
        for pid in everyone:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _, proc in self.started:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        while any(_alive(p) for p in everyone) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in everyone:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[Processes]:
    """Started processes, stopped at teardown whatever the test did."""
    env = {**os.environ,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # SuperLink finds
           "FLWR_HOME": str(tmp_path / "flwr-home"),                   # flower-superexec
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # no `uv` install per run
           "FLWR_DISABLE_UPDATE_CHECK": "1",
           "OMP_NUM_THREADS": "1"}
    processes = Processes(tmp_path / "logs", env)
    try:
        yield processes
    finally:
        processes.stop()


# --- the deployment engine, end to end ------------------------------------------------------


@pytest.mark.slow
def test_superlink_and_two_supernodes_match_the_simulation(
        flower: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``flwr run`` against a SuperLink and two SuperNodes writes the same ``metrics.jsonl``
    as ``fedwsa run --num-supernodes 2`` with the same config: every value bit for bit, but
    the wall-clock keys (``elapsed-s``, ``node-train-s``, ``round-s``).

    Why the maths allows it: the server samples clients with its own seeded RNG and splits
    them over the nodes sorted by node id (random ids in a deployment, 1001.. in the
    simulation: the order, hence the split, is the same); each node partitions the seeded
    synthetic set itself and trains its clients with per-client seeded streams; replies are
    merged in client-id order. CPU float results are bit-identical only at equal thread
    counts, so every process (SuperNodes' ClientApps, the deployed ServerApp, the simulation's
    Ray actors, and this process, which evaluates the simulation's global model) runs torch
    with one thread.

    Each SuperNode gets a ``--node-config`` (``data-root``, ``device``); its ClientApp logs
    it. The synthetic set ignores ``data-root``, so this checks that the node config reaches
    the ClientApp; ``test_node_data_root_is_the_nodes_own`` checks what it does.
    """
    port = free_port()
    home = Path(flower.env["FLWR_HOME"])
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\n'
        f"insecure = true\n")
    flower.start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1",
                 "--port", str(port))
    flower.wait_for("superlink", "Application startup complete", timeout_s=120)
    for i in range(2):
        flower.start(f"supernode{i}", "flower-supernode", "--insecure",
                     "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()),
                     "--node-config", f"data-root='{tmp_path / f'node{i}'}' device='cpu'")
    for i in range(2):  # both connected before the ServerApp counts its nodes
        flower.wait_for(f"supernode{i}", "SuperNode ID:", timeout_s=120)

    deployed = tmp_path / "deployed"
    run_config = overrides({**KEYS, "run-dir": str(deployed)})
    flower.start("flwr-run", "flwr", "run", str(ROOT), "test", "--run-config", run_config,
                 "--stream")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (deployed / "result.json").exists():
        flower.check_running("superlink", "supernode0", "supernode1")
        if time.monotonic() > deadline:
            pytest.fail(f"no result.json after {RUN_TIMEOUT_S:.0f} s\n{flower.report()}")
        time.sleep(0.5)
    assert json.loads((deployed / "result.json").read_text())["status"] == "finished"
    for i in range(2):
        assert f"[fedwsa] node config: data-root='{tmp_path / f'node{i}'}' device='cpu'" in \
            flower.log(f"supernode{i}"), flower.report()

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # Ray gives its actors this thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        simulated = tmp_path / "simulated"
        assert main(["run", "-c", overrides({**KEYS, "run-dir": str(simulated)}),
                     "--num-supernodes", "2"]) == 0
    finally:
        torch.set_num_threads(threads)

    got, want = rows(deployed), rows(simulated)
    assert [r["round"] for r in got] == [0, 1, 2]
    assert all(r["clients-sampled"] == 6 and r["clients-failed"] == 0 for r in got[1:])
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in got]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in want]


@pytest.mark.slow
def test_supernode_that_cannot_reach_the_superlink_says_so(flower: Processes) -> None:
    """Flower 1.41 retries forever by default ("Connection attempt failed, retrying in N
    seconds", no address). With ``--max-wait-time`` (the README's deployment commands use it)
    the SuperNode gives up after that many seconds, exits non-zero, says it could not connect
    to the SuperLink, and its log names the address (in the ``--insecure`` line at start; with
    TLS Flower logs the address only at DEBUG)."""
    port = free_port()  # nothing listens there
    start = time.monotonic()
    proc = flower.start("supernode", "flower-supernode", "--insecure",
                        "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()),
                        "--max-wait-time", "10")
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the SuperNode was still running after 30 s\n{flower.report()}")
    took = time.monotonic() - start
    log = flower.log("supernode")
    assert code != 0 and took < 30, flower.report()
    assert f"127.0.0.1:{port}" in log, log
    assert "could not establish a connection to the SuperLink" in log, log


# --- --node-config, in-process ------------------------------------------------------------


def test_node_config_keys_and_flowers_own() -> None:
    node = {"data-root": "/data/cifar10.npz", "device": "cpu", "partition-id": 0,
            "num-partitions": 2}
    assert node_overrides(node) == {"data-root": "/data/cifar10.npz", "device": "cpu"}
    assert node_overrides({}) == {}
    config = make_config({"data-root": "/server/cifar10.npz"}).replace(**node_overrides(node))
    assert (config.data_root, config.device) == ("/data/cifar10.npz", "cpu")


@pytest.mark.parametrize(("node", "key", "value", "accepted"), [
    ({"data_root": "/x"}, "data_root", "'/x'", "one of data-root, device"),
    ({"data-root": 3}, "data-root", "3", "a string"),
    ({"device": "tpu"}, "device", "'tpu'", "auto, cpu, cuda or cuda:N"),
    ({"device": "cuda:x"}, "device", "'cuda:x'", "auto, cpu, cuda or cuda:N"),
])
def test_bad_node_config_names_key_value_and_accepted(node: dict, key: str, value: str,
                                                      accepted: str) -> None:
    with pytest.raises(NodeConfigError) as info:
        node_overrides(node)
    message = str(info.value)
    assert info.value.key == key
    assert f"node config key '{key}' = {value}" in message and accepted in message
    assert "--node-config" in message


def test_a_gpu_the_host_lacks_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(NodeConfigError, match="cuda:0 .. cuda:1"):
        node_overrides({"device": "cuda:2"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(NodeConfigError, match="'cuda:1'.*no CUDA device"):
        node_overrides({"device": "cuda:1"})
    assert make_config({"device": "cuda:1"}).device == "cuda:1"  # the run config takes it too
    with pytest.raises(ConfigError, match="cuda:N"):
        make_config({"device": "gpu:1"})


def write_npz(path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (80, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(80) % 10, x_test=rng.integers(0, 256, (20, 32, 32, 3),
                                                             dtype=np.uint8),
             y_test=np.arange(20) % 10)


def run_nodes(tmp_path: Path, name: str, node_configs: list[dict]) -> list[dict]:
    """A 1-round cifar10 run over in-process nodes with these node configs; its rows."""
    config = make_config({"dataset": "cifar10", "data-root": str(tmp_path / "server.npz"),
                          "num-clients": 4, "num-server-rounds": 1, "partition": "iid",
                          "checkpoint-every": 0, "device": "cpu",
                          "run-dir": str(tmp_path / name)})
    grid = InProcessGrid(len(node_configs))
    for node_id, node in zip(grid.node_ids, node_configs, strict=True):
        grid._contexts[node_id].node_config = node
    with server_identity():
        run_federation(grid, config)
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows(tmp_path / name)]


def test_node_data_root_is_the_nodes_own(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                         ) -> None:
    """Each node reads the train set at its own ``data-root``: copies of the server's file
    give the server's numbers, and a node whose path holds nothing fails its clients, naming
    that path (not the server's)."""
    write_npz(tmp_path / "server.npz")
    for i in range(2):
        (tmp_path / f"node{i}.npz").write_bytes((tmp_path / "server.npz").read_bytes())
    same = run_nodes(tmp_path, "same", [{}, {}])
    copies = run_nodes(tmp_path, "copies", [{"data-root": str(tmp_path / f"node{i}.npz")}
                                            for i in range(2)])
    assert copies == same and same[-1]["clients-failed"] == 0
    caplog.clear()
    missing = tmp_path / "elsewhere" / "cifar10.npz"
    broken = run_nodes(tmp_path, "broken", [{}, {"data-root": str(missing)}])
    assert broken[-1]["clients-failed"] == 2  # the second node's half of the cohort
    assert f"node 1002 failed: DataError: {missing}: file not found" in caplog.text


# --- fedwsa supernode: the SuperLink's address in one line, with TLS too --------------------


def test_fedwsa_supernode_names_an_unreachable_superlink_within_the_timeout(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from fedwsa.cli import main

    monkeypatch.setattr(os, "execvp", lambda *a: pytest.fail("flower-supernode was started"))
    port = free_port()  # nothing listens there
    start = time.monotonic()
    code = main(["supernode", "--superlink", f"127.0.0.1:{port}", "--connect-timeout", "2",
                 "--root-certificates", "ca.pem"])  # a TLS node: Flower would not name it
    took = time.monotonic() - start
    line = capsys.readouterr().err.strip()
    assert code == 2 and took < 30
    assert line.startswith("fedwsa: error: cannot reach the SuperLink at 127.0.0.1:") and \
        str(port) in line and "\n" not in line


def test_fedwsa_supernode_becomes_flower_supernode_once_the_superlink_answers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from fedwsa.cli import main

    started: list[list[str]] = []
    monkeypatch.setattr(os, "execvp", lambda file, argv: started.append(list(argv)))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        assert main(["supernode", "--superlink", address, "--insecure",
                     "--node-config", "data-root='/d.npz'"]) == 0
    assert started == [["flower-supernode", "--superlink", address, "--insecure",
                        "--node-config", "data-root='/d.npz'"]]

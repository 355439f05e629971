"""The simulation on an existing Ray cluster (``fedwsa run --ray-address``): a head started with
``ray start --head`` on localhost serves the run, which ends with the numbers of the same config
run in-process; every process the test started is gone afterwards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedwsa.cli import main
from fedwsa.config import make_config
from fedwsa.server.inprocess import run_in_process

REPO = Path(__file__).resolve().parents[1]
KEYS = {"dataset": "synthetic", "num-clients": 4, "num-server-rounds": 2, "seed": 6,
        "batch-size": 32, "checkpoint-every": 0, "tensorboard": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes_under(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line]


@pytest.fixture
def ray_head() -> Iterator[str]:
    """``ray start --head --block`` in its own session; its address. Stopped (SIGTERM, which
    ``--block`` answers by stopping what it started) and checked gone afterwards."""
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must fit
    port = free_port()
    ray = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [str(ray), "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
         "--include-dashboard=false", f"--temp-dir={temp}", "--block"],
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        assert head.stdout is not None
        for line in head.stdout:  # Ray prints this line once the head is up
            if "Ray runtime started" in line:
                break
            if time.monotonic() > deadline or head.poll() is not None:
                raise AssertionError(f"ray start --head did not come up: {line}")
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while processes_under(temp) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = processes_under(temp)
        for line in left:  # clean up, then fail below
            os.kill(int(line.split()[0]), signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"processes left behind by the Ray head: {left}"


def test_a_run_on_an_existing_ray_cluster_gives_the_in_process_numbers(
        ray_head: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={str(v).lower()}"
                    if isinstance(v, bool) else f"{k}={v}" for k, v in KEYS.items())
    on_cluster = tmp_path / "cluster"
    code = main(["run", "-c", f"{keys} run-dir='{on_cluster}'", "--ray-address", ray_head])
    assert code == 0, capsys.readouterr().err
    alone = run_in_process(make_config({**KEYS, "run-dir": str(tmp_path / "alone")}))

    def rows(run: Path) -> list[dict]:
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    got, want = rows(on_cluster), rows(alone)
    assert [r["round"] for r in got] == [r["round"] for r in want] == [0, 1, 2]
    assert [r["test-accuracy"] for r in got] == [r["test-accuracy"] for r in want]
    np.testing.assert_allclose([r["test-loss"] for r in got], [r["test-loss"] for r in want],
                               rtol=1e-6)

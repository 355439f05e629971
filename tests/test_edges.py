"""The edges a hostile test of ``fedwsa run`` / ``compare`` found (issue 17, item 6): signals stop
a run at a safe point, one writer per directory, a run that never updated its model says so,
output directories that cannot be made, plot names, truncated metrics lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedwsa import stop
from fedwsa.cli import main
from fedwsa.config import make_config
from fedwsa.dirs import LOCK_FILE, DirectoryInUse, exclusive
from fedwsa.results.files import read_metrics
from fedwsa.server import app as server_app
from fedwsa.server.checkpoint import load_checkpoint
from fedwsa.server.inprocess import run_in_process

REPO = Path(__file__).resolve().parents[1]
KEYS = {"dataset": "synthetic", "num-clients": 4, "batch-size": 32, "seed": 3}


def overrides(**keys: object) -> str:
    values = {**KEYS, **keys}
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                    for k, v in values.items())


def grid_base(**keys: object) -> str:
    """``overrides`` for ``compare -c``, which takes the seeds from ``--seeds``."""
    return " ".join(pair for pair in overrides(**keys).split() if not pair.startswith("seed="))


def fedwsa_process(*argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "fedwsa.cli", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, what: str, timeout_s: float = 300.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def ray_processes_of(pid: int) -> list[str]:
    """Ray's processes for the driver ``pid``: their session directory ends in ``_<pid>``."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if f"_{pid}/" in line or f"_{pid} " in line]


# --- signals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_after_a_round_with_whole_files_and_no_ray_left(
        tmp_path: Path, sig: signal.Signals, status: int) -> None:
    run = tmp_path / "run"
    proc = fedwsa_process("run", "-c", overrides(**{"num-server-rounds": 200,
                                                    "checkpoint-every": 5,
                                                    "run-dir": str(run)}))
    try:
        wait_for(lambda: len(read_metrics(run)) >= 3 or proc.poll() is not None,
                 "round 2 to be written")
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status, output
    rows = read_metrics(run)
    last = rows[-1]["round"]
    assert [r["round"] for r in rows] == list(range(last + 1))  # whole, in order
    assert 2 <= last < 200
    assert f"interrupted after round {last}; continue with `fedwsa run --resume {run}`" in output
    # The checkpoint holds the last round although the schedule (every 5) may have skipped it.
    ckpt = load_checkpoint(run)
    assert ckpt.round == last and [r["round"] for r in ckpt.metrics] == list(range(last + 1))
    assert not (run / "result.json").exists()
    assert "Traceback" not in output
    wait_for(lambda: not ray_processes_of(proc.pid), "Ray's processes to end", 30)


def test_a_run_stopped_between_rounds_resumes_to_the_uninterrupted_numbers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {**KEYS, "num-server-rounds": 5, "checkpoint-every": 3}
    whole = run_in_process(make_config({**keys, "run-dir": str(tmp_path / "whole")}))

    close_round = server_app.CellRun.close_round

    def close_then_ask_to_stop(self, server_round, *args):  # noqa: ANN001, ANN202
        close_round(self, server_round, *args)
        if server_round == 2:  # the checkpoint schedule (every 3) skips round 2
            stop._handler(signal.SIGINT, None)

    monkeypatch.setattr(server_app.CellRun, "close_round", close_then_ask_to_stop)
    stop.clear()
    parted = tmp_path / "parted"
    run_in_process(make_config({**keys, "run-dir": str(parted)}))
    assert stop.stopped_after() == 2 and load_checkpoint(parted).round == 2
    assert [r["round"] for r in read_metrics(parted)] == [0, 1, 2]
    monkeypatch.undo()
    stop.clear()
    run_in_process(make_config({**keys, "run-dir": str(parted), "resume": True}))
    assert stop.stopped_after() is None
    def untimed(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.endswith("-s")} for r in read_metrics(run)]

    assert untimed(parted) == untimed(whole)


def test_compare_stops_at_a_round_and_says_how_to_go_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    from fedwsa.server import simulation
    from fedwsa.server.inprocess import run_cells_in_process

    close_round = server_app.CellRun.close_round

    def close_then_ask_to_stop(self, server_round, *args):  # noqa: ANN001, ANN202
        close_round(self, server_round, *args)
        if server_round == 1 and stop.requested() is None:  # one signal (two stop at once)
            stop._handler(signal.SIGTERM, None)

    monkeypatch.setattr(server_app.CellRun, "close_round", close_then_ask_to_stop)
    monkeypatch.setattr(simulation, "simulate_cells",
                        lambda configs, *a, **k: run_cells_in_process(configs))
    out = tmp_path / "exp"
    code = main(["compare", "--strategies", "fedavg,fedprox", "--seeds", "0", "--out", str(out),
                 "-c", grid_base(**{"num-server-rounds": 3}), "--progress", "off"])
    err = capsys.readouterr().err
    assert code == 143, err
    assert "interrupted after round 1; re-run the same command" in err
    for cell in ("fedavg_seed=0", "fedprox_seed=0"):
        assert load_checkpoint(out / cell).round == 1
        assert not (out / cell / "result.json").exists()
    stop.clear()


# --- one writer per directory ------------------------------------------------------------------


def holder(directory: Path) -> subprocess.Popen[str]:
    """Another process that holds ``directory`` until killed."""
    code = ("import sys, time\nfrom fedwsa.dirs import exclusive\n"
            f"with exclusive({str(directory)!r}, 'x'):\n    print('held', flush=True)\n"
            "    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_of_a_run_or_experiment_exits_2_naming_the_holder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    import fedwsa.cli

    run = tmp_path / "run"
    run_in_process(make_config({**KEYS, "num-server-rounds": 2, "run-dir": str(run)}))
    (run / "result.json").unlink()  # now an unfinished run with a checkpoint: resumable
    monkeypatch.setattr(fedwsa.cli, "simulate", lambda *a, **k: pytest.fail("ran"))
    other = holder(run)
    try:
        assert main(["run", "--resume", str(run), "-c", "num-server-rounds=3"]) == 2
        line = capsys.readouterr().err.strip()
        assert line.startswith("fedwsa: error: config key 'run-dir'") and "\n" not in line
        assert f"pid {other.pid} on host" in line
    finally:
        other.kill()
        other.wait()
    # The holder is gone (killed, so it never cleaned up): its lock is not stale.
    with exclusive(run, "run-dir"):
        assert (run / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")
    assert not (run / LOCK_FILE).exists()
    stop.clear()


def test_two_compares_on_one_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exp"
    other = holder(out)
    try:
        assert main(["compare", "--strategies", "fedavg", "--seeds", "0", "--out", str(out),
                     "-c", grid_base(**{"num-server-rounds": 1})]) == 2
    finally:
        other.kill()
        other.wait()
    line = capsys.readouterr().err.strip()
    assert "'--out'" in line and f"pid {other.pid}" in line
    assert not (out / "grid.json").exists()


def test_holds_nest_within_a_process_and_exclude_others(tmp_path: Path) -> None:
    with exclusive(tmp_path / "d", "run-dir"), exclusive(tmp_path / "d", "run-dir"):
        assert (tmp_path / "d" / LOCK_FILE).exists()
    assert not (tmp_path / "d" / LOCK_FILE).exists()
    other = holder(tmp_path / "d")
    try:
        with pytest.raises(DirectoryInUse, match=f"pid {other.pid}"), \
                exclusive(tmp_path / "d", "run-dir"):
            pass
    finally:
        other.kill()
        other.wait()


# --- a run that never updated its model ---------------------------------------------------------


def test_a_run_whose_clients_all_fail_is_recorded_as_such(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    import fedwsa.cli

    monkeypatch.setattr(fedwsa.cli, "simulate",
                        lambda config, *a, **k: run_in_process(config))
    run = tmp_path / "run"
    # lr=1e3: every client's weights overflow to non-finite values in round 1 and are refused.
    code = main(["run", "-c", overrides(lr=1000.0, **{"num-server-rounds": 2,
                                                      "run-dir": str(run)})])
    err = capsys.readouterr().err
    assert code == 3, err
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "no-update" and result["rounds-without-update"] == 2
    assert "no round updated the global model (2 of 2 rounds without an update" in err
    ok = tmp_path / "ok"
    assert main(["run", "-c", overrides(**{"num-server-rounds": 2, "run-dir": str(ok)})]) == 0
    assert "rounds without an update: 0 of 2" in capsys.readouterr().out
    assert json.loads((ok / "result.json").read_text())["status"] == "finished"


# --- output directories, names and files ------------------------------------------------------


def unmakeable() -> str:
    """A directory that cannot be created, even by root."""
    return "/proc/fedwsa-cannot-be-here/run"


@pytest.mark.parametrize("argv", [
    ["run", "-c", overrides(**{"run-dir": unmakeable()})],
    ["compare", "--strategies", "fedavg", "--seeds", "0", "--out", unmakeable(), "-c",
     grid_base()],
])
def test_a_directory_that_cannot_be_made_is_one_line_and_status_2(
        argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    import fedwsa.cli

    monkeypatch.setattr(fedwsa.cli, "simulate", lambda *a, **k: pytest.fail("ran"))
    assert main(argv) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and unmakeable() in line and "create and write" in line


def test_plot_and_summarize_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run_in_process(make_config({**KEYS, "num-server-rounds": 1, "run-dir": str(run)}))
    assert main(["plot", str(run), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").is_file() and (tmp_path / "p.svg").is_file()
    assert not (tmp_path / "p.png.png").exists()
    assert main(["plot", str(run), "--out", unmakeable()]) == 2
    assert "'--out'" in capsys.readouterr().err
    assert main(["summarize", "/proc/1"]) == 2  # a directory nobody can write into
    assert "create and write" in capsys.readouterr().err


def test_a_truncated_last_metrics_line_is_one_warning_naming_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run_in_process(make_config({**KEYS, "num-server-rounds": 1, "run-dir": str(run)}))
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"round": 2, "test-acc')
    for argv in (["summarize", str(run)], ["plot", str(run)]):
        assert main(argv) == 0
        warnings = [line for line in capsys.readouterr().err.splitlines()
                    if line.startswith("fedwsa: warning:")]
        assert len(warnings) == 1 and f"{metrics}:3: skipped a truncated last line" in \
            warnings[0]


def test_an_open_range_reads_as_a_bound_not_as_inf() -> None:
    from fedwsa.config import ConfigError

    with pytest.raises(ConfigError) as err:
        make_config({"lr": float("inf")})
    assert "expected a finite number > 0" in str(err.value) and "inf]" not in str(err.value)

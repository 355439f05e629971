"""TensorBoard event files: read back with tensorboard's own EventAccumulator, every scalar equals
its ``metrics.jsonl`` number, each round appears once after a resume, and the key turns it off."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedwsa.config import ConfigError, make_config
from fedwsa.results.files import read_metrics
from fedwsa.results.tensorboard import CLIENT_LOSS_TAG, TENSORBOARD_DIR, scalar_tag
from fedwsa.server import app as server_app
from fedwsa.server.inprocess import run_in_process
from fedwsa.server.preflight import preflight

KEYS = {"dataset": "synthetic", "num-clients": 5, "batch-size": 32, "seed": 4,
        "strategy": "fedwsa", "checkpoint-every": 1}


def events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / TENSORBOARD_DIR), size_guidance={"scalars": 0,
                                                                      "histograms": 0})
    acc.Reload()
    return acc


def expected_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as TensorBoard should hold it: tag -> [(round, value)]."""
    table: dict[str, list[tuple[int, float]]] = {}
    for row in read_metrics(run):
        for key, value in row.items():
            if key != "round" and isinstance(value, int | float) and math.isfinite(value):
                table.setdefault(scalar_tag(key), []).append((row["round"], float(value)))
    return table


def check_against_metrics(run: Path) -> EventAccumulator:
    acc = events(run)
    want = expected_scalars(run)
    assert {"test/accuracy", "test/loss", "train/loss", "clients/sampled", "clients/failed",
            "wsa/kl", "round/s"} <= set(want)  # WSA's own metric and the round time too
    assert sorted(acc.Tags()["scalars"]) == sorted(want)
    for tag, points in want.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag  # each round once, in order
        np.testing.assert_allclose([v for _, v in got], [v for _, v in points], rtol=1e-6,
                                   err_msg=tag)  # (event files hold float32)
    return acc


def test_every_scalar_equals_metrics_jsonl_and_client_losses_are_histograms(
        tmp_path: Path) -> None:
    run = run_in_process(make_config({**KEYS, "num-server-rounds": 3,
                                      "run-dir": str(tmp_path / "run")}))
    acc = check_against_metrics(run)
    histograms = acc.Histograms(CLIENT_LOSS_TAG)
    assert [h.step for h in histograms] == [1, 2, 3]
    rows = {r["round"]: r for r in read_metrics(run)}
    for h in histograms:  # 5 clients a round; their mean is the row's train loss
        assert h.histogram_value.num == 5
        assert h.histogram_value.sum / 5 == pytest.approx(rows[h.step]["train-loss"], rel=1e-6)


def test_a_resumed_run_logs_each_round_once(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Round 3 is logged, then its checkpoint fails (a crash); the resumed run redoes round 3
    and TensorBoard keeps only the second one (``purge_step``)."""
    save = server_app.save_checkpoint

    def crash_at_round_3(run_dir, ckpt):  # noqa: ANN001, ANN202
        if ckpt.round == 3:
            raise OSError("disk full")
        return save(run_dir, ckpt)

    monkeypatch.setattr(server_app, "save_checkpoint", crash_at_round_3)
    config = make_config({**KEYS, "num-server-rounds": 4, "run-dir": str(tmp_path / "run")})
    with pytest.raises(OSError, match="disk full"):
        run_in_process(config)
    assert [e.step for e in events(tmp_path / "run").Scalars("test/accuracy")] == [0, 1, 2, 3]
    monkeypatch.undo()
    run = run_in_process(config.replace(resume=True))
    check_against_metrics(run)
    assert [h.step for h in events(run).Histograms(CLIENT_LOSS_TAG)] == [1, 2, 3, 4]


def test_the_key_turns_it_off_and_an_unwritable_log_dir_is_refused_first(
        tmp_path: Path) -> None:
    run = run_in_process(make_config({**KEYS, "num-server-rounds": 1, "tensorboard": False,
                                      "run-dir": str(tmp_path / "off")}))
    assert (run / "metrics.jsonl").exists() and not (run / TENSORBOARD_DIR).exists()
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / TENSORBOARD_DIR).write_text("a file where the log directory would go")
    with pytest.raises(ConfigError, match="config key 'tensorboard'"):
        preflight(make_config({**KEYS, "run-dir": str(blocked)}))

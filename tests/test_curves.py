"""A picture in every run: curves.png and .svg, redrawn in the background, final at the end."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fedwsa.cli import main
from fedwsa.config import make_config
from fedwsa.results.curves import CurvesPainter
from fedwsa.results.rundir import RunWriter


def _row(r: int) -> dict[str, object]:
    return {"round": r, "test-accuracy": 0.1 * r, "test-loss": 2.0 - 0.1 * r, "elapsed-s": r}


def test_every_run_ends_with_its_curves(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    run = tmp_path / "run"
    argv = ["run", "-c", f"num-clients=4 num-server-rounds=2 run-dir='{run}'"]
    assert main(argv) == 0
    assert f"curves: {run / 'curves.png'}" in capsys.readouterr().out
    for ext in ("png", "svg"):
        assert (run / f"curves.{ext}").stat().st_size > 1000
    # the final draw follows the last metrics line
    assert (run / "curves.png").stat().st_mtime_ns >= (run / "metrics.jsonl").stat().st_mtime_ns


def test_requests_are_merged_and_the_last_draw_is_synchronous(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[int] = []
    real = CurvesPainter._draw

    def slow_draw(self):  # type: ignore[no-untyped-def]
        rows = (self.run_dir / "metrics.jsonl").read_text().splitlines()
        draws.append(len(rows))
        time.sleep(0.05)
        real(self)

    monkeypatch.setattr(CurvesPainter, "_draw", slow_draw)
    writer = RunWriter(tmp_path / "r", make_config({}))
    for r in range(30):
        writer.append_metrics(_row(r))
    path = writer.finish(29, 1.0)
    assert path == tmp_path / "r" / "curves.png" and path.stat().st_size > 0
    assert draws[-1] == 30  # the final draw saw every row
    assert len(draws) < 30  # requests made while drawing were merged
    svg = (tmp_path / "r" / "curves.svg").read_text()
    assert "<svg" in svg


def test_a_picture_that_cannot_be_drawn_never_stops_the_run(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "r"
    writer = RunWriter(run, make_config({}))
    (run / "metrics.jsonl").mkdir()  # unreadable metrics: drawing fails
    with caplog.at_level("WARNING", logger="fedwsa.results.curves"):
        writer.curves.close()
    assert "could not draw" in caplog.text
    assert json.loads((run / "config.json").read_text())["num-clients"] == 20

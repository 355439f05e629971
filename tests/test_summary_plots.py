"""Reading run directories, summary tables and learning-curve plots, on hand-made runs.

Every expected number is computed here from the literal inputs (with numpy), not by calling
the code under test, so the tests pin the statistics themselves.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from fedwsa.results.files import (
    find_runs,
    group_runs,
    infer_swept_keys,
    is_finished,
    read_config,
    read_metrics,
    write_json_atomic,
    write_text_atomic,
)
from fedwsa.results.plots import group_curves, plot_accuracy_and_loss, plot_runs, save_figure
from fedwsa.results.summary import summarize, to_csv, to_markdown, write_summary

# Test accuracy per evaluated round 0..3 (round 0 = before training), per strategy and seed.
ACC = {
    ("fedavg", 1): [0.10, 0.40, 0.55, 0.60],
    ("fedavg", 2): [0.10, 0.30, 0.50, 0.70],
    ("fedwsa", 1): [0.10, 0.50, 0.70, 0.75],
    ("fedwsa", 2): [0.10, 0.60, 0.80, 0.78],
}
LOSS = {
    ("fedavg", 1): [2.3, 1.6, 1.2, 1.0],
    ("fedavg", 2): [2.3, 1.8, 1.3, 0.9],
    ("fedwsa", 1): [2.3, 1.4, 0.9, 0.8],
    ("fedwsa", 2): [2.3, 1.2, 0.7, 0.6],
}
BASE = {"dataset": "synthetic", "partition": "dirichlet", "alpha": 0.5, "num-clients": 10}


def sample_std(values: list[float]) -> float:
    return float(np.std(values, ddof=1))


def make_run(
    exp: Path,
    strategy: str,
    seed: int,
    accs: list[float],
    losses: list[float] | None = None,
    *,
    rounds: list[int] | None = None,
    finished: bool = True,
    wall_s: float | None = None,
    extra_config: dict[str, Any] | None = None,
    extra_metrics: dict[str, list[Any]] | None = None,
    torn_tail: str | None = None,
) -> Path:
    """Write one run directory the way the run writer does (names are decoys on purpose)."""
    config = {**BASE, "strategy": strategy, "seed": seed, **(extra_config or {})}
    run = exp / f"run-{strategy}-{seed}-{len(list(exp.glob('*')))}"
    run.mkdir(parents=True)
    config["run-dir"] = str(run)
    (run / "config.json").write_text(json.dumps(config))
    rounds = list(range(len(accs))) if rounds is None else rounds
    losses = losses or [1.0] * len(accs)
    lines = []
    for i, (rnd, acc, loss) in enumerate(zip(rounds, accs, losses, strict=True)):
        record = {
            "round": rnd,
            "elapsed-s": 2.0 * rnd,
            "test-loss": loss,
            "test-accuracy": acc,
            "train-loss": None if rnd == 0 else loss + 0.1,
            "clients-sampled": 5,
            "clients-failed": 0,
        }
        for key, values in (extra_metrics or {}).items():
            record[key] = values[i]
        lines.append(json.dumps(record) + "\n")
    (run / "metrics.jsonl").write_text("".join(lines) + (torn_tail or ""))
    if finished:
        wall = 10.0 + seed if wall_s is None else wall_s
        result = {"status": "finished", "rounds": rounds[-1], "wall-s": wall}
        (run / "result.json").write_text(json.dumps(result))
    return run


@pytest.fixture
def exp(tmp_path: Path) -> Path:
    """2 strategies x 2 seeds x 3 rounds (+ round 0), all finished."""
    exp = tmp_path / "exp"
    for (strategy, seed), accs in ACC.items():
        make_run(exp, strategy, seed, accs, LOSS[(strategy, seed)])
    return exp


def row_of(rows: list[dict[str, Any]], group: str) -> dict[str, Any]:
    return next(r for r in rows if r["group"] == group)


# --------------------------------------------------------------------------------------------
# results.py
# --------------------------------------------------------------------------------------------


def test_read_metrics_skips_torn_last_line(tmp_path: Path) -> None:
    run = make_run(tmp_path / "e", "fedavg", 1, [0.1, 0.2], torn_tail='{"round": 2, "elapsed')
    records = read_metrics(run)
    assert [r["round"] for r in records] == [0, 1]
    assert records[1]["test-accuracy"] == 0.2
    # A truncated record that happens to parse as a bare number is also dropped.
    (run / "metrics.jsonl").write_text('{"round": 0, "test-accuracy": 0.1}\n12')
    assert read_metrics(run) == [{"round": 0, "test-accuracy": 0.1}]


def test_read_metrics_rejects_corruption_in_the_middle(tmp_path: Path) -> None:
    run = make_run(tmp_path / "e", "fedavg", 1, [0.1])
    (run / "metrics.jsonl").write_text('{"round": 0}\n{"round": 1,\n{"round": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(run)


def test_read_metrics_missing_file_is_empty(tmp_path: Path) -> None:
    run = make_run(tmp_path / "e", "fedavg", 1, [0.1], finished=False)
    (run / "metrics.jsonl").unlink()
    assert read_metrics(run) == []


def test_read_config_and_is_finished(tmp_path: Path) -> None:
    done = make_run(tmp_path / "e", "fedavg", 1, [0.1, 0.2])
    running = make_run(tmp_path / "e", "fedavg", 2, [0.1], finished=False)
    assert read_config(done)["strategy"] == "fedavg"
    assert read_config(done)["seed"] == 1
    assert is_finished(done)
    assert not is_finished(running)
    (running / "result.json").write_text('{"status": "failed"}')
    assert not is_finished(running)


def test_find_runs_accepts_run_and_experiment_dirs(exp: Path, tmp_path: Path) -> None:
    runs = find_runs([exp])
    assert len(runs) == 4
    assert all((r / "config.json").is_file() for r in runs)
    # A run dir given directly, and again via its experiment: counted once.
    assert find_runs([runs[0], exp]) == [runs[0], *[r for r in runs if r != runs[0]]]
    assert find_runs(str(runs[1])) == [runs[1]]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        find_runs([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError):
        find_runs([tmp_path / "missing"])


def test_group_runs_infers_swept_keys_from_configs(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    for alpha in (0.5, 0.1):
        for seed in (2, 1):
            make_run(exp, "fedwsa", seed, [0.1, 0.2], extra_config={"alpha": alpha})
    runs = find_runs([exp])
    # seed and run-dir differ between all runs but are replicates / bookkeeping.
    assert infer_swept_keys(runs) == ["alpha"]
    groups = group_runs(runs)
    assert [k.label for k in groups] == ["fedwsa alpha=0.1", "fedwsa alpha=0.5"]
    for key, members in groups.items():
        assert key.params == {"strategy": "fedwsa", "alpha": key.params["alpha"]}
        assert [read_config(r)["seed"] for r in members] == [1, 2]  # ordered by seed
        assert {read_config(r)["alpha"] for r in members} == {key.params["alpha"]}


def test_harmless_keys_never_split_groups(tmp_path: Path) -> None:
    """A run made before a harmless key existed (no ``node-aggregate`` in its config.json),
    or on another device, is the same experiment cell as its twin."""
    exp = tmp_path / "exp"
    make_run(exp, "fedavg", 0, [0.1, 0.2], extra_config={"alpha": 0.5})
    make_run(exp, "fedavg", 1, [0.1, 0.3], extra_config={
        "alpha": 0.5, "node-aggregate": True, "device": "cuda", "data-root": "/elsewhere"})
    make_run(exp, "fedavg", 2, [0.1, 0.3], extra_config={"alpha": 0.1})
    runs = find_runs([exp])
    assert infer_swept_keys(runs) == ["alpha"]
    assert sorted(len(m) for m in group_runs(runs).values()) == [1, 2]


def test_group_runs_uses_grid_json(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    for strategy in ("fedwsa", "fedavg"):
        for alpha in (0.1, 0.5):
            for seed in (1, 2):
                # "device" differs too, but the grid says only alpha was swept.
                extra = {"alpha": alpha, "device": f"cuda:{seed}"}
                make_run(exp, strategy, seed, [0.1, 0.2], extra_config=extra)
    grid = {"strategies": ["fedwsa", "fedavg"], "seeds": [1, 2], "sweep": {"alpha": [0.1, 0.5]}}
    (exp / "grid.json").write_text(json.dumps(grid))
    groups = group_runs(find_runs([exp]))
    assert [k.label for k in groups] == [
        "fedwsa alpha=0.1", "fedwsa alpha=0.5", "fedavg alpha=0.1", "fedavg alpha=0.5",
    ]  # fmt: skip
    assert all(len(members) == 2 for members in groups.values())
    # An explicit key list overrides both the grid and inference.
    assert [k.label for k in group_runs(find_runs([exp]), swept_keys=[])] == ["fedwsa", "fedavg"]


def test_group_runs_with_strategy_entries_of_their_own_keys(tmp_path: Path) -> None:
    """``strategies = ["fedavg", {strategy = "fedwsa", wsa-beta = ...}]``: each fedwsa beta is
    a group of its own, and fedavg's (unused) wsa-beta neither splits nor labels its group."""
    exp = tmp_path / "exp"
    cells = []
    for strategy, own in (("fedavg", {}), ("fedwsa", {"wsa-beta": 0.1}),
                          ("fedwsa", {"wsa-beta": 0.3})):
        for seed in (0, 1):
            # fedavg's (unused) wsa-beta differs between its seeds: it must not split them.
            run = make_run(exp, strategy, seed, [0.1, 0.2 + seed],
                           extra_config={"wsa-beta": own.get("wsa-beta", 1.0 + seed)})
            cells.append({"run-dir": run.name, "strategy": strategy, "seed": seed, "sweep": own})
    grid = {"strategies": ["fedavg", {"strategy": "fedwsa", "wsa-beta": 0.1},
                           {"strategy": "fedwsa", "wsa-beta": 0.3}],
            "seeds": [0, 1], "sweep": {}, "cells": cells}
    (exp / "grid.json").write_text(json.dumps(grid))
    groups = group_runs(find_runs([exp]))
    assert [k.label for k in groups] == ["fedavg", "fedwsa wsa-beta=0.1", "fedwsa wsa-beta=0.3"]
    assert all(len(members) == 2 for members in groups.values())
    # Keys that differ between grids that set no entry keys still split groups.
    for name, lr in (("b", 0.05), ("c", 0.01)):
        other = tmp_path / name
        make_run(other, "fedavg", 0, [0.1, 0.3], extra_config={"lr": lr})
        (other / "grid.json").write_text(json.dumps(
            {"strategies": ["fedavg"], "seeds": [0], "sweep": {}, "base": {"lr": lr}}))
    both = group_runs(find_runs([tmp_path / "b", tmp_path / "c"]), swept_keys=["lr"])
    assert sorted(k.label for k in both) == ["fedavg lr=0.01", "fedavg lr=0.05"]


def test_atomic_writes_leave_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "result.json"
    write_json_atomic(target, {"status": "finished", "wall-s": 1.5})
    write_json_atomic(target, {"status": "finished", "wall-s": 2.5})
    assert json.loads(target.read_text()) == {"status": "finished", "wall-s": 2.5}
    write_text_atomic(tmp_path / "sub" / "a.md", "héllo\n")
    assert (tmp_path / "sub" / "a.md").read_text(encoding="utf-8") == "héllo\n"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.md", "result.json"]


def test_atomic_writes_sync_the_file_then_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename is made durable too: the file's bytes are synced before ``os.replace``, the
    directory that holds the new name after it."""
    import os
    import stat

    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        synced.append("dir" if stat.S_ISDIR(mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_text_atomic(tmp_path / "a.md", "x")
    assert synced == ["file", "dir"]


def test_reading_modules_do_not_import_training_stack() -> None:
    code = (
        "import sys, fedwsa.results.files, fedwsa.results.summary, fedwsa.results.plots; "
        "bad = [m for m in ('torch', 'flwr') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------------------------
# summary.py
# --------------------------------------------------------------------------------------------


def test_summary_numbers_match_hand_computation(exp: Path) -> None:
    rows = summarize([exp])
    assert [r["group"] for r in rows] == ["fedavg", "fedwsa"]
    for row in rows:
        s = row["strategy"]
        accs = [ACC[(s, 1)], ACC[(s, 2)]]
        finals = [a[-1] for a in accs]
        bests = [max(a) for a in accs]
        losses = [LOSS[(s, 1)][-1], LOSS[(s, 2)][-1]]
        assert row["runs"] == row["seeds"] == 2
        assert row["unfinished"] == 0
        assert row["final-round"] == 3
        assert row["final-acc-mean"] == pytest.approx(np.mean(finals))
        assert row["final-acc-std-ddof1"] == pytest.approx(sample_std(finals))
        assert row["best-acc-mean"] == pytest.approx(np.mean(bests))
        assert row["best-acc-std-ddof1"] == pytest.approx(sample_std(bests))
        assert row["final-test-loss-mean"] == pytest.approx(np.mean(losses))
        assert row["final-test-loss-std-ddof1"] == pytest.approx(sample_std(losses))
        assert row["wall-s-mean"] == pytest.approx(np.mean([11.0, 12.0]))
        assert row["clients-failed-total"] == 0
        # Extra numeric metrics are carried generically (train-loss = loss + 0.1 here).
        assert row["final-train-loss-mean"] == pytest.approx(np.mean(losses) + 0.1)
    # Spot-check the literal values once: fedavg finals 0.60, 0.70.
    assert rows[0]["final-acc-mean"] == pytest.approx(0.65)
    assert rows[0]["final-acc-std-ddof1"] == pytest.approx(math.sqrt(2 * 0.05**2))


def test_single_seed_has_zero_std(tmp_path: Path) -> None:
    make_run(tmp_path / "exp", "fedavg", 1, [0.1, 0.4])
    (row,) = summarize([tmp_path / "exp"])
    assert row["seeds"] == 1
    assert row["final-acc-mean"] == pytest.approx(0.4)
    assert row["final-acc-std-ddof1"] == 0.0
    assert "| fedavg | 1 | 40.0 | 40.0 |" in to_markdown([row])  # no ± with one seed


def test_rounds_to_target_with_explicit_target(exp: Path) -> None:
    rows = summarize([exp], target_accuracy=0.5)
    fedavg, fedwsa = row_of(rows, "fedavg"), row_of(rows, "fedwsa")
    # fedavg reaches 0.5 at round 2 (0.55) and round 2 (0.50); fedwsa at round 1 twice.
    assert fedavg["target-acc"] == 0.5
    assert (fedavg["rounds-to-target-mean"], fedavg["reached-target"]) == (2.0, 2)
    assert (fedwsa["rounds-to-target-mean"], fedwsa["reached-target"]) == (1.0, 2)
    rows = summarize([exp], target_accuracy=0.99)
    assert all(math.isnan(r["rounds-to-target-mean"]) for r in rows)
    assert all(r["reached-target"] == 0 for r in rows)
    assert "– (0/2)" in to_markdown(rows)


def test_default_target_is_90_percent_of_best_final_mean(exp: Path) -> None:
    rows = summarize([exp])
    best_final = max(np.mean([ACC[(s, 1)][-1], ACC[(s, 2)][-1]]) for s in ("fedavg", "fedwsa"))
    target = round(0.9 * float(best_final), 3)  # documented: rounded to 0.1 percentage point
    assert rows[0]["target-acc"] == pytest.approx(target)
    first = {
        k: next(r for r, a in enumerate(v) if a >= target)
        for k, v in ACC.items()
        if max(v) >= target
    }
    fedavg, fedwsa = row_of(rows, "fedavg"), row_of(rows, "fedwsa")
    assert fedavg["reached-target"] == 1  # only seed 2 (0.70) gets there, at round 3
    assert fedavg["rounds-to-target-mean"] == first[("fedavg", 2)] == 3
    assert fedwsa["reached-target"] == 2
    assert fedwsa["rounds-to-target-mean"] == np.mean([first[("fedwsa", 1)], first[("fedwsa", 2)]])


def test_unfinished_runs_are_counted_and_excluded_by_default(exp: Path) -> None:
    # A third fedavg seed that crashed after round 1 with a torn line being written.
    make_run(exp, "fedavg", 3, [0.1, 0.2], finished=False, torn_tail='{"round": 2, "test-')
    rows = summarize([exp])
    fedavg = row_of(rows, "fedavg")
    assert (fedavg["runs"], fedavg["seeds"], fedavg["unfinished"]) == (3, 2, 1)
    assert fedavg["final-acc-mean"] == pytest.approx(np.mean([0.60, 0.70]))
    assert "left out of the statistics" in to_markdown(rows)

    rows = summarize([exp], include_unfinished=True)
    fedavg = row_of(rows, "fedavg")
    assert (fedavg["runs"], fedavg["seeds"], fedavg["unfinished"]) == (3, 3, 1)
    assert fedavg["final-acc-mean"] == pytest.approx(np.mean([0.60, 0.70, 0.2]))
    assert fedavg["final-round"] == 3
    # Wall time of an unfinished run falls back to its last elapsed-s (round 1 -> 2.0 s).
    assert fedavg["wall-s-mean"] == pytest.approx(np.mean([11.0, 12.0, 2.0]))
    assert "included with their last evaluated round" in to_markdown(rows)


def test_group_of_only_unfinished_runs_has_no_statistics(exp: Path) -> None:
    make_run(exp, "scaffold", 1, [0.1, 0.3], finished=False)
    row = row_of(summarize([exp]), "scaffold")
    assert (row["runs"], row["seeds"], row["unfinished"]) == (1, 0, 1)
    assert math.isnan(row["final-acc-mean"])
    assert "| scaffold | 0 | – | – |" in to_markdown(summarize([exp]))


def test_markdown_table(exp: Path) -> None:
    rows = summarize([exp], target_accuracy=0.5)
    md = to_markdown(rows)
    lines = md.splitlines()
    assert lines[0].startswith(
        "| group | seeds | final acc. (%) | best acc. (%) | rounds to ≥ 50.0%"
    )
    assert set(lines[1]) <= {"|", "-", ":"}
    # fedavg: finals 0.60/0.70 -> 65.0 ± 7.1; best the same; loss 1.0/0.9 -> 0.950 ± 0.071.
    assert "| fedavg | 2 | 65.0 ± 7.1 | 65.0 ± 7.1 | 2 (2/2) | 0.950 ± 0.071 | 11.5 | 0 |" in md
    f_final = [0.75, 0.78]
    f_best = [0.75, 0.80]
    expected = (
        f"| fedwsa | 2 | {100 * np.mean(f_final):.1f} ± {100 * sample_std(f_final):.1f} "
        f"| {100 * np.mean(f_best):.1f} ± {100 * sample_std(f_best):.1f} | 1 (2/2) |"
    )
    assert expected in md
    assert "sample standard deviation (ddof=1)" in md


def test_csv_round_trip(exp: Path, tmp_path: Path) -> None:
    rows = summarize([exp])
    path = to_csv(rows, tmp_path / "out" / "summary.csv")
    with path.open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["group"] for r in table] == ["fedavg", "fedwsa"]
    assert float(table[0]["final-acc-mean"]) == pytest.approx(0.65)
    assert float(table[0]["final-acc-std-ddof1"]) == pytest.approx(sample_std([0.6, 0.7]))
    assert table[0]["seeds"] == "2"
    assert table[0]["includes-unfinished"] == "false"
    assert list(table[0]) == list(rows[0])  # same columns, same order


def test_write_summary_writes_both_files(exp: Path) -> None:
    md = write_summary(exp, target_accuracy=0.5)
    assert (exp / "summary.md").read_text(encoding="utf-8") == md
    assert md.startswith("# Summary: exp")
    assert "Target accuracy 50.0% (given)." in md
    assert (exp / "summary.csv").stat().st_size > 0
    md = write_summary(exp)
    assert "0.9 × the best final mean accuracy (76.5%, fedwsa)" in md
    # The summary files themselves are not mistaken for runs on the next call.
    assert len(find_runs([exp])) == 4
    # Every run's own figures: in the Markdown's "Runs" section and in runs.csv.
    assert "| fedwsa | 2 | 3 | 78.0 | 80.0 (2) | yes |" in md.split("## Runs")[1]
    with (exp / "runs.csv").open() as fh:
        runs = list(csv.DictReader(fh))
    got = {(r["group"], int(r["seed"])): r for r in runs}
    assert set(got) == set(ACC)
    for key, accs in ACC.items():
        assert float(got[key]["final-acc"]) == accs[-1]
        assert float(got[key]["best-acc"]) == max(accs)
        assert int(got[key]["best-round"]) == accs.index(max(accs))


def test_summary_with_swept_key(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    table: dict[tuple[str, float, int], list[float]] = {}
    for strategy, base in (("fedavg", 0.5), ("fedwsa", 0.6)):
        for alpha, bonus in ((0.1, 0.0), (1.0, 0.1)):
            for seed, noise in ((1, -0.02), (2, 0.03)):
                accs = [0.1, base + bonus + noise]
                table[(strategy, alpha, seed)] = accs
                make_run(exp, strategy, seed, accs, extra_config={"alpha": alpha})
    grid = {"strategies": ["fedavg", "fedwsa"], "seeds": [1, 2], "sweep": {"alpha": [0.1, 1.0]}}
    (exp / "grid.json").write_text(json.dumps(grid))
    rows = summarize([exp])
    assert [r["group"] for r in rows] == [
        "fedavg alpha=0.1", "fedavg alpha=1.0", "fedwsa alpha=0.1", "fedwsa alpha=1.0",
    ]  # fmt: skip
    for row in rows:
        finals = [table[(row["strategy"], row["alpha"], seed)][-1] for seed in (1, 2)]
        assert row["final-acc-mean"] == pytest.approx(np.mean(finals))
        assert row["final-acc-std-ddof1"] == pytest.approx(sample_std(finals))
    assert "| fedwsa alpha=1.0 | 2 | 70.5 ± 3.5 |" in to_markdown(rows)


# --------------------------------------------------------------------------------------------
# plots.py
# --------------------------------------------------------------------------------------------


def band_limits(band: PolyCollection) -> dict[float, tuple[float, float]]:
    """x -> (lowest, highest) y of a fill_between polygon."""
    verts = np.concatenate([p.vertices for p in band.get_paths()])
    return {
        float(x): (float(verts[verts[:, 0] == x, 1].min()), float(verts[verts[:, 0] == x, 1].max()))
        for x in np.unique(verts[:, 0])
    }


def test_plot_runs_lines_bands_labels(exp: Path) -> None:
    fig = plot_runs([exp])
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 2  # one per group
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    for line, band, strategy in zip(lines, bands, ("fedavg", "fedwsa"), strict=True):
        values = 100 * np.array([ACC[(strategy, 1)], ACC[(strategy, 2)]])
        mean, std = values.mean(axis=0), values.std(axis=0, ddof=1)
        np.testing.assert_allclose(line.get_xdata(), [0, 1, 2, 3])
        np.testing.assert_allclose(line.get_ydata(), mean)
        limits = band_limits(band)
        assert sorted(limits) == [0.0, 1.0, 2.0, 3.0]
        for rnd in range(4):
            assert limits[float(rnd)] == pytest.approx((mean[rnd] - std[rnd], mean[rnd] + std[rnd]))
    assert ax.get_xlabel() == "communication round"
    assert ax.get_ylabel() == "test accuracy (%)"
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["fedavg (2 seeds)", "fedwsa (2 seeds)"]
    assert "mean over seeds" in legend.get_title().get_text()
    title = ax.get_title()
    assert "Test accuracy" in title
    assert "synthetic" in title
    assert "α=0.5" in title
    assert "10 clients" in title
    assert "2 seeds per curve" in title


def test_plot_runs_loss_single_seed_and_custom_title(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    make_run(exp, "fedavg", 1, [0.1, 0.2, 0.3], [2.0, 1.5, 1.2])
    fig = plot_runs(exp, metric="test-loss", title="my title")
    (ax,) = fig.axes
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), [2.0, 1.5, 1.2])  # no percent for loss
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]  # no band
    assert ax.get_ylabel() == "test loss"
    assert ax.get_title() == "my title"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["fedavg (1 seed)"]


def test_plot_runs_aligns_seeds_on_common_rounds(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    make_run(exp, "fedavg", 1, [0.1, 0.2, 0.3, 0.4], rounds=[0, 1, 2, 3])
    make_run(exp, "fedavg", 2, [0.1, 0.5, 0.6], rounds=[0, 2, 3])
    make_run(exp, "fedavg", 3, [0.1, 0.2, 0.9], rounds=[0, 1, 2], finished=False)
    fig = plot_runs([exp])
    (line,) = fig.axes[0].get_lines()
    np.testing.assert_allclose(line.get_xdata(), [0, 2])
    np.testing.assert_allclose(line.get_ydata(), [10.0, 100 * np.mean([0.3, 0.5, 0.9])])
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == ["fedavg (3 seeds, 1 unfinished)"]
    # Without the unfinished seed, the two finished ones share rounds 0, 2, 3.
    (curve,) = group_curves([exp], include_unfinished=False)
    np.testing.assert_allclose(curve.rounds, [0, 2, 3])
    np.testing.assert_allclose(curve.mean, 100 * np.array([0.1, 0.4, 0.5]))


def test_plot_runs_with_sweep_and_given_axes(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    for strategy in ("fedavg", "fedwsa"):
        for alpha in (0.1, 1.0):
            for seed in (1, 2):
                make_run(exp, strategy, seed, [0.1, 0.2 * seed], extra_config={"alpha": alpha})
    fig = Figure()
    ax = fig.add_subplot()
    assert plot_runs([exp], ax=ax) is fig
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == [
        "fedavg alpha=0.1 (2 seeds)", "fedavg alpha=1.0 (2 seeds)",
        "fedwsa alpha=0.1 (2 seeds)", "fedwsa alpha=1.0 (2 seeds)",
    ]  # fmt: skip
    assert len(ax.get_lines()) == 4
    # Colour = strategy, line style = swept value.
    lines = ax.get_lines()
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert lines[0].get_linestyle() == lines[2].get_linestyle() != lines[1].get_linestyle()
    assert "α=" not in ax.get_title()  # alpha varies, so it is named, not given a value
    assert "alpha per legend" in ax.get_title()


def test_plot_unknown_metric_raises(exp: Path) -> None:
    with pytest.raises(ValueError, match="available"):
        plot_runs([exp], metric="no-such-metric")


def test_plot_accuracy_and_loss_and_save(exp: Path, tmp_path: Path) -> None:
    fig = plot_accuracy_and_loss([exp])
    ax_acc, ax_loss = fig.axes
    assert ax_acc.get_ylabel() == "test accuracy (%)"
    assert ax_loss.get_ylabel() == "test loss"
    np.testing.assert_allclose(
        ax_loss.get_lines()[1].get_ydata(),
        np.mean([LOSS[("fedwsa", 1)], LOSS[("fedwsa", 2)]], axis=0),
    )
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["fedavg (2 seeds)", "fedwsa (2 seeds)"]
    assert "synthetic" in fig.get_suptitle()
    paths = save_figure(fig, tmp_path / "figs" / "alpha=0.5")
    assert [p.name for p in paths] == ["alpha=0.5.png", "alpha=0.5.svg"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert paths[0].read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in paths[1].read_bytes()

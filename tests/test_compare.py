"""``fedwsa compare|summarize|plot`` end to end, on a real (small) grid run with in-process nodes.

One module-scoped grid (fedavg and fedwsa x seeds 1, 2 x 2 rounds on the synthetic set, 4
clients) is run for real through ``fedwsa.cli.main(["compare", ...])``; the other tests read
it, copy it, or re-run the command on it. Expected numbers are recomputed here with numpy from
the runs' own ``metrics.jsonl``/``result.json`` (read with ``json``), not through the summary
code under test.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

import fedwsa
from fedwsa import cli
from fedwsa.data import SYNTHETIC_TRAIN
from fedwsa.experiments.compare import GridSpec, Variant, build_spec, expand, parse_sweep
from fedwsa.server import simulation
from fedwsa.server.inprocess import run_cells_in_process, run_in_process

STRATEGIES = ("fedavg", "fedwsa")
SEEDS = (1, 2)
ROUNDS = 2
BASE = f"dataset='synthetic' num-clients=4 num-server-rounds={ROUNDS} batch-size=64"
CELLS = [f"{s}_seed={seed}" for s in STRATEGIES for seed in SEEDS]


def compare_argv(out: Path, *extra: str, base: str = BASE) -> list[str]:
    return [
        "compare", "--strategies", ",".join(STRATEGIES), "--seeds", ",".join(map(str, SEEDS)),
        "-c", base, "--out", str(out), "--progress", "lines", *extra,
    ]  # fmt: skip


def run_main(argv: list[str]) -> SimpleNamespace:
    """``cli.main(argv)`` with stdout/stderr captured (usable from a module-scoped fixture)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return SimpleNamespace(rc=rc, stdout=out.getvalue(), stderr=err.getvalue())


class SimulateSpy:
    """Stands in for ``simulation.simulate``: records each config and runs it for real with
    in-process nodes (the grid logic does not need Ray; tests/test_end_to_end.py covers Flower's
    simulation engine), or refuses."""

    def __init__(self, real: bool = True) -> None:
        self.real = real
        self.configs: list[Any] = []
        self.groups: list[int] = []  # runs per federation

    def __call__(self, config: Any, num_supernodes: int = 1, num_gpus: float = 0.0,
                 ray_address: str | None = None) -> Path:
        self.configs.append(config)
        if not self.real:
            raise AssertionError(f"simulate must not be called (got {config.run_dir})")
        return run_in_process(config, num_nodes=num_supernodes)

    def cells(self, configs: list[Any], num_supernodes: int = 1, num_gpus: float = 0.0,
              ray_address: str | None = None) -> dict[str, str | None]:
        """Stands in for ``simulation.simulate_cells`` (one federation for all ``configs``)."""
        self.configs.extend(configs)
        self.groups.append(len(configs))
        if not self.real:
            raise AssertionError(f"simulate_cells must not be called ({len(configs)} runs)")
        return run_cells_in_process(configs, num_nodes=num_supernodes)


def spy_on(mp: pytest.MonkeyPatch, spy: SimulateSpy) -> None:
    mp.setattr(simulation, "simulate", spy)
    mp.setattr(simulation, "simulate_cells", spy.cells)


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def curve(run: Path, key: str = "test-accuracy") -> np.ndarray:
    return np.array([row[key] for row in metrics(run)], dtype=float)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The 2 x 2 grid, run once for real."""
    out = tmp_path_factory.mktemp("compare") / "exp"
    spy = SimulateSpy()
    with pytest.MonkeyPatch.context() as mp:
        spy_on(mp, spy)
        result = run_main(compare_argv(out))
    return SimpleNamespace(out=out, spy=spy, **vars(result))


def test_grid_runs_every_cell_and_writes_grid_json(grid: SimpleNamespace) -> None:
    assert grid.rc == 0, grid.stderr
    # One federation per synthetic train set (drawn from the seed): the cells of a seed.
    assert [(c.strategy, c.seed) for c in grid.spy.configs] == [
        (s, seed) for seed in SEEDS for s in STRATEGIES
    ]
    assert grid.spy.groups == [len(STRATEGIES)] * len(SEEDS)
    assert all(not c.resume for c in grid.spy.configs)
    runs = sorted(p.name for p in grid.out.iterdir() if p.is_dir())
    assert runs == sorted(CELLS)
    for name in CELLS:
        run = grid.out / name
        config = json.loads((run / "config.json").read_text())
        strategy, seed = name.split("_seed=")
        assert (config["strategy"], config["seed"]) == (strategy, int(seed))
        assert (config["num-clients"], config["num-server-rounds"]) == (4, ROUNDS)
        assert json.loads((run / "result.json").read_text())["status"] == "finished"
        assert [row["round"] for row in metrics(run)] == list(range(ROUNDS + 1))
    saved = json.loads((grid.out / "grid.json").read_text())
    assert saved["strategies"] == list(STRATEGIES)
    assert saved["seeds"] == list(SEEDS)
    assert saved["sweep"] == {}
    assert saved["base"] == {
        "dataset": "synthetic", "num-clients": 4, "num-server-rounds": ROUNDS, "batch-size": 64,
    }  # fmt: skip
    assert [c["run-dir"] for c in saved["cells"]] == CELLS
    # Progress: a line per evaluated round, counting rounds over the whole grid.
    assert "compare: run 1/4 fedavg seed=1: round 0/2" in grid.stderr
    assert f"compare: run 4/4 fedwsa seed=2: round {ROUNDS}/{ROUNDS}" in grid.stderr
    assert "(8/8 grid rounds)" in grid.stderr


def test_summary_matches_the_runs(grid: SimpleNamespace) -> None:
    import csv

    with (grid.out / "summary.csv").open(newline="") as fh:
        rows = {row["group"]: row for row in csv.DictReader(fh)}
    assert list(rows) == list(STRATEGIES)
    finals = {s: [curve(grid.out / f"{s}_seed={seed}")[-1] for seed in SEEDS] for s in STRATEGIES}
    target = round(0.9 * max(np.mean(v) for v in finals.values()), 3)
    for strategy in STRATEGIES:
        runs = [grid.out / f"{strategy}_seed={seed}" for seed in SEEDS]
        accs = [curve(run) for run in runs]
        row = rows[strategy]
        assert int(row["seeds"]) == 2 and int(row["unfinished"]) == 0
        assert float(row["final-acc-mean"]) == pytest.approx(np.mean(finals[strategy]))
        assert float(row["final-acc-std-ddof1"]) == pytest.approx(np.std(finals[strategy], ddof=1))
        bests = [a.max() for a in accs]
        assert float(row["best-acc-mean"]) == pytest.approx(np.mean(bests))
        assert float(row["best-acc-std-ddof1"]) == pytest.approx(np.std(bests, ddof=1))
        walls = [json.loads((run / "result.json").read_text())["wall-s"] for run in runs]
        assert float(row["wall-s-mean"]) == pytest.approx(np.mean(walls))
        assert float(row["target-acc"]) == pytest.approx(target)
        reached = [int(np.argmax(a >= target)) for a in accs if (a >= target).any()]
        assert int(row["reached-target"]) == len(reached)
        if reached:
            assert float(row["rounds-to-target-mean"]) == pytest.approx(np.mean(reached))
        mean, std = 100 * np.mean(finals[strategy]), 100 * np.std(finals[strategy], ddof=1)
        assert f"| {strategy} | 2 | {mean:.1f} ± {std:.1f} |" in grid.stdout
    assert (grid.out / "summary.md").read_text(encoding="utf-8") in grid.stdout


def band_limits(band: PolyCollection) -> dict[float, tuple[float, float]]:
    """x -> (lowest, highest) y of a fill_between polygon."""
    verts = np.concatenate([p.vertices for p in band.get_paths()])
    return {
        float(x): (float(verts[verts[:, 0] == x, 1].min()), float(verts[verts[:, 0] == x, 1].max()))
        for x in np.unique(verts[:, 0])
    }


def check_panel(ax: Any, out: Path, key: str, scale: float) -> None:
    """One line and one ±1-std band per strategy, equal to the seeds' mean/std per round."""
    lines = ax.get_lines()
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(lines) == len(bands) == len(STRATEGIES)
    for line, band, strategy in zip(lines, bands, STRATEGIES, strict=True):
        values = scale * np.array([curve(out / f"{strategy}_seed={s}", key) for s in SEEDS])
        mean, std = values.mean(axis=0), values.std(axis=0, ddof=1)
        np.testing.assert_allclose(line.get_xdata(), np.arange(ROUNDS + 1))
        np.testing.assert_allclose(line.get_ydata(), mean)
        limits = band_limits(band)
        for rnd in range(ROUNDS + 1):
            assert limits[float(rnd)] == pytest.approx((mean[rnd] - std[rnd], mean[rnd] + std[rnd]))
    assert ax.get_xlabel() == "communication round"


def test_figures_written_after_the_grid_and_by_plot(grid: SimpleNamespace, tmp_path: Path) -> None:
    for suffix, magic in (("png", b"\x89PNG"), ("svg", b"<svg")):
        assert magic in (grid.out / f"curves.{suffix}").read_bytes()[:400]
    # The notebook function: two panels (accuracy in %, loss), shared legend, title.
    fig = fedwsa.plot(grid.out)
    assert isinstance(fig, Figure)
    ax_acc, ax_loss = fig.axes
    check_panel(ax_acc, grid.out, "test-accuracy", 100.0)
    check_panel(ax_loss, grid.out, "test-loss", 1.0)
    assert ax_acc.get_ylabel() == "test accuracy (%)"
    assert ax_loss.get_ylabel() == "test loss"
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [f"{s} (2 seeds)" for s in STRATEGIES]
    assert "synthetic" in fig.get_suptitle() and "4 clients" in fig.get_suptitle()
    # The command: default two-panel figure next to the runs, or one metric to --out.
    result = run_main(["plot", str(grid.out), "--out", str(tmp_path / "acc"),
                       "--metric", "test-accuracy"])  # fmt: skip
    assert result.rc == 0, result.stderr
    assert result.stdout.split() == ["figure:", str(tmp_path / "acc.png"),
                                     "figure:", str(tmp_path / "acc.svg")]  # fmt: skip
    assert (tmp_path / "acc.png").read_bytes().startswith(b"\x89PNG")
    single = fedwsa.plot(grid.out, metric="test-accuracy")
    (ax,) = single.axes
    check_panel(ax, grid.out, "test-accuracy", 100.0)
    assert "Test accuracy per round" in ax.get_title()


def test_summarize_command_with_target(grid: SimpleNamespace, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    shutil.copytree(grid.out, exp)
    result = run_main(["summarize", str(exp), "--target", "30%"])
    assert result.rc == 0, result.stderr
    assert "Target accuracy 30.0% (given)." in result.stdout
    rows = fedwsa.summarize(exp, target=0.3)
    for row in rows:
        accs = [curve(exp / f"{row['strategy']}_seed={s}") for s in SEEDS]
        reached = [int(np.argmax(a >= 0.3)) for a in accs if (a >= 0.3).any()]
        assert row["reached-target"] == len(reached)
        if reached:
            assert row["rounds-to-target-mean"] == pytest.approx(np.mean(reached))
    assert rows._repr_markdown_() in result.stdout
    assert run_main(["summarize", str(exp), "--target", "1.5"]).rc == 2


def test_rerun_skips_finished_runs(
    grid: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = tmp_path / "exp"
    shutil.copytree(grid.out, exp)
    stamps = {name: (exp / name / "metrics.jsonl").stat().st_mtime_ns for name in CELLS}
    spy = SimulateSpy(real=False)
    spy_on(monkeypatch, spy)
    result = run_main(compare_argv(exp))
    assert result.rc == 0, result.stderr
    assert spy.configs == []
    assert "4 finished, 0 to resume, 0 to restart, 0 new" in result.stderr
    assert {n: (exp / n / "metrics.jsonl").stat().st_mtime_ns for n in CELLS} == stamps
    assert "| fedavg | 2 |" in result.stdout  # the summary is still printed
    # --dry-run says the same without writing.
    result = run_main(compare_argv(exp, "--dry-run"))
    assert result.rc == 0
    assert result.stdout.count("finished, skipped") == 4
    # More rounds extend the finished runs from their last checkpoint.
    longer = BASE.replace(f"num-server-rounds={ROUNDS}", f"num-server-rounds={ROUNDS + 3}")
    result = run_main(compare_argv(exp, "--dry-run", base=longer))
    assert result.rc == 0, result.stderr
    assert result.stdout.count(f"resumed from its round-{ROUNDS} checkpoint") == 4


def test_interrupted_grid_is_resumed_or_restarted(
    grid: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One cell stopped after round 1 with a checkpoint: resumed. One stopped without a
    checkpoint: cleared and run from scratch. The finished two: left alone."""
    from fedwsa.config import make_config, parse_overrides

    exp = tmp_path / "exp"
    shutil.copytree(grid.out, exp)
    resumed, restarted = exp / "fedavg_seed=1", exp / "fedwsa_seed=2"
    # A real run of the same cell that stopped after round 1: run 1 round, then make it look
    # like the 2-round cell it belongs to (num-server-rounds may change on resume).
    shutil.rmtree(resumed)
    cell = make_config({**parse_overrides(BASE), "strategy": "fedavg", "seed": 1})
    run_in_process(cell.replace(num_server_rounds=1, run_dir=str(resumed)))
    (resumed / "config.json").write_text(json.dumps(cell.replace(run_dir=str(resumed)).to_dict()))
    (resumed / "result.json").unlink()
    (resumed / "model.pt").unlink()
    rows_before = metrics(resumed)
    assert [r["round"] for r in rows_before] == [0, 1]
    # Stopped after round 1 without a checkpoint (checkpoint-every=0, or killed before it).
    for name in ("result.json", "model.pt", "checkpoint.pt"):
        (restarted / name).unlink()
    (restarted / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in (restarted / "metrics.jsonl").read_text().splitlines()[:2])
    )
    (restarted / "leftover.txt").write_text("from the interrupted run")

    spy = SimulateSpy()
    spy_on(monkeypatch, spy)
    result = run_main(compare_argv(exp))
    assert result.rc == 0, result.stderr
    assert "2 finished, 1 to resume, 1 to restart, 0 new" in result.stderr
    assert [(Path(c.run_dir).name, c.resume) for c in spy.configs] == [
        ("fedavg_seed=1", True), ("fedwsa_seed=2", False),
    ]  # fmt: skip
    for run in (resumed, restarted):
        assert json.loads((run / "result.json").read_text())["status"] == "finished"
        assert [r["round"] for r in metrics(run)] == [0, 1, 2]
    assert not (restarted / "leftover.txt").exists()  # cleared before the restart
    assert metrics(resumed)[:2] == rows_before  # the resumed run kept its first rounds
    # Same seed, same rounds: the finished cells match the uninterrupted grid.
    for name in ("fedavg_seed=1", "fedwsa_seed=2"):
        np.testing.assert_array_equal(curve(exp / name), curve(grid.out / name))
    assert "| fedavg | 2 |" in result.stdout


def test_bad_grid_fails_before_any_run(
    grid: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = SimulateSpy(real=False)
    spy_on(monkeypatch, spy)
    out = tmp_path / "bad"
    cases = [
        (compare_argv(out, "--sweep", "alpha=0.5,-1"), "'alpha' = -1.0", "a finite number > 0"),
        (compare_argv(out, base=BASE + " lr=0"), "'lr' = 0.0", "a finite number > 0"),
        (compare_argv(out, "--sweep", "seed=1,2"), "'seed'", "--seeds"),
        (compare_argv(out, base=BASE + " scaffold-store='/tmp/store'"), "'scaffold-store'",
         "in its run directory"),
        (["compare", "--strategies", "fedavg,nope", "--seeds", "1", "--out", str(out)],
         "'strategy' = 'nope'", "fedavg, fedprox, fedwsa"),
        (["compare", "--strategies", "fedavg", "--seeds", "1"], "'--out'", "directory"),
        # The same grid with a different base over an existing experiment.
        (compare_argv(grid.out, base=BASE.replace("batch-size=64", "batch-size=32")),
         "different config (batch-size: 64 there, 32 in this grid)", "another --out"),
        # Fewer rounds than the runs already finished cannot be resumed to.
        (compare_argv(grid.out, base=BASE.replace("num-server-rounds=2", "num-server-rounds=1")),
         "different config (num-server-rounds: 2 there, 1 in this grid)"),
    ]  # fmt: skip
    for argv, *needles in cases:
        result = run_main(argv)
        assert result.rc == 2, argv
        assert result.stderr.count("\n") == 1, result.stderr  # one line
        assert result.stderr.startswith("fedwsa: error: ")
        for needle in needles:
            assert needle in result.stderr
    assert spy.configs == []
    assert not out.exists()  # nothing written


def test_a_key_no_cell_reads_does_not_make_a_finished_cell_another_run(
        grid: SimpleNamespace) -> None:
    """CART's knobs are read by no fedavg or fedwsa cell: another value of them (a changed
    default, say) leaves the finished cells skipped; WSA's beta is read by the fedwsa cells,
    so another value of it is refused for those."""
    result = run_main(compare_argv(grid.out, "--dry-run",
                                   base=BASE + " cart-lambda=0.9 cart-rank=0.5"))
    assert result.rc == 0, result.stderr
    assert result.stdout.count("finished, skipped") == 4
    result = run_main(compare_argv(grid.out, "--dry-run", base=BASE + " wsa-beta=0.5"))
    assert result.rc == 2
    assert "fedwsa_seed=1 holds a run with a different config (wsa-beta: 0.03 there, 0.5" in (
        result.stderr)


def test_grid_file(grid: SimpleNamespace, tmp_path: Path) -> None:
    """The TOML form of the grid: same cells, same directories as the flags."""
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text(
        f'out = "{grid.out}"\nstrategies = ["fedavg", "fedwsa"]\nseeds = [1, 2]\n\n'
        '[base]\ndataset = "synthetic"\nnum-clients = 4\nnum-server-rounds = 2\n'
        "batch-size = 64\n"
    )
    result = run_main(["compare", str(grid_file), "--dry-run"])
    assert result.rc == 0, result.stderr
    assert [line.split(":")[0].strip() for line in result.stdout.splitlines()[1:]] == CELLS
    assert result.stdout.count("finished, skipped") == 4
    grid_file.write_text(grid_file.read_text() + "\n[sweep]\nmomentum = [0.5, 1.5]\n")
    result = run_main(["compare", str(grid_file), "--dry-run"])
    assert result.rc == 2
    assert "'momentum' = 1.5" in result.stderr


def test_sweep_parsing_and_cell_order(tmp_path: Path) -> None:
    sweep = parse_sweep(["alpha=0.1,0.5 partition=iid,'dirichlet'", "lr=[0.01, 0.1]"])
    assert sweep == {"alpha": [0.1, 0.5], "partition": ["iid", "dirichlet"], "lr": [0.01, 0.1]}
    spec = build_spec(["fedavg", "fedwsa"], [3, 4], sweep, {"alpha": 0.9, "num-clients": 4})
    assert spec == GridSpec((Variant("fedavg"), Variant("fedwsa")), (3, 4), sweep,
                            {"num-clients": 4})
    cells = expand(spec, tmp_path)
    assert len(cells) == 2 * 2 * 2 * 2 * 2
    assert cells[0].path.name == "fedavg_alpha=0.1_partition=iid_lr=0.01_seed=3"
    assert cells[1].path.name == "fedavg_alpha=0.1_partition=iid_lr=0.01_seed=4"
    assert cells[-1].path.name == "fedwsa_alpha=0.5_partition=dirichlet_lr=0.1_seed=4"
    assert len({c.path for c in cells}) == len(cells)
    for c in cells:
        assert c.config.run_dir == str(c.path)
        assert (c.config.alpha, c.config.partition, c.config.lr) == tuple(c.params.values())


def test_strategy_entries_with_their_own_keys(tmp_path: Path) -> None:
    """``{strategy = "fedwsa", wsa-beta = 0.1}``: the entry's keys win over base, name the
    cell, and combine with the sweep; bad entries fail with one clear line."""
    strategies = ["fedavg", {"strategy": "fedwsa", "wsa-beta": 0.1},
                  {"strategy": "cart", "cart-rank": 0.1, "cart-lambda": 0.3}]
    spec = build_spec(strategies, [0], {"alpha": [0.1]}, {"wsa-beta": 1.0, "num-clients": 4})
    cells = expand(spec, tmp_path)
    assert [c.path.name for c in cells] == [
        "fedavg_alpha=0.1_seed=0", "fedwsa_wsa-beta=0.1_alpha=0.1_seed=0",
        "cart_cart-rank=0.1_cart-lambda=0.3_alpha=0.1_seed=0"]
    assert [c.config.wsa_beta for c in cells] == [1.0, 0.1, 1.0]
    assert (cells[2].config.cart_rank, cells[2].config.cart_lambda) == (0.1, 0.3)
    assert [v.record() for v in spec.strategies] == strategies
    bad = [
        (["fedavg", "fedavg"], "each value once"),
        ([{"wsa-beta": 0.1}], "a strategy name, or a table"),
        ([{"strategy": "fedwsa", "seed": 3}], "'seed'"),
        ([{"strategy": "fedwsa", "wsa-bta": 0.1}], "'wsa-bta'"),
        ([{"strategy": "fedwsa", "alpha": 0.3}], "set by the strategy entry or swept"),
    ]
    for entries, needle in bad:
        with pytest.raises(ValueError, match=needle):
            build_spec(entries, [0], {"alpha": [0.1]})
    # The command line takes the same entries as a TOML array.
    result = run_main(["compare", "--strategies", "['fedavg', {strategy='fedwsa', wsa-beta=0.1}]",
                       "--seeds", "0", "-c", BASE, "--out", str(tmp_path / "exp"), "--dry-run"])
    assert result.rc == 0, result.stderr
    assert "fedwsa_wsa-beta=0.1_seed=0" in result.stdout


def test_package_import_is_light_and_notebook_helpers() -> None:
    code = (
        "import sys, fedwsa; f = (fedwsa.plot, fedwsa.summarize, fedwsa.partition_heatmap); "
        "print(','.join(m for m in ('torch', 'flwr') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    fig = fedwsa.partition_heatmap("dataset='synthetic' num-clients=4", alpha=0.1)
    (ax, _colorbar) = fig.axes
    counts = ax.get_images()[0].get_array()
    assert counts.shape == (4, 10)
    assert int(counts.sum()) == SYNTHETIC_TRAIN  # every train example is in one partition
    assert ax.get_xlabel() == "class" and ax.get_ylabel() == "client"
    assert "alpha=0.1" in ax.get_title()


@pytest.mark.parametrize("mode", ["bar", "lines"])
def test_progress_follows_metrics_file(tmp_path: Path, mode: str) -> None:
    """The progress display counts skipped runs whole and the tracked run by its last round."""
    from fedwsa.experiments.progress import GridProgress

    stream = io.StringIO()
    progress = GridProgress(2, 5, stream=stream, mode=mode, poll_s=0.01)
    progress.skip(2)  # a finished 2-round run
    run = tmp_path / "run"
    run.mkdir()
    with progress.track([(run, 3, "fedwsa seed=2")]):
        for rnd in range(4):
            rows = [{"round": r, "test-accuracy": 0.25 * r} for r in range(rnd + 1)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            deadline = time.monotonic() + 30
            while f"round {rnd}/3" not in stream.getvalue() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert f"round {rnd}/3" in stream.getvalue()
    progress.close()
    text = stream.getvalue()
    assert (progress.runs_done, progress.rounds_done) == (2, 5)
    if mode == "bar":
        assert "5/5 rounds" in text and "run 2/2 fedwsa seed=2" in text and "acc 75.0%" in text
    else:
        assert (
            "compare: run 2/2 fedwsa seed=2: round 3/3, test accuracy 75.0% (5/5 grid rounds)"
            in text
        )

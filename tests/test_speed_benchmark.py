"""``benchmarks/speed.py``: its timing arithmetic and one tiny run through all four layouts;
``benchmarks/grid.py``'s round times and projection.

No timing is asserted (machines are shared and noisy); what is checked is that the figures the
benchmark prints and writes are computed from the runs the way its docstring says.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_speed():
    return load_benchmark("speed")


def write_cell(exp: Path, name: str, elapsed: list[float]) -> None:
    (exp / name).mkdir(parents=True)
    (exp / name / "metrics.jsonl").write_text("".join(
        json.dumps({"round": r, "elapsed-s": e}) + "\n" for r, e in enumerate(elapsed)))


def test_grid_round_times_and_projection(tmp_path: Path) -> None:
    grid = load_benchmark("grid")
    # two cells, rounds 0..3; round 1 (start-up) is never timed
    write_cell(tmp_path, "fedavg_seed=0", [1.0, 10.0, 12.0, 15.0])
    write_cell(tmp_path, "fedprox_seed=0", [1.5, 10.5, 13.0, 15.5])
    # stacked: the cells share a round, so a round ends when its last cell's row is written
    assert grid.round_seconds(tmp_path, stacked=True) == pytest.approx([13.0 - 10.5, 15.5 - 13.0])
    # one by one: the cells' rounds add up
    assert grid.round_seconds(tmp_path, stacked=False) == pytest.approx(
        [(12.0 - 10.0) + (13.0 - 10.5), (15.0 - 12.0) + (15.5 - 13.0)])
    # 30 s for 3 rounds, then 47 more rounds at the mean step
    assert grid.projected_wall(30.0, 3, [2.0, 4.0], 50) == pytest.approx(30.0 + 47 * 3.0)
    with pytest.raises(ValueError, match="at least 2 timed rounds"):
        grid.projected_wall(30.0, 2, [], 50)


def test_gpu_summary_collects_the_figures_and_checks_the_goals(tmp_path: Path) -> None:
    """What ``gpu_check.sh``'s steps leave in $OUT becomes one summary.json: every goal from
    its own step's figure, and ``met: null`` where a step did not finish (never a pass)."""
    summary = load_benchmark("gpu_summary")
    (tmp_path / "steps.tsv").write_text("step\tstatus\tseconds\ntests\t0\t61\n"
                                        "speed\t0\t150\nniidgrid\t124\t200\n"
                                        "grid\tskipped\t0\n")
    (tmp_path / "tests.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" errors="0" failures="1" '
        'skipped="2" tests="20" time="9.0"></testsuite></testsuites>')
    # speed.py's own summary: (c) 0.5 s, (d) 0.45 s, (a) 4.5 s per round
    (tmp_path / "speed-fedavg.json").write_text(json.dumps({
        "config": {"clients_per_round": 100},
        "layouts": {"trainer": {"mean_round_s": 0.45, "conv_impl": "unfold"}},
        "summary": {"flower_overhead": 1 - 0.45 / 0.5, "speedup_batched_vs_classic": 4.5 / 0.5}}))
    (tmp_path / "niid-metrics.jsonl").write_text("".join(
        json.dumps({"round": r, "elapsed-s": e}) + "\n"
        for r, e in enumerate([2.0, 32.0, 38.0, 45.0])))
    assert summary.main([str(tmp_path)]) == 0
    report = json.loads((tmp_path / "summary.json").read_text())
    assert report["tests"] == {"tests": 20, "failures": 1, "errors": 0, "skipped": 2,
                               "passed": 17}
    assert report["steps"]["niidgrid"] == {"status": "124", "seconds": 200}
    # round 1 (30 s, the start-up) is left out: rounds 2 and 3 took 6 and 7 s
    assert report["niid_run"]["round_s_after_round_1"] == pytest.approx(6.5)
    assert report["auto_conv_impl"] == {"chosen": "unfold", "round_s": 0.45}
    goals = {g["goal"]: g for g in report["goals"]}
    assert goals["flower-overhead"]["value"] == pytest.approx(0.1)
    assert goals["flower-overhead"]["met"] is True  # at most 15%
    assert goals["batched/classic"]["value"] == pytest.approx(9.0)
    assert goals["batched/classic"]["met"] is True  # at least 8x
    assert goals["niid-grid-minutes"]["met"] is None  # its step was stopped: unknown
    assert goals["rounds/s stacked/one-by-one"]["met"] is None
    # The grid steps' figures, once they are there: 720 s projected is 12 minutes, not met.
    (tmp_path / "niid-grid.json").write_text(json.dumps({"projected_wall_s": {"stacked": 720.0}}))
    (tmp_path / "grid.json").write_text(json.dumps({"config": {"clients": 100, "cells": 6},
                                                    "round_speedup_stacked": 5.5}))
    for impl, seconds in (("grouped", 0.3), ("unfold", 0.2)):
        (tmp_path / f"convs-{impl}.json").write_text(json.dumps(
            {"layouts": {"trainer": {"mean_round_s": seconds}}}))
    report = summary.summarize(tmp_path)
    goals = {g["goal"]: g for g in report["goals"]}
    assert goals["niid-grid-minutes"]["value"] == pytest.approx(12.0)
    assert goals["niid-grid-minutes"]["met"] is False
    assert goals["rounds/s stacked/one-by-one"]["met"] is True
    assert "6 cells" in goals["rounds/s stacked/one-by-one"]["source"]
    assert report["trainer_round_s_by_conv_impl"] == {"grouped": 0.3, "unfold": 0.2}
    # The grid with unfold convolutions, 540 s: the faster fp32 figure counts, and says so.
    (tmp_path / "niid-grid-unfold.json").write_text(json.dumps(
        {"projected_wall_s": {"stacked": 540.0}}))
    goal = {g["goal"]: g for g in summary.summarize(tmp_path)["goals"]}["niid-grid-minutes"]
    assert (goal["value"], goal["met"]) == (pytest.approx(9.0), True)
    assert "niidgrid-unfold" in goal["source"]


def test_gpu_check_runs_its_steps_on_a_cpu_and_writes_the_summary(tmp_path: Path) -> None:
    """``gpu_check.sh`` itself (bash), on the CPU at toy sizes: the ``convs`` step runs the
    trainer both ways, an unknown step name is refused before any work, and summary.json
    holds what the step measured (nothing left from an earlier check in the same $OUT)."""
    import os
    import subprocess

    out = tmp_path / "out"
    out.mkdir()
    (out / "grid.json").write_text(json.dumps({"round_speedup_stacked": 9.0}))  # stale
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "OUT": str(out), "DEVICE": "cpu", "CLIENTS": "2", "ROUNDS": "3",
           "TRAIN_IMAGES": "500", "STEPS": "convs"}
    script = str(ROOT / "benchmarks" / "gpu_check.sh")
    bad = subprocess.run(["bash", script], env={**env, "STEPS": "convs speeed"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown step 'speeed'" in bad.stderr
    assert (out / "grid.json").exists()  # refused before touching $OUT
    done = subprocess.run(["bash", script], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((out / "summary.json").read_text())
    assert report["steps"]["convs"]["status"] == "0"
    times = report["trainer_round_s_by_conv_impl"]
    for impl in ("grouped", "unfold"):
        measured = json.loads((out / f"convs-{impl}.json").read_text())
        assert measured["config"]["conv_impl"] == impl
        assert measured["layouts"]["trainer"]["conv_impl"] == impl  # what the trainer ran
        assert times[impl] == measured["layouts"]["trainer"]["mean_round_s"] > 0
    assert report["grid"] is None  # the stale file was removed, not read
    assert all(g["met"] is None for g in report["goals"])  # no goal's step ran


def test_round_seconds_subtract_evaluation_and_skip_round_one(tmp_path: Path) -> None:
    speed = load_speed()
    elapsed = [1.0, 20.0, 23.5, 27.0, 30.0]  # rounds 0..4
    evals = [0.5, 0.4, 0.5, 0.25, 0.5]
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"round": r, "elapsed-s": e}) + "\n" for r, e in enumerate(elapsed)))
    got = speed.round_seconds(tmp_path, evals)
    assert got == pytest.approx([23.5 - 20.0 - 0.5, 27.0 - 23.5 - 0.25, 30.0 - 27.0 - 0.5])
    with pytest.raises(RuntimeError, match="one evaluated row per round"):
        speed.round_seconds(tmp_path, evals[:-1])


def test_a_tiny_run_reports_consistent_figures(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """4 clients, 3 rounds, all five layouts: the summary line and the JSON agree with the
    per-round figures they are derived from."""
    speed = load_speed()
    out = tmp_path / "speed.json"
    report = speed.main(["--clients", "4", "--rounds", "3", "--node-cpus", "1",
                         "--out", str(out)])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))

    layouts = report["layouts"]
    assert list(layouts) == ["classic", "sequential", "batched", "trainer", "weights"]
    assert layouts["classic"]["supernodes"] == 4 and layouts["batched"]["supernodes"] == 1
    images = report["config"]["images_per_round"]
    for rec in layouts.values():
        assert len(rec["round_s"]) == 2 and all(t > 0 for t in rec["round_s"])
        assert rec["mean_round_s"] == pytest.approx(sum(rec["round_s"]) / 2)
        assert rec["images_per_s"] == pytest.approx(images / rec["mean_round_s"])
    # Every Flower layout trains the same clients to the same model: same accuracies.
    acc = [layouts[k]["test_accuracy"] for k in ("classic", "sequential", "batched")]
    assert acc[0] == pytest.approx(acc[1], abs=1e-3) and acc[1] == pytest.approx(acc[2], abs=1e-3)
    # Summed on the node or not: the same model.
    assert layouts["weights"]["test_accuracy"] == pytest.approx(acc[2], abs=1e-6)

    t = {k: v["mean_round_s"] for k, v in layouts.items()}
    summary = report["summary"]
    assert summary["speedup_batched_vs_classic"] == pytest.approx(t["classic"] / t["batched"])
    assert summary["speedup_batched_vs_sequential"] == pytest.approx(
        t["sequential"] / t["batched"])
    assert summary["flower_overhead"] == pytest.approx(1 - t["trainer"] / t["batched"])
    assert summary["node_sums_speedup"] == pytest.approx(t["weights"] / t["batched"])
    assert summary["flower_overhead_weights"] == pytest.approx(1 - t["trainer"] / t["weights"])
    last = printed.strip().splitlines()[-1]
    match = re.fullmatch(r"speedup batched/classic=([\d.]+)x batched/sequential=([\d.]+)x "
                         r"flower-overhead=(-?\d+)% node-sums=([\d.]+)x \(flower-overhead "
                         r"with every client's weights (-?\d+)%\)", last)
    assert match, last
    assert float(match[1]) == pytest.approx(summary["speedup_batched_vs_classic"], abs=0.051)
    assert float(match[2]) == pytest.approx(summary["speedup_batched_vs_sequential"], abs=0.051)
    assert int(match[3]) == round(100 * summary["flower_overhead"])
    assert float(match[4]) == pytest.approx(summary["node_sums_speedup"], abs=0.0051)
    assert int(match[5]) == round(100 * summary["flower_overhead_weights"])


def test_round_cost_profiles_the_stages_of_a_round(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks/round_cost.py`` on a tiny run: every stage was found in the profile, the
    trainer is part of the node's call, and the profile file is written."""
    load_speed()
    spec = importlib.util.spec_from_file_location("round_cost",
                                                  ROOT / "benchmarks" / "round_cost.py")
    assert spec is not None and spec.loader is not None
    round_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(round_cost)
    out = tmp_path / "round.pstats"
    figures = round_cost.main(["--clients", "4", "--rounds", "3", "--out", str(out)])
    assert set(figures) == {label for label, _, _ in round_cost.STAGES}
    assert all(ms > 0 for ms in figures.values()), figures
    assert figures["node: the trainer"] < figures["node: whole ClientApp call"]
    assert figures["server: replies merged"] < figures["server: aggregate (all of it)"]
    assert out.stat().st_size > 0
    assert "fedwsa's own cost outside training" in capsys.readouterr().out


def test_niid_bench_original_writes_cifar10_as_torchvision_reads_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``benchmarks/niid_bench_original.py`` hands NIID-Bench's code an ``.npz`` as torchvision's
    ``cifar-10-batches-py``: torchvision's own CIFAR-10 reader (the MD5 check accepted, as the
    script does offline) gives back every image and label of both splits, in order."""
    import numpy as np

    original = load_benchmark("niid_bench_original")
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (13, 32, 32, 3), dtype=np.uint8),
              "y_train": rng.integers(0, 10, 13), "x_test": rng.integers(
                  0, 256, (4, 32, 32, 3), dtype=np.uint8), "y_test": rng.integers(0, 10, 4)}
    np.savez(tmp_path / "c.npz", **arrays)
    original.write_torchvision_cifar10(tmp_path / "c.npz", tmp_path / "root")
    from torchvision.datasets import cifar

    monkeypatch.setattr(cifar, "check_integrity", cifar.check_integrity)  # restored after
    with pytest.raises(RuntimeError, match="corrupted"):  # the MD5s differ from the archive's
        cifar.CIFAR10(str(tmp_path / "root"), train=True, download=False)
    original.trust_local_cifar10()
    for train, x, y in ((True, arrays["x_train"], arrays["y_train"]),
                        (False, arrays["x_test"], arrays["y_test"])):
        read = cifar.CIFAR10(str(tmp_path / "root"), train=train, download=False)
        assert np.array_equal(read.data, x) and read.targets == y.tolist()
        assert read.classes[0] == "airplane" and len(read.classes) == 10


def test_niid_bench_original_reports_its_log_in_fedwsa_rounds(tmp_path: Path) -> None:
    """The script reads NIID-Bench's per-round accuracy lines from its newest log and reports
    them as fedwsa does: rounds counted from 1 (NIID-Bench's ``comm round 0`` is round 1)."""
    original = load_benchmark("niid_bench_original")
    logs = tmp_path / "logs"
    logs.mkdir()
    accuracies = [0.1 + 0.01 * r for r in range(45)]
    accuracies[29] = 0.9  # round 30 is the best
    lines = ["12-06 02:46 INFO     in comm round:0"]
    lines += [f"12-06 02:50 INFO     >> Global Model Test accuracy: {a:f}" for a in accuracies]
    (logs / "experiment_log-2026-12-06-02:46-53.log").write_text("\n".join(lines))
    older = logs / "experiment_log-2026-12-05-01:00-00.log"
    older.write_text(lines[1])
    os.utime(older, (0, 0))  # written before: ignored
    read = original.logged_accuracies(tmp_path)
    assert read == pytest.approx(accuracies, abs=1e-6)
    assert original.report(read) == ("rounds 45: final 54.0, best 90.0 (round 30), "
                                      "rounds 10 / 20 / 30 / 40: 19.0 / 29.0 / 90.0 / 49.0")
    assert original.report(read[:3]) == "rounds 3: final 12.0, best 12.0 (round 3)"
    assert original.report(read[:25]) == ("rounds 25: final 34.0, best 34.0 (round 25), "
                                          "rounds 10 / 20: 19.0 / 29.0")
    assert original.report([]) == "no round finished yet"


def test_niid_bench_original_compares_splits_seed_by_seed(tmp_path: Path) -> None:
    """``--compare-splits`` seeds NumPy's global generator as ``experiments.py`` does, calls
    NIID-Bench's ``utils.partition_data`` and compares its client sets, in any order, with
    fedwsa's for the same seed: here a stand-in ``utils.py`` gives fedwsa's sets shuffled for
    seeds 0 and 2 (the same) and swaps one example between two clients for seed 1 (different,
    sizes equal). Other labels than fedwsa's are refused; NumPy's global state is restored."""
    import numpy as np

    original = load_benchmark("niid_bench_original")
    labels = np.arange(600) % 10
    np.save(tmp_path / "labels.npy", labels)
    (tmp_path / "utils.py").write_text(f'''
import numpy as np
from fedwsa.partitions.methods import partition_labels
def partition_data(dataset, datadir, logdir, partition, n_parties, beta=0.4):
    assert (dataset, partition, n_parties, beta) == ("cifar10", "noniid-labeldir", 10, 0.5)
    seed = {{np.random.RandomState(s).randint(1 << 30): s for s in range(3)}}[
        np.random.randint(1 << 30)]  # which seed np.random.seed was given
    y = np.load({str(tmp_path / "labels.npy")!r})
    parts = partition_labels(y, 10, "dirichlet", alpha=0.5, seed=seed, rng="niid-bench")
    sets = {{c: np.random.permutation(p) for c, p in enumerate(parts)}}
    if seed == 1:
        sets[0][0], sets[1][0] = sets[1][0], sets[0][0]
    return None, y, None, None, sets, None
''')
    np.random.seed(123)
    expected_next = np.random.RandomState(123).randint(1 << 30)
    assert original.compare_splits(tmp_path, tmp_path, labels, [0, 1, 2]) == {
        0: True, 1: False, 2: True}
    assert np.random.randint(1 << 30) == expected_next
    assert str(tmp_path) not in sys.path  # its folder is off the path again
    with pytest.raises(ValueError, match="other labels"):
        original.compare_splits(tmp_path, tmp_path, labels[::-1], [0])


def test_niid_bench_original_loader_workers_apply_to_loaders_made_after(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--loader-workers N`` makes NIID-Bench's loaders (``data.DataLoader(...)``, no worker
    count given) use N forked processes; a count the caller gives is kept."""
    from torch.utils import data

    original = load_benchmark("niid_bench_original")
    monkeypatch.setattr(data, "DataLoader", data.DataLoader)  # restored after the test
    original.load_in_workers(2)
    loader = data.DataLoader(list(range(4)), batch_size=2)
    assert loader.num_workers == 2 and loader.multiprocessing_context.get_start_method() == "fork"
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3]]
    assert data.DataLoader(list(range(4)), num_workers=0).num_workers == 0

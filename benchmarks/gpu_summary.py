"""Every figure of a ``gpu_check.sh`` run in one JSON file, with issue 15's goals checked.

``gpu_check.sh`` ends with ``python benchmarks/gpu_summary.py $OUT``: it reads what the steps
left in ``$OUT`` (steps.tsv, tests.xml, speed-*.json, convs-*.json, grid.json,
niid-grid*.json, niid-metrics.jsonl, machine.txt), writes ``$OUT/summary.json`` and prints one
line per goal.
A goal whose step did not run or did not finish has ``"met": null`` and says why, so a cut-off
check never reads as a pass.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

# Issue 15's goals on one GPU: (name, what, target, True if higher is better).
GOALS = (
    ("flower-overhead", "share of a batched 100-client round outside training", 0.15, False),
    ("batched/classic", "speed-up of one batched SuperNode over 100 classic ones", 8.0, True),
    ("niid-grid-minutes", "NIID-Bench's 18-run grid, 50 rounds, stacked (fp32)", 10.0, False),
    ("rounds/s stacked/one-by-one", "100-client runs, rounds per second", 5.0, True),
)


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def steps(out: Path) -> dict[str, dict[str, Any]]:
    """Each step's exit status ("0", "124": stopped by its limit, "skipped") and seconds."""
    try:
        with open(out / "steps.tsv", newline="") as f:
            return {row["step"]: {"status": row["status"], "seconds": int(row["seconds"])}
                    for row in csv.DictReader(f, delimiter="\t")}
    except OSError:
        return {}


def test_counts(out: Path) -> dict[str, int] | None:
    """The CUDA tests' counts from pytest's JUnit XML (tests.xml)."""
    try:
        suite = ElementTree.parse(out / "tests.xml").getroot()
    except (OSError, ElementTree.ParseError):
        return None
    if suite.tag == "testsuites":
        if not len(suite):
            return None
        suite = suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def niid_rounds(out: Path) -> dict[str, float] | None:
    """Rounds done and mean seconds per round after round 1 of the single NIID-Bench run."""
    try:
        rows = [json.loads(line) for line in
                (out / "niid-metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    rows = [r for r in rows if "elapsed-s" in r and "round" in r]
    times = [b["elapsed-s"] - a["elapsed-s"] for a, b in zip(rows, rows[1:], strict=False)]
    if len(times) < 2:
        return None
    return {"rounds_done": rows[-1]["round"], "elapsed_s": rows[-1]["elapsed-s"],
            "round_s_after_round_1": sum(times[1:]) / (len(times) - 1)}


def conv_times(out: Path) -> dict[str, float] | None:
    """The convs step: the batched trainer's seconds per round with each conv-impl."""
    times = {}
    for impl in ("grouped", "unfold"):
        layout = ((_json(out / f"convs-{impl}.json") or {}).get("layouts") or {}).get("trainer")
        if layout:
            times[impl] = float(layout["mean_round_s"])
    return times or None


def main_speed(report: dict[str, Any]) -> dict[str, Any] | None:
    """The speed step's fedavg run (or its first)."""
    runs = report["speed"] or {}
    return runs.get("fedavg") or next(iter(runs.values()), None)


def auto_conv(report: dict[str, Any]) -> dict[str, Any] | None:
    """What conv-impl='auto' chose in the speed step's trainer-alone layout, and its time."""
    layout = ((main_speed(report) or {}).get("layouts") or {}).get("trainer")
    if not layout:
        return None
    return {"chosen": layout.get("conv_impl"), "round_s": layout.get("mean_round_s")}


def goal_values(report: dict[str, Any]) -> dict[str, tuple[float | None, str]]:
    """Each goal's measured value, or None and why not."""
    speed = main_speed(report)
    summary = (speed or {}).get("summary", {})
    clients = (speed or {}).get("config", {}).get("clients_per_round")
    grid = report["grid"]
    values: dict[str, tuple[float | None, str]] = {}
    for goal, key in (("flower-overhead", "flower_overhead"),
                      ("batched/classic", "speedup_batched_vs_classic")):
        value = summary.get(key)
        values[goal] = (value, f"speed.py at {clients} clients" if value is not None
                        else "speed step did not report it")
    # fp32 with either convolution (the same numbers to float rounding); bf16 is reported apart
    projected = {step: ((report[key] or {}).get("projected_wall_s") or {}).get("stacked")
                 for step, key in (("niidgrid", "niid_grid"),
                                   ("niidgrid-unfold", "niid_grid_unfold"))}
    measured = {step: v for step, v in projected.items() if v is not None}
    best = min(measured, key=measured.__getitem__) if measured else None
    values["niid-grid-minutes"] = (
        None if best is None else measured[best] / 60,
        f"projected from the stacked {best} step" if best is not None
        else "neither niidgrid step finished")
    ratio = (grid or {}).get("round_speedup_stacked")
    grid_config = (grid or {}).get("config", {})
    # A stacked round costs at least one cell's round, so n cells bound the ratio near n.
    values["rounds/s stacked/one-by-one"] = (
        ratio, f"grid.py at {grid_config.get('clients')} clients, {grid_config.get('cells')} "
        "cells (the ratio cannot much exceed the cell count)" if ratio is not None
        else "grid step did not finish both layouts")
    return values


def summarize(out: Path) -> dict[str, Any]:
    machine = out / "machine.txt"
    report: dict[str, Any] = {
        "machine": machine.read_text().strip().splitlines() if machine.exists() else None,
        "steps": steps(out),
        "tests": test_counts(out),
        "speed": {p.stem.removeprefix("speed-"): _json(p)
                  for p in sorted(out.glob("speed-*.json"))} or None,
        "grid": _json(out / "grid.json"),
        "niid_grid": _json(out / "niid-grid.json"),
        "niid_grid_unfold": _json(out / "niid-grid-unfold.json"),
        "niid_grid_bf16": _json(out / "niid-grid-bf16.json"),
        "trainer_round_s_by_conv_impl": conv_times(out),
        "niid_run": niid_rounds(out),
    }
    report["auto_conv_impl"] = auto_conv(report)
    values = goal_values(report)
    report["goals"] = [
        {"goal": name, "what": what, "target": target,
         "direction": "at least" if higher else "at most", "value": values[name][0],
         "source": values[name][1],
         "met": None if values[name][0] is None else
         (values[name][0] >= target if higher else values[name][0] <= target)}
        for name, what, target, higher in GOALS]
    return report


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: gpu_summary.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    report = summarize(out)
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"tests: {report['tests']}")
    for name, step in report["steps"].items():
        print(f"step {name}: status {step['status']}, {step['seconds']} s")
    for impl, seconds in (report["trainer_round_s_by_conv_impl"] or {}).items():
        print(f"batched trainer alone, conv-impl {impl}: {seconds:.3f} s/round")
    if report["auto_conv_impl"]:
        print(f"batched trainer alone, conv-impl auto chose {report['auto_conv_impl']['chosen']}"
              f": {report['auto_conv_impl']['round_s']:.3f} s/round")
    for goal in report["goals"]:
        value = "not measured" if goal["value"] is None else f"{goal['value']:.3g}"
        verdict = {None: "unknown", True: "MET", False: "not met"}[goal["met"]]
        print(f"goal {goal['goal']} ({goal['direction']} {goal['target']:g}): {value} "
              f"[{verdict}; {goal['source']}]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

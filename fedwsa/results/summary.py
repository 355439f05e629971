"""Per-cell summary tables (Markdown and CSV) of an experiment's runs.

One row per group (strategy + swept config values); the seeds of a group are its replicates.
Accuracies stay fractions in the rows and the CSV (like ``metrics.jsonl``) and become
percentages only in the Markdown table, which is meant for people.

Spread is the *sample* standard deviation over seeds (``ddof=1``), because seeds are a small
sample of the possible runs; with a single seed it is reported as 0 (and no ``±`` in Markdown).
Column names carry the ``-std-ddof1`` suffix so nobody has to guess.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedwsa.results.files import (
    PathLike,
    find_runs,
    group_runs,
    infer_swept_keys,
    is_finished,
    is_number,
    read_config,
    read_metrics,
    wall_seconds,
    write_text_atomic,
)

ACCURACY = "test-accuracy"
LOSS = "test-loss"
# Default target: this fraction of the best final mean accuracy over all groups, so "rounds to
# target" asks how fast each method gets close to what the best method ends at.
DEFAULT_TARGET_FRACTION = 0.9
# Metric keys that are bookkeeping or handled explicitly; every other numeric key is carried
# through as ``final-<key>-mean``.
_NOT_CARRIED = frozenset(
    {"round", "elapsed-s", ACCURACY, LOSS, "clients-sampled", "clients-failed"}
)
# Columns whose names must not be shadowed by a swept config key.
_STAT_COLUMNS = frozenset(
    {
        "group", "strategy", "runs", "seeds", "unfinished", "includes-unfinished", "final-round",
        "final-acc-mean", "final-acc-std-ddof1", "best-acc-mean", "best-acc-std-ddof1",
        "target-acc", "rounds-to-target-mean", "reached-target", "final-test-loss-mean",
        "final-test-loss-std-ddof1", "wall-s-mean", "clients-failed-total",
    }
)  # fmt: skip


@dataclass
class _RunStats:
    """What one run contributes to its group's row."""

    finished: bool
    curve: list[tuple[int, float]]  # (round, test accuracy), evaluated rounds only
    final_loss: float
    wall_s: float
    clients_failed: int
    final_values: dict[str, float] = field(default_factory=dict)

    @property
    def final_round(self) -> int:
        return self.curve[-1][0]

    @property
    def final_acc(self) -> float:
        return self.curve[-1][1]

    @property
    def best_acc(self) -> float:
        return max(acc for _, acc in self.curve)

    def rounds_to(self, target: float) -> int | None:
        """First evaluated round whose test accuracy is >= ``target`` (None if never)."""
        return next((rnd for rnd, acc in self.curve if acc >= target), None)


def _last_number(records: Sequence[dict[str, Any]], key: str) -> float:
    for record in reversed(records):
        if is_number(record.get(key)) and not math.isnan(record[key]):
            return float(record[key])
    return math.nan


def _run_stats(run: Path) -> _RunStats:
    records = read_metrics(run)
    curve = [
        (int(r["round"]), float(r[ACCURACY]))
        for r in records
        if is_number(r.get("round")) and is_number(r.get(ACCURACY)) and not math.isnan(r[ACCURACY])
    ]
    final_values: dict[str, float] = {}
    for record in records:
        for key, value in record.items():
            if key not in _NOT_CARRIED and is_number(value):
                final_values.setdefault(key, math.nan)
    for key in final_values:
        final_values[key] = _last_number(records, key)
    return _RunStats(
        finished=is_finished(run),
        curve=curve,
        final_loss=_last_number(records, LOSS),
        wall_s=wall_seconds(run, records),
        clients_failed=int(sum(r["clients-failed"] for r in records
                               if is_number(r.get("clients-failed")))),
        final_values=final_values,
    )  # fmt: skip


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1) over seeds; std 0 for one value, both NaN for none.

    NaN entries (a seed that never reported the value) are left out.
    """
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    if arr.size == 1:
        return float(arr[0]), 0.0
    return float(arr.mean()), float(arr.std(ddof=1))


def summarize(
    paths: Sequence[PathLike] | PathLike,
    target_accuracy: float | None = None,
    *,
    swept_keys: Sequence[str] | None = None,
    include_unfinished: bool = False,
) -> list[dict[str, Any]]:
    """One summary row per group (strategy + swept values) of the runs under ``paths``.

    Columns (accuracies as fractions in [0, 1]; ``std-ddof1`` = sample std over seeds, 0 for a
    single seed):

    - ``group``, ``strategy``, one column per swept key: which cell this is;
    - ``runs`` (run dirs in the group), ``seeds`` (runs used for the statistics),
      ``unfinished`` (runs without a finished ``result.json``), ``includes-unfinished``;
    - ``final-round``: last evaluated round (max over the seeds used);
    - ``final-acc-mean``/``-std-ddof1``: test accuracy at each seed's last evaluated round;
    - ``best-acc-mean``/``-std-ddof1``: each seed's best test accuracy over all rounds;
    - ``target-acc``, ``rounds-to-target-mean`` (first evaluated round with accuracy >=
      target, averaged over the seeds that reached it; NaN if none did), ``reached-target``
      (how many seeds reached it);
    - ``final-test-loss-mean``/``-std-ddof1``, ``wall-s-mean`` (``result.json`` ``wall-s``,
      else the last ``elapsed-s``), ``clients-failed-total`` (summed over rounds and seeds);
    - ``final-<key>-mean`` for every other numeric metric (``train-loss``, ``wsa-kl``, ...).

    Unfinished runs are counted but left out of the statistics unless ``include_unfinished``
    (then their last evaluated round counts as final), because a truncated run's "final"
    accuracy is not comparable. ``target_accuracy=None`` means 0.9 x the best
    ``final-acc-mean`` over all groups, rounded to 0.1 percentage point.
    """
    runs = find_runs(paths)
    keys = list(infer_swept_keys(runs) if swept_keys is None else swept_keys)
    groups = group_runs(runs, keys)
    stats = {key: [_run_stats(run) for run in members] for key, members in groups.items()}
    extra_keys = list(
        dict.fromkeys(k for group in stats.values() for s in group for k in s.final_values)
    )

    used: dict[Any, list[_RunStats]] = {
        key: [s for s in group if s.curve and (s.finished or include_unfinished)]
        for key, group in stats.items()
    }
    final_means = [mean_std([s.final_acc for s in group])[0] for group in used.values() if group]
    if target_accuracy is None and final_means:
        target_accuracy = round(DEFAULT_TARGET_FRACTION * max(final_means), 3)

    rows: list[dict[str, Any]] = []
    for key, group in stats.items():
        seeds = used[key]
        row: dict[str, Any] = {"group": key.label, "strategy": key.strategy}
        for name, value in key.params.items():
            if name != "strategy":
                row[f"config-{name}" if name in _STAT_COLUMNS else name] = value
        final_mean, final_std = mean_std([s.final_acc for s in seeds])
        best_mean, best_std = mean_std([s.best_acc for s in seeds])
        loss_mean, loss_std = mean_std([s.final_loss for s in seeds])
        reached = (
            [r for s in seeds if (r := s.rounds_to(target_accuracy)) is not None]
            if target_accuracy is not None
            else []
        )
        row.update(
            {
                "runs": len(group),
                "seeds": len(seeds),
                "unfinished": sum(not s.finished for s in group),
                "includes-unfinished": include_unfinished,
                "final-round": max((s.final_round for s in seeds), default=None),
                "final-acc-mean": final_mean,
                "final-acc-std-ddof1": final_std,
                "best-acc-mean": best_mean,
                "best-acc-std-ddof1": best_std,
                "target-acc": math.nan if target_accuracy is None else float(target_accuracy),
                "rounds-to-target-mean": float(np.mean(reached)) if reached else math.nan,
                "reached-target": len(reached),
                "final-test-loss-mean": loss_mean,
                "final-test-loss-std-ddof1": loss_std,
                "wall-s-mean": mean_std([s.wall_s for s in seeds])[0],
                "clients-failed-total": sum(s.clients_failed for s in seeds),
            }
        )
        for extra in extra_keys:
            values = [s.final_values.get(extra, math.nan) for s in seeds]
            row[f"final-{extra}-mean"] = mean_std(values)[0]
        rows.append(row)
    return rows


def run_rows(paths: Sequence[PathLike] | PathLike, *,
             swept_keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per run (the replicates behind ``summarize``'s means), in group then seed order:
    ``group``, ``seed``, ``run-dir``, ``finished``, ``final-round``, ``final-acc``,
    ``best-acc``, ``best-round`` (first round at the best accuracy), ``wall-s``."""
    runs = find_runs(paths)
    keys = list(infer_swept_keys(runs) if swept_keys is None else swept_keys)
    rows: list[dict[str, Any]] = []
    for key, members in group_runs(runs, keys).items():
        for run in members:
            stats = _run_stats(run)
            best = max((acc for _, acc in stats.curve), default=math.nan)
            rows.append({
                "group": key.label,
                "seed": read_config(run).get("seed"),
                "run-dir": run.name,
                "finished": stats.finished,
                "final-round": stats.final_round if stats.curve else None,
                "final-acc": stats.final_acc if stats.curve else math.nan,
                "best-acc": best,
                "best-round": stats.rounds_to(best) if stats.curve else None,
                "wall-s": stats.wall_s,
            })
    return rows


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _pct(mean: float, std: float, seeds: int) -> str:
    """``68.2 ± 1.3`` (percent); no ``±`` for one seed, where there is no spread to show."""
    if _missing(mean):
        return "–"
    if seeds < 2 or _missing(std):
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _num(mean: float, std: float, seeds: int, digits: int = 3) -> str:
    if _missing(mean):
        return "–"
    if seeds < 2 or _missing(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _rounds(row: dict[str, Any]) -> str:
    mean = row["rounds-to-target-mean"]
    text = "–" if _missing(mean) else (f"{mean:.0f}" if float(mean).is_integer() else f"{mean:.1f}")
    return f"{text} ({row['reached-target']}/{row['seeds']})"


def _seconds(value: float) -> str:
    if _missing(value):
        return "–"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """GitHub-flavoured Markdown table of ``summarize`` rows, with notes explaining columns.

    Accuracies are shown in percent as ``mean ± sample std`` over seeds.
    """
    if not rows:
        return "_No runs._\n"
    target = next((r["target-acc"] for r in rows if not _missing(r.get("target-acc"))), None)
    target_head = "rounds to target" if target is None else f"rounds to ≥ {100 * target:.1f}%"
    header = [
        "group", "seeds", "final acc. (%)", "best acc. (%)", target_head,
        "final test loss", "wall time (s)", "unfinished",
    ]  # fmt: skip
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for row in rows:
        seeds = row["seeds"]
        cells = [
            _cell(str(row["group"])),
            str(seeds),
            _pct(row["final-acc-mean"], row["final-acc-std-ddof1"], seeds),
            _pct(row["best-acc-mean"], row["best-acc-std-ddof1"], seeds),
            _rounds(row),
            _num(row["final-test-loss-mean"], row["final-test-loss-std-ddof1"], seeds),
            _seconds(row["wall-s-mean"]),
            str(row["unfinished"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")

    notes = [
        "Accuracy is test accuracy in %, shown as mean ± sample standard deviation (ddof=1) "
        "over seeds (no ± with a single seed). *Final* is the last evaluated round, *best* the "
        "maximum over all rounds.",
    ]
    if target is not None:
        notes.append(
            f"*Rounds to ≥ {100 * target:.1f}%*: first evaluated round at which test accuracy "
            "reached the target, averaged over the seeds that reached it (reached/seeds)."
        )
    unfinished = sum(r["unfinished"] for r in rows)
    included = any(r.get("includes-unfinished") for r in rows)
    notes.append(
        "Wall time: mean over seeds of the run's wall-clock seconds"
        + (" (elapsed so far for unfinished runs)." if unfinished and included else ".")
    )
    if unfinished:
        notes.append(
            f"{unfinished} run(s) have not finished; they are "
            + (
                "included with their last evaluated round."
                if included
                else "left out of the statistics (seeds counts only finished runs)."
            )
        )
    failed = sum(r.get("clients-failed-total", 0) or 0 for r in rows)
    if failed:
        notes.append(f"{failed} client update(s) failed in total over all rounds and seeds.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def runs_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """``run_rows`` as a Markdown table (accuracies in percent)."""
    lines = ["| group | seed | final round | final acc. (%) | best acc. (%) (round) | finished |",
             "|:---|---:|---:|---:|---:|:---|"]
    for r in rows:
        final = "–" if _missing(r["final-acc"]) else f"{100 * r['final-acc']:.1f}"
        best = "–" if _missing(r["best-acc"]) else f"{100 * r['best-acc']:.1f} ({r['best-round']})"
        final_round = "–" if r["final-round"] is None else r["final-round"]
        lines.append(f"| {_cell(str(r['group']))} | {r['seed']} | {final_round} | "
                     f"{final} | {best} | {'yes' if r['finished'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _csv_value(value: Any) -> str:
    if _missing(value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def to_csv(rows: Sequence[dict[str, Any]], path: PathLike) -> Path:
    """Write ``summarize`` (or ``run_rows``) rows as CSV (atomically); missing values are
    empty cells.

    Columns are the union of the rows' keys in first-seen order, accuracies stay fractions.
    """
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row.get(c)) for c in columns])
    return write_text_atomic(path, buffer.getvalue())


def write_summary(
    exp_dir: PathLike,
    target_accuracy: float | None = None,
    *,
    swept_keys: Sequence[str] | None = None,
    include_unfinished: bool = False,
) -> str:
    """Summarise an experiment directory into ``EXP/summary.md`` and ``EXP/summary.csv``, with
    every run's own figures in ``summary.md``'s "Runs" section and ``EXP/runs.csv``.

    All are written atomically so a dashboard reading them never sees half a file. Returns
    the Markdown text that was written.
    """
    exp_dir = Path(exp_dir)
    rows = summarize(
        [exp_dir],
        target_accuracy,
        swept_keys=swept_keys,
        include_unfinished=include_unfinished,
    )
    head = [f"# Summary: {exp_dir.name}", ""]
    n_runs = sum(r["runs"] for r in rows)
    head.append(f"{n_runs} run(s) in {len(rows)} group(s) (strategy + swept config values).")
    target = next((r["target-acc"] for r in rows if not _missing(r["target-acc"])), None)
    if target is not None:
        if target_accuracy is None:
            best = max(
                (r for r in rows if not _missing(r["final-acc-mean"])),
                key=lambda r: r["final-acc-mean"],
            )
            head.append(
                f"Target accuracy {100 * target:.1f}% = {DEFAULT_TARGET_FRACTION:g} × the best "
                f"final mean accuracy ({100 * best['final-acc-mean']:.1f}%, {best['group']})."
            )
        else:
            head.append(f"Target accuracy {100 * target:.1f}% (given).")
    runs = run_rows([exp_dir], swept_keys=swept_keys)
    markdown = ("\n".join(head) + "\n\n" + to_markdown(rows) + "\n## Runs\n\n"
                + runs_markdown(runs))
    write_text_atomic(exp_dir / "summary.md", markdown)
    to_csv(rows, exp_dir / "summary.csv")
    to_csv(runs, exp_dir / "runs.csv")
    return markdown

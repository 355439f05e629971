"""Learning-curve figures of experiment runs (one line per group, mean ± std over seeds).

Figures are built with ``matplotlib.figure.Figure`` directly, never pyplot, so nothing depends
on a global backend or state: it works headless (CI, servers) and a returned ``Figure``
displays itself in Jupyter.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedwsa.atomic import write_bytes_atomic
from fedwsa.results.files import (
    GroupKey,
    PathLike,
    find_runs,
    format_value,
    group_runs,
    infer_swept_keys,
    is_finished,
    is_number,
    read_config,
    read_metrics,
)

ACCURACY = "test-accuracy"
LOSS = "test-loss"
BAND_NOTE = "line: mean over seeds, band: ±1 sample std"
_LINESTYLES = ("-", "--", ":", "-.")


@dataclass
class _Run:
    config: dict[str, Any]
    records: list[dict[str, Any]]
    finished: bool


@dataclass
class GroupCurve:
    """Seed-aggregated curve of one metric for one group, on the rounds all seeds evaluated."""

    key: GroupKey
    rounds: np.ndarray
    mean: np.ndarray
    std: np.ndarray  # sample std (ddof=1); zeros with a single seed
    seeds: int
    unfinished: int
    configs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """Legend text: group label plus how many seeds the mean is over."""
        text = f"{self.key.label} ({self.seeds} seed{'s' if self.seeds != 1 else ''}"
        if self.unfinished:
            text += f", {self.unfinished} unfinished"
        return text + ")"


def is_percent_metric(metric: str) -> bool:
    """Accuracies are fractions on disk but read better as percentages."""
    return metric.endswith("accuracy")


def metric_label(metric: str) -> str:
    """Axis label for a metric key: ``test-accuracy`` -> ``test accuracy (%)``."""
    if is_percent_metric(metric):
        return metric.replace("-", " ") + " (%)"
    if metric.endswith("-s"):
        return metric[:-2].replace("-", " ") + " (s)"
    return metric.replace("-", " ")


def _load(
    paths: Sequence[PathLike] | PathLike,
    swept_keys: Sequence[str] | None,
    include_unfinished: bool,
) -> tuple[dict[GroupKey, list[_Run]], list[str]]:
    runs = find_runs(paths)
    keys = list(infer_swept_keys(runs) if swept_keys is None else swept_keys)
    groups: dict[GroupKey, list[_Run]] = {}
    for key, members in group_runs(runs, keys).items():
        loaded = [_Run(read_config(r), read_metrics(r), is_finished(r)) for r in members]
        loaded = [r for r in loaded if r.finished or include_unfinished]
        if loaded:
            groups[key] = loaded
    return groups, keys


def _curves(groups: dict[GroupKey, list[_Run]], metric: str) -> list[GroupCurve]:
    scale = 100.0 if is_percent_metric(metric) else 1.0
    curves: list[GroupCurve] = []
    for key, runs in groups.items():
        per_seed = [
            {int(r["round"]): float(r[metric]) for r in run.records
             if is_number(r.get("round")) and is_number(r.get(metric))}
            for run in runs
        ]  # fmt: skip
        # Seeds may have evaluated different rounds (or stopped early): keep the common ones so
        # every point of the mean is over the same seeds.
        common = sorted(set.intersection(*(set(s) for s in per_seed)))
        if not common:
            continue
        values = scale * np.array([[s[r] for r in common] for s in per_seed], dtype=float)
        std = values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(len(common))
        curves.append(
            GroupCurve(
                key=key,
                rounds=np.array(common),
                mean=values.mean(axis=0),
                std=std,
                seeds=len(runs),
                unfinished=sum(not run.finished for run in runs),
                configs=[run.config for run in runs],
            )
        )
    if not curves:
        available = sorted(
            {k for runs in groups.values() for run in runs for r in run.records for k in r}
        )
        raise ValueError(f"no run reports metric {metric!r}; available: {available}")
    return curves


def group_curves(
    paths: Sequence[PathLike] | PathLike,
    metric: str = ACCURACY,
    *,
    swept_keys: Sequence[str] | None = None,
    include_unfinished: bool = True,
) -> list[GroupCurve]:
    """The data behind ``plot_runs``: per group, the seed mean/std of ``metric`` per round.

    Accuracy metrics are returned in percent, like they are plotted.
    """
    groups, _ = _load(paths, swept_keys, include_unfinished)
    return _curves(groups, metric)


def _partition_text(shared: Callable[[str], str | None]) -> str | None:
    """Name the partitioning in words, with the parameter that matters for it."""
    partition = shared("partition")
    alpha = shared("alpha")
    if partition is None:
        # No partition key (older configs): alpha can only be the Dirichlet concentration.
        return f"Dirichlet label skew α={alpha}" if alpha else None
    if partition == "iid":
        return "IID partition"
    if partition == "dirichlet":
        return "Dirichlet label skew" + (f" α={alpha}" if alpha else "")
    if partition == "quantity":
        return "Dirichlet size skew" + (f" α={alpha}" if alpha else "")
    if partition == "shards" and (classes := shared("classes-per-client")):
        return f"shards, {classes} classes per client"
    return f"{partition} partition"


def default_title(curves: Sequence[GroupCurve], swept_keys: Sequence[str] = ()) -> str:
    """Describe the setting shared by all curves: dataset, partition, clients, seeds.

    Swept keys are not described here (their values differ per line), only named.
    """
    configs = [c for curve in curves for c in curve.configs]

    def shared(key: str) -> str | None:
        values = list(dict.fromkeys(format_value(c[key]) for c in configs if key in c))
        return "/".join(values) if values and key not in swept_keys else None

    parts: list[str] = []
    if dataset := shared("dataset"):
        parts.append(dataset)
    if partition := _partition_text(shared):
        parts.append(partition)
    if clients := shared("num-clients"):
        parts.append(f"{clients} clients")
    if varying := [k for k in swept_keys if any(k in c for c in configs)]:
        parts.append(f"{', '.join(varying)} per legend")
    seeds = sorted({curve.seeds for curve in curves})
    seed_text = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    parts.append(f"{seed_text} seed{'s' if seeds != [1] else ''} per curve")
    return " · ".join(parts)


def _styles(curves: Sequence[GroupCurve]) -> list[tuple[str, str]]:
    """(color, linestyle) per curve.

    With a sweep, colour encodes the strategy and line style the swept values, so a reader can
    compare methods at equal settings; otherwise (or when there are too many combinations to
    tell apart) every group gets its own colour.
    """
    strategies = list(dict.fromkeys(c.key.strategy for c in curves))
    settings = list(dict.fromkeys(tuple(c.key[1:]) for c in curves))
    if 1 < len(settings) <= len(_LINESTYLES) and len(strategies) <= 10:
        return [
            (f"C{strategies.index(c.key.strategy)}", _LINESTYLES[settings.index(tuple(c.key[1:]))])
            for c in curves
        ]
    return [(f"C{i % 10}", _LINESTYLES[(i // 10) % len(_LINESTYLES)]) for i in range(len(curves))]


def _draw(ax: Axes, curves: Sequence[GroupCurve], metric: str) -> None:
    # Markers show where evaluations happened when they are sparse; decided per axis so all
    # lines look alike (a truncated line must not be the only one with dots).
    marker = "o" if max(len(c.rounds) for c in curves) <= 15 else None
    for curve, (color, linestyle) in zip(curves, _styles(curves), strict=True):
        ax.plot(
            curve.rounds, curve.mean, color=color, linestyle=linestyle, marker=marker,
            markersize=3.5, linewidth=1.8, label=curve.label,
        )  # fmt: skip
        if curve.seeds > 1:
            ax.fill_between(
                curve.rounds, curve.mean - curve.std, curve.mean + curve.std,
                color=color, alpha=0.18, linewidth=0,
            )  # fmt: skip
    ax.set_xlabel("communication round")
    ax.set_ylabel(metric_label(metric))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    first = min(int(c.rounds[0]) for c in curves)
    last = max(int(c.rounds[-1]) for c in curves)
    if last > first:
        ax.set_xlim(first, last)
    ax.grid(True, alpha=0.3)


def _legend_title(curves: Sequence[GroupCurve]) -> str:
    return BAND_NOTE if any(c.seeds > 1 for c in curves) else "line: single seed"


def plot_runs(
    paths: Sequence[PathLike] | PathLike,
    metric: str = ACCURACY,
    ax: Axes | None = None,
    title: str | None = None,
    *,
    swept_keys: Sequence[str] | None = None,
    include_unfinished: bool = True,
) -> Figure:
    """Plot ``metric`` per round, one line per group (strategy + swept values).

    The line is the mean over the group's seeds on the rounds every seed evaluated; with more
    than one seed a band shows ± one sample std (ddof=1). Accuracy is shown in percent.
    Unfinished runs are included (a curve of a live run is still informative) and flagged in
    the legend; they shorten their group's line to the rounds they reached. Draws into ``ax``
    when given, else into a new figure; returns the figure.
    """
    groups, keys = _load(paths, swept_keys, include_unfinished)
    curves = _curves(groups, metric)
    if ax is None:
        fig = Figure(figsize=(8, 5), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.get_figure(root=True)
    _draw(ax, curves, metric)
    if title is None:
        name = metric_label(metric).split(" (")[0]
        title = f"{name.capitalize()} per round\n{default_title(curves, keys)}"
    ax.set_title(title)
    ax.legend(title=_legend_title(curves), fontsize="small", title_fontsize="small")
    return fig


def plot_accuracy_and_loss(
    paths: Sequence[PathLike] | PathLike,
    title: str | None = None,
    *,
    swept_keys: Sequence[str] | None = None,
    include_unfinished: bool = True,
) -> Figure:
    """Two panels side by side: test accuracy (%) and test loss per round, shared legend.

    Same aggregation as ``plot_runs``; runs are read once for both panels.
    """
    groups, keys = _load(paths, swept_keys, include_unfinished)
    acc, loss = _curves(groups, ACCURACY), _curves(groups, LOSS)
    fig = Figure(figsize=(13, 5.2), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    _draw(ax_acc, acc, ACCURACY)
    _draw(ax_loss, loss, LOSS)
    ax_acc.set_title("Test accuracy (higher is better)")
    ax_loss.set_title("Test loss (lower is better)")
    fig.suptitle(default_title(acc, keys) if title is None else title)
    handles, labels = ax_acc.get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside lower center", ncols=min(len(labels), 4),
        title=_legend_title(acc), fontsize="small", title_fontsize="small",
    )  # fmt: skip
    return fig


def save_figure(fig: Figure, out_stem: PathLike) -> list[Path]:
    """Save ``fig`` as ``<out_stem>.png`` (150 dpi) and ``<out_stem>.svg``; returns the paths.

    The suffix is appended rather than substituted, so stems like ``alpha=0.1`` keep their
    dots; a stem given with ``.png`` or ``.svg`` loses it first (``p.png`` -> ``p.png`` and
    ``p.svg``, not ``p.png.png``). Files are written atomically; the SVG carries no date so
    reruns diff cleanly.
    """
    stem = str(out_stem)
    if stem.lower().endswith((".png", ".svg")):
        stem = stem[:-4]
    written: list[Path] = []
    for fmt, extra in (("png", {"dpi": 150}), ("svg", {"metadata": {"Date": None}})):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, **extra)
        written.append(write_bytes_atomic(Path(f"{stem}.{fmt}"), buffer.getvalue()))
    return written


__all__ = [
    "GroupCurve",
    "default_title",
    "group_curves",
    "is_percent_metric",
    "metric_label",
    "plot_accuracy_and_loss",
    "plot_runs",
    "save_figure",
]

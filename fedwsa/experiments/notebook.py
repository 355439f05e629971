"""One-call helpers for notebooks: ``fedwsa.plot``, ``summarize``, ``partition_heatmap``.

They wrap ``fedwsa.results.plots``, ``fedwsa.results.summary`` and ``fedwsa.partitions``
with the defaults of the ``fedwsa plot|summarize|partitions`` commands, and return objects
that display themselves in Jupyter (a matplotlib ``Figure``; a summary that renders as a
Markdown table). Importing this module does not import torch or Flower; only
``partition_heatmap`` loads data (and torch).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fedwsa.results.files import PathLike


class Summary(list):
    """``summarize`` rows (dicts, accuracies as fractions) that render as a Markdown table."""

    @property
    def markdown(self) -> str:
        from fedwsa.results.summary import to_markdown

        return to_markdown(self)

    def _repr_markdown_(self) -> str:
        return self.markdown

    def to_csv(self, path: PathLike) -> Path:
        """Write the rows as CSV (same columns as ``fedwsa summarize``)."""
        from fedwsa.results.summary import to_csv

        return to_csv(self, path)


def _flatten(paths: Iterable[PathLike | Iterable[PathLike]]) -> list[PathLike]:
    flat: list[PathLike] = []
    for item in paths:
        if isinstance(item, str | Path):
            flat.append(item)
        else:
            flat.extend(item)
    if not flat:
        raise ValueError("give at least one run or experiment directory")
    return flat


def plot(
    *paths: PathLike | Iterable[PathLike],
    metric: str | None = None,
    title: str | None = None,
    out: PathLike | None = None,
    include_unfinished: bool = True,
) -> Figure:
    """Learning curves of run or experiment directories, one line per strategy (+ swept
    values) with a ±1 std band over seeds.

    ``metric=None`` draws test accuracy and test loss side by side, else one panel of that
    ``metrics.jsonl`` key. ``out`` (a path without suffix) also saves ``.png`` and ``.svg``.
    Example: ``fedwsa.plot("runs/exp1")``.
    """
    from fedwsa.results.plots import plot_accuracy_and_loss, plot_runs, save_figure

    dirs = _flatten(paths)
    if metric is None:
        fig = plot_accuracy_and_loss(dirs, title=title, include_unfinished=include_unfinished)
    else:
        fig = plot_runs(dirs, metric, title=title, include_unfinished=include_unfinished)
    if out is not None:
        save_figure(fig, out)
    return fig


def summarize(
    *paths: PathLike | Iterable[PathLike],
    target: float | None = None,
    include_unfinished: bool = False,
) -> Summary:
    """Per strategy (+ swept values): final/best accuracy mean ± std over seeds, rounds to
    ``target`` accuracy (a fraction; default 0.9 x the best final mean), wall time.

    Example: ``fedwsa.summarize("runs/exp1")`` shows a table; ``[0]["final-acc-mean"]`` reads
    a number.
    """
    from fedwsa.results.summary import summarize as summary_rows

    return Summary(summary_rows(_flatten(paths), target, include_unfinished=include_unfinished))


def partition_heatmap(
    config: Mapping[str, Any] | str | None = None,
    out: PathLike | None = None,
    **overrides: Any,
) -> Figure:
    """Clients x classes heat map of the partition a run config would use.

    ``config`` is a dict of config keys or the ``"k=v ..."`` text of ``fedwsa run -c``;
    keyword arguments add keys in Python spelling (``num_clients=20``). ``out`` also saves a
    PNG. Example: ``fedwsa.partition_heatmap(dataset="synthetic", num_clients=10, alpha=0.1)``.
    """
    from fedwsa.clients.node import client_partitions
    from fedwsa.config import make_config, parse_overrides
    from fedwsa.data import load_dataset
    from fedwsa.partitions import class_counts, plot_heatmap

    values = parse_overrides(config) if isinstance(config, str) else dict(config or {})
    values.update({k.replace("_", "-"): v for k, v in overrides.items()})
    cfg = make_config(values)
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.seed)
    labels = data.y_train.numpy()
    parts = client_partitions(cfg, labels)
    skew = f", alpha={cfg.alpha}" if cfg.partition in ("dirichlet", "quantity") else ""
    title = f"{cfg.dataset}: {cfg.partition} partition over {cfg.num_clients} clients{skew}"
    return plot_heatmap(class_counts(parts, labels, data.num_classes), out, title)


__all__ = ["Summary", "partition_heatmap", "plot", "summarize"]

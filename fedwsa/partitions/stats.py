"""How skewed a partition is: per-client class counts, a numeric summary, and a heat map.

Researchers compare strategies *on a partition*, so they need to see it: sizes, how many
classes a client holds, and how far each client's label mix is from the global one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["class_counts", "format_summary", "partition_summary", "plot_heatmap"]

_ANNOTATE_MAX_CELLS = 400  # Write the counts into the cells up to e.g. 20 clients x 20 classes.


def class_counts(parts: Sequence[np.ndarray], labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Examples per client and class, int64 ``[num_clients, num_classes]``."""
    y = np.asarray(labels)
    sizes = np.array([len(part) for part in parts], dtype=np.int64)
    if len(parts) == 0:
        return np.zeros((0, num_classes), dtype=np.int64)
    flat = np.concatenate([np.asarray(part, dtype=np.int64) for part in parts])
    client_labels = y[flat].astype(np.int64)
    if client_labels.size and (client_labels.min() < 0 or client_labels.max() >= num_classes):
        raise ValueError(
            f"labels {int(client_labels.min())}..{int(client_labels.max())} do not fit "
            f"num_classes={num_classes}"
        )
    clients = np.repeat(np.arange(len(parts)), sizes)
    counts = np.bincount(clients * num_classes + client_labels, minlength=len(parts) * num_classes)
    return counts.reshape(len(parts), num_classes)


def partition_summary(
    parts: Sequence[np.ndarray], labels: np.ndarray, num_classes: int
) -> dict[str, float | int | str]:
    """Sizes, classes per client and label skew of a partition, as plain numbers.

    Label skew is the total-variation distance between a client's label distribution and
    the distribution over all of ``labels`` (0 = identical, 1 = disjoint), averaged over the
    non-empty clients; TV is bounded and reads directly as "share of the client's examples
    that would have to change label".
    """
    counts = class_counts(parts, labels, num_classes)
    sizes = counts.sum(axis=1)
    y = np.asarray(labels).astype(np.int64)
    global_dist = np.bincount(y, minlength=num_classes)[:num_classes] / max(len(y), 1)
    nonempty = sizes > 0
    if nonempty.any():
        client_dist = counts[nonempty] / sizes[nonempty, None]
        tv = 0.5 * np.abs(client_dist - global_dist).sum(axis=1)
        tv_mean, tv_max = float(tv.mean()), float(tv.max())
    else:
        tv_mean = tv_max = float("nan")
    has_sizes = len(sizes) > 0
    return {
        "num_clients": len(parts),
        "num_examples": int(sizes.sum()),
        "num_unassigned": int(len(y) - sizes.sum()),
        "empty_clients": int((~nonempty).sum()),
        "size_min": int(sizes.min()) if has_sizes else 0,
        "size_mean": float(sizes.mean()) if has_sizes else 0.0,
        "size_median": float(np.median(sizes)) if has_sizes else 0.0,
        "size_max": int(sizes.max()) if has_sizes else 0,
        "size_std": float(sizes.std()) if has_sizes else 0.0,
        "classes_per_client_mean": float((counts > 0).sum(axis=1).mean()) if has_sizes else 0.0,
        "label_distance": "total variation",
        "label_distance_mean": tv_mean,
        "label_distance_max": tv_max,
    }


def format_summary(summary: dict[str, float | int | str]) -> str:
    """A short human-readable report of ``partition_summary``'s result."""
    total = int(summary["num_examples"]) + int(summary["num_unassigned"])
    lines = [
        f"clients:            {summary['num_clients']} "
        f"({summary['empty_clients']} empty), {summary['num_examples']} of {total} "
        f"examples assigned",
        f"client size:        min {summary['size_min']}, median {summary['size_median']:.1f}, "
        f"mean {summary['size_mean']:.1f}, max {summary['size_max']}, "
        f"std {summary['size_std']:.1f}",
        f"classes per client: {summary['classes_per_client_mean']:.2f} on average",
        f"label skew:         {summary['label_distance']} distance to the global label "
        f"distribution, mean {summary['label_distance_mean']:.3f}, "
        f"max {summary['label_distance_max']:.3f} (0 = same mix, 1 = disjoint)",
    ]
    return "\n".join(lines)


def plot_heatmap(counts: np.ndarray, path: str | Path | None, title: str) -> Figure:
    """Save a clients x classes heat map of ``counts`` as PNG and return the figure.

    ``path=None`` only returns the figure (notebooks display it; nothing is written).

    Uses ``matplotlib.figure.Figure`` directly (no pyplot, no global backend switch), so it is
    safe inside a library and headless. The file is written atomically.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts must be 2-D (clients x classes), got shape {counts.shape}")
    num_clients, num_classes = counts.shape
    width = min(4.0 + 0.3 * num_classes, 16.0)
    height = min(2.5 + 0.16 * num_clients, 18.0)
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(counts, aspect="auto", interpolation="nearest", cmap="viridis")
    fig.colorbar(image, ax=ax, label="examples")
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.set_title(title)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=min(num_classes, 20), integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=min(num_clients, 25), integer=True))
    if 0 < counts.size <= _ANNOTATE_MAX_CELLS:
        threshold = counts.max() / 2
        for (client, label), value in np.ndenumerate(counts):
            colour = "black" if value > threshold else "white"
            ax.text(label, client, str(value), ha="center", va="center", fontsize=7, color=colour)
    if path is None:
        return fig
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return fig

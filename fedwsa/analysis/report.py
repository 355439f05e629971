"""``fedwsa analyze``: run the chosen analyses on run directories and write, per analysis, a PNG
and an SVG (matplotlib) and the numbers as JSON and CSV under ``RUN_DIR/analysis/``."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from fedwsa.analysis.barrier import LinearPath, linear_path
from fedwsa.analysis.merging import (
    MAGNITUDES,
    MagnitudeCurve,
    magnitude_curve,
    mean_weights,
    merge_accuracies,
)
from fedwsa.analysis.patterns import classifier, filter_images, first_layer, template_similarity
from fedwsa.analysis.scopes import LayerScopes, client_scopes
from fedwsa.analysis.sources import RunModels, Weights, open_run, same_shapes
from fedwsa.atomic import write_text_atomic
from fedwsa.results.client_models import ClientModels
from fedwsa.results.files import write_json_atomic
from fedwsa.results.plots import save_figure

ANALYSES = ("scopes", "barrier", "feature-averaging", "magnitude", "patterns")
"""The analyses ``--what`` accepts."""

BETWEEN = ("clients", "client-global", "runs")
"""What ``barrier`` interpolates between: two clients of a run, a client and the run's final
global model, or the final global models of two runs."""

MAX_PLOTTED_CLIENTS = 10
"""Clients drawn per histogram panel (the JSON and CSV hold every client)."""


def analyze(run_dirs: Sequence[str | Path], what: Sequence[str], *, server_round: int | None,
            between: str = "clients", client_ids: Sequence[int] = (), points: int = 11,
            device: str = "auto") -> list[Path]:
    """Run ``what`` on ``run_dirs`` (one, or two to compare); returns the files written, all
    under the first run's ``analysis/`` folder. Bad input fails before any file is written."""
    unknown = [w for w in what if w not in ANALYSES]
    if unknown or not what:
        raise ValueError(f"--what={','.join(what)!s}: unknown analysis "
                         f"{', '.join(unknown) or '(none given)'}; known: {', '.join(ANALYSES)}")
    if between not in BETWEEN:
        raise ValueError(f"--between={between}: accepted {', '.join(BETWEEN)}")
    if not 1 <= len(run_dirs) <= 2:
        raise ValueError(f"{len(run_dirs)} run directories: give one, or two to compare")
    runs = [open_run(r, device) for r in run_dirs]
    out = runs[0].path / "analysis"
    jobs = []
    if "scopes" in what:
        kept = [(run, run.clients(server_round)) for run in runs]
        history = [(run, [(r, client_scopes(run.clients(r))) for r in run.kept_rounds()])
                   for run in runs]
        jobs.append(lambda: _write_scopes(kept, out) + _write_scope_history(history, out))
    if "barrier" in what:
        label, a, b = _ends(runs, server_round, between, client_ids)
        jobs.append(lambda: _write_barrier(runs[0], label, a, b, points, out))
    if any(w in what for w in ("feature-averaging", "magnitude", "patterns")):
        run, kept = runs[0], runs[0].clients(server_round)
        models = [kept.model(c) for c in kept.client_ids]
        if "feature-averaging" in what:
            if len(models) < 2:
                raise ValueError(f"feature-averaging needs at least 2 kept clients; round "
                                 f"{kept.round} of {run.path} kept {len(models)}")
            sizes = merge_sizes(len(models))
            jobs.append(lambda: _write_merging(run, kept, models, sizes, out))
        if "magnitude" in what:
            jobs.append(lambda: _write_magnitude(run, kept, models, out))
        if "patterns" in what:
            first_layer(models[0])  # a model without convolutions fails here, before writing
            jobs.append(lambda: _write_patterns(run, kept, models, out))
    written: list[Path] = []
    for job in jobs:  # every input was read above: nothing is written for bad input
        written += job()
    return written


def _ends(runs: list[RunModels], server_round: int | None, between: str,
          client_ids: Sequence[int]) -> tuple[str, Weights, Weights]:
    """The two models ``barrier`` interpolates between, and a label for the files."""
    run = runs[0]
    if between == "runs":
        if len(runs) != 2:
            raise ValueError("--between=runs needs two run directories")
        a, b = runs[0].global_model(), runs[1].global_model()
        same_shapes(a, b, f"{runs[0].path}'s global model", f"{runs[1].path}'s global model")
        return f"runs-{runs[0].name}-{runs[1].name}", a, b
    kept = run.clients(server_round)
    wanted = list(client_ids) or kept.client_ids[:2 if between == "clients" else 1]
    missing = [c for c in wanted if c not in kept.client_ids]
    if missing:
        raise ValueError(f"--clients: client {missing[0]} was not kept in round {kept.round} "
                         f"of {run.path} (kept: {', '.join(map(str, kept.client_ids))})")
    if between == "clients":
        if len(wanted) != 2:
            raise ValueError(f"--between=clients needs two clients (round {kept.round} kept "
                             f"{len(kept.client_ids)}; give them with --clients A,B)")
        return (f"clients-{wanted[0]}-{wanted[1]}-round-{kept.round}",
                kept.model(wanted[0]), kept.model(wanted[1]))
    if kept.round != run.config.num_server_rounds:
        raise ValueError(f"--between=client-global compares with the final global model: use "
                         f"the last round ({run.config.num_server_rounds}), not {kept.round}")
    g = run.global_model()
    same_shapes(kept.model(wanted[0]), g, f"client {wanted[0]}", "the global model")
    return f"client-{wanted[0]}-global", kept.model(wanted[0]), g


def _write_barrier(run: RunModels, label: str, a: Weights, b: Weights, points: int,
                   out: Path) -> list[Path]:
    path = linear_path(run.model, a, b, run.test_set(), points)
    stem = out / f"barrier-{label}"
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(path.t, path.loss, "o-", color="tab:red", label="test loss")
    ax.set_xlabel("t  ((1 - t) A + t B)")
    ax.set_ylabel("test loss", color="tab:red")
    ax2 = ax.twinx()
    ax2.plot(path.t, [100 * a for a in path.accuracy], "s--", color="tab:blue",
             label="test accuracy")
    ax2.set_ylabel("test accuracy (%)", color="tab:blue")
    ax.set_title(f"{run.name}: {label}\nloss barrier {path.loss_barrier:.4f}, accuracy "
                 f"barrier {100 * path.accuracy_barrier:.2f} pts", fontsize=9)
    fig.tight_layout()
    files = save_figure(fig, stem)
    files.append(write_json_atomic(Path(f"{stem}.json"), _path_json(label, path)))
    files.append(_write_csv(Path(f"{stem}.csv"), ["t", "test-loss", "test-accuracy"],
                            zip(path.t, path.loss, path.accuracy, strict=True)))
    return files


def _path_json(label: str, path: LinearPath) -> dict[str, object]:
    return {"between": label, "t": path.t, "test-loss": path.loss,
            "test-accuracy": path.accuracy, "loss-barrier": path.loss_barrier,
            "accuracy-barrier": path.accuracy_barrier}


def _write_scopes(kept: list[tuple[RunModels, ClientModels]], out: Path) -> list[Path]:
    """Per layer (rows) and run (columns): each client's weight histogram with its Gaussian."""
    scopes = [(run, client_scopes(clients)) for run, clients in kept]
    layers = max((len(per_layer) for _, per_layer in scopes), default=0)
    fig = Figure(figsize=(5 * len(scopes), 2.4 * max(layers, 1)))
    axes = fig.subplots(max(layers, 1), len(scopes), squeeze=False)
    for col, ((run, per_layer), (_, clients)) in enumerate(zip(scopes, kept, strict=True)):
        for row, layer in enumerate(per_layer):
            ax = axes[row][col]
            for k, cid in enumerate(layer.client_ids[:MAX_PLOTTED_CLIENTS]):
                w = clients.model(cid)[layer.layer].detach().double().cpu().reshape(-1).numpy()
                color = matplotlib.colormaps["tab10"](k % 10)
                ax.hist(w, bins=60, density=True, histtype="step", color=color, alpha=0.7)
                mu, sigma = layer.mu[k], layer.sigma[k]
                xs = np.linspace(mu - 4 * sigma, mu + 4 * sigma, 200)
                ax.plot(xs, np.exp(-0.5 * ((xs - mu) / sigma) ** 2) / (sigma * math.sqrt(
                    2 * math.pi)), color=color, lw=1)
            ax.set_title(f"{run.name}, round {clients.round}: {layer.layer} (sigma spread "
                         f"{layer.sigma_spread:.2e})", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    stem = out / "scopes"
    files = save_figure(fig, stem)
    table = [{"run": run.name, "layer": s.layer, "client": c, "mu": m, "sigma": sg}
             for run, per_layer in scopes for s in per_layer
             for c, m, sg in zip(s.client_ids, s.mu, s.sigma, strict=True)]
    spread = [{"run": run.name, "layer": s.layer, "mu-spread": s.mu_spread,
               "sigma-spread": s.sigma_spread} for run, per_layer in scopes for s in per_layer]
    files.append(write_json_atomic(Path(f"{stem}.json"), {"clients": table, "spread": spread}))
    files.append(_write_csv(Path(f"{stem}.csv"), ["run", "layer", "client", "mu", "sigma"],
                            ([r["run"], r["layer"], r["client"], r["mu"], r["sigma"]]
                             for r in table)))
    return files


def _write_scope_history(history: list[tuple[RunModels, list[tuple[int, list[LayerScopes]]]]],
                         out: Path) -> list[Path]:
    """Across the kept rounds: per layer, the clients' sigma (mean, band of +-1 std) per run."""
    if all(len(rounds) < 2 for _, rounds in history):
        return []  # one kept round: nothing to draw across rounds
    layers = [s.layer for s in history[0][1][0][1]]
    fig = Figure(figsize=(3.2 * len(layers), 3))
    axes = fig.subplots(1, len(layers), squeeze=False)
    rows = []
    for run, rounds in history:
        for i, layer in enumerate(layers):
            xs = [r for r, _ in rounds]
            means = [float(np.mean(per[i].sigma)) for _, per in rounds]
            stds = [float(np.std(per[i].sigma)) for _, per in rounds]
            ax = axes[0][i]
            ax.plot(xs, means, "o-", label=run.name)
            ax.fill_between(xs, np.subtract(means, stds), np.add(means, stds), alpha=0.2)
            ax.set_title(layer, fontsize=8)
            ax.set_xlabel("round", fontsize=8)
            ax.tick_params(labelsize=7)
            rows += [[run.name, layer, r, m, s] for r, m, s in zip(xs, means, stds, strict=True)]
    axes[0][0].set_ylabel("clients' sigma (mean +- std)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    stem = out / "scopes-rounds"
    files = save_figure(fig, stem)
    header = ["run", "layer", "round", "sigma-mean", "sigma-std"]
    files.append(write_json_atomic(Path(f"{stem}.json"), [dict(zip(header, r, strict=True))
                                                          for r in rows]))
    files.append(_write_csv(Path(f"{stem}.csv"), header, rows))
    return files


def merge_sizes(available: int) -> list[int]:
    """N = 2, 3, 5, 10, 20, 50, ... up to the clients there are (and all of them)."""
    sizes = [n for n in (2, 3, 5, 10, 20, 50, 100, 200, 500) if n <= available]
    return sizes if sizes[-1] == available else [*sizes, available]


def _write_merging(run: RunModels, kept: ClientModels, models: list[Weights],
                   sizes: list[int], out: Path) -> list[Path]:
    rows = merge_accuracies(run.model, models, run.test_set(), sizes)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for attr, label, style in (("weight_average", "weight average", "o-"),
                               ("logit_ensemble", "logit ensemble", "s--"),
                               ("feature_average", "feature average (shared head)", "^:")):
        ax.plot([r.n for r in rows], [100 * getattr(r, attr) for r in rows], style, label=label)
    ax.set_xscale("log")
    ax.set_xticks([r.n for r in rows], [str(r.n) for r in rows])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"N clients merged (round {kept.round}, first N by id)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{run.name}: weight vs feature averaging", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    stem = out / "feature-averaging"
    files = save_figure(fig, stem)
    header = ["n", "weight-average", "logit-ensemble", "feature-average"]
    table = [[r.n, r.weight_average, r.logit_ensemble, r.feature_average] for r in rows]
    files.append(write_json_atomic(Path(f"{stem}.json"), {
        "round": kept.round, "clients": kept.client_ids,
        "rows": [dict(zip(header, r, strict=True)) for r in table]}))
    files.append(_write_csv(Path(f"{stem}.csv"), header, table))
    return files


def _write_magnitude(run: RunModels, kept: ClientModels, models: list[Weights],
                     out: Path) -> list[Path]:
    data = run.test_set()
    shown = kept.client_ids[:MAX_PLOTTED_CLIENTS // 2]
    curves: list[MagnitudeCurve] = [
        magnitude_curve(run.model, kept.model(c), data, f"client {c}") for c in shown]
    curves.append(magnitude_curve(run.model, mean_weights(models), data,
                                  f"weight average of {len(models)}"))
    fig = Figure(figsize=(10, 4))
    acc_ax, changed_ax = fig.subplots(1, 2)
    for curve in curves:
        style = "k-o" if curve.label.startswith("weight") else "--"
        acc_ax.plot(curve.factors, [100 * a for a in curve.accuracy], style, label=curve.label)
        changed_ax.plot(curve.factors, [100 * c for c in curve.changed], style)
    for ax, label in ((acc_ax, "test accuracy (%)"), (changed_ax, "predictions changed (%)")):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("every weight scaled by")
        ax.set_ylabel(label)
    acc_ax.legend(fontsize=7)
    fig.suptitle(f"{run.name}, round {kept.round}: magnitude sensitivity", fontsize=9)
    fig.tight_layout()
    stem = out / "magnitude"
    files = save_figure(fig, stem)
    header = ["model", "factor", "test-accuracy", "changed"]
    table = [[c.label, f, a, ch] for c in curves
             for f, a, ch in zip(c.factors, c.accuracy, c.changed, strict=True)]
    files.append(write_json_atomic(Path(f"{stem}.json"), {
        "round": kept.round, "factors": list(MAGNITUDES),
        "rows": [dict(zip(header, r, strict=True)) for r in table]}))
    files.append(_write_csv(Path(f"{stem}.csv"), header, table))
    return files


def _write_patterns(run: RunModels, kept: ClientModels, models: list[Weights],
                    out: Path) -> list[Path]:
    shown = [("global", run.global_model())] + [
        (f"client {c}", kept.model(c)) for c in kept.client_ids[:4]]
    conv_name, _ = first_layer(shown[0][1])
    head_name, _ = classifier(run.model, shown[0][1])
    filters = [filter_images(first_layer(w)[1]) for _, w in shown]
    heads = [classifier(run.model, w)[1].detach().cpu() for _, w in shown]
    count = min(len(filters[0]), 32)
    per_row = min(count, 16)
    fig = Figure(figsize=(12, 2.2 * len(shown)))
    grid = fig.add_gridspec(len(shown), 2, width_ratios=[2, 1])
    for row, ((label, _), images, head) in enumerate(zip(shown, filters, heads, strict=True)):
        sub = grid[row, 0].subgridspec(math.ceil(count / per_row), per_row)
        for k in range(count):
            ax = fig.add_subplot(sub[k // per_row, k % per_row])
            if k == 0:
                ax.set_title(label, fontsize=8, loc="left")
            image = images[k]
            ax.imshow(image.numpy() if image.shape[-1] == 3 else image.mean(-1).numpy(),
                      cmap=None if image.shape[-1] == 3 else "gray")
            ax.set_axis_off()
        ax = fig.add_subplot(grid[row, 1])
        limit = float(head.abs().max())
        ax.imshow(head.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_ylabel("class", fontsize=7)
        ax.set_title(f"{label}: {head_name}", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{run.name}: {conv_name} filters (left, first {count}) and class "
                 f"templates (right), round {kept.round} clients", fontsize=9)
    stem = out / "patterns"
    files = save_figure(fig, stem)
    classes = [str(k) for k in range(heads[0].shape[0])]
    similarity = template_similarity(heads[1:], heads[0], classes)
    header = ["model", "class", "cosine-to-global", "template-norm"]
    table = [[label, k, cos, float(head[int(k)].norm())]
             for (label, _), head, row in zip(shown[1:], heads[1:], similarity.cosine,
                                               strict=True)
             for k, cos in zip(classes, row, strict=True)]
    files.append(write_json_atomic(Path(f"{stem}.json"), {
        "round": kept.round, "first-layer": conv_name, "classifier": head_name,
        "rows": [dict(zip(header, r, strict=True)) for r in table]}))
    files.append(_write_csv(Path(f"{stem}.csv"), header, table))
    return files


def _write_csv(path: Path, header: list[str], rows: object) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)  # type: ignore[arg-type]
    return write_text_atomic(path, buffer.getvalue())


__all__ = ["ANALYSES", "BETWEEN", "analyze"]

"""``fedwsa analyze``: each number against a case computed another way, the files it writes, and
its errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fedwsa.analysis.barrier import linear_path
from fedwsa.analysis.merging import magnitude_curve, mean_weights, merge_accuracies
from fedwsa.analysis.scopes import fit_gaussian
from fedwsa.analysis.sources import EvalData
from fedwsa.cli import main
from fedwsa.config import make_config
from fedwsa.data import normalize
from fedwsa.models import build_model
from fedwsa.results.client_models import load_client_models
from fedwsa.server.inprocess import run_in_process

SMALL = {"num-clients": 4, "num-server-rounds": 2, "batch-size": 64}


def _run(path: Path, **keys: object) -> Path:
    return run_in_process(make_config({**SMALL, "run-dir": str(path), **keys}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("analyze")
    return {
        "fedavg": _run(root / "fedavg", **{"save-client-models": "every-1"}),
        "fedwsa": _run(root / "fedwsa", strategy="fedwsa", **{"save-client-models": "last"}),
        "bare": _run(root / "bare"),
        "cnn": _run(root / "cnn", model="cnn", **{"save-client-models": "last"}),
    }


def _test_set(n: int = 600) -> EvalData:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (n,), generator=gen)
    return EvalData(images, labels, torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.3, 0.25]))


def _weights(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {n: scale * v.detach().clone()
            for n, v in build_model("simple-cnn", 10, seed=seed).named_parameters()}


def test_gaussian_fit_is_the_normal_maximum_likelihood() -> None:
    w = torch.randn(50, 40, generator=torch.Generator().manual_seed(1)) * 0.07 + 0.01
    mu, sigma = fit_gaussian(w)
    x = w.double().numpy().reshape(-1)
    assert mu == pytest.approx(np.mean(x), rel=1e-12)
    assert sigma == pytest.approx(np.std(x, ddof=0), rel=1e-12)

    def log_likelihood(m: float, s: float) -> float:
        normal = torch.distributions.Normal(torch.tensor(m, dtype=torch.float64),
                                            torch.tensor(s, dtype=torch.float64))
        return float(normal.log_prob(w.double()).sum())

    best = log_likelihood(mu, sigma)
    for m, s in [(mu + 1e-3, sigma), (mu - 1e-3, sigma), (mu, sigma * 1.01),
                 (mu, sigma * 0.99)]:
        assert log_likelihood(m, s) < best


def test_the_barrier_between_a_model_and_itself_is_zero() -> None:
    model, a = build_model("simple-cnn", 10), _weights(0)
    path = linear_path(model, a, a, _test_set())
    assert len(set(path.loss)) == 1
    assert path.loss_barrier == 0.0 and path.accuracy_barrier == 0.0


def test_the_path_matches_a_loop_over_lerp_models() -> None:
    model, a, b = build_model("simple-cnn", 10), _weights(0, 3.0), _weights(1, 3.0)
    test = _test_set()
    path = linear_path(model, a, b, test, points=7)
    reference = build_model("simple-cnn", 10)
    losses, accuracies = [], []
    for t in np.linspace(0.0, 1.0, 7):
        reference.load_state_dict({n: torch.lerp(a[n], b[n], float(t)) for n in a})
        with torch.no_grad():
            logits = reference(normalize(test.images, test.mean, test.std))
        losses.append(F.cross_entropy(logits, test.labels).item())
        accuracies.append((logits.argmax(1) == test.labels).double().mean().item())
    assert path.t == pytest.approx(np.linspace(0.0, 1.0, 7).tolist())
    assert path.loss == pytest.approx(losses, rel=1e-5)
    assert path.accuracy == pytest.approx(accuracies, abs=1e-9)
    assert path.loss_barrier == pytest.approx(max(losses) - (losses[0] + losses[-1]) / 2,
                                              rel=1e-5, abs=1e-6)
    assert path.accuracy_barrier == pytest.approx(
        (accuracies[0] + accuracies[-1]) / 2 - min(accuracies), abs=1e-9)


def test_merging_n_copies_of_one_model_is_that_model() -> None:
    """Weight average, logit ensemble and feature average of N copies all equal the model."""
    model, w, data = build_model("simple-cnn", 10), _weights(2, 4.0), _test_set()
    rows = merge_accuracies(model, [w] * 5, data, [2, 5])
    single = linear_path(model, w, w, data, points=2).accuracy[0]
    assert single > 0.05
    for row in rows:
        assert (row.weight_average, row.logit_ensemble, row.feature_average) == (
            pytest.approx(single, abs=1e-12),) * 3


def test_merging_against_a_hand_written_ensemble() -> None:
    """Two different models: the logit ensemble and the shared-head feature average computed
    with nn.Module forwards and hooks written out here."""
    model, a, b, data = build_model("simple-cnn", 10), _weights(0, 3.0), _weights(1, 3.0), \
        _test_set()
    row = merge_accuracies(model, [a, b], data, [2])[0]
    x = normalize(data.images, data.mean, data.std)
    net = build_model("simple-cnn", 10)
    logits, features = [], []
    for w in (a, b):
        net.load_state_dict(w)
        with torch.no_grad():
            h = F.relu(net.fc2(F.relu(net.fc1(torch.flatten(F.max_pool2d(F.relu(net.conv2(
                F.max_pool2d(F.relu(net.conv1(x)), 2))), 2), 1)))))
            features.append(h)
            logits.append(net.fc3(h))
    net.load_state_dict(mean_weights([a, b]))
    with torch.no_grad():
        averaged = net(x)
        via_head = net.fc3((features[0] + features[1]) / 2)

    def accuracy(z: torch.Tensor) -> float:
        return (z.argmax(1) == data.labels).double().mean().item()

    assert row.weight_average == pytest.approx(accuracy(averaged), abs=1e-12)
    assert row.logit_ensemble == pytest.approx(accuracy((logits[0] + logits[1]) / 2), abs=1e-12)
    assert row.feature_average == pytest.approx(accuracy(via_head), abs=1e-12)


def test_stacked_models_as_on_a_gpu_give_the_same_numbers(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """The vmap path the GPU takes (forced here on the CPU) against one model at a time."""
    import fedwsa.analysis.merging as merging

    model, data = build_model("simple-cnn", 10), _test_set()
    models = [_weights(s, 3.0) for s in range(4)]
    alone = (merge_accuracies(model, models, data, [2, 4]),
             magnitude_curve(model, models[0], data, "a"))
    monkeypatch.setattr(merging, "models_per_pass", lambda device: 16)
    stacked = (merge_accuracies(model, models, data, [2, 4]),
               magnitude_curve(model, models[0], data, "a"))
    for got, want in zip(stacked[0], alone[0], strict=True):
        assert (got.weight_average, got.logit_ensemble, got.feature_average) == pytest.approx(
            (want.weight_average, want.logit_ensemble, want.feature_average), abs=2e-3)
    assert stacked[1].accuracy == pytest.approx(alone[1].accuracy, abs=2e-3)


def test_scaling_a_bias_free_relu_network_changes_no_prediction() -> None:
    """Scaling every weight by c > 0 scales the logits of a bias-free ReLU network without
    normalisation by c^depth: the same predictions at every factor."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 64, bias=False),
                              torch.nn.ReLU(), torch.nn.Linear(64, 32, bias=False),
                              torch.nn.ReLU(), torch.nn.Linear(32, 10, bias=False))
    weights = {n: v.detach() for n, v in net.named_parameters()}
    curve = magnitude_curve(net, weights, _test_set(), "bias-free")
    assert curve.changed == [0.0] * len(curve.factors)
    assert len(set(curve.accuracy)) == 1
    biased = build_model("simple-cnn", 10)  # with biases the scale does change predictions
    moved = magnitude_curve(biased, _weights(0, 3.0), _test_set(), "biased")
    assert max(moved.changed) > 0


def test_analyze_writes_every_file_with_the_numbers(runs: dict[str, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run = runs["fedavg"]
    assert main(["analyze", str(run), "--what", "scopes,barrier", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.split()
    out = run / "analysis"
    expected = [f"{stem}.{ext}" for stem in ("scopes", "scopes-rounds",
                                              "barrier-clients-0-1-round-2")
                for ext in ("png", "svg", "json", "csv")]
    assert sorted(Path(p).name for p in printed) == sorted(expected)
    for name in expected:
        assert (out / name).stat().st_size > 0, name
    kept = load_client_models(run, 2)
    rows = json.loads((out / "scopes.json").read_text())["clients"]
    row = next(r for r in rows if r["layer"] == "fc1.weight" and r["client"] == kept.client_ids[1])
    w = kept.model(kept.client_ids[1])["fc1.weight"].double().numpy()
    assert (row["mu"], row["sigma"]) == pytest.approx((np.mean(w), np.std(w)), rel=1e-9)
    assert main(["analyze", str(run), "--what", "feature-averaging,magnitude,patterns",
                 "--device", "cpu"]) == 0
    for stem in ("feature-averaging", "magnitude", "patterns"):
        for ext in ("png", "svg", "json", "csv"):
            assert (out / f"{stem}.{ext}").stat().st_size > 0, (stem, ext)
    merging = json.loads((out / "feature-averaging.json").read_text())
    assert [r["n"] for r in merging["rows"]] == [2, 3, 4]  # 4 clients kept
    magnitude = json.loads((out / "magnitude.json").read_text())
    unscaled = [r for r in magnitude["rows"] if r["factor"] == 1.0]
    assert all(r["changed"] == 0.0 for r in unscaled)
    assert len(unscaled) == len(kept.client_ids) + 1  # each client (up to 5) + their average
    history = json.loads((out / "scopes-rounds.json").read_text())
    assert sorted({r["round"] for r in history}) == [1, 2]
    barrier = json.loads((out / "barrier-clients-0-1-round-2.json").read_text())
    assert len(barrier["t"]) == 11 and barrier["loss-barrier"] >= 0


def test_two_runs_side_by_side_and_between_their_global_models(
        runs: dict[str, Path]) -> None:
    argv = ["analyze", str(runs["fedavg"]), str(runs["fedwsa"]), "--what", "scopes,barrier",
            "--between", "runs", "--device", "cpu"]
    assert main(argv) == 0
    out = runs["fedavg"] / "analysis"
    barrier = json.loads((out / "barrier-runs-fedavg-fedwsa.json").read_text())
    assert barrier["test-accuracy"][0] == pytest.approx(
        json.loads((runs["fedavg"] / "metrics.jsonl").read_text().splitlines()[-1])[
            "test-accuracy"])
    spread = json.loads((out / "scopes.json").read_text())["spread"]
    assert {r["run"] for r in spread} == {"fedavg", "fedwsa"}


@pytest.mark.parametrize(("argv", "message"), [
    (["bare", "--what", "scopes"], "holds no client models: run it with save-client-models="),
    (["fedavg", "--what", "scopes,histograms"],
     "unknown analysis histograms; known: scopes, barrier"),
    (["fedavg", "cnn", "--what", "barrier", "--between", "runs"], "different architectures"),
    (["fedavg", "--what", "barrier", "--clients", "0,9"], "client 9 was not kept in round 2"),
    (["fedavg", "--what", "scopes", "--round", "7"], "keeps the client models of rounds 1, 2"),
])
def test_bad_input_is_one_clear_line_and_status_2(
        runs: dict[str, Path], argv: list[str], message: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(runs[a]) if a in runs else a for a in argv]
    before = sorted((runs[argv[0]] / "analysis").glob("*")) if (
        runs[argv[0]] / "analysis").exists() else []
    assert main(["analyze", *args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    after = sorted((runs[argv[0]] / "analysis").glob("*")) if (
        runs[argv[0]] / "analysis").exists() else []
    assert after == before  # nothing written


def test_a_corrupted_client_file_is_named(runs: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(runs["fedwsa"], run)
    path = run / "client-models" / "round-0002.npz"
    path.write_bytes(b"not a zip file")
    assert main(["analyze", str(run), "--what", "scopes", "--device", "cpu"]) == 2
    assert "round-0002.npz: not a readable client-models file" in capsys.readouterr().err

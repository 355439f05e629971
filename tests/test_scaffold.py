"""SCAFFOLD (METHODS.md section 4, NIID-Bench's variant) and its on-disk client-state store.

The reference is NIID-Bench's ``train_net_scaffold`` / ``local_train_net_scaffold`` written out
by hand: an ``nn.Module`` trained by ``torch.optim.SGD``, the correction applied to its
``state_dict`` after each step, c_i and c kept in plain dicts. It shares no code with fedwsa's
trainers, ``ScaffoldServer`` or the store; only the data order comes from the same generator.
"""

from __future__ import annotations

import json
from pathlib import Path

import nodes
import numpy as np
import pytest
import torch
from local_grid import LocalGrid

import fedwsa.server.app as server_app
from fedwsa.algorithms import ClientUpdates, client_terms
from fedwsa.algorithms.client_state import ClientStateStore
from fedwsa.algorithms.scaffold import ScaffoldServer
from fedwsa.clients.batched import BatchedTrainer
from fedwsa.clients.sequential import SequentialTrainer
from fedwsa.clients.trainer import CohortTask, LocalSettings
from fedwsa.config import ConfigError, make_config
from fedwsa.models import build_model
from fedwsa.server.inprocess import run_in_process
from fedwsa.strategies import build_strategy

SIZES = (37, 5, 64, 20, 30)
SETTINGS = LocalSettings(local_epochs=2, batch_size=16, lr=0.05, momentum=0.9,
                         weight_decay=1e-3, augment=False, seed=7)
COHORTS = {1: [0, 1, 2, 3, 4], 2: [0, 2, 4], 3: [1, 2, 3]}  # rounds -> sampled clients


def reference_client(node, cid: int, rnd: int, global_params, c_global, c_local):
    """NIID-Bench's train_net_scaffold: its weights and its new c_i."""
    s = SETTINGS
    net = build_model("simple-cnn", node.num_classes)
    net.load_state_dict(global_params)
    opt = torch.optim.SGD(net.parameters(), lr=s.lr, momentum=s.momentum,
                          weight_decay=s.weight_decay)
    cnt = 0
    for x, y in nodes.reference_batches(node, cid, s, rnd):
        loss = torch.nn.CrossEntropyLoss()(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        net_para = net.state_dict()
        for key in net_para:
            net_para[key] = net_para[key] - s.lr * (c_global[key] - c_local[key])
        net.load_state_dict(net_para)
        cnt += 1
    net_para = net.state_dict()
    c_new = {k: c_local[k] - c_global[k] + (global_params[k] - net_para[k]) / (cnt * s.lr)
             for k in net_para}
    return {k: v.detach().clone() for k, v in net_para.items()}, c_new


def reference_rounds(node, g0):
    """Three rounds of NIID-Bench's SCAFFOLD server loop over COHORTS."""
    g = {k: v.clone() for k, v in g0.items()}
    c_global = {k: torch.zeros_like(v) for k, v in g.items()}
    c_local = {cid: {k: torch.zeros_like(v) for k, v in g.items()} for cid in range(len(SIZES))}
    for rnd, cohort in COHORTS.items():
        total_delta = {k: torch.zeros_like(v) for k, v in g.items()}
        nets = {}
        for cid in cohort:
            nets[cid], c_new = reference_client(node, cid, rnd, g, c_global, c_local[cid])
            for k in total_delta:
                total_delta[k] += c_new[k] - c_local[cid][k]
            c_local[cid] = c_new
        for k in total_delta:
            c_global[k] += total_delta[k] / len(SIZES)
        n = sum(SIZES[c] for c in cohort)
        g = {k: sum(nets[c][k] * (SIZES[c] / n) for c in cohort) for k in g}
    return g, c_global, c_local, nets


@pytest.mark.parametrize("trainer", ["sequential", "batched"])
def test_three_rounds_match_niid_benchs_loop(trainer: str, tmp_path: Path) -> None:
    node = nodes.make_node(SIZES, seed=0)
    model = build_model("simple-cnn", node.num_classes, seed=1)
    g = {k: v.detach().clone() for k, v in model.named_parameters()}
    config = make_config({"strategy": "scaffold", "num-clients": len(SIZES), "lr": SETTINGS.lr,
                          "run-dir": str(tmp_path / "run")})
    strategy = build_strategy(config)
    terms = client_terms(config, g)
    train = (SequentialTrainer(model, node, SETTINGS, terms) if trainer == "sequential" else
             BatchedTrainer(model, node, SETTINGS, max_clients=2, terms=terms))
    ref_g, ref_c, ref_ci, ref_last = reference_rounds(node, g)

    for rnd, cohort in COHORTS.items():
        task = CohortTask(rnd, cohort, g, strategy.client_inputs(rnd, g, cohort))
        got = train.train(task)
        updates = ClientUpdates(got.client_ids, got.params,
                                torch.tensor(got.num_examples), got.train_loss,
                                steps=torch.tensor(got.steps))
        g = strategy.aggregate(rnd, g, updates)

    close = {"rtol": 1e-4, "atol": 2e-5}
    for k, cid in enumerate(got.client_ids):  # the last round's clients, each one
        for name in g:
            torch.testing.assert_close(got.params[name][k], ref_last[cid][name], **close)
    for name in g:
        torch.testing.assert_close(g[name], ref_g[name], **close)
    part = strategy.part("scaffold")
    for name in g:
        torch.testing.assert_close(part.c[name], ref_c[name], **close)
    stored = part.store.read(list(range(len(SIZES))))
    for cid in range(len(SIZES)):
        for name in g:
            torch.testing.assert_close(stored[name][cid], ref_ci[cid][name], **close,
                                       msg=lambda m, n=name, c=cid: f"c_{c} {n}: {m}")
    # The control variates are not trivially zero, and the correction changed the training.
    assert float(ref_c["fc1.weight"].abs().max()) > 1e-3


def test_first_round_equals_fedavg_and_later_rounds_do_not(tmp_path: Path) -> None:
    """c = c_i = 0 in round 1, so the correction is zero: FedAvg's round exactly."""
    base = {"dataset": "synthetic", "num-clients": 6, "num-server-rounds": 3,
            "partition": "dirichlet", "alpha": 0.3, "trainer": "sequential"}
    acc = {}
    for s in ("fedavg", "scaffold"):
        run_in_process(make_config({**base, "strategy": s, "run-dir": str(tmp_path / s)}))
        rows = [json.loads(line) for line in (tmp_path / s / "metrics.jsonl").open()]
        acc[s] = [r["test-accuracy"] for r in rows]
    assert acc["scaffold"][:2] == acc["fedavg"][:2]
    assert acc["scaffold"][2:] != acc["fedavg"][2:]


def params_layout() -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(2, 3), "b": torch.zeros(3)}


def state(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), v), "b": torch.full((3,), v)}


def test_store_writes_only_the_round_s_clients_and_keeps_what_the_checkpoint_needs(
        tmp_path: Path) -> None:
    store = ClientStateStore(tmp_path / "s", params_layout(), "scaffold-store")
    assert not (tmp_path / "s").exists()  # nothing on disk before first use
    assert torch.equal(store.read([3])["w"], torch.zeros(1, 2, 3))  # never written: zero
    store.write(1, {0: state(1.0), 1: state(2.0)})
    store.commit()  # a checkpoint of round 1
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s").glob("*.npy")}
    store.write(2, {1: state(3.0)})
    store.write(3, {1: state(4.0)})  # round 2's file is needed by no checkpoint: gone
    files = sorted(p.name for p in (tmp_path / "s").glob("*.npy"))
    assert files == ["c0.r1.npy", "c1.r1.npy", "c1.r3.npy"]
    assert (tmp_path / "s" / "c0.r1.npy").stat().st_mtime_ns == before["c0.r1.npy"]
    got = store.read([1, 0, 7])
    assert got["w"][:, 0, 0].tolist() == [4.0, 1.0, 0.0] and got["b"].shape == (3, 3)
    saved = store.state_dict()
    store.commit()  # a checkpoint of round 3: round 1's file of client 1 is superseded
    assert sorted(p.name for p in (tmp_path / "s").glob("*.npy")) == ["c0.r1.npy", "c1.r3.npy"]

    # Killed after writing round 4 but before its checkpoint: resume from round 3's.
    store.write(4, {0: state(9.0), 2: state(9.0)})
    resumed = ClientStateStore(tmp_path / "s", params_layout(), "scaffold-store")
    resumed.load_state_dict(saved)
    assert resumed.read([0, 1, 2])["b"][:, 0].tolist() == [1.0, 4.0, 0.0]
    assert sorted(p.name for p in (tmp_path / "s").glob("*.npy")) == ["c0.r1.npy", "c1.r3.npy"]


def test_store_files_load_without_pickle(tmp_path: Path) -> None:
    store = ClientStateStore(tmp_path, params_layout(), "scaffold-store")
    store.write(1, {5: state(0.5)})
    flat = np.load(tmp_path / "c5.r1.npy", allow_pickle=False)
    assert flat.dtype == np.float32 and flat.tolist() == [0.5] * 9


def saved_store(tmp_path: Path) -> tuple[dict, Path]:
    store = ClientStateStore(tmp_path / "s", params_layout(), "scaffold-store")
    store.write(1, {0: state(1.0), 2: state(2.0)})
    return store.state_dict(), tmp_path / "s"


@pytest.mark.parametrize("damage, message", [
    (lambda s: (s / "c2.r1.npy").write_bytes(b"\x93NUMPY garbage"), "c2.r1.npy"),
    (lambda s: (s / "c0.r1.npy").unlink(), "c0.r1.npy"),
    (lambda s: np.save(s / "c0.r1.npy", np.zeros(4, np.float32)), "9 float32"),
    (lambda s: (s / "store.json").write_text(json.dumps(
        {**json.loads((s / "store.json").read_text()), "id": "0" * 32})), "another run"),
    (lambda s: (s / "store.json").write_text(json.dumps(
        {**json.loads((s / "store.json").read_text()), "params": [["w", [6]]]})),
     "this model's parameters"),
    (lambda s: (s / "store.json").unlink(), "store.json"),
])
def test_a_damaged_or_foreign_store_is_refused_naming_the_key_and_file(
        tmp_path: Path, damage, message: str) -> None:
    saved, path = saved_store(tmp_path)
    damage(path)
    store = ClientStateStore(path, params_layout(), "scaffold-store")
    with pytest.raises(ConfigError, match="scaffold-store") as err:
        store.load_state_dict(saved)
    assert message in str(err.value) and len(str(err.value).splitlines()) == 1


def test_a_new_store_must_be_writable_and_empty(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        ClientStateStore(tmp_path / "file" / "s", params_layout(), "scaffold-store").check_new()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "c0.r1.npy").write_bytes(b"")
    with pytest.raises(ConfigError, match="holds files already"):
        ClientStateStore(tmp_path / "used", params_layout(), "scaffold-store").check_new()
    ClientStateStore(tmp_path / "new" / "s", params_layout(), "scaffold-store").check_new()
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("strategy", ["fedwsa-scaffold", "fedwsa-fednova"])
def test_wsa_combinations_run_alike_on_both_trainers(strategy: str, tmp_path: Path) -> None:
    """WSA's loss term with SCAFFOLD's correction or FedNova's merge: both trainers give the
    same run, and it is not the run without WSA."""
    base = {"dataset": "synthetic", "num-clients": 6, "fraction-train": 0.5,
            "num-server-rounds": 3, "partition": "dirichlet", "alpha": 0.3, "lr": 0.02,
            "wsa-beta": 0.5, "momentum": 0.5}
    acc = {}
    for name, keys in {"seq": {"strategy": strategy, "trainer": "sequential"},
                       "bat": {"strategy": strategy, "trainer": "batched"},
                       "plain": {"strategy": strategy.removeprefix("fedwsa-")}}.items():
        run_in_process(make_config({**base, **keys, "run-dir": str(tmp_path / name)}))
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
        acc[name] = [r["test-accuracy"] for r in rows]
    assert acc["seq"] == pytest.approx(acc["bat"], abs=2e-3)
    assert acc["seq"] != acc["plain"]
    assert acc["seq"][-1] > 0.3


def test_a_client_without_steps_keeps_its_control_variate_and_leaves_c_alone(
        tmp_path: Path) -> None:
    config = make_config({"strategy": "scaffold", "num-clients": 4, "lr": 0.5,
                          "run-dir": str(tmp_path)})
    layout = params_layout()
    part = ScaffoldServer(config, layout)
    g = {k: torch.zeros_like(v) for k, v in layout.items()}
    y = {k: torch.stack([v - 1.0, v]) for k, v in g.items()}  # client 0 moved, client 1 not
    updates = ClientUpdates([0, 1], y, torch.tensor([10, 0]), [0.0, 0.0],
                            steps=torch.tensor([2, 0]))
    part.after_merge(1, g, g, updates)
    # c_0+ = 0 - 0 + (0 - (-1)) / (2 * 0.5) = 1; c = 1 / 4; client 1 never written: zero.
    stored = part.store.read([0, 1])
    assert stored["w"][0].unique().tolist() == [1.0] and stored["w"][1].abs().sum() == 0
    assert part.c["b"].unique().tolist() == [0.25]
    assert sorted(p.name for p in part.store.path.glob("*.npy")) == ["c0.r1.npy"]


def test_a_crash_between_the_store_write_and_the_checkpoint_resumes_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flower_identity: None) -> None:
    """Round 3 writes every client's c_i, then dies before its checkpoint: the resumed run
    must find the round-2 files the round-2 checkpoint refers to (kept until a checkpoint
    supersedes them), and end as the uninterrupted run, over two nodes."""
    base = make_config({"dataset": "synthetic", "num-clients": 4, "num-server-rounds": 4,
                        "strategy": "scaffold", "trainer": "sequential", "lr": 0.03})
    ref = server_app.run_federation(LocalGrid([1, 2]), base.replace(run_dir=str(tmp_path / "r")))
    real_save = server_app.save_checkpoint

    def dies_in_round_3(run_dir, ckpt):
        if ckpt.round == 3:
            raise RuntimeError("killed before the round-3 checkpoint")
        return real_save(run_dir, ckpt)

    monkeypatch.setattr(server_app, "save_checkpoint", dies_in_round_3)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        server_app.run_federation(LocalGrid([1, 2]), base.replace(run_dir=str(run)))
    assert sorted(p.name for p in (run / "client-state").glob("*.npy")) == [
        f"c{c}.r{r}.npy" for c in range(4) for r in (2, 3)]
    monkeypatch.setattr(server_app, "save_checkpoint", real_save)
    server_app.run_federation(LocalGrid([1, 2]), base.replace(run_dir=str(run), resume=True))

    def acc(path: Path) -> list[float]:
        return [json.loads(line)["test-accuracy"] for line in (path / "metrics.jsonl").open()]

    assert acc(run) == acc(ref) and len(acc(run)) == 5
    assert sorted(p.name for p in (run / "client-state").glob("*.npy")) == [
        f"c{c}.r4.npy" for c in range(4)]

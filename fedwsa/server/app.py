"""The Flower ``ServerApp``: build everything from the run config, run the rounds, write results.

The round loop is ours rather than ``Strategy.start`` because a run checks its input before
anything starts, evaluates every ``eval-every`` rounds, keeps the previous model when too few
clients succeed, writes a run directory and checkpoints as it goes, and resumes from them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedwsa.config import Config, make_config
from fedwsa.data import load_dataset, pixel_stats
from fedwsa.device import resolve_device
from fedwsa.models import build_model, check_functional
from fedwsa.protocol import from_arrays, to_arrays
from fedwsa.results.rundir import RunWriter
from fedwsa.server.checkpoint import (
    Checkpoint,
    capture_rng,
    restore_rng,
    save_checkpoint,
    seed_global_rngs,
)
from fedwsa.server.evaluation import evaluate
from fedwsa.server.preflight import preflight
from fedwsa.strategies import build_strategy

NODE_WAIT_S = 600.0
POLL_MAX_S = 0.05


def exchange(grid: Grid, messages: Iterable[Message], max_poll_s: float = POLL_MAX_S
             ) -> list[Message]:
    """``Grid.send_and_receive`` that looks for the replies every few milliseconds.

    Flower's own waits a fixed time between pulls: 0.1 s in the simulation runtime (``flwr
    run`` and ``fedwsa run`` here), 3 s for a ServerApp that talks to a deployed SuperLink over
    gRPC. A batched node can answer a round in well under a second on a GPU, and that wait
    would then be a large share of the round. Here the interval starts at 1 ms and grows
    by half each pull up to ``max_poll_s``: a reply is picked up within ~``max_poll_s`` of its
    arrival, with a few dozen pulls per second at most.
    """
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    interval = 0.001
    while True:
        pulled = list(grid.pull_messages(pending))
        replies += pulled
        pending -= {m.metadata.reply_to_message_id for m in pulled}
        if not pending:
            return replies
        time.sleep(interval)
        interval = min(1.5 * interval, max_poll_s)


def wait_for_nodes(grid: Grid, settle_s: float = 1.0, timeout_s: float = NODE_WAIT_S) -> list[int]:
    """Wait until at least one node is connected and the count has stopped changing."""
    start, seen, stable_since = time.monotonic(), -1, time.monotonic()
    while True:
        nodes = sorted(grid.get_node_ids())
        now = time.monotonic()
        if len(nodes) != seen:
            seen, stable_since = len(nodes), now
        elif nodes and now - stable_since >= settle_s:
            return nodes
        if now - start > timeout_s:
            raise RuntimeError(f"no SuperNode connected within {timeout_s:.0f} s")
        time.sleep(0.2)


def run_federation(grid: Grid, config: Config) -> Path:
    """Run ``config`` over the nodes of ``grid``; returns the run directory.

    Checks everything first (``preflight``): a bad config fails here, before the run directory
    exists. With ``resume`` it continues from the run directory's checkpoint: global weights,
    strategy state, RNG states and metrics rows are restored, and the rounds after the
    checkpoint are run again exactly as the uninterrupted run would have run them.
    """
    plan = preflight(config)
    config, run_path, ckpt = plan.config, plan.run_dir, plan.checkpoint
    seed_global_rngs(config.seed)  # before anything that might draw (a strategy's init)
    t0 = time.monotonic()
    data = load_dataset(config.dataset, config.data_root, config.seed)
    device = resolve_device(config.device)
    model = build_model(config.model, data.num_classes, seed=config.seed)
    check_functional(model)
    model.to(device)
    strategy = build_strategy(config)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    mean, std = (t.to(device) for t in pixel_stats(data, config.normalize))
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    first_round = 1
    if ckpt is not None:
        params = {k: v.to(device) for k, v in ckpt.params.items()}
        strategy.load_state_dict(ckpt.strategy)
        restore_rng(ckpt.rng)
        t0 -= ckpt.elapsed_s  # elapsed-s goes on from the checkpoint (time lost is not counted)
        first_round = ckpt.round + 1
        log(INFO, "[fedwsa] resuming %s after round %d", run_path.resolve(), ckpt.round)
    writer = RunWriter(run_path, config, rows=None if ckpt is None else ckpt.metrics)

    def evaluate_round(server_round: int, round_metrics: dict[str, float]) -> None:
        loss, acc = evaluate(model, params, x_test, y_test, mean, std)
        row: dict[str, object] = {
            "round": server_round,
            "elapsed-s": round(time.monotonic() - t0, 3),
            "test-loss": loss,
            "test-accuracy": acc,
            "train-loss": round_metrics.get("train-loss"),
            "clients-sampled": int(round_metrics.get("clients-sampled", 0)),
            "clients-failed": int(round_metrics.get("clients-failed", 0)),
        }
        row.update({k: v for k, v in round_metrics.items() if k not in row})
        writer.append_metrics(row)
        log(INFO, "[fedwsa] round %d/%d: test-accuracy=%.4f test-loss=%.4f train-loss=%s",
            server_round, config.num_server_rounds, acc, loss,
            "-" if row["train-loss"] is None else f"{row['train-loss']:.4f}")

    def checkpoint(server_round: int) -> None:
        save_checkpoint(run_path, Checkpoint(
            round=server_round, config=config.to_dict(), params=params,
            strategy=strategy.state_dict(), rng=capture_rng(), metrics=list(writer.rows),
            elapsed_s=time.monotonic() - t0))
        strategy.committed()

    log(INFO, "[fedwsa] run directory: %s", run_path.resolve())
    nodes = wait_for_nodes(grid)
    log(INFO, "[fedwsa] %d node(s) connected", len(nodes))
    if ckpt is None:
        evaluate_round(0, {})
    arrays = to_arrays(params)
    for server_round in range(first_round, config.num_server_rounds + 1):
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
        replies = exchange(grid, messages)
        new_arrays, metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
            params = {k: v.to(device) for k, v in from_arrays(arrays).items()}
        round_metrics = dict(metrics or {})
        last = server_round == config.num_server_rounds
        if server_round % config.eval_every == 0 or last:
            evaluate_round(server_round, round_metrics)
        if config.checkpoint_every and (server_round % config.checkpoint_every == 0 or last):
            checkpoint(server_round)
    writer.save_model(params)
    writer.finish(config.num_server_rounds, time.monotonic() - t0)
    return run_path


def make_server_app(config: Config | None = None) -> ServerApp:
    """A ServerApp for ``config``; without one it reads Flower's run config (``flwr run``)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, config or make_config(dict(context.run_config)))

    return server


app = make_server_app()



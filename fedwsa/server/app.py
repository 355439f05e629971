"""The Flower ``ServerApp``: build everything from the run config, run the rounds, write results.

The round loop is ours rather than ``Strategy.start`` because a run checks its input before
anything starts, evaluates every ``eval-every`` rounds, keeps the previous model when too few
clients succeed, writes a run directory and checkpoints as it goes, and resumes from them.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterable, Iterator
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedwsa import stop
from fedwsa.config import Config, make_config
from fedwsa.data import load_dataset, pixel_stats, train_set_key
from fedwsa.device import resolve_device
from fedwsa.dirs import exclusive
from fedwsa.models import build_model, check_functional
from fedwsa.protocol import NodeAnswer, bundle, error_of, from_arrays, to_arrays, unbundle
from fedwsa.results.client_models import (
    CLIENT_MODELS_DIR,
    disk_cost_line,
    prune_client_models,
    save_client_models,
    saves_round,
)
from fedwsa.results.rundir import RunWriter
from fedwsa.server.checkpoint import (
    Checkpoint,
    capture_rng,
    restore_rng,
    save_checkpoint,
    seed_global_rngs,
)
from fedwsa.server.evaluation import evaluate, evaluate_many
from fedwsa.server.preflight import preflight
from fedwsa.strategies import build_strategy, sample_clients

Evaluation = tuple[float, float]  # a global model's central (test loss, test accuracy)

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


class CellRun:
    """One run's server side in a federation that may serve several runs at once: its checked
    plan, strategy, global model, central evaluation, run directory and checkpoints.

    Built from ``preflight``'s plan: with ``resume`` it continues from the run directory's
    checkpoint (global weights, strategy state, RNG states and metrics rows are restored, and
    the rounds after the checkpoint are run again exactly as the uninterrupted run would have
    run them).
    """

    def __init__(self, config: Config, tag: str = "run") -> None:
        plan = preflight(config)
        self.tag = tag
        self.config, self.run_path, ckpt = plan.config, plan.run_dir, plan.checkpoint
        config = self.config
        seed_global_rngs(config.seed)  # before anything that might draw (a strategy's init)
        self.t0 = time.monotonic()
        data = load_dataset(config.dataset, config.data_root, config.seed)
        device = self.device = resolve_device(config.device)
        self.model = build_model(config.model, data.num_classes, seed=config.seed)
        check_functional(self.model)
        self.model.to(device)
        self.strategy = build_strategy(config)
        self.x_test, self.y_test = data.x_test.to(device), data.y_test.to(device)
        self.mean, self.std = (t.to(device) for t in pixel_stats(data, config.normalize))
        self.params = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        self.first_round = 1
        self.failure: Exception | None = None  # set aside by run_cells
        self.rounds_without_update = 0  # rounds whose clients all failed: the model was kept
        if ckpt is not None:
            self.params = {k: v.to(device) for k, v in ckpt.params.items()}
            self.strategy.load_state_dict(ckpt.strategy)
            restore_rng(ckpt.rng)
            self.t0 -= ckpt.elapsed_s  # elapsed-s goes on from the checkpoint
            self.first_round = ckpt.round + 1
            self.rounds_without_update = ckpt.rounds_without_update
            log(INFO, "[fedwsa] resuming %s after round %d", self.run_path.resolve(), ckpt.round)
        self.closed_round = self.checkpointed_round = self.first_round - 1
        self._round_started = time.monotonic()
        # One writer per run directory: a second process on it stops here (fedwsa run and
        # compare ask first, before any work; nested holds in one process are counted).
        self._hold = exclusive(self.run_path, "run-dir")
        self._hold.__enter__()
        self.writer = RunWriter(self.run_path, config,
                                rows=None if ckpt is None else ckpt.metrics,
                                first_round=self.first_round)
        if config.save_client_models != "none":
            if ckpt is not None:
                prune_client_models(self.run_path, after=ckpt.round)
            cohort = sample_clients(config.seed, 1, config.num_clients, config.fraction_train)
            log(INFO, "[fedwsa] %s", disk_cost_line(
                config.save_client_models, self.last_round, len(cohort), self.params,
                self.run_path / CLIENT_MODELS_DIR))
        self.arrays = to_arrays(self.params)
        self._rng = capture_rng()  # each run keeps its own global RNG stream (own_rng)
        log(INFO, "[fedwsa] run directory: %s", self.run_path.resolve())

    def release(self) -> None:
        """Give the run directory up (the end of the process would too)."""
        if self._hold is not None:
            self.writer.close()
            self._hold.__exit__(None, None, None)
            self._hold = None

    @contextlib.contextmanager
    def own_rng(self) -> Iterator[None]:
        """The process's global RNGs hold this run's state while the body runs, so runs that
        share a federation draw what each would draw alone (and checkpoint its own state)."""
        restore_rng(self._rng)
        try:
            yield
        finally:
            self._rng = capture_rng()

    @property
    def last_round(self) -> int:
        return self.config.num_server_rounds

    @property
    def error(self) -> str | None:
        """Why the run was set aside, or None."""
        return None if self.failure is None else f"{type(self.failure).__name__}: {self.failure}"

    def active(self, server_round: int) -> bool:
        return self.failure is None and self.first_round <= server_round <= self.last_round

    @property
    def needs_round_zero(self) -> bool:
        """A new run evaluates its initial model as round 0 (a checkpoint holds round 1 at
        least, so a resumed run has it)."""
        return self.first_round == 1

    def start(self, evaluation: Evaluation | None) -> None:
        """Record the initial model's ``evaluation`` (a new run's round 0); finish a resumed run
        whose last round was checkpointed before it could write its result."""
        with self.own_rng():
            if evaluation is not None:
                self.record_round(0, {}, evaluation)
            if self.first_round > self.last_round:
                self.finish()

    def finish(self) -> None:
        self.writer.save_model(self.params)
        curves = self.writer.finish(self.last_round, time.monotonic() - self.t0,
                                    self.rounds_without_update)
        log(INFO, "[fedwsa] %s%s: %s (%d of %d rounds without an update; curves: %s)",
            "" if self.tag == "run" else f"{self.tag} ", self.writer.status,
            self.run_path.resolve(), self.rounds_without_update, self.last_round,
            curves.resolve())

    @property
    def eval_group(self) -> tuple[Any, ...]:
        """Runs with equal groups evaluate the same architecture on the same test images with
        the same pixel statistics, so their global models can be evaluated in one pass."""
        c = self.config
        return (c.model, *train_set_key(c.dataset, c.data_root, c.seed), c.normalize,
                str(self.device))

    def evaluate(self) -> Evaluation:
        """The global model's central (test loss, test accuracy)."""
        return evaluate(self.model, self.params, self.x_test, self.y_test, self.mean, self.std)

    def evaluates(self, server_round: int) -> bool:
        return server_round % self.config.eval_every == 0 or server_round == self.last_round

    def record_round(self, server_round: int, round_metrics: dict[str, float],
                     evaluation: Evaluation) -> None:
        loss, acc = evaluation
        row: dict[str, object] = {
            "round": server_round,
            "elapsed-s": round(time.monotonic() - self.t0, 3),
            "test-loss": loss,
            "test-accuracy": acc,
            "train-loss": round_metrics.get("train-loss"),
            "clients-sampled": int(round_metrics.get("clients-sampled", 0)),
            "clients-failed": int(round_metrics.get("clients-failed", 0)),
        }
        if server_round > 0:  # the round's wall time, from its requests to its evaluation
            row["round-s"] = round(time.monotonic() - self._round_started, 3)
        row.update({k: v for k, v in round_metrics.items() if k not in row})
        self.writer.append_metrics(row)
        log(INFO, "[fedwsa] %sround %d/%d: test-accuracy=%.4f test-loss=%.4f train-loss=%s",
            "" if self.tag == "run" else f"{self.tag} ", server_round, self.last_round, acc,
            loss, "-" if row["train-loss"] is None else f"{row['train-loss']:.4f}")

    def requests(self, server_round: int, grid: Grid) -> list[Message]:
        """This round's train Messages (one per node)."""
        self._round_started = time.monotonic()
        with self.own_rng():
            return list(self.strategy.configure_train(server_round, self.arrays,
                                                      ConfigRecord(), grid))

    def aggregate(self, server_round: int, answers: list[NodeAnswer]) -> dict[str, float]:
        """Update the global model from the nodes' answers; the round's metrics."""
        with self.own_rng():
            new_arrays, metrics = self.strategy.aggregate_answers(server_round, answers)
        if new_arrays is not None:
            self.arrays = new_arrays
            self.params = {k: v.to(self.device) for k, v in from_arrays(new_arrays).items()}
        else:
            self.rounds_without_update += 1
        return dict(metrics or {})

    def close_round(self, server_round: int, round_metrics: dict[str, float],
                    evaluation: Evaluation | None) -> None:
        """Record the round (with its ``evaluation`` when it was evaluated), checkpoint it and,
        after the last round, write the run's result."""
        with self.own_rng():
            self._close_round(server_round, round_metrics, evaluation)

    def _close_round(self, server_round: int, round_metrics: dict[str, float],
                     evaluation: Evaluation | None) -> None:
        last = server_round == self.last_round
        if evaluation is not None:
            self.record_round(server_round, round_metrics, evaluation)
        updates = self.strategy.last_updates
        if updates is not None and updates.client_ids:
            self.writer.client_losses(server_round, [float(v) for v in updates.train_loss])
        # Kept before the checkpoint, so that every checkpointed round has its file.
        keep = saves_round(self.config.save_client_models, server_round, self.last_round)
        if keep and updates is not None and updates.client_ids:
            save_client_models(self.run_path, server_round, updates.client_ids,
                               updates.num_examples.tolist(), updates.params)
        self.closed_round = server_round
        every = self.config.checkpoint_every
        if every and (server_round % every == 0 or last):
            self._checkpoint()
        if last:
            self.finish()

    def _checkpoint(self) -> None:
        save_checkpoint(self.run_path, Checkpoint(
            round=self.closed_round, config=self.config.to_dict(), params=self.params,
            strategy=self.strategy.state_dict(), rng=capture_rng(),
            metrics=list(self.writer.rows), elapsed_s=time.monotonic() - self.t0,
            rounds_without_update=self.rounds_without_update))
        self.checkpointed_round = self.closed_round
        self.strategy.committed()

    def interrupt(self) -> None:
        """Stopped between rounds (``fedwsa.stop``): checkpoint the last finished round if the
        schedule skipped it, so a resume loses nothing; the curves are drawn as they are."""
        with self.own_rng():
            if (self.config.checkpoint_every and self.closed_round > 0
                    and self.closed_round > self.checkpointed_round):
                self._checkpoint()
        self.writer.close()


def run_cells(grid: Grid, runs: list[CellRun]) -> None:
    """Run every run of ``runs`` over the nodes of ``grid``, round by round, together.

    Each round every active run makes its own requests; a node gets ONE Message bundling its
    requests of all runs (``protocol.bundle``) and answers them in one reply, which is split
    back by run. A run whose server side raises is set aside with its error (its run directory
    stays unfinished, as after a crash) and the other runs go on; ``run.error`` says why. A
    run whose clients all fail in a round keeps its model that round, as it would alone.
    """
    nodes = wait_for_nodes(grid)
    log(INFO, "[fedwsa] %d node(s) connected, %d run(s)", len(nodes), len(runs))
    new = [run for run in runs if run.needs_round_zero]
    initial = evaluate_runs(new)
    for run in runs:
        _guarded(run, functools.partial(run.start, initial.get(id(run))))
    last = max((run.last_round for run in runs), default=0)
    first = min((run.first_round for run in runs), default=1)
    for server_round in range(first, last + 1):
        active = [run for run in runs if run.active(server_round)]
        if not active:
            continue
        if stop.requested() is not None:  # a safe point: every run's last round is closed
            for run in active:
                _guarded(run, run.interrupt)
            stop.note_stopped_after(server_round - 1)
            log(WARNING, "[fedwsa] interrupted after round %d", server_round - 1)
            return
        per_node: dict[int, dict[str, RecordDict]] = {}
        for run in active:
            for msg in _guarded(run, functools.partial(run.requests, server_round, grid)) or []:
                per_node.setdefault(msg.metadata.dst_node_id, {})[run.tag] = msg.content
        messages = [Message(content=bundle(contents), message_type=MessageType.TRAIN,
                            dst_node_id=node) for node, contents in per_node.items()]
        answers: dict[str, list[NodeAnswer]] = {run.tag: [] for run in active}
        for reply in exchange(grid, messages):
            node = reply.metadata.src_node_id
            if reply.has_error():
                for tag in per_node.get(node, {}):
                    answers[tag].append(NodeAnswer(node, None, reply.error.reason))
                continue
            for tag, content in unbundle(reply.content).items():
                error = error_of(content)
                answers[tag].append(NodeAnswer(node, None if error else content, error))
        metrics: dict[int, dict[str, float]] = {}
        for run in active:
            mine = answers.pop(run.tag)  # released as soon as the run has aggregated them
            if run.failure is None:
                metrics[id(run)] = _guarded(
                    run, functools.partial(run.aggregate, server_round, mine))
        closing = [run for run in active if run.failure is None]
        evaluations = evaluate_runs([run for run in closing if run.evaluates(server_round)])
        for run in closing:
            if run.failure is None:  # its evaluation may have failed
                _guarded(run, functools.partial(run.close_round, server_round,
                                                metrics[id(run)], evaluations.get(id(run))))


def evaluate_runs(runs: list[CellRun]) -> dict[int, Evaluation]:
    """Central evaluation of ``runs``' global models, batched over the runs that share an
    architecture and a test set (``evaluate_many``); ``id(run)`` -> (loss, accuracy). A batch
    that raises is evaluated run by run, so only a run whose own evaluation fails is set
    aside (``_guarded``) and left out."""
    groups: dict[tuple[Any, ...], list[CellRun]] = {}
    for run in runs:
        groups.setdefault(run.eval_group, []).append(run)
    evaluations: dict[int, Evaluation] = {}
    for group in groups.values():
        first = group[0]
        try:
            results = evaluate_many(first.model, [run.params for run in group], first.x_test,
                                    first.y_test, first.mean, first.std)
        except Exception:
            results = [_guarded(run, run.evaluate) for run in group]
        for run, result in zip(group, results, strict=True):
            if result is not None:
                evaluations[id(run)] = result
    return evaluations


def _guarded(run: CellRun, step: Callable[[], Any]) -> Any:
    """``step()``; an exception sets the run aside (``run.failure``) instead of ending the
    federation for the other runs."""
    try:
        return step()
    except Exception as err:
        run.failure = err
        log(WARNING, "[fedwsa] %s failed and is set aside: %s", run.tag, run.error)
        return None


def run_federation(grid: Grid, config: Config) -> Path:
    """Run ``config`` over the nodes of ``grid``; returns the run directory.

    Checks everything first (``preflight``): a bad config fails here, before the run directory
    exists.
    """
    run = CellRun(config)
    try:
        run_cells(grid, [run])
    finally:
        run.release()
    if run.failure is not None:  # alone in its federation: its failure is the run's
        raise run.failure
    return run.run_path


def run_configs(grid: Grid, configs: list[Config],
                outcome: dict[str, str | None] | None = None) -> dict[str, str | None]:
    """Run ``configs`` together over ``grid`` (``run_cells``); run directory -> None, or why
    that run failed (a run whose checks fail does not start; the others still run).
    ``outcome`` is filled as it goes, so a federation that fails still says why per run."""
    runs: list[CellRun] = []
    outcome = {} if outcome is None else outcome
    for i, config in enumerate(configs):
        try:
            runs.append(CellRun(config, tag=f"cell{i}"))
        except Exception as err:  # this run's bad input or state, not the others'
            outcome[config.run_dir] = f"{type(err).__name__}: {err}"
    try:
        run_cells(grid, runs)
    except Exception as err:  # the federation itself failed: every unfinished run says why
        for run in runs:
            run.failure = run.failure or RuntimeError(
                f"the federation failed: {type(err).__name__}: {err}")
        raise
    finally:
        outcome.update({str(run.config.run_dir): run.error for run in runs})
        for run in runs:
            run.release()
    return outcome


def make_cells_app(configs: list[Config], outcome: dict[str, str | None]) -> ServerApp:
    """A ServerApp running ``configs`` as one federation; fills ``outcome`` (``run_configs``)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_configs(grid, configs, outcome)

    return server


def make_server_app(config: Config | None = None) -> ServerApp:
    """A ServerApp for ``config``; without one it reads Flower's run config (``flwr run``)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, config or make_config(dict(context.run_config)))

    return server


app = make_server_app()



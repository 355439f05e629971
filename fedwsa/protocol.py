"""The cohort protocol: how a train Message and its reply carry a whole cohort.

The server sends each node ONE Message (the global arrays, the run config, the ids of the
clients it trains, and per-round client settings such as the WSA target); the node replies with
ONE Message carrying its clients' weights stacked on a leading client axis plus per-client
metrics as lists (DESIGN.md, "The one idea"). Both sides use the functions here, so the record
keys live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

ARRAYS, CONFIG, METRICS, FAILURES, WSA, STATS = (
    "arrays", "config", "metrics", "failures", "wsa", "stats",
)


@dataclass
class TrainRequest:
    """What one node is asked to do in one round."""

    server_round: int
    client_ids: list[int]
    run_config: str
    global_params: dict[str, torch.Tensor]
    wsa: dict[str, object] | None = None


@dataclass
class TrainReply:
    """One node's answer: the trained clients' stacked weights and per-client metrics."""

    client_ids: list[int]
    params: dict[str, torch.Tensor]
    num_examples: list[int]
    train_loss: list[float]
    failures: dict[int, str] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


def to_arrays(params: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in params.items()})


def from_arrays(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict())


def pack_request(req: TrainRequest) -> RecordDict:
    content = RecordDict({
        ARRAYS: to_arrays(req.global_params),
        CONFIG: ConfigRecord({
            "server-round": req.server_round,
            "client-ids": list(req.client_ids),
            "run-config": req.run_config,
        }),
    })
    if req.wsa is not None:
        content[WSA] = ConfigRecord(req.wsa)
    return content


def unpack_request(content: RecordDict) -> TrainRequest:
    config = content.config_records[CONFIG]
    wsa = content.config_records.get(WSA)
    return TrainRequest(
        server_round=int(config["server-round"]),
        client_ids=[int(c) for c in config["client-ids"]],
        run_config=str(config["run-config"]),
        global_params=from_arrays(content.array_records[ARRAYS]),
        wsa=dict(wsa) if wsa is not None else None,
    )


def pack_reply(reply: TrainReply) -> RecordDict:
    failed = sorted(reply.failures)
    return RecordDict({
        ARRAYS: to_arrays(reply.params),
        METRICS: MetricRecord({
            "client-ids": list(reply.client_ids),
            "num-examples": [int(n) for n in reply.num_examples],
            "train-loss": [float(v) for v in reply.train_loss],
            "failed-ids": failed,
        }),
        FAILURES: ConfigRecord({"reasons": [reply.failures[c] for c in failed]}),
        STATS: MetricRecord({k: float(v) for k, v in reply.stats.items()}),
    })


def unpack_reply(content: RecordDict) -> TrainReply:
    metrics = content.metric_records[METRICS]
    reasons = list(content.config_records[FAILURES]["reasons"])
    failed = [int(c) for c in metrics["failed-ids"]]
    stats = content.metric_records.get(STATS)
    return TrainReply(
        client_ids=[int(c) for c in metrics["client-ids"]],
        params=from_arrays(content.array_records[ARRAYS]),
        num_examples=[int(n) for n in metrics["num-examples"]],
        train_loss=[float(v) for v in metrics["train-loss"]],
        failures=dict(zip(failed, reasons, strict=True)),
        stats={k: float(v) for k, v in (stats or {}).items()},
    )

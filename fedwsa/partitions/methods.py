"""Seeded partitions of a label array over clients: Dirichlet label skew, IID, shards, quantity.

The methods follow NIID-Bench (Li et al., "Federated Learning on Non-IID Data Silos: An
Experimental Study", ICDE 2022) and FedAvg (McMahan et al., 2017), so results compare with
those papers. Everything here is numpy on a label array: no tensors, models or Flower.

Why not flwr-datasets' partitioners (checked against flwr-datasets 0.6.1):

- ``DirichletPartitioner`` gives up with a ValueError after 10 resamplings, which is too few:
  at 50,000 CIFAR-10 labels, 100 clients, alpha 0.1 and minimum size 10 it fails for 1-3 seeds
  in 10, and it warns on every resampling. It also needs a Hugging Face ``Dataset`` built from
  the labels and splits each class in dataset order instead of shuffling it first.
- ``ShardPartitioner`` returns indices into a label-sorted copy of the dataset (not the caller's
  order), drops the remainder that does not fill a whole shard, and lets shards straddle two
  classes, so a client can hold more than ``classes_per_client`` classes.
- ``PathologicalPartitioner`` leaves a class unassigned when no client draws it.

The functions below are short, vectorised numpy, and keep NIID-Bench's semantics.
``fedwsa.partitions.flower`` offers them to flwr-datasets users as a ``Partitioner``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from types import MappingProxyType

import numpy as np

__all__ = ["MAX_SAMPLING_TRIES", "NIID_BENCH_PARTITIONS", "PARTITIONS", "PARTITION_RNGS",
           "RUN_CONFIG_NAMES", "check_partition_args", "partition_labels"]

PARTITIONS: tuple[str, ...] = ("dirichlet", "iid", "shards", "quantity")

PARTITION_RNGS: tuple[str, ...] = ("generator", "niid-bench")
"""How the random draws are made: ``generator`` (numpy's ``Generator``, fedwsa's own order of
draws) or ``niid-bench`` (NIID-Bench's legacy global ``np.random`` calls, draw for draw)."""

NIID_BENCH_PARTITIONS: dict[str, str] = {
    "dirichlet": "noniid-labeldir",
    "iid": "homo",
    "quantity": "iid-diff-quantity",
}
"""fedwsa's partitions that NIID-Bench has too, with NIID-Bench's names for them."""

MAX_SAMPLING_TRIES = 1000
"""Resamplings allowed to reach ``min_partition_size`` (NIID-Bench loops forever)."""

RUN_CONFIG_NAMES: Mapping[str, str] = MappingProxyType({
    "num_clients": "num-clients",
    "method": "partition",
    "rng": "partition-rng",
    "alpha": "alpha",
    "classes_per_client": "classes-per-client",
    "min_partition_size": "min-partition-size",
    "seed": "seed",
})
"""How errors name ``partition_labels``' arguments: the run config's keys. Another caller (the
flwr-datasets partitioner) passes its own argument names, so a message names what was typed."""


def partition_labels(
    labels: np.ndarray | Sequence[int],
    num_clients: int,
    method: str,
    *,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    min_partition_size: int = 10,
    seed: int = 0,
    rng: str = "generator",
    arg_names: Mapping[str, str] = RUN_CONFIG_NAMES,
) -> list[np.ndarray]:
    """Split the examples of ``labels`` over ``num_clients`` clients.

    Returns one sorted int64 index array per client, indices into ``labels``, disjoint, and
    together covering every example. Same arguments, same partition.

    - ``dirichlet``: label skew; each class is spread over the clients with proportions drawn
      from Dirichlet(``alpha``), NIID-Bench's "noniid-labeldir" (with its balancing: a client
      that already holds ``N / num_clients`` examples gets no more classes), resampled until
      every client holds ``min_partition_size`` examples.
    - ``iid``: a uniform random split into near-equal sizes.
    - ``shards``: pathological skew (FedAvg): each class is cut into shards, every client gets
      ``classes_per_client`` shards, so it sees at most that many classes.
    - ``quantity``: quantity skew, NIID-Bench's "iid-diff-quantity": client sizes drawn from
      Dirichlet(``alpha``) (resampled until all reach ``min_partition_size``), labels IID.

    ``rng="niid-bench"`` makes the draws of NIID-Bench's ``utils.partition_data`` in its order
    from ``np.random.RandomState(seed)``, which is what ``experiments.py --init_seed=seed``
    seeds: the same labels in the same order (torchvision's CIFAR-10) then give NIID-Bench's
    very client index sets (``NIID_BENCH_PARTITIONS`` names the methods it has). It keeps
    NIID-Bench's quirks: per-class shuffles redrawn on every resampling, and its
    ``iid-diff-quantity`` size check on the unrounded shares.

    Raises ``ValueError`` naming the offending argument as ``arg_names`` does (by default the
    run config's kebab-case key), its value and what is accepted.
    """
    check_partition_args(num_clients, method, alpha=alpha, classes_per_client=classes_per_client,
                         min_partition_size=min_partition_size, seed=seed, rng=rng,
                         arg_names=arg_names)
    legacy = rng == "niid-bench"
    y = _check_labels(labels, legacy, arg_names)
    n = len(y)
    _check_sizes(y, num_clients, method, classes_per_client, min_partition_size, arg_names)
    draws = np.random.RandomState(seed) if legacy else np.random.default_rng(seed)
    if method == "iid":
        parts = np.array_split(draws.permutation(n), num_clients)
    elif method == "dirichlet" and legacy:
        parts = _dirichlet_niid_bench(y, num_clients, float(alpha), min_partition_size, draws)
    elif method == "dirichlet":
        parts = _dirichlet(y, num_clients, float(alpha), min_partition_size, draws)
    elif method == "quantity":
        parts = _quantity(n, num_clients, float(alpha), min_partition_size, draws,
                          niid_bench=legacy)
    else:
        parts = _shards(y, num_clients, classes_per_client, draws)
    if parts is None:
        k = arg_names
        raise ValueError(
            f"could not give every client {k['min_partition_size']}={min_partition_size} "
            f"examples with {k['alpha']}={alpha} and {k['num_clients']}={num_clients} in "
            f"{MAX_SAMPLING_TRIES} Dirichlet draws; lower {k['min_partition_size']} or "
            f"{k['num_clients']}, or raise {k['alpha']}"
        )
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def check_partition_args(
    num_clients: int,
    method: str,
    *,
    alpha: float,
    classes_per_client: int,
    min_partition_size: int,
    seed: int,
    rng: str,
    arg_names: Mapping[str, str],
) -> None:
    """Check the arguments of ``partition_labels`` that do not depend on the labels.

    So a caller that gets its labels later (the flwr-datasets partitioner) fails at once, with
    the argument's name (as ``arg_names`` gives it), the value and what is accepted.
    """
    k = arg_names
    if method not in PARTITIONS:
        raise ValueError(
            f"{k['method']}={method!r} is not known; accepted: {', '.join(PARTITIONS)}"
        )
    if not _is_int(num_clients) or num_clients < 1:
        raise ValueError(
            f"{k['num_clients']}={num_clients!r} is invalid; accepted: an integer >= 1"
        )
    if (
        not isinstance(alpha, Real)
        or isinstance(alpha, bool)
        or not np.isfinite(alpha)
        or alpha <= 0
    ):
        raise ValueError(f"{k['alpha']}={alpha!r} is invalid; accepted: a finite number > 0")
    if not _is_int(min_partition_size) or min_partition_size < 0:
        raise ValueError(
            f"{k['min_partition_size']}={min_partition_size!r} is invalid; accepted: an "
            f"integer >= 0"
        )
    if not _is_int(classes_per_client) or classes_per_client < 1:
        raise ValueError(
            f"{k['classes_per_client']}={classes_per_client!r} is invalid; accepted: an "
            f"integer >= 1"
        )
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"{k['seed']}={seed!r} is invalid; accepted: an integer >= 0")
    if rng not in PARTITION_RNGS:
        raise ValueError(
            f"{k['rng']}={rng!r} is not known; accepted: {', '.join(PARTITION_RNGS)}"
        )
    if rng == "niid-bench" and method not in NIID_BENCH_PARTITIONS:
        raise ValueError(
            f"{k['rng']}='niid-bench' with {k['method']}={method!r}: NIID-Bench has no such "
            f"split; accepted: {k['rng']}='generator', or {k['method']} among "
            f"{', '.join(NIID_BENCH_PARTITIONS)}"
        )
    if rng == "niid-bench" and seed >= 2**32:  # np.random.RandomState's limit
        raise ValueError(
            f"{k['seed']}={seed} is too large for {k['rng']}='niid-bench'; accepted: an integer "
            f"in 0..{2**32 - 1}"
        )


def _check_labels(
    labels: np.ndarray | Sequence[int], niid_bench: bool, arg_names: Mapping[str, str]
) -> np.ndarray:
    """A non-empty 1-D integer label array, or a ValueError.

    NIID-Bench's classes are ``0..max(label)``: it would silently leave a negative label (an
    unlabelled example, as some Hugging Face splits mark them) out of every client.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"labels must be a non-empty 1-D integer array, got shape {y.shape} dtype {y.dtype}"
        )
    if niid_bench and y.min() < 0:
        raise ValueError(
            f"labels hold {int(y.min())}: {arg_names['rng']}='niid-bench' splits classes "
            f"0..max(label) as NIID-Bench does; accepted: labels >= 0"
        )
    return y


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_sizes(
    y: np.ndarray,
    num_clients: int,
    method: str,
    classes_per_client: int,
    min_partition_size: int,
    arg_names: Mapping[str, str],
) -> None:
    """The checks that need the labels: enough examples (and classes, for shards)."""
    k = arg_names
    n = len(y)
    if num_clients > n:
        raise ValueError(
            f"{k['num_clients']}={num_clients} exceeds the {n} examples to partition; "
            f"accepted: at most {n}, so that no client is empty"
        )
    if method in ("dirichlet", "quantity") and num_clients * min_partition_size > n:
        raise ValueError(
            f"{k['min_partition_size']}={min_partition_size} with {k['num_clients']}="
            f"{num_clients} needs {num_clients * min_partition_size} examples but there are "
            f"{n}; accepted: {k['min_partition_size']} <= {n // num_clients} for {num_clients} "
            f"clients"
        )
    if method != "shards":
        return
    num_classes = len(np.unique(y))
    num_shards = num_clients * classes_per_client
    shards = f"{k['num_clients']}={num_clients} x {k['classes_per_client']}={classes_per_client}"
    if classes_per_client > num_classes:
        raise ValueError(
            f"{k['classes_per_client']}={classes_per_client} is more than the {num_classes} "
            f"classes in the labels; accepted: 1..{num_classes}"
        )
    if num_shards < num_classes:
        raise ValueError(
            f"{shards} = {num_shards} shards cannot cover the {num_classes} classes; accepted: "
            f"{k['num_clients']} x {k['classes_per_client']} >= {num_classes}"
        )
    if num_shards > n:
        raise ValueError(
            f"{shards} = {num_shards} shards exceed the {n} examples; accepted: at most {n} "
            f"shards"
        )


def _dirichlet(
    y: np.ndarray, num_clients: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray] | None:
    """NIID-Bench's "noniid-labeldir", with bounded resampling (None: ``min_size`` unreached).

    Only the per-class proportions are resampled (cheap: a few numpy calls per class); the
    indices are shuffled and split once, for the accepted draw.
    """
    n = len(y)
    by_class = _indices_by_class(y)
    capacity = n / num_clients
    concentration = np.full(num_clients, alpha)
    for _ in range(MAX_SAMPLING_TRIES):
        sizes = np.zeros(num_clients, dtype=np.int64)
        cuts_per_class = []
        for members in by_class:
            count = len(members)
            open_clients = sizes < capacity  # NIID-Bench's balancing.
            proportions = rng.dirichlet(concentration) * open_clients
            total = proportions.sum()
            # At tiny alpha every open client's share can underflow to 0: share evenly then.
            proportions = proportions / total if total > 0 else open_clients / open_clients.sum()
            cuts = (np.cumsum(proportions) * count).astype(np.int64)[:-1]
            sizes += np.diff(cuts, prepend=0, append=count)
            cuts_per_class.append(cuts)
        if sizes.min() >= min_size:
            break
    else:
        return None
    chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for members, cuts in zip(by_class, cuts_per_class, strict=True):
        pieces = np.split(rng.permutation(members), cuts)
        for client, piece in enumerate(pieces):
            chunks[client].append(piece)
    return [np.concatenate(pieces) for pieces in chunks]


def _dirichlet_niid_bench(
    y: np.ndarray, num_clients: int, alpha: float, min_size: int, rng: np.random.RandomState
) -> list[np.ndarray] | None:
    """NIID-Bench's "noniid-labeldir" with its draws in its order (``utils.partition_data``).

    Written apart from ``_dirichlet`` because the order of draws is the point: every attempt
    shuffles each class again before its Dirichlet draw, as NIID-Bench does. Its classes are
    ``0..max(label)``; its endless resampling is bounded here (None: ``min_size`` unreached).
    """
    n = len(y)
    concentration = np.full(num_clients, alpha)
    for _ in range(MAX_SAMPLING_TRIES):
        sizes = np.zeros(num_clients, dtype=np.int64)
        chunks: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for k in range(int(y.max()) + 1):
            members = np.flatnonzero(y == k)
            rng.shuffle(members)
            proportions = rng.dirichlet(concentration) * (sizes < n / num_clients)
            total = proportions.sum()
            if total == 0:  # every open share underflowed (NIID-Bench would divide by 0)
                proportions, total = (sizes < n / num_clients).astype(float), 1.0
            cuts = (np.cumsum(proportions / total) * len(members)).astype(np.int64)[:-1]
            for client, piece in enumerate(np.split(members, cuts)):
                chunks[client].append(piece)
                sizes[client] += len(piece)
        if sizes.min() >= min_size:
            return [np.concatenate(pieces) for pieces in chunks]
    return None


def _quantity(
    n: int,
    num_clients: int,
    alpha: float,
    min_size: int,
    rng: np.random.Generator | np.random.RandomState,
    *,
    niid_bench: bool = False,
) -> list[np.ndarray] | None:
    """NIID-Bench's "iid-diff-quantity": Dirichlet sizes, IID labels, bounded resampling
    (None: ``min_size`` unreached).

    NIID-Bench renormalises the draw and checks ``min(proportions * N)`` before rounding
    (``niid_bench``, kept for its exact splits); by default the integer sizes are checked, so
    the minimum really holds.
    """
    order = rng.permutation(n)
    concentration = np.full(num_clients, alpha)
    for _ in range(MAX_SAMPLING_TRIES):
        proportions = rng.dirichlet(concentration)
        if niid_bench:
            proportions = proportions / proportions.sum()
        cuts = (np.cumsum(proportions) * n).astype(np.int64)[:-1]
        sizes = proportions * n if niid_bench else np.diff(cuts, prepend=0, append=n)
        smallest = sizes.min()
        if smallest >= min_size:
            return np.split(order, cuts)
    return None


def _shards(
    y: np.ndarray, num_clients: int, classes_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """FedAvg's pathological split, with shards cut inside classes.

    McMahan et al. sort by label and cut ``num_clients * classes_per_client`` equal shards;
    with balanced classes that is what this does. Cutting each class into its own shards
    (their number proportional to the class size) keeps every example assigned and every
    shard single-class when class sizes do not divide evenly, so a client never holds more
    than ``classes_per_client`` classes (fewer if it draws two shards of one class).
    """
    by_class = _indices_by_class(y)
    class_sizes = np.array([len(members) for members in by_class])
    num_shards = num_clients * classes_per_client  # _check_sizes made sure the shards fit
    shards_per_class = _apportion(class_sizes, num_shards)
    shards: list[np.ndarray] = []
    for members, count in zip(by_class, shards_per_class, strict=True):
        shards.extend(np.array_split(rng.permutation(members), count))
    dealt = rng.permutation(num_shards).reshape(num_clients, classes_per_client)
    return [np.concatenate([shards[s] for s in hand]) for hand in dealt]


def _indices_by_class(y: np.ndarray) -> list[np.ndarray]:
    """Indices of each class (ascending class value, ascending index), from one stable sort."""
    order = np.argsort(y, kind="stable")
    _, counts = np.unique(y, return_counts=True)
    return np.split(order, np.cumsum(counts)[:-1])


def _apportion(class_sizes: np.ndarray, num_shards: int) -> np.ndarray:
    """Shards per class: at least 1, at most the class size, summing to ``num_shards``.

    Largest-remainder rounding of ``num_shards * size / total``; callers guarantee
    ``len(class_sizes) <= num_shards <= class_sizes.sum()``.
    """
    quota = num_shards * class_sizes / class_sizes.sum()
    counts = np.clip(np.floor(quota).astype(np.int64), 1, class_sizes)
    remainder = quota - counts
    while counts.sum() < num_shards:
        room = counts < class_sizes
        k = int(np.argmax(np.where(room, remainder, -np.inf)))
        counts[k] += 1
        remainder[k] -= 1.0
    while counts.sum() > num_shards:
        spare = counts > 1
        k = int(np.argmin(np.where(spare, remainder, np.inf)))
        counts[k] -= 1
        remainder[k] += 1.0
    return counts

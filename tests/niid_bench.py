"""NIID-Bench's partitioning code, transcribed, as the reference for ``partition-rng='niid-bench'``
(tests/test_partitions.py, tests/test_flower_partitioners.py)."""

from __future__ import annotations

import numpy as np


def niid_bench_client_sets(
    y_train: np.ndarray, partition: str, n_parties: int, beta: float, init_seed: int
) -> dict[int, list[int]]:
    """``partition_data``'s client index sets, leaving the global ``np.random`` state as it was."""
    state = np.random.get_state()
    try:
        return partition_data(y_train, partition, n_parties, beta, init_seed)
    finally:
        np.random.set_state(state)


def partition_data(
    y_train: np.ndarray, partition: str, n_parties: int, beta: float, init_seed: int
) -> dict[int, list[int]]:
    """NIID-Bench's ``utils.partition_data`` (commit 61b901a), its three splits fedwsa has,
    transcribed line for line (``strict=True`` added to its zips), seeded as ``experiments.py``
    seeds it (global ``np.random``)."""
    np.random.seed(init_seed)
    n_train = y_train.shape[0]
    if partition == "homo":
        idxs = np.random.permutation(n_train)
        batch_idxs = np.array_split(idxs, n_parties)
        net_dataidx_map = {i: batch_idxs[i] for i in range(n_parties)}
    elif partition == "noniid-labeldir":
        min_size = 0
        min_require_size = 10
        K = 10
        N = y_train.shape[0]
        net_dataidx_map = {}
        while min_size < min_require_size:
            idx_batch = [[] for _ in range(n_parties)]
            for k in range(K):
                idx_k = np.where(y_train == k)[0]
                np.random.shuffle(idx_k)
                proportions = np.random.dirichlet(np.repeat(beta, n_parties))
                proportions = np.array([
                    p * (len(idx_j) < N / n_parties)
                    for p, idx_j in zip(proportions, idx_batch, strict=True)
                ])
                proportions = proportions / proportions.sum()
                proportions = (np.cumsum(proportions) * len(idx_k)).astype(int)[:-1]
                idx_batch = [
                    idx_j + idx.tolist()
                    for idx_j, idx in zip(idx_batch, np.split(idx_k, proportions), strict=True)
                ]
                min_size = min([len(idx_j) for idx_j in idx_batch])
        for j in range(n_parties):
            np.random.shuffle(idx_batch[j])
            net_dataidx_map[j] = idx_batch[j]
    elif partition == "iid-diff-quantity":
        idxs = np.random.permutation(n_train)
        min_size = 0
        while min_size < 10:
            proportions = np.random.dirichlet(np.repeat(beta, n_parties))
            proportions = proportions / proportions.sum()
            min_size = np.min(proportions * len(idxs))
        proportions = (np.cumsum(proportions) * len(idxs)).astype(int)[:-1]
        batch_idxs = np.split(idxs, proportions)
        net_dataidx_map = {i: batch_idxs[i] for i in range(n_parties)}
    return {j: list(v) for j, v in net_dataidx_map.items()}

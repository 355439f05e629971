"""NIID-Bench's own ``experiments.py``, run offline on a CIFAR-10 ``.npz`` under this torch.

fedwsa's ``grids/niid-bench.toml`` reproduces NIID-Bench's 10-client CIFAR-10 setting with
NIID-Bench's own split per seed (README, "NIID-Bench"). Where fedwsa's figure and the published
one differ, the question is whether NIID-Bench's code, run today on the same data and seeds,
gives the published figure or fedwsa's. This runs that code unchanged: it writes the ``.npz``
as torchvision's ``cifar-10-batches-py`` folder (the format NIID-Bench's ``CIFAR10_truncated``
reads), tells torchvision the folder is intact (offline, the files cannot match the archive's
MD5s byte for byte) and starts ``experiments.py`` with NIID-Bench's README command for the
setting, any arguments after ``--`` added (argparse keeps the last of a repeated flag).

    python benchmarks/niid_bench_original.py --niid-bench /path/to/NIID-Bench \\
        --data-root /data/cifar10.npz --workdir runs/niid-bench-original/fedavg-0 \\
        -- --alg=fedavg --init_seed=0

NIID-Bench's code is not shipped with fedwsa (a checkout of github.com/Xtra-Computing/NIID-Bench,
commit 61b901a was read) and needs scikit-learn. Its log (``WORKDIR/logs/*.log``) has one
``>> Global Model Test accuracy`` line per round. It trains one client at a time with its own
data loaders: expect about 2.8 hours per 50-round run on a 2-core CPU, 2.4 with
``--loader-workers 1`` and ``OMP_NUM_THREADS=1``. When it ends (or with
``--report``, for a run already made or still going) the script prints the accuracies in
fedwsa's terms: final, best round, and rounds 10 / 20 / 30 / 40 (NIID-Bench's ``comm round 0``
is fedwsa's round 1).
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import pickle
import re
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# NIID-Bench's README command for CIFAR-10, 10 parties, Dirichlet 0.5 (its leaderboard's setting)
README_COMMAND = ["--model=simple-cnn", "--dataset=cifar10", "--alg=fedavg", "--lr=0.01",
                  "--batch-size=64", "--epochs=10", "--n_parties=10", "--mu=0.01", "--rho=0.9",
                  "--comm_round=50", "--partition=noniid-labeldir", "--beta=0.5",
                  "--device=cpu", "--noise=0", "--sample=1", "--init_seed=0"]

TRAIN_BATCHES = 5
ACCURACY_LINE = re.compile(r">> Global Model Test accuracy: ([0-9.]+)")


def write_torchvision_cifar10(npz: Path, root: Path) -> np.ndarray:
    """``npz`` as torchvision's ``root/cifar-10-batches-py``: five train batches, the test batch
    and the meta file, rows of 3072 bytes in channel-major order, as the original archive
    stores them. fedwsa's own loader reads (and checks) the ``.npz`` first. Returns the train
    labels as fedwsa's loader gives them."""
    from fedwsa.data import load_dataset

    data = load_dataset("cifar10", str(npz), seed=0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batches = zip(np.array_split(data.x_train.numpy(), TRAIN_BATCHES),
                  np.array_split(data.y_train.numpy(), TRAIN_BATCHES), strict=True)
    files = [(f"data_batch_{i + 1}", x, y) for i, (x, y) in enumerate(batches)]
    files.append(("test_batch", data.x_test.numpy(), data.y_test.numpy()))
    for name, x, y in files:  # x: N x 3 x 32 x 32 uint8, already channel-major
        with open(folder / name, "wb") as f:
            pickle.dump({"data": x.reshape(len(x), -1), "labels": y.tolist()}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    return data.y_train.numpy()


def trust_local_cifar10() -> None:
    """torchvision checks the archive's MD5s and downloads when they differ: offline, accept the
    folder written above instead."""
    from torchvision.datasets import cifar

    cifar.check_integrity = lambda *args, **kwargs: True  # type: ignore[assignment]


def compare_splits(niid_bench: Path, data_dir: Path, labels: np.ndarray,
                   seeds: Sequence[int]) -> dict[int, bool]:
    """Per seed, whether NIID-Bench's own ``utils.partition_data`` gives fedwsa's client sets
    for the benchmark's split (``grids/niid-bench.toml``: 10 clients, Dirichlet 0.5, at least 10
    examples each). Its ``noniid-labeldir`` draws come from NumPy's global generator only, which
    ``experiments.py --init_seed=seed`` seeds with ``np.random.seed(seed)`` just before; that
    generator's state is restored afterwards."""
    from fedwsa.partitions.methods import partition_labels

    spec = importlib.util.spec_from_file_location("niid_bench_utils", niid_bench / "utils.py")
    assert spec is not None and spec.loader is not None
    utils = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(niid_bench.resolve()))  # its utils imports its other modules
    try:
        spec.loader.exec_module(utils)
    finally:
        sys.path.remove(str(niid_bench.resolve()))

    same, state = {}, np.random.get_state()
    try:
        for seed in seeds:
            np.random.seed(seed)
            _, y, _, _, theirs, _ = utils.partition_data(
                "cifar10", f"{data_dir}/", f"{data_dir}/", "noniid-labeldir", 10, beta=0.5)
            if not np.array_equal(np.asarray(y), labels):
                raise ValueError("NIID-Bench read other labels than fedwsa's loader")
            ours = partition_labels(labels, 10, "dirichlet", alpha=0.5, min_partition_size=10,
                                    seed=seed, rng="niid-bench")
            same[seed] = all(np.array_equal(np.sort(theirs[c]), ours[c]) for c in range(10))
    finally:
        np.random.set_state(state)
    return same


def logged_accuracies(workdir: Path) -> list[float]:
    """The global model's test accuracy after each round, from NIID-Bench's log in ``workdir``
    (the newest, if it was started more than once)."""
    logs = sorted((workdir / "logs").glob("*.log"), key=lambda f: f.stat().st_mtime)
    if not logs:
        raise FileNotFoundError(f"no NIID-Bench log under {workdir / 'logs'}")
    return [float(m.group(1)) for m in ACCURACY_LINE.finditer(logs[-1].read_text())]


def report(accuracies: Sequence[float]) -> str:
    """Final, best (its round) and rounds 10 / 20 / 30 / 40 (those reached), in percent, rounds
    counted from 1."""
    if not accuracies:
        return "no round finished yet"
    pct = [100 * a for a in accuracies]
    best = max(range(len(pct)), key=pct.__getitem__)
    marks = [r for r in (10, 20, 30, 40) if r <= len(pct)]
    text = f"rounds {len(pct)}: final {pct[-1]:.1f}, best {pct[best]:.1f} (round {best + 1})"
    if marks:
        text += (f", rounds {' / '.join(map(str, marks))}: "
                 + " / ".join(f"{pct[r - 1]:.1f}" for r in marks))
    return text


def load_in_workers(workers: int) -> None:
    """NIID-Bench's data loaders, made from now on, prepare batches in ``workers`` processes
    (its own code uses none). Its PIL transforms take more time than its training on a CPU:
    with one worker and a one-thread training (``OMP_NUM_THREADS=1``) a round took 2.9 minutes
    on 2 cores, against 3.3 with no worker and torch's default two threads. The draws (shuffles,
    crops, flips) then come from the workers' own seeded generators: other draws of the same
    distributions. Workers are forked: its transforms hold a lambda, which cannot be pickled
    for a spawned worker."""
    from torch.utils import data

    class Loader(data.DataLoader):  # type: ignore[type-arg]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs.setdefault("num_workers", workers)
            if kwargs["num_workers"]:
                kwargs.setdefault("multiprocessing_context", "fork")
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    data.DataLoader = Loader  # type: ignore[misc]


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--niid-bench", type=Path,
                        help="a checkout of github.com/Xtra-Computing/NIID-Bench")
    parser.add_argument("--data-root", type=Path, help="CIFAR-10 .npz")
    parser.add_argument("--workdir", required=True, type=Path,
                        help="the torchvision folder, NIID-Bench's logs and models go here")
    parser.add_argument("--report", action="store_true",
                        help="print the accuracies of the run in --workdir, run nothing")
    parser.add_argument("--loader-workers", type=int, default=0, metavar="N",
                        help="processes that prepare NIID-Bench's batches (its own code: 0)")
    parser.add_argument("--compare-splits", metavar="SEEDS",
                        help="comma-separated seeds: check that NIID-Bench's own partition code "
                             "gives fedwsa's client sets for each, train nothing (the "
                             "torchvision folder, 180 MB, is still written under --workdir)")
    args = parser.parse_args(own)
    if args.loader_workers < 0:
        parser.error(f"--loader-workers {args.loader_workers}: expected 0 or more")
    if args.loader_workers and "fork" not in multiprocessing.get_all_start_methods():
        parser.error("--loader-workers needs forked processes, which this system lacks")
    if (args.report or args.compare_splits is not None) and (extra or args.loader_workers):
        parser.error("--report and --compare-splits train nothing: drop --loader-workers and "
                     "the arguments after --")
    owned = [a for a in extra if a.split("=")[0] in ("--datadir", "--logdir", "--modeldir")]
    if owned:
        parser.error(f"{owned[0]}: this script sets NIID-Bench's folders under --workdir")
    if args.report:
        try:
            print(report(logged_accuracies(args.workdir)))
        except FileNotFoundError as e:
            parser.error(f"--workdir {args.workdir}: {e}")
        return
    if args.niid_bench is None or args.data_root is None:
        parser.error("--niid-bench and --data-root are needed to run (only --report reads)")
    seeds = []
    if args.compare_splits is not None:
        try:
            seeds = [int(s) for s in args.compare_splits.split(",")]
        except ValueError:
            seeds = []
        if not seeds or not all(0 <= s < 2**32 for s in seeds):
            parser.error(f"--compare-splits {args.compare_splits!r}: expected seeds from 0 to "
                         "2**32 - 1 like 0,1,2")
    script = args.niid_bench / "experiments.py"
    if not script.is_file():
        parser.error(f"--niid-bench {args.niid_bench}: no experiments.py there")
    if not args.data_root.is_file():
        parser.error(f"--data-root {args.data_root}: not a file")
    workdir = args.workdir.resolve()
    data_dir = workdir / "data"
    labels = write_torchvision_cifar10(args.data_root, data_dir)
    trust_local_cifar10()
    if seeds:
        for seed, same in compare_splits(args.niid_bench, data_dir, labels, seeds).items():
            print(f"seed {seed}: {'the same client sets' if same else 'DIFFERENT client sets'}")
        return
    command = [*README_COMMAND, f"--datadir={data_dir}/", f"--logdir={workdir / 'logs'}/",
               f"--modeldir={workdir / 'models'}/", *extra]
    if args.loader_workers:
        load_in_workers(args.loader_workers)
    print("experiments.py " + " ".join(command), flush=True)
    sys.path.insert(0, str(args.niid_bench.resolve()))
    os.chdir(args.niid_bench)  # it imports its own modules and reads config files from there
    sys.argv = [str(script), *command]
    runpy.run_path(str(script), run_name="__main__")
    print(report(logged_accuracies(workdir)), flush=True)  # its log is in workdir/logs


if __name__ == "__main__":
    main()

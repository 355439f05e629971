"""Datasets as tensors, and CIFAR-style augmentation that runs in batch on any device.

Every dataset is held as uint8 NCHW tensors (one copy per process, cached), so a trainer can move
the whole set to the GPU once and normalise/augment there, instead of paying a ``DataLoader``
and PIL per image. This module knows nothing about Flower, strategies, models or clients.
"""

from __future__ import annotations

import functools
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CIFAR_STATS",
    "CROP_PADDING",
    "PAD_MODES",
    "DATASETS",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_TEST",
    "SYNTHETIC_TRAIN",
    "DataError",
    "Dataset",
    "augment",
    "default_data_root",
    "load_dataset",
    "make_synthetic",
    "normalize",
    "pixel_stats",
    "sample_augmentation",
]

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "synthetic")

SYNTHETIC_TRAIN = 5000
SYNTHETIC_TEST = 1000
SYNTHETIC_CLASSES = 10
_SYNTHETIC_SHIFT = 2  # Largest shift of a synthetic image off its class template, in pixels.

CROP_PADDING = 4
PAD_MODES = ("reflect", "zeros")
"""How the random crop pads: NIID-Bench mirrors the border, torchvision's default is zeros."""
"""Zero padding on each side before the random 32x32 crop (the standard CIFAR recipe)."""

# The published per-channel constants, in [0, 1] pixel units (NIID-Bench and most CIFAR code use
# these; they are the exact statistics of the train split).
CIFAR_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "synthetic": SYNTHETIC_CLASSES}
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_IMAGE_HWC = (32, 32, 3)


class DataError(ValueError):
    """A dataset cannot be loaded; the message says why and what to change, in one line."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A whole dataset as uint8 NCHW images and int64 labels.

    Treat the tensors as read-only: ``load_dataset`` caches one instance per process and hands
    the same tensors to every caller. ``eq=False`` keeps identity equality, because field-wise
    ``==`` on tensors is ambiguous.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: torch.Tensor
    std: torch.Tensor


def default_data_root(name: str) -> Path:
    """Where a dataset is cached when ``data-root`` is empty."""
    return Path.home() / ".cache" / "fedwsa" / name


def train_set_key(name: str, data_root: str, seed: int) -> tuple[str, str, int | None]:
    """What decides a dataset's images: runs with equal keys see the same train set. The
    synthetic set is drawn from the seed (and has no root); a real one ignores the seed."""
    if name == "synthetic":
        return name, "", int(seed)
    root = os.path.expanduser(str(data_root)) if data_root else str(default_data_root(name))
    return name, root, None


def load_dataset(name: str, data_root: str, seed: int) -> Dataset:
    """Load ``name`` (one of ``DATASETS``), cached per process.

    ``data_root`` is a torchvision root folder (downloaded into when the data is missing), an
    ``.npz`` file with ``x_train``, ``y_train``, ``x_test``, ``y_test``, a folder that a Hugging
    Face ``DatasetDict.save_to_disk`` wrote (``train`` and ``test`` splits), or ``""`` for the
    default cache folder. ``seed`` only matters for ``synthetic``; ``data_root`` is ignored there.
    """
    if name not in DATASETS:
        raise DataError(f"dataset={name!r} is not known; accepted: {', '.join(DATASETS)}")
    # Real datasets do not depend on the seed: one cache entry serves every seed.
    key_name, root, key_seed = train_set_key(name, data_root, seed)
    return _load_cached(key_name, root, 0 if key_seed is None else key_seed)


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, root: str, seed: int) -> Dataset:
    """Build a dataset once per process: every Flower node process in a simulation loads it."""
    if name == "synthetic":
        return make_synthetic(seed)
    if root.lower().endswith(".npz"):
        return _load_npz(name, Path(root))
    if (Path(root) / "dataset_dict.json").is_file():  # what DatasetDict.save_to_disk writes
        return _load_saved_hf(name, Path(root))
    return _load_torchvision(name, root)


# ---------------------------------------------------------------------------------------------
# torchvision CIFAR
# ---------------------------------------------------------------------------------------------


def _load_torchvision(name: str, root: str) -> Dataset:
    """Read torchvision's on-disk CIFAR format from ``root``, downloading into it if missing."""
    import torchvision  # Heavy import, only paid by the datasets that need it.

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    # Accept the batches folder itself ("<root>/cifar-10-batches-py"), a common slip.
    if os.path.basename(os.path.normpath(root)) == cls.base_folder:
        root = os.path.dirname(os.path.normpath(root))
    try:
        train, test = cls(root, train=True, download=False), cls(root, train=False, download=False)
    except RuntimeError:  # torchvision's "Dataset not found or corrupted".
        try:
            train = cls(root, train=True, download=True)
            test = cls(root, train=False, download=False)
        except Exception as exc:  # Any failure means "no usable copy here".
            reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
            raise DataError(
                f"could not download {name} into {root!r} ({reason}); set data-root to a local "
                f"copy: a torchvision root folder holding {cls.base_folder}/, or an .npz file "
                f"with x_train, y_train, x_test, y_test (uint8 N x 32 x 32 x 3 images, int labels)"
            ) from exc
    x_train = _hwc_to_nchw(np.asarray(train.data, dtype=np.uint8))
    x_test = _hwc_to_nchw(np.asarray(test.data, dtype=np.uint8))
    y_train = torch.as_tensor(np.asarray(train.targets, dtype=np.int64))
    y_test = torch.as_tensor(np.asarray(test.targets, dtype=np.int64))
    mean, std = CIFAR_STATS[name]
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=_NUM_CLASSES[name],
        mean=torch.tensor(mean, dtype=torch.float32),
        std=torch.tensor(std, dtype=torch.float32),
    )


# ---------------------------------------------------------------------------------------------
# .npz
# ---------------------------------------------------------------------------------------------


def _load_npz(name: str, path: Path) -> Dataset:
    """Load and validate an ``.npz`` copy, so a bad file fails here and not deep in training."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (data-root must be an existing .npz file)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in _NPZ_KEYS if key not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: missing array(s) {', '.join(missing)}; an .npz data-root needs "
                    f"{', '.join(_NPZ_KEYS)}"
                )
            arrays = {key: npz[key] for key in _NPZ_KEYS}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: cannot read it as an .npz file ({exc})") from exc
    return _from_arrays(name, path, arrays, {key: key for key in _NPZ_KEYS})


def _from_arrays(
    name: str, path: Path, arrays: dict[str, np.ndarray], names: dict[str, str]
) -> Dataset:
    """Check uint8 HWC images and their labels (``_NPZ_KEYS``), then build the ``Dataset``.

    A bad array fails here, with ``path`` and the array's name in ``names``, and not deep in
    training.
    """
    num_classes = _NUM_CLASSES[name]
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        x_name, y_name = names[f"x_{split}"], names[f"y_{split}"]
        if x.dtype != np.uint8:
            raise DataError(f"{path}: {x_name} has dtype {x.dtype}, expected uint8 pixels 0..255")
        if x.ndim != 4 or tuple(x.shape[1:]) != _IMAGE_HWC:
            raise DataError(
                f"{path}: {x_name} has shape {tuple(x.shape)}, expected (N, 32, 32, 3) HWC images"
            )
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"{path}: {y_name} has shape {tuple(y.shape)} and dtype {y.dtype}, "
                f"expected a 1-D integer array"
            )
        if len(y) != len(x):
            raise DataError(f"{path}: {x_name} has {len(x)} images but {y_name} {len(y)} labels")
        if len(x) == 0:
            raise DataError(f"{path}: {x_name} is empty")
        if y.min() < 0 or y.max() >= num_classes:
            raise DataError(
                f"{path}: {y_name} holds labels {int(y.min())}..{int(y.max())}, expected "
                f"0..{num_classes - 1} for {name}"
            )
    x_train = _hwc_to_nchw(arrays["x_train"])
    mean, std = _channel_stats(x_train)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=torch.as_tensor(arrays["y_train"].astype(np.int64)),
        x_test=_hwc_to_nchw(arrays["x_test"]),
        y_test=torch.as_tensor(arrays["y_test"].astype(np.int64)),
        num_classes=num_classes,
        mean=mean,
        std=std,
    )


# ---------------------------------------------------------------------------------------------
# a Hugging Face DatasetDict saved with save_to_disk
# ---------------------------------------------------------------------------------------------

HF_LABEL_COLUMNS = ("label", "fine_label")
"""Label columns looked for, in order: the Hub's CIFAR-10 has ``label``, its CIFAR-100
``fine_label`` (and ``coarse_label``)."""


def _load_saved_hf(name: str, path: Path) -> Dataset:
    """A ``DatasetDict`` that ``save_to_disk`` wrote (of ``uoft-cs/cifar10``, say), read offline.

    Its ``train`` and ``test`` splits each need one ``Image`` column and a label column
    (``HF_LABEL_COLUMNS``); the images are decoded once, then checked as an ``.npz`` is. The rows
    keep the saved order, which need not be torchvision's.
    """
    import datasets  # Heavy import, only paid by the datasets that need it.

    try:
        saved = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise DataError(
            f"{path}: cannot read it as a Hugging Face save_to_disk folder ({reason})"
        ) from exc
    missing = [split for split in ("train", "test") if split not in saved]
    if missing:
        raise DataError(
            f"{path}: no {' or '.join(missing)} split (it has {', '.join(saved)}); a "
            f"save_to_disk data-root needs train and test"
        )
    arrays: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}
    for split in ("train", "test"):
        part = saved[split]
        images = [c for c, f in part.features.items() if isinstance(f, datasets.Image)]
        labels = [c for c in HF_LABEL_COLUMNS if c in part.column_names]
        if len(images) != 1 or not labels:
            raise DataError(
                f"{path}: the {split} split has columns {', '.join(part.column_names)}; "
                f"expected one Image column and a {' or '.join(HF_LABEL_COLUMNS)} column"
            )
        columns = part.with_format("numpy", columns=[images[0], labels[0]])[:]
        for key, column in ((f"x_{split}", images[0]), (f"y_{split}", labels[0])):
            arrays[key] = np.asarray(columns[column])
            names[key] = f"{split}[{column!r}]"
    return _from_arrays(name, path, arrays, names)


def _hwc_to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x C (numpy) -> contiguous uint8 N x C x H x W (torch)."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std of uint8 images, in [0, 1] units.

    Works in chunks (no full float copy of a 50k-image set): per-image sums in float32 over
    contiguous pixels (fast), accumulated over images in float64.
    """
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, x.shape[0], chunk):
        block = x[start : start + chunk].to(torch.float32)
        total += block.sum(dim=(2, 3)).to(torch.float64).sum(dim=0)
        total_sq += block.square_().sum(dim=(2, 3)).to(torch.float64).sum(dim=0)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(1e-12)
    return (mean / 255.0).float(), (var.sqrt() / 255.0).float()


# ---------------------------------------------------------------------------------------------
# synthetic
# ---------------------------------------------------------------------------------------------


def make_synthetic(
    seed: int, num_train: int = SYNTHETIC_TRAIN, num_test: int = SYNTHETIC_TEST
) -> Dataset:
    """A CIFAR-shaped, seeded set with real class structure, for tests and smoke runs.

    Each class is a smooth random colour template (a 3 x 3 random grid upsampled to a 36 x 36
    canvas). An image is a randomly shifted 32 x 32 window of its class template, blended with a
    window of another class's template (a distractor), with random contrast, brightness, a colour
    cast and pixel noise. NIID-Bench's simple CNN (SGD, lr 0.01, momentum 0.9, batch 32, one
    local epoch, Dirichlet 0.5 clients) passes 50% test accuracy after about 2 FedAvg rounds
    with 10 clients and 5 with 20 (more local steps per round learn faster), which is what
    smoke tests of the whole pipeline need; a linear model also fits it, so it is no benchmark.
    """
    gen = torch.Generator().manual_seed(int(seed))
    num_classes = SYNTHETIC_CLASSES
    grid = torch.randn(num_classes, 3, 3, 3, generator=gen)
    canvas = 32 + 2 * _SYNTHETIC_SHIFT
    templates = F.interpolate(grid, size=(canvas, canvas), mode="bicubic", align_corners=False)
    templates = templates / templates.flatten(1).std(dim=1).view(-1, 1, 1, 1)
    # Every (class, shift) window once, so drawing an image is a row lookup: keeps the whole
    # set at a few vectorised passes (well under a second for 6,000 images).
    side = 2 * _SYNTHETIC_SHIFT + 1
    shifts = torch.cartesian_prod(torch.arange(side), torch.arange(side))  # [S, 2]
    num_shifts = shifts.shape[0]
    offsets = shifts.repeat(num_classes, 1)
    windows = _gather_window(
        templates.repeat_interleave(num_shifts, dim=0),
        offsets[:, 0, None] + torch.arange(32),
        offsets[:, 1, None] + torch.arange(32),
    )  # [classes * S, 3, 32, 32], row = class * S + shift

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
        other = (labels + torch.randint(1, num_classes, (n,), generator=gen)) % num_classes
        shift = torch.randint(0, num_shifts, (2, n), generator=gen)
        contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=gen)
        mix = 0.3 * torch.rand(n, 1, 1, 1, generator=gen)
        cast = 0.4 * torch.randn(n, 3, 1, 1, generator=gen)
        brightness = 128.0 + 10.0 * torch.randn(n, 1, 1, 1, generator=gen)
        signal = windows[labels * num_shifts + shift[0]]
        signal.add_(windows[other * num_shifts + shift[1]] * mix).mul_(contrast).add_(cast)
        signal.add_(torch.randn(n, 3, 32, 32, generator=gen), alpha=0.3)
        pixels = signal.mul_(60.0).add_(brightness).round_().clamp_(0, 255)
        return pixels.to(torch.uint8), labels.to(torch.int64)

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(num_test)
    mean, std = _channel_stats(x_train)
    return Dataset(
        name="synthetic",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        mean=mean,
        std=std,
    )


# ---------------------------------------------------------------------------------------------
# normalisation and augmentation
# ---------------------------------------------------------------------------------------------


def pixel_stats(data: Dataset, standardise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The (mean, std) that ``normalize`` uses: the train set's per-channel statistics, or
    (0, 1), which makes ``normalize`` exactly torchvision's ``ToTensor`` (x / 255)."""
    if standardise:
        return data.mean, data.std
    return torch.zeros_like(data.mean), torch.ones_like(data.std)


def normalize(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel, as float32, on ``x``'s device.

    ``x_uint8`` has shape ``[..., 3, H, W]``; keeping data uint8 until here lets a whole
    dataset sit on the GPU at a quarter of the float32 size.
    """
    mean = mean.to(device=x_uint8.device, dtype=torch.float32).view(-1, 1, 1)
    std = std.to(device=x_uint8.device, dtype=torch.float32).view(-1, 1, 1)
    return (x_uint8.to(torch.float32) / 255.0 - mean) / std


def sample_augmentation(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw crop offsets (int64 ``[n, 2]`` in ``[0, 8]``) and flips (bool ``[n]``).

    Drawing is kept apart from ``augment`` so the sequential and batched trainers can draw the
    same parameters from the same generator and get identical images. The tensors live on the
    generator's device.
    """
    device = generator.device
    offsets = torch.randint(
        0, 2 * CROP_PADDING + 1, (n, 2), generator=generator, device=device, dtype=torch.int64
    )
    flips = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    return offsets, flips


def augment(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor,
            pad_mode: str = "reflect") -> torch.Tensor:
    """Random-crop (padding 4) and horizontally flip a batch, with the given parameters.

    ``x`` is ``[*lead, C, H, W]`` with ``offsets`` ``[*lead, 2]`` (row, column offset into the
    padded image, ``4`` = centre) and ``flips`` ``[*lead]``; ``lead`` is ``[N]`` or ``[K, B]``.
    ``pad_mode`` is ``"reflect"`` (NIID-Bench's ``Pad(4, padding_mode='reflect')``: the border
    mirrors the image without repeating its edge) or ``"zeros"`` (torchvision's ``RandomCrop(32,
    padding=4)``; 0 in ``x``'s units: apply it to raw pixels, before ``normalize``, for a black
    border). One gather for the whole batch, exact for any dtype and device.
    """
    lead = x.shape[:-3]
    if tuple(offsets.shape) != (*lead, 2) or tuple(flips.shape) != tuple(lead):
        raise ValueError(
            f"augment: x {tuple(x.shape)} needs offsets {(*lead, 2)} and flips {tuple(lead)}, "
            f"got {tuple(offsets.shape)} and {tuple(flips.shape)}"
        )
    if pad_mode not in PAD_MODES:
        raise ValueError(f"augment: pad_mode={pad_mode!r}, expected one of {PAD_MODES}")
    p = CROP_PADDING
    flat = x.reshape(-1, *x.shape[-3:])
    h, w = flat.shape[-2:]
    device = flat.device
    offsets = offsets.reshape(-1, 2).to(device=device, dtype=torch.int64)
    rows = offsets[:, 0, None] + torch.arange(h, device=device)  # [N, H], padded coordinates
    cols = offsets[:, 1, None] + torch.arange(w, device=device)  # [N, W]
    if pad_mode == "zeros":
        source = F.pad(flat, (p, p, p, p))
    else:  # reflect: map padded coordinates back into the image, i -> (n-1) - |(n-1) - |i||
        source = flat
        rows = (h - 1) - ((h - 1) - (rows - p).abs()).abs()
        cols = (w - 1) - ((w - 1) - (cols - p).abs()).abs()
    flips = flips.reshape(-1).to(device=device, dtype=torch.bool)
    cols = torch.where(flips[:, None], cols.flip(-1), cols)
    return _gather_window(source, rows, cols).reshape(x.shape)


def _gather_window(source: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Pixels ``source[n, :, rows[n, i], cols[n, j]]`` of each image of ``source`` [N, C, H', W'].

    One ``gather`` over the flattened pixels with per-image index grids: exact, any dtype and
    device, and faster on CPU than 4-D advanced indexing.
    """
    n, c, _, source_w = source.shape
    out_h, out_w = rows.shape[1], cols.shape[1]
    index = (rows[:, :, None] * source_w + cols[:, None, :]).view(n, 1, out_h * out_w)
    flat = source.reshape(n, c, -1).gather(2, index.expand(n, c, out_h * out_w))
    return flat.view(n, c, out_h, out_w)

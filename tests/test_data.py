"""Tests for fedwsa.data: synthetic set, .npz, save_to_disk and torchvision loading (offline),
augmentation."""

from __future__ import annotations

import hashlib
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from fedwsa import data as fdata
from fedwsa.data import (
    CIFAR_STATS,
    SYNTHETIC_TEST,
    SYNTHETIC_TRAIN,
    DataError,
    augment,
    load_dataset,
    make_synthetic,
    normalize,
    pixel_stats,
    sample_augmentation,
)

# ---------------------------------------------------------------------------------------------
# synthetic
# ---------------------------------------------------------------------------------------------


def test_synthetic_shapes_and_dtypes() -> None:
    ds = load_dataset("synthetic", "", seed=0)
    assert ds.name == "synthetic"
    assert ds.num_classes == 10
    assert ds.x_train.shape == (SYNTHETIC_TRAIN, 3, 32, 32)
    assert ds.x_test.shape == (SYNTHETIC_TEST, 3, 32, 32)
    assert ds.x_train.dtype == ds.x_test.dtype == torch.uint8
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64
    assert ds.y_train.shape == (SYNTHETIC_TRAIN,) and ds.y_test.shape == (SYNTHETIC_TEST,)
    assert torch.equal(torch.bincount(ds.y_train), torch.full((10,), SYNTHETIC_TRAIN // 10))
    assert ds.mean.shape == ds.std.shape == (3,)
    x = ds.x_train.double() / 255
    torch.testing.assert_close(ds.mean.double(), x.mean(dim=(0, 2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(ds.std.double(), x.std(dim=(0, 2, 3)), atol=1e-4, rtol=0)


def test_synthetic_is_deterministic_per_seed_and_cached() -> None:
    a, b, c = (make_synthetic(seed, num_train=500, num_test=100) for seed in (3, 3, 4))
    for name in ("x_train", "y_train", "x_test", "y_test", "mean", "std"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.x_train, c.x_train)
    assert not torch.equal(a.y_train, c.y_train)
    # One build per process and seed; data_root does not matter for the synthetic set.
    assert load_dataset("synthetic", "", 5) is load_dataset("synthetic", "/elsewhere", 5)
    assert torch.equal(load_dataset("synthetic", "", 5).x_train, make_synthetic(5).x_train)


class _SimpleCNN(nn.Module):
    """NIID-Bench's simple CNN, inline so this test does not depend on fedwsa.models."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2).flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def test_synthetic_is_learnable_by_the_simple_cnn() -> None:
    """A couple of hundred SGD steps (NIID-Bench settings) beat chance by far."""
    ds = make_synthetic(0)
    x_train = normalize(ds.x_train, ds.mean, ds.std)
    x_test = normalize(ds.x_test, ds.mean, ds.std)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Tiny convolutions: one thread is faster, and immune to load.
    try:
        torch.manual_seed(0)
        model = _SimpleCNN()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        order = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(0))
        for step in range(150):
            batch = order[step * 32 : (step + 1) * 32]
            loss = F.cross_entropy(model(x_train[batch]), ds.y_train[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == ds.y_test).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert accuracy >= 0.5


def test_unknown_dataset_name() -> None:
    with pytest.raises(DataError, match="dataset='mnist'.*cifar10, cifar100, synthetic"):
        load_dataset("mnist", "", 0)


# ---------------------------------------------------------------------------------------------
# .npz
# ---------------------------------------------------------------------------------------------


def _arrays(n_train: int = 12, n_test: int = 6, classes: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        "y_train": rng.integers(0, classes, n_train).astype(np.int32),
        "x_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        "y_test": rng.integers(0, classes, n_test).astype(np.uint8),
    }


def test_npz_round_trip(tmp_path: Path) -> None:
    arrays = _arrays(classes=100)
    path = tmp_path / "cifar100.npz"
    np.savez(path, **arrays)
    ds = load_dataset("cifar100", str(path), seed=0)
    assert ds.name == "cifar100" and ds.num_classes == 100
    assert ds.x_train.dtype == torch.uint8 and ds.x_train.shape == (12, 3, 32, 32)
    assert ds.x_train.is_contiguous()
    assert torch.equal(ds.x_train, torch.from_numpy(arrays["x_train"]).permute(0, 3, 1, 2))
    assert torch.equal(ds.x_test, torch.from_numpy(arrays["x_test"]).permute(0, 3, 1, 2))
    assert ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == arrays["y_train"].tolist()
    assert ds.y_test.tolist() == arrays["y_test"].tolist()
    # Normalisation constants come from the train images, not the published CIFAR ones.
    expected_mean = arrays["x_train"].astype(np.float64).mean(axis=(0, 1, 2)) / 255
    np.testing.assert_allclose(ds.mean.numpy(), expected_mean, atol=1e-6)
    expected_std = arrays["x_train"].astype(np.float64).std(axis=(0, 1, 2)) / 255
    np.testing.assert_allclose(ds.std.numpy(), expected_std, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("y_test"), "missing array.*y_test"),
        (lambda a: a.update(x_train=a["x_train"].astype(np.float32)), "x_train has dtype float32"),
        (lambda a: a.update(x_test=a["x_test"].transpose(0, 3, 1, 2)), r"x_test has shape \(6, 3"),
        (lambda a: a.update(y_train=a["y_train"][:5]), "12 images but y_train 5 labels"),
        (lambda a: a.update(y_train=a["y_train"] + 10), "y_train holds labels.*expected 0..9"),
        (lambda a: a.update(y_test=a["y_test"].astype(np.float64)), "y_test.*1-D integer"),
    ],
)
def test_npz_errors_name_the_file(tmp_path: Path, change, message: str) -> None:
    arrays = _arrays()
    change(arrays)
    path = tmp_path / "broken.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_dataset("cifar10", str(path), 0)
    assert str(path) in str(info.value)


def test_npz_missing_or_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    with pytest.raises(DataError, match="file not found") as info:
        load_dataset("cifar10", str(missing), 0)
    assert str(missing) in str(info.value)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="cannot read") as info:
        load_dataset("cifar10", str(garbage), 0)
    assert str(garbage) in str(info.value)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------------------------
# a Hugging Face DatasetDict saved with save_to_disk
# ---------------------------------------------------------------------------------------------


def _save_hf(path: Path, arrays: dict[str, np.ndarray], label: str = "label",
             classes: int = 10, splits: tuple[str, ...] = ("train", "test")) -> Path:
    """``arrays`` as the Hub's CIFAR sets look (an ``img`` Image column, a ClassLabel), saved."""
    import datasets

    features = datasets.Features(
        {"img": datasets.Image(), label: datasets.ClassLabel(num_classes=classes)}
    )
    datasets.DatasetDict({
        split: datasets.Dataset.from_dict(
            {"img": list(arrays[f"x_{split}"]), label: arrays[f"y_{split}"]}, features=features
        )
        for split in splits
    }).save_to_disk(str(path))
    return path


@pytest.mark.parametrize(("name", "label", "classes"),
                         [("cifar10", "label", 10), ("cifar100", "fine_label", 100)])
def test_saved_hf_round_trip(tmp_path: Path, name: str, label: str, classes: int) -> None:
    arrays = _arrays(classes=classes)
    path = _save_hf(tmp_path / name, arrays, label, classes)
    ds = load_dataset(name, str(path), seed=0)
    assert ds.num_classes == classes and ds.x_train.shape == (12, 3, 32, 32)
    assert torch.equal(ds.x_train, torch.from_numpy(arrays["x_train"]).permute(0, 3, 1, 2))
    assert torch.equal(ds.x_test, torch.from_numpy(arrays["x_test"]).permute(0, 3, 1, 2))
    assert ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == arrays["y_train"].tolist()
    assert ds.y_test.tolist() == arrays["y_test"].tolist()


def test_saved_hf_errors_name_the_folder(tmp_path: Path) -> None:
    arrays = _arrays()
    cases = [
        (_save_hf(tmp_path / "no-test", arrays, splits=("train",)), "no test split"),
        (_save_hf(tmp_path / "other-label", arrays, label="target"),
         "columns img, target; expected one Image column and a label or fine_label column"),
        (_save_hf(tmp_path / "too-many-classes", dict(arrays, y_train=arrays["y_train"] + 10),
                  classes=20), r"train\['label'\] holds labels .* expected 0..9"),
    ]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset_dict.json").write_text("not json")
    cases.append((broken, "cannot read it as a Hugging Face save_to_disk folder"))
    for path, message in cases:
        with pytest.raises(DataError, match=message) as info:
            load_dataset("cifar10", str(path), 0)
        assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------
# torchvision, offline
# ---------------------------------------------------------------------------------------------
#
# The fake datasets below are written in torchvision's own on-disk format. torchvision checks
# every file against an md5 in the class attributes ``train_list``, ``test_list`` and ``meta``;
# rather than stubbing the check out, the tests point those attributes at the md5s of the fake
# files, so torchvision's real reading *and* integrity code run. Downloading is replaced by a
# function that fails the test, so nothing here can touch the network.


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _dump(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj))


def _fake_cifar(
    root: Path, monkeypatch: pytest.MonkeyPatch, cls: type, sizes: dict[str, int], classes: int
) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write ``cls``'s files under ``root`` with random CHW rows; return them per file name."""
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    label_key = "labels" if cls is torchvision.datasets.CIFAR10 else "fine_labels"
    written = {}
    for name, n in sizes.items():
        rows = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, classes, n).tolist()
        _dump(folder / name, {"data": rows, label_key: labels, "batch_label": name})
        written[name] = (rows, labels)
    meta_key = cls.meta["key"]
    _dump(folder / cls.meta["filename"], {meta_key: [f"class{i}" for i in range(classes)]})
    train_names = [name for name, _ in cls.train_list]
    test_names = [name for name, _ in cls.test_list]
    monkeypatch.setattr(cls, "train_list", [[n, _md5(folder / n)] for n in train_names])
    monkeypatch.setattr(cls, "test_list", [[n, _md5(folder / n)] for n in test_names])
    meta = dict(cls.meta, md5=_md5(folder / cls.meta["filename"]))
    monkeypatch.setattr(cls, "meta", meta)
    return written


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download attempt fails the test (and never reaches the network)."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", forbidden)


def _as_nchw(rows: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.concatenate(rows).reshape(-1, 3, 32, 32))


@pytest.mark.usefixtures("no_download")
def test_cifar10_from_a_torchvision_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    written = _fake_cifar(
        tmp_path,
        monkeypatch,
        torchvision.datasets.CIFAR10,
        {**dict.fromkeys(train_names, 3), "test_batch": 4},
        classes=10,
    )
    ds = load_dataset("cifar10", str(tmp_path), seed=0)
    assert ds.name == "cifar10" and ds.num_classes == 10
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_train.dtype == torch.uint8
    assert torch.equal(ds.x_train, _as_nchw([written[n][0] for n in train_names]))
    assert ds.y_train.tolist() == sum((written[n][1] for n in train_names), [])
    assert torch.equal(ds.x_test, _as_nchw([written["test_batch"][0]]))
    assert ds.y_test.tolist() == written["test_batch"][1] and ds.y_test.dtype == torch.int64
    assert ds.mean.tolist() == pytest.approx(CIFAR_STATS["cifar10"][0])
    assert ds.std.tolist() == pytest.approx(CIFAR_STATS["cifar10"][1])
    # Pointing data-root at the batches folder itself works too.
    inner = load_dataset("cifar10", str(tmp_path / "cifar-10-batches-py"), seed=0)
    assert torch.equal(inner.x_train, ds.x_train)


@pytest.mark.usefixtures("no_download")
def test_cifar100_from_a_torchvision_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = _fake_cifar(
        tmp_path, monkeypatch, torchvision.datasets.CIFAR100, {"train": 7, "test": 5}, classes=100
    )
    ds = load_dataset("cifar100", str(tmp_path), seed=0)
    assert ds.num_classes == 100
    assert torch.equal(ds.x_train, _as_nchw([written["train"][0]]))
    assert ds.y_train.tolist() == written["train"][1]
    assert torch.equal(ds.x_test, _as_nchw([written["test"][0]]))
    assert ds.y_test.tolist() == written["test"][1]
    assert ds.mean.tolist() == pytest.approx(CIFAR_STATS["cifar100"][0])


def _offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make torchvision's download fail as it does without a network; record the URLs."""
    calls: list[str] = []

    def unreachable(url: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", unreachable)
    return calls


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_download_failure_is_a_clear_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    calls = _offline(monkeypatch)
    root = tmp_path / "empty"
    with pytest.raises(DataError) as info:
        load_dataset(name, str(root), seed=0)
    message = str(info.value)
    assert calls and "cs.toronto.edu" in calls[0]  # The real download was attempted.
    assert "\n" not in message
    assert f"could not download {name}" in message and str(root) in message
    assert "data-root" in message and ".npz" in message and "x_train" in message


def test_empty_data_root_uses_the_default_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _offline(monkeypatch)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "", seed=0)
    assert str(tmp_path / ".cache" / "fedwsa" / "cifar10") in str(info.value)
    assert fdata.default_data_root("cifar10") == tmp_path / ".cache" / "fedwsa" / "cifar10"


# ---------------------------------------------------------------------------------------------
# normalize, augmentation
# ---------------------------------------------------------------------------------------------


def test_normalize_matches_a_manual_per_channel_computation() -> None:
    x = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8)
    mean = torch.tensor([0.1, 0.5, 0.9])
    std = torch.tensor([0.2, 0.25, 0.5])
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32 and out.shape == x.shape
    for c in range(3):
        expected = (x[:, c].double() / 255.0 - mean[c].item()) / std[c].item()
        torch.testing.assert_close(out[:, c].double(), expected, atol=1e-5, rtol=0)
    # Leading batch dims, float64 constants and float pixel input (0..255) work the same way.
    batched = normalize(x.view(2, 2, 3, 5, 6).float(), mean.double(), std.double())
    torch.testing.assert_close(batched.view_as(out), out)


def test_sample_augmentation_ranges_and_determinism() -> None:
    offsets, flips = sample_augmentation(2000, torch.Generator().manual_seed(0))
    assert offsets.shape == (2000, 2) and offsets.dtype == torch.int64
    assert flips.shape == (2000,) and flips.dtype == torch.bool
    assert offsets.min() == 0 and offsets.max() == 8
    assert set(offsets.unique().tolist()) == set(range(9))
    assert 0.4 < flips.float().mean().item() < 0.6
    again = sample_augmentation(2000, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], offsets) and torch.equal(again[1], flips)


def _reference_augment(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """One image at a time: pad with zeros, slice, flip (the obvious, slow way)."""
    out = []
    for image, (dy, dx), flip in zip(x, offsets.tolist(), flips.tolist(), strict=True):
        crop = F.pad(image, (4, 4, 4, 4))[:, dy : dy + 32, dx : dx + 32]
        out.append(torch.flip(crop, dims=[-1]) if flip else crop)
    return torch.stack(out)


def test_augment_centre_crop_without_flip_is_identity() -> None:
    x = torch.rand(5, 3, 32, 32)
    offsets = torch.full((5, 2), 4)
    assert torch.equal(augment(x, offsets, torch.zeros(5, dtype=torch.bool)), x)
    flipped = augment(x, offsets, torch.ones(5, dtype=torch.bool))
    assert torch.equal(flipped, torch.flip(x, dims=[-1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.uint8])
def test_augment_matches_pad_and_slice(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(64, 3, 32, 32, generator=gen) * 255).to(dtype)
    offsets, flips = sample_augmentation(64, gen)
    offsets[:4] = torch.tensor([[0, 0], [8, 8], [0, 8], [8, 0]])  # The corners, for sure.
    out = augment(x, offsets, flips, "zeros")
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, _reference_augment(x, offsets, flips))


@pytest.mark.parametrize("pad_mode", ["reflect", "zeros"])
def test_augment_equals_torchvision_transforms_image_by_image(pad_mode: str) -> None:
    """NIID-Bench's train transform, image by image with torchvision (Pad(4, reflect) or
    RandomCrop's zero padding, crop at the drawn offsets, horizontal flip when drawn): the same
    uint8 pixels as fedwsa's batched gather."""
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as TF

    gen = torch.Generator().manual_seed(4)
    x = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=gen)
    offsets, flips = sample_augmentation(40, gen)
    offsets[:4] = torch.tensor([[0, 0], [8, 8], [0, 8], [8, 0]])  # the corners, for sure
    flips[0] = False
    mode = "reflect" if pad_mode == "reflect" else "constant"
    pad = v2.Pad(4, padding_mode=mode)
    expected = []
    for image, (top, left), flip in zip(x, offsets.tolist(), flips.tolist(), strict=True):
        crop = TF.crop(pad(image), top, left, 32, 32)
        expected.append(TF.horizontal_flip(crop) if flip else crop)
    got = augment(x, offsets, flips, pad_mode)
    assert torch.equal(got, torch.stack(expected))
    if pad_mode == "reflect":  # the border mirrors the image, no black pixels
        assert torch.equal(got[0, :, 4:, 4:], x[0, :, :28, :28])
        assert torch.equal(got[0, :, 3, 4:], x[0, :, 1, :28])


def test_augment_refuses_an_unknown_pad_mode() -> None:
    x = torch.zeros(2, 3, 32, 32)
    offsets, flips = sample_augmentation(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="pad_mode"):
        augment(x, offsets, flips, "edge")


def test_pixel_stats_off_is_torchvision_to_tensor() -> None:
    """normalize=false: the pixels NIID-Bench feeds its model, exactly: its ``ToTensor()`` on
    HWC uint8 images (x / 255; torchvision's v2 ``ToDtype(scale=True)`` multiplies by 1/255
    instead, which differs in the last bit)."""
    from torchvision.transforms import ToTensor

    data = load_dataset("synthetic", "", 0)
    mean, std = pixel_stats(data, False)
    x = data.x_test[:8]
    expected = torch.stack([ToTensor()(i.permute(1, 2, 0).numpy()) for i in x])
    assert torch.equal(normalize(x, mean, std), expected)
    assert pixel_stats(data, True) == (data.mean, data.std)


def test_augment_with_leading_cohort_dims_equals_flat() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 3, 32, 32, generator=gen)
    offsets, flips = sample_augmentation(12, gen)
    out = augment(x, offsets.view(3, 4, 2), flips.view(3, 4))
    assert out.shape == x.shape
    flat = augment(x.reshape(12, 3, 32, 32), offsets, flips)
    assert torch.equal(out.reshape(12, 3, 32, 32), flat)
    zeros = augment(x.reshape(12, 3, 32, 32), offsets, flips, "zeros")
    assert torch.equal(zeros, _reference_augment(x.reshape(12, 3, 32, 32), offsets, flips))


def test_augment_rejects_mismatched_parameters() -> None:
    x = torch.zeros(4, 3, 32, 32)
    offsets, flips = sample_augmentation(3, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="augment"):
        augment(x, offsets, flips)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_and_normalize_on_cuda_match_cpu() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (2, 8, 3, 32, 32), dtype=torch.uint8, generator=gen)
    offsets, flips = sample_augmentation(16, gen)
    offsets, flips = offsets.view(2, 8, 2), flips.view(2, 8)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.3, 0.25])
    cpu = normalize(augment(x.float(), offsets, flips), mean, std)
    cuda = normalize(augment(x.cuda().float(), offsets.cuda(), flips.cuda()), mean, std)
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu)
    cuda_gen = torch.Generator(device="cuda").manual_seed(0)
    cuda_offsets, cuda_flips = sample_augmentation(5, cuda_gen)
    assert cuda_offsets.device.type == "cuda" and cuda_flips.device.type == "cuda"


def test_nodes_follow_normalize_and_crop_padding() -> None:
    """The keys reach a node's data pipeline: (0, 1) stats for normalize=false, the pad mode."""
    from fedwsa.clients.node import node_data
    from fedwsa.config import make_config

    niid = node_data(make_config({"normalize": False, "crop-padding": "zeros"}))
    assert torch.equal(niid.mean, torch.zeros(3)) and torch.equal(niid.std, torch.ones(3))
    assert niid.pad_mode == "zeros"
    default = node_data(make_config({}))
    data = load_dataset("synthetic", "", 0)
    assert torch.equal(default.mean, data.mean) and default.pad_mode == "reflect"

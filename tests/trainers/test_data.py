"""Splits, leakage, missing data, shape alignment and the ImageFolder / MNIST loaders."""

import struct

import numpy as np
import pytest
import torch

from trainers import DatasetNotFoundError, TrainConfig, train
from trainers.data import _to_shape, load_transfer_data


def digits(**overrides):
    return TrainConfig(**{"source": "digits", "target": "digits", "device": "cpu", **overrides})


def counts(y):
    return np.bincount(np.asarray(y), minlength=int(max(y)) + 1)


def test_digits_default_split_sizes_and_stratification():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    data = load_transfer_data(digits(n_target=100, val_size=0.2, test_fraction=0.3))
    n_pool = int(np.isin(labels, range(5, 10)).sum())
    n_test = round(0.3 * n_pool)
    n_val = round(0.2 * (n_pool - n_test))
    assert len(data.test_y) == n_test and len(data.val_y) == n_val and len(data.target_train_y) == 100
    assert len(data.source_y) == int(np.isin(labels, range(5)).sum())  # all source training data
    assert data.n_source_classes == data.n_target_classes == 5
    assert data.test_split == "train"
    # re-indexed labels
    for y in (data.source_y, data.target_train_y, data.val_y, data.test_y):
        assert y.dtype == torch.int64 and set(y.tolist()) == set(range(5))
    # stratified: every split has the class proportions of the pool to within one sample
    pool_share = counts(labels[np.isin(labels, range(5, 10))] - 5) / n_pool
    for y in (data.target_train_y, data.val_y, data.test_y):
        assert np.all(np.abs(counts(y) - pool_share * len(y)) < 1.0 + 1e-9)
    # images: float, (N, 1, 8, 8), the target training set normalised per channel
    assert data.target_train_x.dtype == torch.float32 and data.target_train_x.shape[1:] == (1, 8, 8)
    assert abs(float(data.target_train_x.mean())) < 1e-4 and abs(float(data.target_train_x.std()) - 1) < 1e-2
    assert not data.target_hflip and not data.source_hflip


def test_no_sample_is_in_two_sets_even_with_shared_classes():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    cfg = digits(source_classes=list(range(10)), target_classes=[5, 6, 7, 8, 9], n_target=None)
    data = load_transfer_data(cfg)
    sets = {k: set(v.tolist()) for k, v in data.indices.items()}
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not sets[a] & sets[b], (a, b)
    # together they use every sample of the dataset exactly once
    assert set().union(*sets.values()) == set(range(len(labels)))
    # each shared class is halved between source and target
    for c in range(5, 10):
        n_c = int((labels == c).sum())
        assert int((labels[data.indices["source"]] == c).sum()) == n_c // 2
    # labels follow the order of the class list
    assert torch.equal(data.source_y, torch.from_numpy(labels[data.indices["source"]]))
    # the target sets do not depend on whether the source is used (method "target" skips it)
    without = load_transfer_data(cfg, load_source=False)
    for key in ("target_train", "val", "test"):
        assert np.array_equal(without.indices[key], data.indices[key])
    assert torch.equal(without.val_x, data.val_x) and len(without.source_y) == 0


def test_splits_are_seeded():
    a, b = load_transfer_data(digits(seed=1)), load_transfer_data(digits(seed=1))
    c = load_transfer_data(digits(seed=2))
    assert all(np.array_equal(a.indices[k], b.indices[k]) for k in a.indices)
    assert torch.equal(a.target_train_x, b.target_train_x)
    assert not np.array_equal(a.indices["target_train"], c.indices["target_train"])


def test_val_size_as_a_count_class_order_and_bad_sizes():
    data = load_transfer_data(digits(val_size=50, n_target=None, target_classes=[9, 3]))
    assert len(data.val_y) == 50 and data.n_target_classes == 2
    from sklearn.datasets import load_digits

    labels = load_digits().target
    assert (labels[data.indices["val"]][data.val_y.numpy() == 0] == 9).all()  # class 9 -> label 0
    with pytest.raises(ValueError, match="n_target"):
        load_transfer_data(digits(n_target=10_000))
    with pytest.raises(ValueError, match="target_classes"):
        load_transfer_data(digits(target_classes=[3, 11]))


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "mnist"])
def test_missing_torchvision_dataset_names_dataset_and_folder(tmp_path, name):
    folder = tmp_path / "nothing-here"
    with pytest.raises(DatasetNotFoundError) as info:
        load_transfer_data(TrainConfig(source="digits", target=name, data_dir=str(folder)))
    message = str(info.value)
    assert name in message and str(folder) in message and "download=True" in message and "data_dir" in message
    assert isinstance(info.value, FileNotFoundError)
    # a missing source is reported the same way ...
    with pytest.raises(DatasetNotFoundError, match=name):
        load_transfer_data(TrainConfig(source=name, target="digits", data_dir=str(folder)))
    # ... but a run that never uses the source never looks for it
    load_transfer_data(TrainConfig(source=name, target="digits", data_dir=str(folder)), load_source=False)


def test_to_shape_converts_channels_and_size():
    grey = torch.rand(5, 1, 28, 28)
    rgb = _to_shape(grey, 3, 32)
    assert rgb.shape == (5, 3, 32, 32)
    assert torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 1], rgb[:, 2])
    colour = torch.rand(4, 3, 10, 10)
    assert torch.allclose(_to_shape(colour, 1, 10), colour.mean(dim=1, keepdim=True))
    as_bytes = (torch.rand(3, 3, 6, 6) * 255).to(torch.uint8)
    assert torch.allclose(_to_shape(as_bytes, 3, 6), as_bytes.float() / 255)
    constant = torch.full((2, 1, 28, 28), 0.25)
    assert torch.allclose(_to_shape(constant, 1, 8), torch.full((2, 1, 8, 8), 0.25))


def test_grey_source_is_aligned_to_a_colour_target():
    data = load_transfer_data(TrainConfig(source="digits", target="synthetic", n_target=50))
    assert data.source_x.shape[1:] == (3, 32, 32) == data.target_train_x.shape[1:]
    assert torch.equal(data.source_x[:, 0], data.source_x[:, 2])  # grey repeated into RGB
    # and the other way round, with image_size overriding the target's size
    data = load_transfer_data(TrainConfig(source="synthetic", target="digits", image_size=12, n_target=50))
    for x in (data.source_x, data.target_train_x, data.val_x, data.test_x):
        assert x.shape[1:] == (1, 12, 12)


def _write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.tobytes())


def fake_mnist(root, n_train=40, n_test=20, seed=0):
    """A tiny MNIST in torchvision's on-disk format (MNIST/raw/*-ubyte)."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def test_mnist_like_grey_source_to_colour_target_through_the_real_loader(tmp_path):
    fake_mnist(tmp_path)
    cfg = TrainConfig(source="mnist", target="synthetic", data_dir=str(tmp_path), image_size=16, n_target=30)
    data = load_transfer_data(cfg)
    assert data.source_x.shape == (40, 3, 16, 16) and data.n_source_classes == 10
    assert torch.equal(data.source_x[:, 0], data.source_x[:, 1])
    # as a target: the official test split is the test set, and only the training split is split
    data = load_transfer_data(
        TrainConfig(source="digits", target="mnist", data_dir=str(tmp_path), n_target=20)
    )
    assert data.test_split == "official" and len(data.test_y) == 20
    assert len(data.val_y) == 8 and len(data.target_train_y) == 20
    assert data.source_x.shape[1:] == (1, 28, 28)  # digits 8x8 upsized to MNIST's 28x28


def _png_tree(root, classes, per_class, size=(30, 20), seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size[1], size[0], 3)) + 60 * k
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")


def test_imagefolder_with_train_and_test_folders(tmp_path):
    _png_tree(tmp_path / "train", ["ant", "bee", "cow"], per_class=10)
    _png_tree(tmp_path / "test", ["ant", "cow"], per_class=3, seed=1)  # a class may be missing in test/
    cfg = TrainConfig(
        source="synthetic", target="imagefolder", target_path=str(tmp_path), image_size=16, n_target=12
    )
    data = load_transfer_data(cfg)
    assert data.test_split == "official" and len(data.test_y) == 6
    assert set(data.test_y.tolist()) == {0, 2}  # mapped by class name: cow stays class 2
    assert len(data.val_y) == 6 and len(data.target_train_y) == 12 and data.n_target_classes == 3
    for x in (data.target_train_x, data.val_x, data.test_x, data.source_x):
        assert x.shape[1:] == (3, 16, 16)
    assert data.target_hflip


def test_imagefolder_without_train_folder_and_default_size(tmp_path):
    _png_tree(tmp_path / "imgs", ["a", "b"], per_class=10, size=(70, 64))
    cfg = TrainConfig(
        source="digits", target="imagefolder", target_path=str(tmp_path / "imgs"), n_target=None
    )
    data = load_transfer_data(cfg)
    assert data.test_split == "train" and len(data.test_y) == 6  # test_fraction 0.3 of 20
    assert data.target_train_x.shape[1:] == (3, 64, 64)  # the imagefolder default size


def test_imagefolder_missing_folder(tmp_path):
    cfg = TrainConfig(source="digits", target="imagefolder", target_path=str(tmp_path / "missing"))
    with pytest.raises(DatasetNotFoundError, match="missing"):
        load_transfer_data(cfg)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="class"):
        load_transfer_data(
            TrainConfig(source="digits", target="imagefolder", target_path=str(tmp_path / "empty"))
        )


def test_imagefolder_trains_end_to_end(tmp_path):
    _png_tree(tmp_path, ["x", "y"], per_class=12, size=(12, 12))
    cfg = dict(
        method="finetune",
        source="imagefolder",
        source_path=str(tmp_path),
        target="imagefolder",
        target_path=str(tmp_path),
        image_size=8,
        n_target=None,
        epochs=2,
        batch_size=4,
        augment=True,
        num_threads=1,
        device="cpu",
    )
    result = train(cfg)
    assert result.data_sizes["n_source"] == 12  # same folder on both sides: its samples are shared out
    assert result.history[-1]["train_loss_target"] is not None

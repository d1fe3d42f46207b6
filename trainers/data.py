"""Source and target datasets as in-memory tensors, split the way the paper's protocol needs.

Everything a run sees is built here, once, from the config:

* the **source** set: all training samples of the source dataset (restricted to `source_classes`);
* the **target** pool (the target's training split, restricted to `target_classes`) is split,
  stratified and seeded, into a validation set (`val_size`) and a training subset of `n_target`
  samples (paper A.1/A.2: the default train split is divided into train and validation, then partial
  training sets of size N are sampled from the train part);
* the target **test** set is the official test split, or a stratified `test_fraction` of the pool for
  datasets that have none (digits, synthetic, an ImageFolder without `test/`).

Images are float32 (N, C, H, W) normalised per channel; labels are int64 re-indexed to 0..k-1 in the
order the class list gives. The target decides channels and size; the source is converted to match.

Nothing is ever downloaded: a missing dataset raises `DatasetNotFoundError` telling how to provide it.
torchvision and scikit-learn are imported lazily so that importing the package stays cheap.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import DATASETS, TrainConfig

logger = logging.getLogger(__name__)

# Native image geometry (channels, size) of every dataset; imagefolder and synthetic are loaded at the
# size the run asks for, these are their defaults.
NATIVE_SHAPE: dict[str, tuple[int, int]] = {
    "digits": (1, 8),
    "synthetic": (3, 32),
    "cifar10": (3, 32),
    "cifar100": (3, 32),
    "svhn": (3, 32),
    "mnist": (1, 28),
    "imagefolder": (3, 64),
}
# Horizontal flips change the meaning of digits (and of the synthetic class patterns, which are not
# mirror-symmetric); natural-image datasets are flip-invariant.
HFLIP_VALID: dict[str, bool] = {
    "digits": False,
    "synthetic": False,
    "cifar10": True,
    "cifar100": True,
    "svhn": False,
    "mnist": False,
    "imagefolder": True,
}
# The default digits transfer task: learn digits 0-4, transfer to 5-9.
DIGITS_DEFAULT_SOURCE = list(range(0, 5))
DIGITS_DEFAULT_TARGET = list(range(5, 10))

SYNTHETIC_CLASSES = 10
SYNTHETIC_PER_CLASS = 60
# The synthetic dataset is a fixed dataset (like a real one), independent of the run's seed; the run
# seed only decides the splits, exactly as for the real datasets.
SYNTHETIC_DATA_SEED = 20240601

# What torchvision expects under data_dir, for the error message.
_TORCHVISION_LAYOUT: dict[str, tuple[str, str]] = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py/"),
    "cifar100": ("CIFAR100", "cifar-100-python/"),
    "svhn": ("SVHN", "train_32x32.mat and test_32x32.mat"),
    "mnist": ("MNIST", "MNIST/raw/ (train-images-idx3-ubyte, t10k-images-idx3-ubyte, ... label files)"),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on disk. The message says where they were looked for and how to fix it."""


@dataclass
class TransferData:
    """The tensors of one run. x: float32 (N, C, H, W), normalised; y: int64 in 0..k-1."""

    source_x: torch.Tensor
    source_y: torch.Tensor
    target_train_x: torch.Tensor
    target_train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_source_classes: int
    n_target_classes: int
    source_hflip: bool  # horizontal flips keep the label (augmentation may use them)
    target_hflip: bool
    source_loaded: bool = True  # False when the method never uses the source (then source_x is empty)
    # Where each set came from: positions in the dataset's training split ("test" indexes the official
    # test split when `test_split == "official"`). For provenance, and to check that nothing leaks.
    indices: dict[str, np.ndarray] = field(default_factory=dict)
    test_split: str = "official"  # "official", or "train" when carved out of the training split
    # The dataset's own class labels behind the re-indexed labels 0..k-1 (position i holds label i's class).
    source_class_ids: list[int] = field(default_factory=list)
    target_class_ids: list[int] = field(default_factory=list)
    # The target's training images beyond the N labeled ones (ICT's default unlabeled pool), normalised as
    # the training subset; loaded only when asked for (`load_target_rest`).
    target_rest_x: torch.Tensor | None = None

    @property
    def in_channels(self) -> int:
        return int(self.target_train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.target_train_x.shape[-1])

    def sizes(self) -> dict[str, int]:
        return {
            "n_source": len(self.source_y),
            "n_target_train": len(self.target_train_y),
            "n_val": len(self.val_y),
            "n_test": len(self.test_y),
            "n_source_classes": self.n_source_classes,
            "n_target_classes": self.n_target_classes,
        }

    def to(self, device: torch.device | str) -> TransferData:
        moved = {
            name: getattr(self, name).to(device) if getattr(self, name) is not None else None
            for name in (
                "source_x",
                "source_y",
                "target_train_x",
                "target_train_y",
                "val_x",
                "val_y",
                "test_x",
                "test_y",
                "target_rest_x",
            )
        }
        return dataclasses.replace(self, **moved)


@dataclass
class _Raw:
    """A dataset as loaded: images uint8 or float in [0, 1], (N, C, H, W); labels int64 numpy."""

    name: str
    train_x: torch.Tensor
    train_y: np.ndarray
    test_x: torch.Tensor | None
    test_y: np.ndarray | None
    n_classes: int


# ---------------------------------------------------------------------------------------------------
# public entry point


def load_transfer_data(
    config: TrainConfig, *, load_source: bool = True, load_target_rest: bool = False
) -> TransferData:
    """Build the source set and the target train/val/test sets of a run.

    The target splits depend only on the data fields and the seed, never on the method, so that runs of
    different methods with the same seed are evaluated on exactly the same samples. With
    `load_source=False` (a method that never uses the source) a source that is a different dataset is
    not even read. `load_target_rest` also loads the target's training images that are in none of the
    N-sample subset, the validation set and the test set (`target_rest_x`, ICT's default pool).
    """
    _check_names(config)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0xDA7A]))
    channels, size = target_geometry(config)
    same = dataset_key(config.target, config.target_path) == dataset_key(config.source, config.source_path)

    t_raw = _load_raw(config.target, config.target_path, config, size, "target")
    if same:
        s_raw: _Raw | None = t_raw
    elif load_source:
        s_raw = _load_raw(config.source, config.source_path, config, size, "source")
    else:
        s_raw = None
    t_classes, t_pool, s_classes, s_pool = _class_pools(config, t_raw, s_raw, same, rng)
    test_idx, test_x_raw, test_y_raw, t_pool = _target_test(config, t_raw, t_classes, t_pool, rng)
    val_idx, train_idx, rest_idx = _target_val_train(config, t_raw, t_pool, rng)

    t_map = _label_map(t_classes)

    def target_part(x: torch.Tensor, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return _to_shape(x, channels, size), torch.from_numpy(t_map[y]).long()

    tr_x, tr_y = target_part(t_raw.train_x[torch.from_numpy(train_idx)], t_raw.train_y[train_idx])
    va_x, va_y = target_part(t_raw.train_x[torch.from_numpy(val_idx)], t_raw.train_y[val_idx])
    te_x, te_y = target_part(test_x_raw, test_y_raw)
    # Statistics of the training subset only: no val/test information reaches the inputs.
    mean, std = _channel_stats(tr_x)
    tr_x, va_x, te_x = ((x - mean) / std for x in (tr_x, va_x, te_x))
    rest_x = None
    if load_target_rest:
        rest_x = (_to_shape(t_raw.train_x[torch.from_numpy(rest_idx)], channels, size) - mean) / std

    data_source = s_raw is not None and load_source
    src_x, src_y, n_source_classes = _source_part(config, s_raw if data_source else None, s_classes, s_pool)
    data = TransferData(
        source_x=src_x.contiguous(),
        source_y=src_y,
        target_train_x=tr_x.contiguous(),
        target_train_y=tr_y,
        val_x=va_x.contiguous(),
        val_y=va_y,
        test_x=te_x.contiguous(),
        test_y=te_y,
        n_source_classes=n_source_classes,
        n_target_classes=len(t_classes),
        source_hflip=HFLIP_VALID[config.source],
        target_hflip=HFLIP_VALID[config.target],
        source_loaded=data_source,
        indices={
            "source": s_pool if data_source else np.zeros(0, dtype=np.int64),
            "target_train": train_idx,
            "val": val_idx,
            "test": test_idx,
            "target_rest": rest_idx,
        },
        test_split="official" if t_raw.test_x is not None else "train",
        source_class_ids=[int(c) for c in s_classes],
        target_class_ids=[int(c) for c in t_classes],
        target_rest_x=rest_x.contiguous() if rest_x is not None else None,
    )
    logger.info(
        "data: target %s, source %s; images %dx%dx%d; %s",
        config.target,
        config.source if data.source_loaded else "(not loaded)",
        channels,
        size,
        size,
        data.sizes(),
    )
    return data


def _class_pools(
    config: TrainConfig, t_raw: _Raw, s_raw: _Raw | None, same: bool, rng: np.random.Generator
) -> tuple[list[int], np.ndarray, list[int], np.ndarray]:
    """(target classes, target pool, source classes, source pool): training-set indices of each side."""
    t_classes = _resolve_classes(config.target_classes, config.target, t_raw.n_classes, "target")
    t_pool = np.flatnonzero(np.isin(t_raw.train_y, t_classes))
    s_classes: list[int] = []
    s_pool = np.zeros(0, dtype=np.int64)
    if same:
        # Same dataset on both sides: a sample of a class both sides use must land in one pool only,
        # otherwise target validation/test images could be trained on through the source branch.
        # Each shared class is halved (seeded); classes only one side uses go to that side whole.
        # Done regardless of load_source so the target split does not depend on the method.
        s_classes = _resolve_classes(config.source_classes, config.source, t_raw.n_classes, "source")
        s_pool = np.flatnonzero(np.isin(t_raw.train_y, s_classes))
        shared = sorted(set(s_classes) & set(t_classes))
        if shared:
            to_source: list[np.ndarray] = []
            for c in shared:
                idx = np.flatnonzero(t_raw.train_y == c)
                idx = idx[rng.permutation(len(idx))]
                to_source.append(idx[: len(idx) // 2])
            taken = np.concatenate(to_source)
            to_target = np.setdiff1d(np.flatnonzero(np.isin(t_raw.train_y, shared)), taken)
            t_pool = np.setdiff1d(t_pool, taken)
            s_pool = np.setdiff1d(s_pool, to_target)
            logger.info(
                "source and target are both %s with shared classes %s: their samples are split "
                "between the two sides (no sample is in both)",
                config.target,
                shared,
            )
    elif s_raw is not None:
        s_classes = _resolve_classes(config.source_classes, config.source, s_raw.n_classes, "source")
        s_pool = np.flatnonzero(np.isin(s_raw.train_y, s_classes))
    return t_classes, t_pool, s_classes, s_pool


def _target_test(
    config: TrainConfig, t_raw: _Raw, t_classes: list[int], t_pool: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, torch.Tensor, np.ndarray, np.ndarray]:
    """(test indices, test x, test y, the target pool left for training and validation)."""
    if t_raw.test_x is not None and t_raw.test_y is not None:
        test_idx = np.flatnonzero(np.isin(t_raw.test_y, t_classes))
        return test_idx, t_raw.test_x[torch.from_numpy(test_idx)], t_raw.test_y[test_idx], t_pool
    if not 0 < config.test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {config.test_fraction}")
    n_test = round(config.test_fraction * len(t_pool))
    test_local, rest_local = _stratified_split(t_raw.train_y[t_pool], n_test, rng)
    test_idx, t_pool = t_pool[test_local], t_pool[rest_local]
    return test_idx, t_raw.train_x[torch.from_numpy(test_idx)], t_raw.train_y[test_idx], t_pool


def _target_val_train(
    config: TrainConfig, t_raw: _Raw, t_pool: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(validation, training, rest) indices: validation, then the N-sample training subset, both
    stratified; the rest is the training pool beyond the N samples (empty when N is None: all of it)."""
    n_val = _count(config.val_size, len(t_pool), "val_size")
    val_local, rest_local = _stratified_split(t_raw.train_y[t_pool], n_val, rng)
    val_idx, rest = t_pool[val_local], t_pool[rest_local]
    if config.n_target is None:
        return val_idx, rest, rest[:0]
    if config.n_target < 1:
        raise ValueError(f"n_target must be >= 1 or None, got {config.n_target}")
    if config.n_target > len(rest):
        raise ValueError(
            f"n_target={config.n_target} but only {len(rest)} {config.target} samples are left for "
            f"training after holding out validation ({len(val_idx)}) and test samples; lower n_target "
            "or val_size, or set n_target to None to use them all"
        )
    train_local, rest_local = _stratified_split(t_raw.train_y[rest], config.n_target, rng)
    return val_idx, rest[train_local], rest[rest_local]


def _source_part(
    config: TrainConfig, s_raw: _Raw | None, s_classes: list[int], s_pool: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(source x normalised by its own statistics, labels re-indexed, number of source classes);
    empty tensors when the source is not loaded."""
    channels, size = target_geometry(config)
    if s_raw is None:
        # Known without reading the source only when the classes are listed (or it is the same dataset).
        n_source_classes = len(s_classes) if s_classes else len(config.source_classes or [])
        return torch.zeros((0, channels, size, size)), torch.zeros(0, dtype=torch.long), n_source_classes
    s_map = _label_map(s_classes)
    src_x = _to_shape(s_raw.train_x[torch.from_numpy(s_pool)], channels, size)
    s_mean, s_std = _channel_stats(src_x)
    src_x = (src_x - s_mean) / s_std
    src_y = torch.from_numpy(s_map[s_raw.train_y[s_pool]]).long()
    return src_x, src_y, len(s_classes)


def target_geometry(config: TrainConfig) -> tuple[int, int]:
    """(channels, size) every image of the run is converted to: the target's, or `image_size`."""
    channels, native = NATIVE_SHAPE[config.target]
    size = config.image_size or native
    if size < 1:
        raise ValueError(f"image_size must be >= 1, got {config.image_size}")
    return channels, size


# ---------------------------------------------------------------------------------------------------
# splitting helpers


def _stratified_split(y: np.ndarray, n_take: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into y) of `n_take` samples drawn per class in proportion, and of the rest.

    Largest-remainder rounding makes the total exact; ties are broken by class order so the result
    depends only on the labels and the generator state.
    """
    if not 0 <= n_take <= len(y):
        raise ValueError(f"cannot take {n_take} of {len(y)} samples")
    classes, counts = np.unique(y, return_counts=True)
    quota = n_take * counts / max(1, len(y))
    take_per_class = np.floor(quota).astype(np.int64)
    short = n_take - int(take_per_class.sum())
    order = np.argsort(-(quota - take_per_class), kind="stable")
    take_per_class[order[:short]] += 1
    taken, rest = [], []
    for c, k in zip(classes, take_per_class, strict=True):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        taken.append(idx[:k])
        rest.append(idx[k:])
    empty = np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(taken or [empty])), np.sort(np.concatenate(rest or [empty]))


def _count(size: float, n: int, name: str) -> int:
    """A fraction (< 1) of n or an absolute count (>= 1); at least one sample must result."""
    if size <= 0:
        raise ValueError(f"{name} must be > 0, got {size}")
    k = round(size * n) if size < 1 else int(size)
    if not 1 <= k < n:
        raise ValueError(f"{name}={size} gives {k} of {n} samples; it must leave at least one on each side")
    return k


def _resolve_classes(classes: list[int] | None, dataset: str, n_classes: int, role: str) -> list[int]:
    if classes is None:
        if dataset == "digits":
            return DIGITS_DEFAULT_SOURCE if role == "source" else DIGITS_DEFAULT_TARGET
        return list(range(n_classes))
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError(f"{role}_classes is empty")
    if len(set(classes)) != len(classes):
        raise ValueError(f"{role}_classes has duplicates: {classes}")
    bad = [c for c in classes if not 0 <= c < n_classes]
    if bad:
        raise ValueError(f"{role}_classes {bad} out of range: {dataset} has classes 0..{n_classes - 1}")
    return classes


def _label_map(classes: list[int]) -> np.ndarray:
    """Lookup table original label -> index in `classes` (the order the user gave)."""
    table = np.full(max(classes) + 1, -1, dtype=np.int64)
    table[classes] = np.arange(len(classes))
    return table


# ---------------------------------------------------------------------------------------------------
# tensor conversion


def _to_shape(x: torch.Tensor, channels: int, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8/float [0, 1] images -> float32 with `channels` channels and `size` x `size` pixels.

    Channel conversion repeats grey to RGB or averages RGB to grey; resizing is bilinear with
    antialiasing (which matters when shrinking, e.g. MNIST 28 -> digits 8). Chunked to bound memory.
    """
    if x.shape[1] not in (1, 3) or channels not in (1, 3):
        raise ValueError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
    out = []
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        part = part.float() / 255.0 if part.dtype == torch.uint8 else part.float()
        if part.shape[1] != channels:
            part = part.repeat(1, 3, 1, 1) if channels == 3 else part.mean(dim=1, keepdim=True)
        if part.shape[-2:] != (size, size):
            part = F.interpolate(
                part, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        out.append(part)
    if not out:
        return torch.zeros((0, channels, size, size))
    return torch.cat(out)


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std as (1, C, 1, 1); std floored so constant channels do not blow up."""
    if len(x) == 0:
        return torch.zeros(1, x.shape[1], 1, 1), torch.ones(1, x.shape[1], 1, 1)
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False).clamp_min(1e-3)
    return mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)


# ---------------------------------------------------------------------------------------------------
# loaders


def _check_names(config: TrainConfig) -> None:
    for role in ("source", "target"):
        name = getattr(config, role)
        if name not in DATASETS:
            raise ValueError(f"unknown {role} dataset {name!r}; choose one of {', '.join(DATASETS)}")


def dataset_key(name: str, path: str | None) -> tuple[str, str]:
    if name == "imagefolder":
        return (name, str(Path(path).expanduser().resolve()) if path else "")
    return (name, "")


def _load_raw(name: str, path: str | None, config: TrainConfig, size: int, role: str) -> _Raw:
    if name == "digits":
        return _load_digits()
    if name == "synthetic":
        return make_synthetic(size=size)
    if name == "imagefolder":
        if not path:
            raise ValueError(f"{role} is 'imagefolder' but {role}_path is not set")
        return _load_imagefolder(Path(path).expanduser(), size)
    return _load_torchvision(name, Path(config.data_dir).expanduser())


def _load_digits() -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16.
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    return _Raw("digits", x, bunch.target.astype(np.int64), None, None, 10)


def make_synthetic(
    size: int = 32,
    channels: int = 3,
    n_classes: int = SYNTHETIC_CLASSES,
    per_class: int = SYNTHETIC_PER_CLASS,
    seed: int = SYNTHETIC_DATA_SEED,
) -> _Raw:
    """A fixed, learnable class-conditional image set (no files needed): tests and benchmarks.

    Each class has a smooth random prototype (a 4x4 pattern upsampled, so the same dataset exists at
    every size); a sample is its prototype randomly shifted, with random contrast and pixel noise.
    Hard enough that accuracy is not trivially 100% after one step, easy enough to be learned quickly.
    """
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(n_classes, channels, 4, 4, generator=g)
    protos = F.interpolate(protos, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    n = len(y)
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)
    x = protos[y] * contrast + 0.8 * torch.randn(n, channels, size, size, generator=g)
    max_shift = max(1, size // 8)
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=g)
    for i in range(n):  # a few hundred images: a plain loop is fine and obviously correct
        x[i] = torch.roll(x[i], shifts=(int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2))
    x = torch.sigmoid(x)  # into [0, 1] like every other loader's output
    return _Raw("synthetic", x, y.numpy().astype(np.int64), None, None, n_classes)


def _not_found(name: str, root: Path) -> DatasetNotFoundError:
    cls_name, layout = _TORCHVISION_LAYOUT[name]
    if name == "svhn":
        fetch = (
            f"torchvision.datasets.SVHN('{root}', split='train', download=True); "
            f"torchvision.datasets.SVHN('{root}', split='test', download=True)"
        )
    else:
        fetch = f"torchvision.datasets.{cls_name}('{root}', download=True)"
    return DatasetNotFoundError(
        f"dataset {name!r} not found (or incomplete) in {root.resolve()} (torchvision expects {layout} "
        "there). "
        "The trainer never downloads data. To provide it, on a machine with internet run\n"
        f'    python -c "import torchvision; {fetch}"\n'
        f"and copy what it writes into {root.resolve()}, or set data_dir to a folder that already has it."
    )


def _load_torchvision(name: str, root: Path) -> _Raw:
    from torchvision import datasets

    t0 = time.monotonic()
    try:
        if name in ("cifar10", "cifar100"):
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            tr, te = cls(str(root), train=True, download=False), cls(str(root), train=False, download=False)
            # .data is (N, 32, 32, 3) uint8
            xs = [torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous() for d in (tr, te)]
            ys = [np.asarray(d.targets, dtype=np.int64) for d in (tr, te)]
            n_classes = 10 if name == "cifar10" else 100
        elif name == "svhn":
            tr = datasets.SVHN(str(root), split="train", download=False)
            te = datasets.SVHN(str(root), split="test", download=False)
            xs = [torch.from_numpy(d.data) for d in (tr, te)]  # already (N, 3, 32, 32) uint8
            ys = [np.asarray(d.labels, dtype=np.int64) for d in (tr, te)]
            n_classes = 10
        elif name == "mnist":
            tr = datasets.MNIST(str(root), train=True, download=False)
            te = datasets.MNIST(str(root), train=False, download=False)
            xs = [d.data.unsqueeze(1) for d in (tr, te)]  # (N, 28, 28) uint8
            ys = [d.targets.numpy().astype(np.int64) for d in (tr, te)]
            n_classes = 10
        else:  # pragma: no cover - guarded by _load_raw
            raise ValueError(name)
    except (RuntimeError, FileNotFoundError) as exc:
        raise _not_found(name, root) from exc
    logger.info(
        "loaded %s from %s in %.1fs (%d train, %d test)",
        name,
        root,
        time.monotonic() - t0,
        len(ys[0]),
        len(ys[1]),
    )
    return _Raw(name, xs[0], ys[0], xs[1], ys[1], n_classes)


_NO_IMAGES = "no class folder with an image file of a supported extension"


def _imagefolder_not_found(root: Path, why: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"dataset 'imagefolder' not found at {root.resolve()}: {why}. Expected one folder per class "
        "(root/<class>/<image>), or root/train/<class>/... with an optional root/test/<class>/...; "
        "set source_path/target_path to such a folder."
    )


def _load_imagefolder(root: Path, size: int) -> _Raw:
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise _imagefolder_not_found(root, "no such directory")
    train_root, test_root = root, None
    if (root / "train").is_dir():
        train_root = root / "train"
        test_root = root / "test" if (root / "test").is_dir() else None
    try:
        train_set = ImageFolder(str(train_root))
    except FileNotFoundError:
        # torchvision's message names the folder's class folders: what a folder holds is never told.
        raise _imagefolder_not_found(train_root, _NO_IMAGES) from None
    train_x, train_y = _read_images(train_set, size)
    test_x = test_y = None
    if test_root is not None:
        try:
            test_set = ImageFolder(str(test_root))
        except FileNotFoundError:
            raise _imagefolder_not_found(test_root, _NO_IMAGES) from None
        unknown = set(test_set.classes) - set(train_set.classes)
        if unknown:
            raise ValueError(f"{test_root} has {len(unknown)} class folder(s) that {train_root} lacks")
        test_x, test_y_local = _read_images(test_set, size)
        # Map by class name: the test folder may lack some classes, so its own indices can differ.
        remap = np.array([train_set.class_to_idx[c] for c in test_set.classes], dtype=np.int64)
        test_y = remap[test_y_local]
    return _Raw("imagefolder", train_x, train_y, test_x, test_y, len(train_set.classes))


def _read_images(folder: Any, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Decode every image of an ImageFolder to a uint8 (N, 3, size, size) tensor (resize + centre crop)."""
    from torchvision.transforms import functional as TF

    n = len(folder.samples)
    x = torch.empty((n, 3, size, size), dtype=torch.uint8)
    y = np.asarray(folder.targets, dtype=np.int64)
    t0 = last = time.monotonic()
    for i, (path, _) in enumerate(folder.samples):
        img = folder.loader(path)  # PIL, converted to RGB by the default loader
        img = TF.center_crop(TF.resize(img, size, antialias=True), [size, size])
        x[i] = TF.pil_to_tensor(img)
        now = time.monotonic()
        if now - last > 10:  # big folders take minutes: say where we are
            logger.info("loading %s: %d/%d images (%.0fs)", folder.root, i + 1, n, now - t0)
            last = now
    logger.info(
        "loaded %d images at %dx%d from %s in %.1fs", n, size, size, folder.root, time.monotonic() - t0
    )
    return x, y


__all__ = [
    "DatasetNotFoundError",
    "TransferData",
    "load_transfer_data",
    "make_synthetic",
    "target_geometry",
    "NATIVE_SHAPE",
    "HFLIP_VALID",
]

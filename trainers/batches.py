"""Where a run's batches come from: seeds per purpose, samplers, augmentation and the epoch length.

Used by the training loop (loop.py) and by source pretraining (pretrain.py) alike; it imports nothing
else of trainers/ but hardware.py (host-to-device copies), so both depend on it and not on each other.

Every draw comes from its own seeded generator, so e.g. turning augmentation on does not change which
samples are drawn, and a run is reproducible (bit-identical on the same CPU and thread count).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .hardware import to_device

# The purposes the training loop draws for. New names go at the end: SeedSequence children keep their
# seeds when more are spawned.
RUN_SEED_NAMES = ("init", "target_sampler", "source_sampler", "augment", "method", "unlabeled")


def run_seeds(seed: int) -> dict[str, int]:
    """Independent seeds of the training loop, one per purpose of `RUN_SEED_NAMES`."""
    children = np.random.SeedSequence([seed, 0x7EA1]).spawn(len(RUN_SEED_NAMES))
    return {
        name: int(child.generate_state(1, dtype=np.uint64)[0] >> 1)
        for name, child in zip(RUN_SEED_NAMES, children, strict=True)
    }


def pretrain_seeds(seed: int) -> dict[str, int]:
    """Independent seeds of source pretraining: model init, sampler, augmentation."""
    init, sampler, augment = np.random.SeedSequence([seed, 0x50CE]).generate_state(3, dtype=np.uint32)
    return {"init": int(init), "sampler": int(sampler), "augment": int(augment)}


def steps_per_epoch(batch_size: int, sizes: Iterable[int], fixed: int | None = None) -> int:
    """An epoch is one pass over the largest of the datasets drawn from (`fixed` overrides it)."""
    if fixed is not None:
        return int(fixed)
    return max(1, math.ceil(max(sizes, default=0) / batch_size))


class Sampler:
    """Uniform sub-batches: walk through successive seeded permutations, spilling across their edges.

    Every sample is drawn once per pass, as in an epoch-based loader, but sub-batches never shrink
    and the domains can have any sizes.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next(self) -> torch.Tensor:
        parts, need = [], self.batch_size
        while need > 0:
            if self.pos == self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
            take = min(need, self.n - self.pos)
            parts.append(self.perm[self.pos : self.pos + take])
            self.pos += take
            need -= take
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class DropLastSampler:
    """Whole batches from each seeded permutation; a tail shorter than a batch is skipped (pretraining)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos = torch.randperm(n, generator=self.gen), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx


def augment_batch(x: torch.Tensor, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to size/8 pixels (zero pad + crop), and random horizontal flips.

    Per-sample offsets are drawn on the CPU generator, so the result is the same on every device.
    """
    n, c, h, w = x.shape
    pad = max(1, min(h, w) // 8)
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5 if hflip else None
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = to_device(offsets, x.device)
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(c, device=x.device).view(1, c, 1, 1)
    out = padded[batch, chans, rows, cols]
    if flips is not None:
        out = torch.where(to_device(flips, x.device).view(n, 1, 1, 1), out.flip(-1), out)
    return out


class Batches:
    """`draw()` gives the next sub-batch of one set: (x, y), or x alone when the set has no labels.

    `augment_gen` (None: no augmentation) may be shared by several sets: the draws then interleave in
    the order the sets are asked, as one generator's.
    """

    def __init__(
        self,
        sampler: Sampler | DropLastSampler,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        hflip: bool = False,
        augment_gen: torch.Generator | None = None,
    ):
        self.sampler, self.x, self.y = sampler, x, y
        self.hflip, self.augment_gen = hflip, augment_gen

    def draw(self) -> Any:
        idx = to_device(self.sampler.next(), self.x.device)
        xb = self.x[idx]
        if self.augment_gen is not None:
            xb = augment_batch(xb, self.hflip, self.augment_gen)
        return xb if self.y is None else (xb, self.y[idx])


__all__ = [
    "RUN_SEED_NAMES",
    "run_seeds",
    "pretrain_seeds",
    "steps_per_epoch",
    "Sampler",
    "DropLastSampler",
    "Batches",
    "augment_batch",
]

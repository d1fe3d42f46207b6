"""The source-pretrained start (issue 3, part 1) and the cache of pretrained-source checkpoints.

A backbone g and a source head h^S are trained on the source set alone (momentum SGD, warm-up + cosine
learning rate, `pretrain_epochs` x ceil(n_source / batch_size) steps at peak `pretrain_lr`), ONCE per
key: the source data (dataset, path, classes, sizes), the backbone and the recipe fields, the seed and
the image geometry. The checkpoint lives in ``artifact_dir/<sha256(key)[:16]>/`` as

    source.pt       {"format", "key", "backbone": state_dict, "source_head": state_dict, "n_source_classes"}
    key.json        the key, readable
    counter.json    {"pretrain_runs": n, "hits": h}  (how many pretraining runs happened for this key)
    lock            the lock file

Concurrency: the whole check-pretrain-write runs under an exclusive ``fcntl.flock`` on ``lock``, so two
processes asking for one key give one pretraining run (the second waits, then finds the checkpoint);
files are written to a temporary name in the same directory and renamed with ``os.replace`` (atomic),
so no reader ever sees a half-written file, even one that does not take the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import schedule
from .batches import Batches, DropLastSampler, pretrain_seeds, steps_per_epoch
from .config import TrainConfig
from .models import TransferNet, build_backbone

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
CHECKPOINT_NAME = "source.pt"


def pretrain_key(config: TrainConfig, data: Any) -> dict[str, Any]:
    """Everything the pretrained weights depend on (and nothing else: not the method or the target)."""
    return {
        "format": CACHE_FORMAT,
        "source": config.source,
        "source_path": config.source_path,
        "source_classes": config.source_classes,
        "n_source": int(len(data.source_y)),
        "n_source_classes": int(data.n_source_classes),
        "backbone": config.backbone,
        "dropout": config.dropout,
        "in_channels": int(data.in_channels),
        "image_size": int(data.image_size),
        "pretrain_epochs": config.pretrain_epochs,
        "pretrain_lr": config.pretrain_lr,
        "batch_size": config.batch_size,
        "momentum": config.momentum,
        "weight_decay": config.weight_decay,
        "warmup": config.warmup,
        "final_lr": min(config.final_lr, config.pretrain_lr),
        "augment": config.augment,
        "seed": config.seed,
    }


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _atomic_write_bytes(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(
        path, lambda fh: fh.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
    )


def read_counter(key_dir: str | Path) -> dict[str, int]:
    path = Path(key_dir) / "counter.json"
    if not path.is_file():
        return {"pretrain_runs": 0, "hits": 0}
    return json.loads(path.read_text())


def pretrain_source(config: TrainConfig, data: Any, device: torch.device) -> dict[str, Any]:
    """Train g + h^S on the source set; returns CPU state dicts. Seeded; no global RNG state leaks."""
    if len(data.source_y) == 0:
        raise ValueError("source pretraining needs source samples, but the source set is empty")
    seeds = pretrain_seeds(config.seed)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seeds["init"])
        backbone = build_backbone(config.backbone, data.in_channels, dropout=config.dropout)
        head = nn.Linear(int(backbone.out_features), int(data.n_source_classes))
        net = nn.Sequential(backbone, head).to(device).train()
        opt = torch.optim.SGD(
            net.parameters(),
            lr=config.pretrain_lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        total = config.pretrain_epochs * steps_per_epoch(config.batch_size, [len(data.source_y)])
        batches = Batches(
            DropLastSampler(len(data.source_y), config.batch_size, seeds["sampler"]),
            data.source_x,
            data.source_y,
            hflip=data.source_hflip,
            augment_gen=torch.Generator().manual_seed(seeds["augment"]) if config.augment else None,
        )
        final = min(config.final_lr, config.pretrain_lr)
        for step in range(1, total + 1):
            xb, yb = batches.draw()
            lr = schedule.learning_rate(
                step, total, peak=config.pretrain_lr, final=final, warmup=config.warmup
            )
            for group in opt.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {
        "backbone": {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
        "source_head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "n_source_classes": int(data.n_source_classes),
        "steps": total,
        "final_loss": float(loss.detach()),
    }


def ensure_pretrained(
    config: TrainConfig, data: Any | None = None, device: torch.device | str = "cpu"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(checkpoint, cache info) for the config's key: loaded from the cache, or pretrained once and stored.

    cache info (JSON-able): {"cache": "hit" | "miss", "key": ..., "key_hash": ..., "path": ...,
    "pretrain_runs": n, "pretrain_s": seconds spent pretraining in this call}.
    """
    device = torch.device(device)
    if data is None:
        from .data import load_transfer_data

        data = load_transfer_data(config, load_source=True).to(device)
    key = pretrain_key(config, data)
    digest = key_hash(key)
    key_dir = Path(config.artifact_dir) / digest
    ckpt_path = key_dir / CHECKPOINT_NAME
    started = time.monotonic()
    with _locked(key_dir / "lock"):
        counter = read_counter(key_dir)
        if ckpt_path.is_file():
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            if checkpoint.get("key") != key:
                raise RuntimeError(f"pretrained-source cache {ckpt_path} holds another key (hash collision?)")
            counter["hits"] = counter.get("hits", 0) + 1
            _atomic_write_json(key_dir / "counter.json", counter)
            status, spent = "hit", 0.0
            logger.info("pretrain cache hit %s (%s, %s)", digest, config.source, config.backbone)
        else:
            logger.info(
                "pretrain cache miss %s: pretraining %s on %s", digest, config.backbone, config.source
            )
            checkpoint = {"format": CACHE_FORMAT, "key": key, **pretrain_source(config, data, device)}
            _atomic_write_json(key_dir / "key.json", key)
            _atomic_write_bytes(ckpt_path, lambda fh: torch.save(checkpoint, fh))
            counter["pretrain_runs"] = counter.get("pretrain_runs", 0) + 1
            _atomic_write_json(key_dir / "counter.json", counter)
            spent = time.monotonic() - started
            status = "miss"
            logger.info("pretrain run %d for %s done in %.1fs", counter["pretrain_runs"], digest, spent)
    info = {
        "cache": status,
        "key": key,
        "key_hash": digest,
        "path": str(ckpt_path),
        "pretrain_runs": int(counter["pretrain_runs"]),
        "pretrain_s": spent,
    }
    return checkpoint, info


def load_init_checkpoint(path: str | Path) -> dict[str, Any]:
    """A user checkpoint as {"backbone", "source_head" (or None)}: a cache `source.pt` or a `model.pt`
    saved by `TrainResult.save` (its backbone and source head; per-domain BN is read from domain 0)."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    if "backbone" in ckpt:
        return {"backbone": ckpt["backbone"], "source_head": ckpt.get("source_head")}
    if "state_dict" in ckpt:
        state = ckpt["state_dict"]
        backbone = {}
        for k, v in state.items():
            if not k.startswith("backbone."):
                continue
            name = k[len("backbone.") :]
            if ".bns." in name:  # DomainBatchNorm2d: keep the target-domain (index 0) statistics
                head, _, rest = name.partition(".bns.")
                index, _, param = rest.partition(".")
                if index != "0":
                    continue
                name = f"{head}.{param}"
            backbone[name] = v
        head = {k[len("source_head.") :]: v for k, v in state.items() if k.startswith("source_head.")}
        return {"backbone": backbone, "source_head": head or None}
    raise ValueError(f"{path} is neither a pretrained-source checkpoint nor a saved model.pt")


def initial_model(
    config: TrainConfig, data: Any, n_source: int, device: torch.device
) -> tuple[TransferNet, dict[str, Any]]:
    """The run's network, initialised as `config.resolved_init` says; (model, init info for the result).

    Called with the global RNG seeded for the init: random parts (a fresh target head) are reproducible.
    """
    init = config.resolved_init
    backbone = build_backbone(
        config.backbone, data.in_channels, dropout=config.dropout, pretrained=(init == "imagenet")
    )
    info: dict[str, Any] = {"init": init}
    source_head_state = None
    if init in ("source_pretrained", "checkpoint"):
        if init == "source_pretrained":
            ckpt, cache = ensure_pretrained(config, data, device)
            info["pretrain_cache"] = cache
        else:
            ckpt = load_init_checkpoint(config.init_checkpoint)  # type: ignore[arg-type]
            info["init_checkpoint"] = str(config.init_checkpoint)
        missing, unexpected = backbone.load_state_dict(ckpt["backbone"], strict=False)
        if missing or unexpected:
            raise ValueError(
                f"the {init} weights do not fit backbone {config.backbone}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        source_head_state = ckpt.get("source_head")
    model = TransferNet(backbone, n_source, data.n_target_classes, bn=config.bn)
    if source_head_state is not None and model.source_head is not None:
        if tuple(source_head_state["weight"].shape) == tuple(model.source_head.weight.shape):
            model.source_head.load_state_dict(source_head_state)
            info["source_head"] = "pretrained"
        else:
            logger.warning(
                "the checkpoint's source head does not fit %d source classes; fresh head", n_source
            )
    return model.to(device), info

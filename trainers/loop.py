"""The one training loop: paper eq. 3 with the schedule of eq. 4, updated as eq. 7.

For t = 1..T a target sub-batch B^T and a source sub-batch B^S of `batch_size` samples each are drawn
uniformly (successive seeded permutations per domain) and

    loss(t) = lambda(t) * CE(h^T(g(B^T))) + (1 - lambda(t)) * CE(h^S(g(B^S)))

is minimised by momentum SGD with the learning rate of `schedule.learning_rate`. A branch whose
weight is exactly 0 is not computed at all (its gradient would be zero anyway), so ``target`` never
touches the source and ``finetune`` only uses one domain per step. After every epoch the target
validation accuracy is measured and reported; the weights with the best validation accuracy are kept
(early stopping, appendix A.3) and are the ones tested at the end.

Reproducibility: every random draw comes from a generator seeded from `config.seed` (data splits,
model init and dropout, the two samplers, augmentation), inside a forked global RNG so that nothing
leaks in from, or out to, the caller. The same config on the same CPU and thread count gives
bit-identical results, also in another process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import schedule
from .config import SCHEDULE_METHODS, TrainConfig
from .data import TransferData, load_transfer_data
from .diagnostics import linearity_diagnostics
from .methods import Method, StepContext, build_method
from .models import TransferNet, build_model
from .pretrain import initial_model

logger = logging.getLogger(__name__)

REPORT_KEYS: tuple[str, ...] = (
    "epoch",
    "step",
    "lr",
    "lambda",
    "source_weight",
    "train_loss_target",
    "train_loss_source",
    "val_acc",
    "val_loss",
    "best_val_acc",
    "total_steps",
)
EVAL_BATCH = 512
CHECKPOINT_FORMAT = 1


@dataclass
class TrainResult:
    config: TrainConfig
    best_val_acc: float
    best_epoch: int  # 1-based epoch whose weights were kept
    test_acc: float
    total_steps: int  # T, the length of the planned schedule (early stopping may end sooner)
    history: list[dict[str, Any]]
    model: TransferNet = field(repr=False)  # best weights loaded, eval mode
    test_loss: float | None = None
    epochs_run: int = 0
    steps_run: int = 0
    stopped_early: bool = False  # by patience or because the loss diverged
    diverged: bool = False  # a non-finite training loss was seen; training stopped there
    data_sizes: dict[str, int] = field(default_factory=dict)
    in_channels: int = 0
    image_size: int = 0
    device: str = "cpu"
    wall_time_s: float = 0.0
    # How the network was initialised: {"init": ..., "pretrain_cache": {...}} (see pretrain.py).
    init_info: dict[str, Any] = field(default_factory=dict)
    # Method facts, e.g. {"xmixup_pairing": {"target_to_source": {...}, "similarity": {...}}}.
    method_info: dict[str, Any] = field(default_factory=dict)
    # Interpolation losses of paper 000 eq. 1 at the end of training (diagnostics.py).
    linearity: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        """Everything but the model, as plain JSON types."""
        return {
            "config": self.config.to_dict(),
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "test_acc": self.test_acc,
            "test_loss": self.test_loss,
            "total_steps": self.total_steps,
            "epochs_run": self.epochs_run,
            "steps_run": self.steps_run,
            "stopped_early": self.stopped_early,
            "diverged": self.diverged,
            "data_sizes": dict(self.data_sizes),
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "device": self.device,
            "wall_time_s": self.wall_time_s,
            "history": [dict(h) for h in self.history],
            "init": dict(self.init_info),
            "pretrain_cache": self.init_info.get("pretrain_cache"),
            "xmixup_pairing": self.method_info.get("xmixup_pairing"),
            "method_info": dict(self.method_info),
            "linearity": dict(self.linearity),
        }

    def save(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write model.pt (state_dict + config + shapes) and metrics.json; returns (model, metrics) paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model_path, metrics_path = out / "model.pt", out / "metrics.json"
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "config": self.config.to_dict(),
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "n_source_classes": self.model.n_source,
            "n_target_classes": self.model.n_target,
        }
        torch.save(checkpoint, model_path)
        metrics_path.write_text(json.dumps(self.metrics(), indent=2, allow_nan=False) + "\n")
        return model_path, metrics_path


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[TransferNet, TrainConfig]:
    """Rebuild the network saved by `TrainResult.save` (eval mode) and its config."""
    checkpoint = torch.load(Path(path), map_location=map_location, weights_only=True)
    config = TrainConfig.from_dict(checkpoint["config"])
    # Never fetch/read ImageNet weights here: the saved state_dict replaces them anyway.
    build_config = TrainConfig.from_dict({**checkpoint["config"], "pretrained": False})
    model = build_model(
        build_config,
        checkpoint["in_channels"],
        checkpoint["n_source_classes"],
        checkpoint["n_target_classes"],
    )
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), config


# ---------------------------------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but CUDA is not available here; use 'auto' or 'cpu'")
    return dev


def uses_source(method: str) -> bool:
    return method != "target"


def steps_per_epoch(config: TrainConfig, n_source: int, n_target_train: int, n_unlabeled: int = 0) -> int:
    """An epoch is one pass over the larger of the datasets the method draws batches from.

    Schedule family: target and (unless ``target``) source. Mixup family: the target, plus the source
    when the schedule is composed, plus ICT's unlabeled pool (XMixup's per-sample auxiliary draws and
    SMILE's source head do not count: they draw no source batches).
    """
    if config.steps_per_epoch is not None:
        return int(config.steps_per_epoch)
    if config.method in SCHEDULE_METHODS:
        n = max(n_source, n_target_train) if uses_source(config.method) else n_target_train
    else:
        n = max(n_target_train, n_source if config.schedule else 0, n_unlabeled)
    return max(1, math.ceil(n / config.batch_size))


class _Sampler:
    """Uniform sub-batches: walk through successive seeded permutations, spilling across their edges.

    Every sample is drawn once per pass, as in an epoch-based loader, but sub-batches never shrink
    and the two domains can have any sizes.
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


def augment_batch(x: torch.Tensor, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to size/8 pixels (zero pad + crop), and random horizontal flips.

    Per-sample offsets are drawn on the CPU generator, so the result is the same on every device.
    """
    n, c, h, w = x.shape
    pad = max(1, min(h, w) // 8)
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5 if hflip else None
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = offsets.to(x.device)
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(c, device=x.device).view(1, c, 1, 1)
    out = padded[batch, chans, rows, cols]
    if flips is not None:
        out = torch.where(flips.to(x.device).view(n, 1, 1, 1), out.flip(-1), out)
    return out


@torch.inference_mode()
def evaluate(
    model: TransferNet, x: torch.Tensor, y: torch.Tensor, domain: str = "target"
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of one head in eval mode, in chunks."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(y), EVAL_BATCH):
        xb, yb = x[start : start + EVAL_BATCH], y[start : start + EVAL_BATCH]
        logits = model(xb, domain)
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(dim=1) == yb).sum())
    model.train(was_training)
    n = max(1, len(y))
    return correct / n, loss_sum / n


def _finite(value: float) -> float | None:
    """JSON has no NaN/inf: a diverged value is reported as None."""
    return value if math.isfinite(value) else None


def _seeds(seed: int) -> dict[str, int]:
    """Independent seeds per purpose, so e.g. turning augmentation on does not change the batches."""
    # New names go at the end: SeedSequence children keep their seeds when more are spawned.
    names = ("init", "target_sampler", "source_sampler", "augment", "method", "unlabeled")
    children = np.random.SeedSequence([seed, 0x7EA1]).spawn(len(names))
    return {
        name: int(child.generate_state(1, dtype=np.uint64)[0] >> 1)
        for name, child in zip(names, children, strict=True)
    }


# ---------------------------------------------------------------------------------------------------


def train(
    config: TrainConfig | dict[str, Any], report: Callable[[dict[str, Any]], None] | None = None
) -> TrainResult:
    """Train one model of `config`, calling `report(metrics)` after each epoch; see the module doc.

    `report` receives a JSON-able dict with exactly the keys of `REPORT_KEYS`. An exception it raises
    (e.g. a tuner stopping the trial) propagates and ends training.
    """
    # TrainConfig validates itself in __post_init__; replace() re-runs it on an instance the caller may
    # have mutated, and gives the result its own copy.
    config = TrainConfig.from_dict(config) if isinstance(config, dict) else dataclasses.replace(config)
    device = resolve_device(config.device)
    previous_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    rng_devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    try:
        # fork_rng: seeding here must neither be disturbed by nor disturb the caller's global RNG.
        with torch.random.fork_rng(devices=rng_devices):
            return _train(config, report, device)
    finally:
        if config.num_threads:
            torch.set_num_threads(previous_threads)


def _uses_source(config: TrainConfig, method: Method) -> bool:
    """Whether the run loads the source set (for batches, pairing, pretraining or the source head)."""
    if config.method in SCHEDULE_METHODS:
        return uses_source(config.method)
    return (
        config.schedule
        or method.uses_source_data
        or method.needs_source_head
        or config.resolved_init == "source_pretrained"
        or (config.method == "ict" and config.unlabeled is None)
    )


def _train(
    config: TrainConfig, report: Callable[[dict[str, Any]], None] | None, device: torch.device
) -> TrainResult:
    started = time.monotonic()
    seeds = _seeds(config.seed)
    legacy = config.method in SCHEDULE_METHODS
    method = build_method(config)
    with_source = _uses_source(config, method)
    # Source sub-batches each step: the schedule family's source branch, or a composed schedule.
    source_batches = uses_source(config.method) if legacy else config.schedule

    data: TransferData = load_transfer_data(config, load_source=with_source)
    if with_source and len(data.source_y) == 0:
        raise ValueError(f"method {config.method!r} needs source samples but the source set is empty")
    data = data.to(device)
    n_src, n_tgt = len(data.source_y), len(data.target_train_y)
    unlabeled_x = _unlabeled_pool(config, data, device) if config.method == "ict" else None
    n_unl = len(unlabeled_x) if unlabeled_x is not None else 0

    # Model init and dropout draw from the global generator (torch offers no other way for them).
    torch.manual_seed(seeds["init"])
    has_source_head = (
        source_batches or method.needs_source_head or config.resolved_init == "source_pretrained"
    )
    n_source_head = data.n_source_classes if (with_source and has_source_head) else 0
    model, init_info = initial_model(config, data, n_source_head, device)
    model.train()
    method_rng = np.random.default_rng(seeds["method"])
    method_gen = torch.Generator().manual_seed(seeds["method"])

    spe = steps_per_epoch(config, n_src, n_tgt, n_unlabeled=n_unl)
    total = config.epochs * spe
    target_sampler = _Sampler(n_tgt, config.batch_size, seeds["target_sampler"])
    source_sampler = _Sampler(n_src, config.batch_size, seeds["source_sampler"]) if source_batches else None
    unl_sampler = _Sampler(n_unl, config.batch_size, seeds["unlabeled"]) if unlabeled_x is not None else None
    aug_gen = torch.Generator().manual_seed(seeds["augment"])
    logger.info(
        "train %s: %s -> %s, backbone %s (bn %s, init %s) on %s; %d epochs x %d steps = T %d; %s",
        config.method,
        config.source if with_source else "-",
        config.target,
        config.backbone,
        config.bn,
        init_info["init"],
        device,
        config.epochs,
        spe,
        total,
        data.sizes(),
    )

    def batch(
        sampler: _Sampler, x: torch.Tensor, y: torch.Tensor, hflip: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        idx = sampler.next().to(device)
        xb, yb = x[idx], y[idx]
        if config.augment:
            xb = augment_batch(xb, hflip, aug_gen)
        return xb, yb

    def unlabeled_batch() -> torch.Tensor:
        assert unl_sampler is not None and unlabeled_x is not None
        xb = unlabeled_x[unl_sampler.next().to(device)]
        return augment_batch(xb, False, aug_gen) if config.augment else xb

    ctx = StepContext(
        config=config,
        model=model,
        data=data,
        device=device,
        rng=method_rng,
        gen=method_gen,
        target=lambda: batch(target_sampler, data.target_train_x, data.target_train_y, data.target_hflip),
        source=(lambda: batch(source_sampler, data.source_x, data.source_y, data.source_hflip))
        if source_sampler is not None
        else None,
        unlabeled=unlabeled_batch if unl_sampler is not None else None,
    )
    method.setup(ctx)
    params: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    if method.parameters():
        params.append({"params": method.parameters()})
    optimizer = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )

    history: list[dict[str, Any]] = []
    best_acc, best_epoch, best_state = -1.0, 0, None
    since_best, step, diverged, stopped_early = 0, 0, False, False
    for epoch in range(1, config.epochs + 1):
        # Losses are summed as tensors and read once per epoch: no device sync every step.
        zero = torch.zeros((), device=device)
        sum_t, sum_s, n_t, n_s = zero, zero, 0, 0
        extra_sums: dict[str, Any] = {}
        extra_counts: dict[str, int] = {}
        lam = lr = 0.0
        for _ in range(spe):
            step += 1
            if legacy:
                lam = schedule.loss_weight(
                    config.method, step, total, t0=config.t0, tau=config.tau, alpha=config.alpha
                )
            elif config.schedule:  # a mixup-family method composed with the sigmoid schedule of eq. 4
                lam = schedule.loss_weight(
                    "smooth", step, total, t0=config.t0, tau=config.tau, alpha=config.alpha
                )
            else:
                lam = 1.0
            lr = schedule.learning_rate(
                step, total, peak=config.lr, final=config.final_lr, warmup=config.warmup
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_t, loss_s, step_metrics = method.step_losses(ctx, lam, step, total)
            if loss_t is not None and loss_s is not None:
                loss = lam * loss_t + (1.0 - lam) * loss_s
            else:
                loss = loss_t if loss_t is not None else loss_s  # a lone branch has weight exactly 1
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            method.after_step(ctx, step, total)
            if loss_t is not None:
                sum_t, n_t = sum_t + loss_t.detach(), n_t + 1
            if loss_s is not None:
                sum_s, n_s = sum_s + loss_s.detach(), n_s + 1
            for k, v in step_metrics.items():
                extra_sums[k] = extra_sums.get(k, 0.0) + v
                extra_counts[k] = extra_counts.get(k, 0) + 1

        mean_t = float(sum_t) / n_t if n_t else None
        mean_s = float(sum_s) / n_s if n_s else None
        if any(v is not None and not math.isfinite(v) for v in (mean_t, mean_s)):
            diverged = True
        eval_net = method.eval_model(model)
        val_acc, val_loss = evaluate(eval_net, data.val_x, data.val_y)
        if val_acc > best_acc:  # strict: on ties the earlier epoch is kept
            best_acc, best_epoch, since_best = val_acc, epoch, 0
            best_state = {k: v.detach().clone() for k, v in eval_net.state_dict().items()}
        else:
            since_best += 1
        metrics = {
            "epoch": epoch,
            "step": step,
            "lr": lr,
            "lambda": lam,
            "source_weight": 1.0 - lam,
            "train_loss_target": _finite(mean_t) if mean_t is not None else None,
            "train_loss_source": _finite(mean_s) if mean_s is not None else None,
            "val_acc": val_acc,
            "val_loss": _finite(val_loss),
            "best_val_acc": best_acc,
            "total_steps": total,
        }
        for k in method.report_keys:  # method-specific keys (METHOD_REPORT_KEYS), epoch means
            metrics[k] = _finite(float(extra_sums[k]) / extra_counts[k]) if extra_counts.get(k) else None
        history.append(metrics)
        logger.debug("epoch %d/%d %s", epoch, config.epochs, metrics)
        if report is not None:
            report(dict(metrics))
        if diverged:
            logger.warning(
                "training loss is not finite at epoch %d; stopping (lr %.3g too high?)", epoch, config.lr
            )
            stopped_early = True
            break
        if config.patience is not None and since_best >= config.patience:
            logger.info(
                "early stop at epoch %d: no better val accuracy for %d epochs", epoch, config.patience
            )
            stopped_early = epoch < config.epochs
            break

    assert best_state is not None  # at least one epoch ran
    model.load_state_dict(best_state)
    model.eval()
    test_acc, test_loss = evaluate(model, data.test_x, data.test_y)
    linearity = linearity_diagnostics(model, data, seed=config.seed)
    sizes = data.sizes()
    if unlabeled_x is not None:
        sizes["n_unlabeled"] = n_unl
    wall = time.monotonic() - started
    logger.info(
        "done: best val acc %.4f at epoch %d, test acc %.4f (%d steps, %.1fs)",
        best_acc,
        best_epoch,
        test_acc,
        step,
        wall,
    )
    return TrainResult(
        config=config,
        best_val_acc=best_acc,
        best_epoch=best_epoch,
        test_acc=test_acc,
        total_steps=total,
        history=history,
        model=model,
        test_loss=_finite(test_loss),
        epochs_run=len(history),
        steps_run=step,
        stopped_early=stopped_early,
        diverged=diverged,
        data_sizes=sizes,
        in_channels=data.in_channels,
        image_size=data.image_size,
        device=str(device),
        wall_time_s=wall,
        init_info=init_info,
        method_info=method.result_info(),
        linearity=linearity,
    )


def _unlabeled_pool(config: TrainConfig, data: TransferData, device: torch.device) -> torch.Tensor:
    """ICT's unlabeled images: the source images (default) or the training images of `unlabeled`.

    A named pool is loaded as the source side of a run with source = `unlabeled` and all its classes, so
    when it is the target dataset the target's train/val/test samples are never part of it.
    """
    if config.unlabeled is None:
        return data.source_x
    pool_config = dataclasses.replace(
        config,
        method="target",
        schedule=False,
        source=config.unlabeled,
        source_path=None,
        source_classes=None,
    )
    pool = load_transfer_data(pool_config, load_source=True)
    if len(pool.source_x) == 0:
        raise ValueError(f"the unlabeled pool {config.unlabeled!r} is empty")
    return pool.source_x.to(device)


__all__ = [
    "REPORT_KEYS",
    "TrainResult",
    "train",
    "evaluate",
    "load_model",
    "resolve_device",
    "steps_per_epoch",
    "augment_batch",
]

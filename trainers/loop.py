"""The one training loop: paper eq. 3 with the schedule of eq. 4, updated as eq. 7.

For t = 1..T a target sub-batch B^T and a source sub-batch B^S of `batch_size` samples each are drawn
uniformly (successive seeded permutations per domain, trainers/batches.py) and

    loss(t) = lambda(t) * L_method(B^T, ...) + (1 - lambda(t)) * CE(h^S(g(B^S)))

is minimised by momentum SGD with the learning rate of `schedule.learning_rate`; lambda(t) is
`schedule.run_loss_weight` and L_method the method's loss (trainers/methods/). A branch whose
weight is exactly 0 is not computed at all (its gradient would be zero anyway), so ``target`` never
touches the source and ``finetune`` only uses one domain per step. After every epoch the target
validation accuracy is measured and reported; the weights with the best validation accuracy are kept
(early stopping, appendix A.3) and are the ones tested at the end.

The loop reads as `_setup` (data, model, batches, optimiser), `_train_epoch` (the steps of one epoch
and its evaluation) and `_finish` (test, diagnostics, the result); what differs between methods is
asked of the method (what data it needs, its losses), never decided here by its name.

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

from . import epoch_checkpoint, hardware, schedule
from .batches import Batches, Sampler, run_seeds, steps_per_epoch
from .config import TrainConfig
from .data import TransferData, dataset_key, load_transfer_data
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


@torch.inference_mode()
def evaluate(
    model: TransferNet,
    x: torch.Tensor,
    y: torch.Tensor,
    domain: str = "target",
    *,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of one head in eval mode, in chunks.

    The sums stay on the device and are read once at the end (one host sync, not one per chunk); the
    loss sum is float64, as the Python float it replaced, so fp32 results are unchanged to the bit.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=y.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=y.device)
    for start in range(0, len(y), EVAL_BATCH):
        xb, yb = x[start : start + EVAL_BATCH], y[start : start + EVAL_BATCH]
        with hardware.autocast(xb.device, autocast_dtype):
            logits = model(xb, domain)
            loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").double()
        correct += (logits.argmax(dim=1) == yb).sum()
    model.train(was_training)
    n = max(1, len(y))
    return int(correct) / n, float(loss_sum) / n


def _finite(value: float | None) -> float | None:
    """JSON has no NaN/inf: a diverged value is reported as None."""
    return value if value is None or math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------------


def train(
    config: TrainConfig | dict[str, Any],
    report: Callable[[dict[str, Any]], None] | None = None,
    *,
    checkpoint: str | Path | None = None,
) -> TrainResult:
    """Train one model of `config`, calling `report(metrics)` after each epoch; see the module doc.

    `report` receives a JSON-able dict with exactly the keys of `REPORT_KEYS` followed by the method's
    `report_keys`. An exception it raises (e.g. a tuner stopping the trial) propagates and ends training.

    `checkpoint`: a file the run's state is saved to after each epoch (after its report), and resumed
    from when it exists: the epochs it holds are not trained (nor reported) again, and the result is the
    same as an uninterrupted run's (see epoch_checkpoint.py). The caller removes it when done with it.
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
        with torch.random.fork_rng(devices=rng_devices), hardware.device_settings(device):
            return _train(config, report, device, checkpoint)
    finally:
        if config.num_threads:
            torch.set_num_threads(previous_threads)


@dataclass
class _Run:
    """One run between setup and finish: what it trains with, and where its epochs have got to."""

    config: TrainConfig
    device: torch.device
    method: Method
    data: TransferData
    model: TransferNet
    ctx: StepContext
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    total: int  # T, the planned number of steps
    init_info: dict[str, Any]
    n_unlabeled: int | None  # size of the method's unlabeled pool, if it has one
    started: float
    autocast_dtype: torch.dtype | None = None  # bf16 autocast, or None for fp32 (trainers/hardware.py)
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    since_best: int = 0
    diverged: bool = False
    stopped_early: bool = False


def _train(
    config: TrainConfig,
    report: Callable[[dict[str, Any]], None] | None,
    device: torch.device,
    checkpoint: str | Path | None = None,
) -> TrainResult:
    run = _setup(config, device)
    done = epoch_checkpoint.restore(run, checkpoint) if checkpoint is not None else 0
    if done and _should_stop(run, done):  # it was interrupted after its last epoch
        return _finish(run)
    for epoch in range(done + 1, config.epochs + 1):
        metrics = _train_epoch(run, epoch)
        if report is not None:
            report(dict(metrics))
        if checkpoint is not None:
            epoch_checkpoint.save(run, checkpoint, epoch)
        if _should_stop(run, epoch):
            break
    return _finish(run)


# --- setup -----------------------------------------------------------------------------------------


def _setup(config: TrainConfig, device: torch.device) -> _Run:
    started = time.monotonic()
    seeds = run_seeds(config.seed)
    method = build_method(config)
    rest = method.unlabeled_pool and config.unlabeled == "target"
    data = load_transfer_data(config, load_source=method.loads_source(), load_target_rest=rest)
    if method.loads_source() and len(data.source_y) == 0:
        raise ValueError(f"method {config.method!r} needs source samples but the source set is empty")
    data = data.to(device)
    unlabeled_x = _unlabeled_pool(config, data, device) if method.unlabeled_pool else None

    # Model init and dropout draw from the global generator (torch offers no other way for them).
    torch.manual_seed(seeds["init"])
    with_head = method.loads_source() and method.source_head()
    model, init_info = initial_model(config, data, data.n_source_classes if with_head else 0, device)
    hardware.prepare_model(model, config, device).train()

    ctx = _step_context(config, method, data, model, unlabeled_x, seeds, device)
    sizes = [len(data.target_train_y), len(data.source_y) if ctx.source is not None else 0]
    sizes += [len(unlabeled_x)] if unlabeled_x is not None else []
    spe = steps_per_epoch(config.batch_size, sizes, config.steps_per_epoch)
    method.setup(ctx)
    hardware.compile_backbone(model, config)
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    if method.parameters():  # parameters the method trains too (AutoMix's Mix Block)
        groups.append({"params": method.parameters()})
    optimizer = torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    run = _Run(
        config=config,
        device=device,
        method=method,
        data=data,
        model=model,
        ctx=ctx,
        optimizer=optimizer,
        steps_per_epoch=spe,
        total=config.epochs * spe,
        init_info=init_info,
        n_unlabeled=len(unlabeled_x) if unlabeled_x is not None else None,
        started=started,
        autocast_dtype=hardware.autocast_dtype(config, device),
    )
    logger.info(
        "train %s: %s -> %s, backbone %s (bn %s, init %s) on %s; %d epochs x %d steps = T %d; %s",
        config.method,
        config.source if method.loads_source() else "-",
        config.target,
        config.backbone,
        config.bn,
        init_info["init"],
        device,
        config.epochs,
        spe,
        run.total,
        data.sizes(),
    )
    return run


def _step_context(
    config: TrainConfig,
    method: Method,
    data: TransferData,
    model: TransferNet,
    unlabeled_x: torch.Tensor | None,
    seeds: dict[str, int],
    device: torch.device,
) -> StepContext:
    """The batches a method draws from: the target, the source when it takes source sub-batches, the
    unlabeled pool when it has one; all augmented by one generator when `augment` is on."""
    aug = torch.Generator().manual_seed(seeds["augment"]) if config.augment else None
    bs = config.batch_size
    target = Batches(
        Sampler(len(data.target_train_y), bs, seeds["target_sampler"]),
        data.target_train_x,
        data.target_train_y,
        hflip=data.target_hflip,
        augment_gen=aug,
    )
    source = unlabeled = None
    if method.source_batches():
        source = Batches(
            Sampler(len(data.source_y), bs, seeds["source_sampler"]),
            data.source_x,
            data.source_y,
            hflip=data.source_hflip,
            augment_gen=aug,
        )
    if unlabeled_x is not None:
        unlabeled = Batches(Sampler(len(unlabeled_x), bs, seeds["unlabeled"]), unlabeled_x, augment_gen=aug)
    return StepContext(
        config=config,
        model=model,
        data=data,
        device=device,
        rng=np.random.default_rng(seeds["method"]),
        gen=torch.Generator().manual_seed(seeds["method"]),
        target=target.draw,
        source=source.draw if source is not None else None,
        unlabeled=unlabeled.draw if unlabeled is not None else None,
    )


def _unlabeled_pool(config: TrainConfig, data: TransferData, device: torch.device) -> torch.Tensor:
    """A method's unlabeled images (ICT's), as `config.unlabeled` names them: "target", the target's
    training images beyond the N labeled ones (loaded with the data); "source" (or None), the source
    images; a dataset name or "imagefolder" (`unlabeled_path`), that set's training images.

    A named pool is loaded as the source side of a run with source = `unlabeled` and all its classes, so
    when it is the target dataset the target's train/val/test samples are never part of it.
    """
    if config.unlabeled == "target":
        if data.target_rest_x is None or len(data.target_rest_x) == 0:
            raise ValueError(
                "ICT's unlabeled pool is the target's training images beyond the N labeled ones, but "
                f"n_target={config.n_target} leaves none; lower n_target, or set unlabeled to 'source' "
                "or a dataset name"
            )
        return data.target_rest_x
    if config.unlabeled in (None, "source"):
        return data.source_x
    path = config.unlabeled_path
    pool_config = dataclasses.replace(
        config, schedule=False, source=config.unlabeled, source_path=path, source_classes=None
    )
    pool = load_transfer_data(pool_config, load_source=True)
    keep = np.ones(len(pool.source_x), dtype=bool)
    if dataset_key(config.unlabeled, path) == dataset_key(config.target, config.target_path):
        # The target's own dataset: this load splits its classes differently from the run's, so drop
        # every image the run labels, validates or tests on (positions in the same training split).
        used = [data.indices[k] for k in ("target_train", "val")]
        used += [data.indices["test"]] if data.test_split == "train" else []
        keep = ~np.isin(pool.indices["source"], np.concatenate(used))
    if not keep.any():
        raise ValueError(f"the unlabeled pool {config.unlabeled!r} is empty")
    return pool.source_x[torch.from_numpy(keep)].to(device)


# --- one epoch -------------------------------------------------------------------------------------


class _EpochSums:
    """Per-epoch sums of the step losses and the method's metrics. Losses are summed as tensors and
    read once per epoch: no device sync every step."""

    def __init__(self, device: torch.device):
        zero = torch.zeros((), device=device)
        self.loss_t, self.loss_s, self.n_t, self.n_s = zero, zero, 0, 0
        self.extra: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def add(self, loss_t: torch.Tensor | None, loss_s: torch.Tensor | None, metrics: dict[str, Any]) -> None:
        if loss_t is not None:
            self.loss_t, self.n_t = self.loss_t + loss_t.detach(), self.n_t + 1
        if loss_s is not None:
            self.loss_s, self.n_s = self.loss_s + loss_s.detach(), self.n_s + 1
        for k, v in metrics.items():
            self.extra[k] = self.extra.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> tuple[float | None, float | None]:
        """(mean target-branch loss, mean source-branch loss); None for a branch never computed."""
        mean_t = float(self.loss_t) / self.n_t if self.n_t else None
        mean_s = float(self.loss_s) / self.n_s if self.n_s else None
        return mean_t, mean_s

    def mean(self, key: str) -> float | None:
        return _finite(float(self.extra[key]) / self.counts[key]) if self.counts.get(key) else None


def _step(run: _Run, lam: float, lr: float, sums: _EpochSums) -> None:
    """One SGD step on lambda(t) L_method + (1 - lambda(t)) L_source (paper eq. 3 / 7)."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with hardware.autocast(run.device, run.autocast_dtype):
        loss_t, loss_s, step_metrics = run.method.step_losses(run.ctx, lam, run.step, run.total)
        if loss_t is not None and loss_s is not None:
            loss = lam * loss_t + (1.0 - lam) * loss_s
        else:
            loss = loss_t if loss_t is not None else loss_s  # a lone branch has weight exactly 1
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.method.after_step(run.ctx, run.step, run.total)
    sums.add(loss_t, loss_s, step_metrics)


def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """Train one epoch, evaluate, keep the best weights; the epoch's metrics (appended to the history)."""
    config, sums = run.config, _EpochSums(run.device)
    lam = lr = 0.0
    for _ in range(run.steps_per_epoch):
        run.step += 1
        lam = schedule.run_loss_weight(config, run.step, run.total)
        lr = schedule.learning_rate(
            run.step, run.total, peak=config.lr, final=config.final_lr, warmup=config.warmup
        )
        _step(run, lam, lr, sums)

    mean_t, mean_s = sums.means()
    if any(v is not None and not math.isfinite(v) for v in (mean_t, mean_s)):
        run.diverged = True
    eval_net = run.method.eval_model(run.model)
    val_acc, val_loss = evaluate(eval_net, run.data.val_x, run.data.val_y, autocast_dtype=run.autocast_dtype)
    if val_acc > run.best_acc:  # strict: on ties the earlier epoch is kept
        run.best_acc, run.best_epoch, run.since_best = val_acc, epoch, 0
        run.best_state = {k: v.detach().clone() for k, v in eval_net.state_dict().items()}
    else:
        run.since_best += 1
    metrics = {
        "epoch": epoch,
        "step": run.step,
        "lr": lr,
        "lambda": lam,
        "source_weight": 1.0 - lam,
        "train_loss_target": _finite(mean_t),
        "train_loss_source": _finite(mean_s),
        "val_acc": val_acc,
        "val_loss": _finite(val_loss),
        "best_val_acc": run.best_acc,
        "total_steps": run.total,
    }
    metrics |= {k: sums.mean(k) for k in run.method.report_keys}  # the method's own keys, epoch means
    run.history.append(metrics)
    logger.debug("epoch %d/%d %s", epoch, config.epochs, metrics)
    return metrics


def _should_stop(run: _Run, epoch: int) -> bool:
    """Stop on a diverged loss, or after `patience` epochs without a better val accuracy."""
    config = run.config
    if run.diverged:
        logger.warning(
            "training loss is not finite at epoch %d; stopping (lr %.3g too high?)", epoch, config.lr
        )
        run.stopped_early = True
        return True
    if config.patience is not None and run.since_best >= config.patience:
        logger.info("early stop at epoch %d: no better val accuracy for %d epochs", epoch, config.patience)
        run.stopped_early = epoch < config.epochs
        return True
    return False


# --- finish ----------------------------------------------------------------------------------------


def _finish(run: _Run) -> TrainResult:
    """Load the best weights, test them, measure the linearity diagnostics, pack the result."""
    assert run.best_state is not None  # at least one epoch ran
    model, data = run.model, run.data
    model.load_state_dict(run.best_state)
    model.eval()
    test_acc, test_loss = evaluate(model, data.test_x, data.test_y, autocast_dtype=run.autocast_dtype)
    linearity = linearity_diagnostics(model, data, seed=run.config.seed)
    sizes = data.sizes()
    if run.n_unlabeled is not None:
        sizes["n_unlabeled"] = run.n_unlabeled
    wall = time.monotonic() - run.started
    logger.info(
        "done: best val acc %.4f at epoch %d, test acc %.4f (%d steps, %.1fs)",
        run.best_acc,
        run.best_epoch,
        test_acc,
        run.step,
        wall,
    )
    return TrainResult(
        config=run.config,
        best_val_acc=run.best_acc,
        best_epoch=run.best_epoch,
        test_acc=test_acc,
        total_steps=run.total,
        history=run.history,
        model=model,
        test_loss=_finite(test_loss),
        epochs_run=len(run.history),
        steps_run=run.step,
        stopped_early=run.stopped_early,
        diverged=run.diverged,
        data_sizes=sizes,
        in_channels=data.in_channels,
        image_size=data.image_size,
        device=str(run.device),
        wall_time_s=wall,
        init_info=run.init_info,
        method_info=run.method.result_info(),
        linearity=linearity,
    )


__all__ = [
    "REPORT_KEYS",
    "TrainResult",
    "train",
    "evaluate",
    "load_model",
    "resolve_device",
]

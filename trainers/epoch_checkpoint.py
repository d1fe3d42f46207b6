"""A run's state at an epoch's end, saved so that an interrupted run resumes where it was.

Everything the next epoch reads is kept: the model, the optimiser (its momentum buffers), the method's
own state (teachers, the Mix Block, AutoMix's momentum), every generator the loop draws from (the global
torch RNG that dropout uses, the samplers' generators with their current permutation and position, the
augmentation, the method's numpy and torch generators), the step, the best weights so far and the
history. The learning rate and lambda(t) are functions of the step, so no scheduler is saved. A run
resumed from the checkpoint of epoch k gives bit-identical results to one that was never interrupted
(same CPU and thread count).

Written atomically (a temporary file in the same folder, then a rename): a process killed while writing
leaves the previous epoch's checkpoint, never a torn one. A checkpoint of another config is ignored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .loop import _Run

logger = logging.getLogger(__name__)

FORMAT = 1
# Fields that change where and how fast a run trains, not what it computes.
_IGNORED_CONFIG = ("device", "num_threads")
_RUN_FIELDS = ("step", "history", "best_acc", "best_epoch", "best_state", "since_best", "diverged")


def _config_key(run: _Run) -> dict[str, Any]:
    return {k: v for k, v in run.config.to_dict().items() if k not in _IGNORED_CONFIG}


def _batches(run: _Run) -> dict[str, Any]:
    """The loop's `Batches` by domain: the step context holds their bound `draw` methods."""
    draws = {"target": run.ctx.target, "source": run.ctx.source, "unlabeled": run.ctx.unlabeled}
    return {name: draw.__self__ for name, draw in draws.items() if draw is not None}


def _rng_state(run: _Run) -> dict[str, Any]:
    batches = _batches(run)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "samplers": {
            name: {"gen": b.sampler.gen.get_state(), "perm": b.sampler.perm, "pos": b.sampler.pos}
            for name, b in batches.items()
        },
        # One augmentation generator is shared by all sets (see Batches).
        "augment": next((b.augment_gen.get_state() for b in batches.values() if b.augment_gen), None),
        "method_np": run.ctx.rng.bit_generator.state,
        "method_torch": run.ctx.gen.get_state(),
    }
    if run.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(run.device)
    return state


def _set_rng_state(run: _Run, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], run.device)
    for name, b in _batches(run).items():
        saved = state["samplers"][name]
        b.sampler.gen.set_state(saved["gen"])
        b.sampler.perm, b.sampler.pos = saved["perm"], saved["pos"]
        if b.augment_gen is not None:
            b.augment_gen.set_state(state["augment"])
    run.ctx.rng.bit_generator.state = state["method_np"]
    run.ctx.gen.set_state(state["method_torch"])


def save(run: _Run, path: str | Path, epoch: int) -> None:
    """Write the run's state after `epoch` to `path`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "epoch": epoch,
        "config": _config_key(run),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "method": run.method.state_dict(),
        "rng": _rng_state(run),
        "run": {k: getattr(run, k) for k in _RUN_FIELDS},
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def restore(run: _Run, path: str | Path) -> int:
    """Load the state saved at `path` into a freshly set-up `run`; the epoch it was saved after, or 0
    when there is no usable checkpoint (none, unreadable, or of another config)."""
    path = Path(path)
    if not path.is_file():
        return 0
    try:
        # weights_only: the state is tensors and plain types (numpy's generator state is a dict of ints).
        state = torch.load(path, map_location=run.device, weights_only=True)
    except Exception as exc:  # a file we cannot read is no reason to fail the run: start it afresh
        logger.warning("ignoring the unreadable checkpoint %s: %s", path, exc)
        return 0
    if state.get("format") != FORMAT or state.get("config") != _config_key(run):
        logger.warning("ignoring the checkpoint %s: it is of another config", path)
        return 0
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.method.load_state_dict(state["method"])
    for key, value in state["run"].items():
        setattr(run, key, value)
    # Generator states must be CPU byte tensors whatever map_location did to them.
    rng = state["rng"]
    rng["torch"] = rng["torch"].cpu()
    if "cuda" in rng:
        rng["cuda"] = rng["cuda"].cpu()
    for saved in rng["samplers"].values():
        saved["gen"], saved["perm"] = saved["gen"].cpu(), saved["perm"].cpu()
    for key in ("augment", "method_torch"):
        rng[key] = rng[key].cpu() if rng[key] is not None else None
    _set_rng_state(run, rng)
    logger.info("resumed from %s after epoch %d (step %d)", path, state["epoch"], run.step)
    return int(state["epoch"])


__all__ = ["save", "restore"]

"""How a run uses its device: precision, memory format, cuDNN autotuning, torch.compile, host copies.

The same code paths run on CPU and CUDA; only the defaults differ (TrainConfig's `precision`,
`channels_last` and `compile_model`):

- precision "auto": bf16 autocast on CUDA (tensor cores; bf16 has fp32's range, so no loss scaling),
  fp32 on CPU, where fp32 keeps a config's results bit-identical run to run (the golden runs).
  "bf16" autocasts on the CPU too (PyTorch's CPU autocast); "fp32" never autocasts.
- channels_last None: NHWC weights and activations on CUDA (what cuDNN's tensor-core kernels read),
  the default layout on CPU (another layout picks other CPU kernels and so other rounding).
- cuDNN benchmark mode on CUDA: each run's fixed input shapes make the autotuned kernel choice pay.
- compile_model: torch.compile of the backbone (the bulk of the compute); off by default, as the
  compile time (tens of seconds) only pays on long runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def autocast_dtype(config: Any, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run (None: plain fp32)."""
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def uses_channels_last(config: Any, device: torch.device) -> bool:
    return device.type == "cuda" if config.channels_last is None else bool(config.channels_last)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for the forward pass and the loss (None: a no-op context, fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_model(model: nn.Module, config: Any, device: torch.device) -> nn.Module:
    """Put the network in the run's memory format (in place); returns it."""
    if uses_channels_last(config, device):
        model.to(memory_format=torch.channels_last)
    return model


def compile_backbone(model: nn.Module, config: Any) -> None:
    """torch.compile the backbone in place when `compile_model` is on. In place (Module.compile) so the
    state_dict keys stay those of the plain module, and after the method's setup so teacher copies
    (deepcopy) are made of the plain module."""
    if config.compile_model:
        backbone = getattr(model, "backbone", model)
        backbone.compile()


@contextlib.contextmanager
def device_settings(device: torch.device) -> Iterator[None]:
    """cuDNN benchmark mode while a CUDA run trains; the previous setting afterwards."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor (batch indices, augmentation offsets) onto `device` without blocking the host: a
    pageable host-to-GPU copy waits for the copy, a pinned one is queued behind the GPU's work."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


__all__ = [
    "autocast",
    "autocast_dtype",
    "compile_backbone",
    "device_settings",
    "prepare_model",
    "to_device",
    "uses_channels_last",
]

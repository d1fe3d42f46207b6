"""Trainers: one training run from a `TrainConfig`: Smooth Transfer Learning (and its special cases) and
the mixup family of issue 3 (trainers/methods/: mixup, kmixup, cutmix, ict, xmixup, smile, automix,
source_finetune), with the pretrained-source cache (pretrain.py) and linearity diagnostics. Every method
is a class in the registry `trainers.methods.REGISTRY`, from which the rest is derived.

    from trainers import TrainConfig, train
    result = train(TrainConfig(method="smooth", t0=0.1, tau=0.05), report=print_metrics)
    result.best_val_acc, result.test_acc, result.save("runs/0")

Importing this package loads numpy, not torch: torch is imported by the first name that needs it
(`train`, `TrainResult`, `load_transfer_data`, ...; see `_LAZY`) or the first tensor a method makes;
torchvision and scikit-learn are imported when a dataset or backbone that needs them is used.
"""

import importlib
from typing import Any

from .config import (
    BACKBONES,
    DATASETS,
    SCHEDULE_PARAMS,
    TrainConfig,
    config_fields,
    schedule_params,
)
from .methods import METHOD_REPORT_KEYS, REGISTRY, method_class, method_names, register

# The names that need torch, imported on first use (PEP 562): the config and the method registry load
# without torch, for the service's API and study driver, which read them and never train.
_LAZY = {
    "DatasetNotFoundError": ".data",
    "TransferData": ".data",
    "load_transfer_data": ".data",
    "REPORT_KEYS": ".loop",
    "TrainResult": ".loop",
    "load_model": ".loop",
    "train": ".loop",
    "PretrainedWeightsNotFoundError": ".models",
    "TransferNet": ".models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "DatasetNotFoundError",
    "PretrainedWeightsNotFoundError",
    "SCHEDULE_PARAMS",
    "METHOD_REPORT_KEYS",
    "REGISTRY",
    "method_class",
    "method_names",
    "register",
    "schedule_params",
    "BACKBONES",
    "DATASETS",
    "REPORT_KEYS",
    "config_fields",
    "load_model",
    "load_transfer_data",
    "TransferData",
    "TransferNet",
]

"""Trainers: one training run from a `TrainConfig`: Smooth Transfer Learning (and its special cases) and
the mixup family of issue 3 (trainers/methods/: mixup, kmixup, cutmix, ict, xmixup, smile, automix,
source_finetune), with the pretrained-source cache (pretrain.py) and linearity diagnostics. Every method
is a class in the registry `trainers.methods.REGISTRY`, from which the rest is derived.

    from trainers import TrainConfig, train
    result = train(TrainConfig(method="smooth", t0=0.1, tau=0.05), report=print_metrics)
    result.best_val_acc, result.test_acc, result.save("runs/0")

Importing this package loads torch (and numpy) only; torchvision and scikit-learn are imported when a
dataset or backbone that needs them is used.
"""

from .config import (
    BACKBONES,
    DATASETS,
    METHOD_PARAMS,
    METHODS,
    MIXUP_METHODS,
    SCHEDULE_METHODS,
    SCHEDULE_PARAMS,
    TrainConfig,
    config_fields,
    schedule_params,
)
from .data import DatasetNotFoundError, TransferData, load_transfer_data
from .loop import REPORT_KEYS, TrainResult, load_model, train
from .methods import METHOD_REPORT_KEYS, REGISTRY, method_class, method_names, register
from .models import PretrainedWeightsNotFoundError, TransferNet

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "DatasetNotFoundError",
    "PretrainedWeightsNotFoundError",
    "METHODS",
    "MIXUP_METHODS",
    "SCHEDULE_METHODS",
    "SCHEDULE_PARAMS",
    "METHOD_PARAMS",
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

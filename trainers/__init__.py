"""Trainers: one training run of Smooth Transfer Learning (and its special cases) from a `TrainConfig`.

    from trainers import TrainConfig, train
    result = train(TrainConfig(method="smooth", t0=0.1, tau=0.05), report=print_metrics)
    result.best_val_acc, result.test_acc, result.save("runs/0")

Importing this package loads torch (and numpy) only; torchvision and scikit-learn are imported when a
dataset or backbone that needs them is used.
"""

from .config import BACKBONES, DATASETS, METHOD_PARAMS, METHODS, TrainConfig, config_fields
from .data import DatasetNotFoundError, TransferData, load_transfer_data
from .loop import REPORT_KEYS, TrainResult, load_model, train
from .models import PretrainedWeightsNotFoundError, TransferNet

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "DatasetNotFoundError",
    "PretrainedWeightsNotFoundError",
    "METHODS",
    "METHOD_PARAMS",
    "BACKBONES",
    "DATASETS",
    "REPORT_KEYS",
    "config_fields",
    "load_model",
    "load_transfer_data",
    "TransferData",
    "TransferNet",
]

"""One module per training method; `build_method(config)` gives the `Method` the loop plugs in.

| method          | module     | paper |
| --------------- | ---------- | ----- |
| target, finetune, multitask, smooth | finetune.py (ScheduleFamily) | 002 |
| source_finetune | finetune.py | fine-tuning from the source-pretrained backbone |
| mixup, kmixup   | mixup.py   | Zhang et al.; 003 (K-point, Dirichlet) |
| cutmix          | cutmix.py  | Yun et al. (the baseline of 004) |
| ict             | ict.py     | 003 (ICT[K]) |
| xmixup          | xmixup.py  | 001 |
| smile           | smile.py   | 000 |
| automix         | automix.py | 004 |
"""

from __future__ import annotations

from ..config import SCHEDULE_METHODS, TrainConfig
from .automix import AutoMix
from .base import Method, StepContext
from .cutmix import CutMix
from .finetune import ScheduleFamily, SourceFinetune
from .ict import ICT
from .mixup import KPointMixup, Mixup
from .smile import SMILE
from .xmixup import XMixup

METHOD_CLASSES: dict[str, type[Method]] = {
    "source_finetune": SourceFinetune,
    "mixup": Mixup,
    "kmixup": KPointMixup,
    "cutmix": CutMix,
    "ict": ICT,
    "xmixup": XMixup,
    "smile": SMILE,
    "automix": AutoMix,
}

# Extra per-epoch report keys by method (after the common `REPORT_KEYS`).
METHOD_REPORT_KEYS: dict[str, tuple[str, ...]] = {m: cls.report_keys for m, cls in METHOD_CLASSES.items()}


def build_method(config: TrainConfig) -> Method:
    if config.method in SCHEDULE_METHODS:
        return ScheduleFamily(config)
    return METHOD_CLASSES[config.method](config)


__all__ = ["Method", "StepContext", "METHOD_CLASSES", "METHOD_REPORT_KEYS", "build_method"]

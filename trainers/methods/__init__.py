"""The method registry: one module per training method, one registry entry per method.

| method          | module             | paper |
| --------------- | ------------------ | ----- |
| target, finetune, multitask, smooth | schedule_family.py | 002 |
| source_finetune | schedule_family.py | fine-tuning from the source-pretrained backbone |
| mixup, kmixup   | mixup.py           | Zhang et al.; 003 (K-point, Dirichlet) |
| cutmix          | cutmix.py          | Yun et al. (the baseline of 004) |
| ict             | ict.py             | 003 (ICT[K]) |
| xmixup          | xmixup.py          | 001 |
| smile           | smile.py           | 000 |
| automix         | automix.py         | 004 |

Everything else is derived from `REGISTRY` (name -> class): the config's method validation, default
init and mixing alpha (trainers/config.py), lambda(t) (trainers/schedule.py), the search spaces
(search_spaces/) and the REST schema's tagged union (service/schemas.py). Adding a method is a new
module with a `Method` subclass and one entry in `BUILTIN` below (see the README, "Adding a method").
"""

from __future__ import annotations

import keyword

from .automix import AutoMix
from .base import SCHEDULE_PARAMS, Fixed, Method, Range, StepContext
from .cutmix import CutMix
from .ict import ICT
from .mixup import KPointMixup, Mixup
from .schedule_family import (
    SCHEDULE_SPACE,
    Finetune,
    Multitask,
    ScheduleFamily,
    Smooth,
    SourceFinetune,
    Target,
)
from .smile import SMILE
from .xmixup import XMixup

REGISTRY: dict[str, type[Method]] = {}
INIT_DEFAULTS = ("scratch", "source_pretrained")


def register(cls: type[Method]) -> type[Method]:
    """Add a method class to the registry (usable as a class decorator); its facts are checked here."""
    name = cls.name
    if not (isinstance(name, str) and name.isidentifier() and name.islower() and not keyword.iskeyword(name)):
        raise ValueError(f"{cls.__qualname__}.name must be a lower-case identifier, got {name!r}")
    if REGISTRY.get(name, cls) is not cls:
        raise ValueError(f"method {name!r} is already registered by {REGISTRY[name].__qualname__}")
    if cls.init not in INIT_DEFAULTS:
        raise ValueError(f"{name}: init must be one of {INIT_DEFAULTS}, got {cls.init!r}")
    if not cls.doc:
        raise ValueError(f"{name}: give the method a one-line doc")
    for param, default in cls.search_space.items():
        if not isinstance(default, Range | Fixed):
            raise TypeError(f"{name}.search_space[{param!r}] must be a Range or a Fixed, got {default!r}")
    REGISTRY[name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; one of {', '.join(REGISTRY)}") from None


def method_names() -> tuple[str, ...]:
    """Every registered method, in registry order (the order the docs and the REST schema list them)."""
    return tuple(REGISTRY)


def build_method(config) -> Method:  # config: TrainConfig (no import: methods do not depend on config)
    return method_class(config.method)(config)


# The registry: one entry per method, in the order the docs list them.
BUILTIN: tuple[type[Method], ...] = (
    Target,
    Finetune,
    Multitask,
    Smooth,
    SourceFinetune,
    Mixup,
    KPointMixup,
    CutMix,
    ICT,
    XMixup,
    SMILE,
    AutoMix,
)
for _cls in BUILTIN:
    register(_cls)

# Extra per-epoch report keys by method (after the common `trainers.loop.REPORT_KEYS`); a snapshot of
# the built-in methods: read `method_class(name).report_keys` for one registered later.
METHOD_REPORT_KEYS: dict[str, tuple[str, ...]] = {m: cls.report_keys for m, cls in REGISTRY.items()}

__all__ = [
    "Method",
    "StepContext",
    "Range",
    "Fixed",
    "REGISTRY",
    "BUILTIN",
    "SCHEDULE_PARAMS",
    "SCHEDULE_SPACE",
    "ScheduleFamily",
    "METHOD_REPORT_KEYS",
    "register",
    "method_class",
    "method_names",
    "build_method",
]

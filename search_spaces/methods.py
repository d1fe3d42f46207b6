"""Each method's default search ranges, read from the trainer's method registry.

The ranges are facts of the methods (the `search_space` of each class in trainers/methods/, as plain
`Range`/`Fixed` data, with the paper each comes from next to it); here they become `Param`s, the
pydantic model a study spec overrides them with. Reading the registry at call time means a method
registered after import (see README, "Adding a method") has its space too.

The schedule family (target, finetune, multitask, smooth) searches the params its lambda(t) reads;
`DEFAULTS` are the sigmoid schedule's ranges (t0, tau, alpha; paper 002, see
trainers/methods/schedule_family.py), which a composable method adds with ``schedule=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from search_spaces.params import Param
from trainers.methods import SCHEDULE_SPACE, Fixed, Range, method_class


def to_param(default: Range | Fixed) -> Param:
    """A trainer-side default range as the `Param` of a study spec."""
    if isinstance(default, Fixed):
        return Param(value=default.value, integer=default.integer or None)
    return Param(low=default.low, high=default.high, log=default.log, integer=default.integer or None)


def method_defaults(method: str, trainer: Mapping[str, Any] | None = None) -> dict[str, Param]:
    """Default ranges of a method's own params (not the composed schedule's), in a study whose fixed
    trainer fields are `trainer` (a method's ranges may depend on one, e.g. ICT's distance)."""
    return {name: to_param(d) for name, d in method_class(method).space_for(trainer or {}).items()}


DEFAULTS: dict[str, Param] = {name: to_param(d) for name, d in SCHEDULE_SPACE.items()}

__all__ = ["DEFAULTS", "method_defaults", "to_param"]

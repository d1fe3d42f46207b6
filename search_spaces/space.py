"""The generic space builder: a study's arms -> ``space(trial) -> dict`` over TrainConfig field names.

An *arm* is a method, or a composable method with the sigmoid schedule, ``"<method>+schedule"`` (see
`arm_name`; REST: ``{"method": "mixup", "schedule": true}``): its space adds t0, tau, alpha (the
schedule's `DEFAULTS`) and returns the constant ``schedule=True``. Each method's default ranges come
from the trainer's method registry (search_spaces/methods.py). A multi-method study searches one
conditional space: the arm as a categorical ``method`` param, then only that arm's params. The returned
config always holds the real method name (``"mixup"``) and, for composable methods, ``schedule``
(True/False), so it merges into `trainers.TrainConfig` unrenamed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from search_spaces.methods import DEFAULTS, method_defaults
from search_spaces.params import Param, resolve
from trainers.methods import method_class

SCHEDULE_SUFFIX = "+schedule"


def _composable(method: str) -> bool:
    """Whether `schedule=True` composes the method with the sigmoid schedule (the mixup family)."""
    try:
        return method_class(method).composable
    except ValueError:
        return False


def arm_name(method: str, schedule: bool = False) -> str:
    """The key of a study arm: ``"mixup"``, or ``"mixup+schedule"`` for mixup composed with the schedule."""
    if schedule:
        if not _composable(method):
            raise ValueError(f"schedule=True composes a mixup-family method; {method!r} is not one")
        return method + SCHEDULE_SUFFIX
    return method


def parse_arm(arm: str) -> tuple[str, bool]:
    """(method, schedule) of an arm key."""
    if arm.endswith(SCHEDULE_SUFFIX):
        method = arm[: -len(SCHEDULE_SUFFIX)]
        if not _composable(method):
            raise ValueError(f"{arm!r}: only a mixup-family method can be composed with the schedule")
        return method, True
    method_class(arm)  # ValueError: unknown method
    return arm, False


def arm_defaults(
    method: str, schedule: bool = False, trainer: Mapping[str, Any] | None = None
) -> dict[str, Param]:
    """Default ranges of an arm's params (in a study with these fixed trainer fields)."""
    own = method_defaults(method, trainer)
    if schedule and _composable(method):
        return {**DEFAULTS, **own}
    return own


def method_space(
    method: str,
    overrides: Mapping[str, Param | None] | None = None,
    *,
    schedule: bool = False,
    trainer: Mapping[str, Any] | None = None,
) -> dict[str, Param]:
    """The resolved params of one arm: defaults (for the study's fixed `trainer` fields) with the
    study's overrides applied.

    `method` is a method name or an arm key (``"mixup+schedule"``); ``schedule=True`` is the same as
    the ``+schedule`` suffix.
    """
    base, suffixed = parse_arm(method)
    schedule = schedule or suffixed
    if schedule and not _composable(base):
        raise ValueError(f"schedule=True composes a mixup-family method; {base!r} is not one")
    overrides = dict(overrides or {})
    defaults = arm_defaults(base, schedule, trainer)
    extra = set(k for k, v in overrides.items() if v is not None) - set(defaults)
    if extra:
        raise ValueError(
            f"method {arm_name(base, schedule)!r} has no parameter(s) {', '.join(sorted(extra))}"
        )
    resolved = {}
    for name, default in defaults.items():
        try:
            resolved[name] = resolve(default, overrides.get(name))
        except ValueError as e:
            raise ValueError(f"{base}.{name}: {e}") from None
    return resolved


def space(trial: Any, *, methods: Mapping[str, Mapping[str, Param]]) -> dict[str, Any]:
    """Define-by-run space: the method as a choice when there are several, then only its params.

    Fixed params are returned as constants (not suggested) so they are part of the trial's config
    without being searched.
    """
    names = list(methods)
    arm = trial.suggest_categorical("method", names) if len(names) > 1 else names[0]
    method, schedule = parse_arm(arm)
    config: dict[str, Any] = {"method": method}
    if _composable(method):
        config["schedule"] = schedule
    for name, p in methods[arm].items():
        if p.fixed:
            config[name] = int(p.value) if p.integer else p.value
        elif p.integer:
            config[name] = trial.suggest_int(name, int(p.low), int(p.high), log=bool(p.log))
        else:
            config[name] = trial.suggest_float(name, p.low, p.high, log=bool(p.log))
    return config


def build_space(methods: Mapping[str, Mapping[str, Param]]) -> Callable[[Any], dict[str, Any]]:
    """``space(trial) -> dict`` for a study's resolved arms (see `method_space`; keys are arm names)."""
    if not methods:
        raise ValueError("a study needs at least one method")
    for arm in methods:
        parse_arm(arm)
    return partial(space, methods={m: dict(ps) for m, ps in methods.items()})

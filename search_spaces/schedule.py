"""The search space of the Smooth Transfer Learning schedule family (paper 002).

The paper searches "the gain tau in log domain, and the other two offsets [t0, alpha] in linear
domain so that parameter setting close to the two extreme cases can be sufficiently searched".
t0 and tau are in units of the total iterations T (see `trainers.TrainConfig`), so the default
ranges reach both extremes for any T:

- t0 in [-0.5, 0.5]: the switch point T/2 + t0*T can sit anywhere in training;
- tau in [1e-4, 10] (log): at 1e-4 * T the sigmoid is a step within one or two iterations for
  T up to ~10^4 (fine-tuning, eq. 5); at 10 * T it moves by less than 0.03 over the whole run
  (a fixed weight, eq. 6);
- alpha in [-6, 6]: the fixed weight (1 + e^alpha)^-1 spans 0.0025 .. 0.9975.

Each named method searches only the params its schedule reads (`trainers.config.METHOD_PARAMS`).

Mixup-family methods (issue 3) search their own params (`search_spaces.methods.METHOD_DEFAULTS`).
A study composes one with the schedule by naming the *arm* ``"<method>+schedule"`` (see `arm_name`;
REST: ``{"method": "mixup", "schedule": true}``): its space adds t0, tau, alpha (these defaults) and
returns the constant ``schedule=True``. A multi-method study searches one conditional space: the arm as
a categorical ``method`` param, then only that arm's params. The returned config always holds the
real method name (``"mixup"``) and, for mixup-family arms, ``schedule`` (True/False), so it merges into
`trainers.TrainConfig` unrenamed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from search_spaces.methods import METHOD_DEFAULTS
from search_spaces.params import Param, resolve
from trainers.config import METHOD_PARAMS, MIXUP_METHODS, SCHEDULE_PARAMS

DEFAULTS: dict[str, Param] = {
    "t0": Param(low=-0.5, high=0.5, log=False),
    "tau": Param(low=1e-4, high=10.0, log=True),
    "alpha": Param(low=-6.0, high=6.0, log=False),
}

# The params each method searches: the schedule family its schedule's, a mixup method its own.
METHOD_SPACE_PARAMS: dict[str, tuple[str, ...]] = {
    **METHOD_PARAMS,
    **{m: tuple(METHOD_DEFAULTS[m]) for m in MIXUP_METHODS},
}
SCHEDULE_SUFFIX = "+schedule"


def arm_name(method: str, schedule: bool = False) -> str:
    """The key of a study arm: ``"mixup"``, or ``"mixup+schedule"`` for mixup composed with the schedule."""
    if schedule:
        if method not in MIXUP_METHODS:
            raise ValueError(f"schedule=True composes a mixup-family method; {method!r} is not one")
        return method + SCHEDULE_SUFFIX
    return method


def parse_arm(arm: str) -> tuple[str, bool]:
    """(method, schedule) of an arm key."""
    if arm.endswith(SCHEDULE_SUFFIX):
        method = arm[: -len(SCHEDULE_SUFFIX)]
        if method not in MIXUP_METHODS:
            raise ValueError(f"{arm!r}: only a mixup-family method can be composed with the schedule")
        return method, True
    if arm not in METHOD_SPACE_PARAMS:
        raise ValueError(f"unknown method {arm!r}")
    return arm, False


def arm_defaults(method: str, schedule: bool = False) -> dict[str, Param]:
    """Default ranges of an arm's params."""
    if method not in MIXUP_METHODS:
        return {name: DEFAULTS[name] for name in METHOD_PARAMS[method]}
    own = dict(METHOD_DEFAULTS[method])
    if schedule:
        return {**{name: DEFAULTS[name] for name in SCHEDULE_PARAMS}, **own}
    return own


def method_space(
    method: str, overrides: Mapping[str, Param | None] | None = None, *, schedule: bool = False
) -> dict[str, Param]:
    """The resolved params of one arm: defaults with the study's overrides applied.

    `method` is a method name or an arm key (``"mixup+schedule"``); ``schedule=True`` is the same as
    the ``+schedule`` suffix.
    """
    base, suffixed = parse_arm(method)
    schedule = schedule or suffixed
    if schedule and base not in MIXUP_METHODS:
        raise ValueError(f"schedule=True composes a mixup-family method; {base!r} is not one")
    overrides = dict(overrides or {})
    defaults = arm_defaults(base, schedule)
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
    if method in MIXUP_METHODS:
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

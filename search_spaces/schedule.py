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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from search_spaces.params import Param, resolve
from trainers.config import METHOD_PARAMS

DEFAULTS: dict[str, Param] = {
    "t0": Param(low=-0.5, high=0.5, log=False),
    "tau": Param(low=1e-4, high=10.0, log=True),
    "alpha": Param(low=-6.0, high=6.0, log=False),
}

METHOD_SPACE_PARAMS: dict[str, tuple[str, ...]] = dict(METHOD_PARAMS)


def method_space(method: str, overrides: Mapping[str, Param | None] | None = None) -> dict[str, Param]:
    """The resolved params of one method: defaults with the study's overrides applied."""
    overrides = dict(overrides or {})
    names = METHOD_SPACE_PARAMS[method]
    extra = set(k for k, v in overrides.items() if v is not None) - set(names)
    if extra:
        raise ValueError(f"method {method!r} has no parameter(s) {', '.join(sorted(extra))}")
    resolved = {}
    for name in names:
        try:
            resolved[name] = resolve(DEFAULTS[name], overrides.get(name))
        except ValueError as e:
            raise ValueError(f"{method}.{name}: {e}") from None
    return resolved


def space(trial: Any, *, methods: Mapping[str, Mapping[str, Param]]) -> dict[str, Any]:
    """Define-by-run space: the method as a choice when there are several, then only its params.

    Fixed params are returned as constants (not suggested) so they are part of the trial's config
    without being searched.
    """
    names = list(methods)
    method = trial.suggest_categorical("method", names) if len(names) > 1 else names[0]
    config: dict[str, Any] = {"method": method}
    for name, p in methods[method].items():
        if p.fixed:
            config[name] = p.value
        else:
            config[name] = trial.suggest_float(name, p.low, p.high, log=bool(p.log))
    return config


def build_space(methods: Mapping[str, Mapping[str, Param]]) -> Callable[[Any], dict[str, Any]]:
    """``space(trial) -> dict`` for a study's resolved methods (see `method_space`)."""
    if not methods:
        raise ValueError("a study needs at least one method")
    return partial(space, methods={m: dict(ps) for m, ps in methods.items()})

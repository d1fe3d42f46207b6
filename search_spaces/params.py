"""A searched parameter's range, and how a study overrides the default one."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Param(BaseModel):
    """A number parameter: searched in [low, high] (log scale if `log`), or fixed at `value`.

    In a study spec every key is optional and overrides the default range for that parameter:
    ``{"low": 0.01, "high": 2}``, ``{"log": false}`` or ``{"value": 0.5}`` (fixed, not searched).
    ``integer`` (set by the defaults, e.g. k_points) makes the space call ``suggest_int`` and return
    ints; an override inherits it, and its bounds/value must then be whole numbers.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Finite and bounded (the study's validation also holds each range to its trainer field's bounds).
    low: float | None = Field(default=None, ge=-1e9, le=1e9)
    high: float | None = Field(default=None, ge=-1e9, le=1e9)
    log: bool | None = None
    value: float | None = Field(default=None, ge=-1e9, le=1e9)
    integer: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Param:
        for name in ("low", "high", "value"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number")
        if self.value is not None and (self.low, self.high, self.log) != (None, None, None):
            raise ValueError("give either value (a fixed parameter) or low/high/log (a range), not both")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.integer:
            for name in ("low", "high", "value"):
                v = getattr(self, name)
                if v is not None and float(v) != int(v):
                    raise ValueError(f"{name} must be a whole number for an integer parameter, got {v}")
        return self

    @property
    def fixed(self) -> bool:
        return self.value is not None


def resolve(default: Param, override: Param | None) -> Param:
    """The default range with a study's override applied; checked as a whole."""
    if override is None:
        return default
    integer = override.integer if override.integer is not None else default.integer
    if override.fixed:
        return Param(value=override.value, integer=integer)
    low = override.low if override.low is not None else default.low
    high = override.high if override.high is not None else default.high
    log = override.log if override.log is not None else default.log
    if low is None or high is None:
        raise ValueError("a searched parameter needs both low and high")
    if low > high:
        raise ValueError(f"low ({low}) must be <= high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log-scale range needs low > 0, got low={low}")
    return Param(low=low, high=high, log=log, integer=integer)

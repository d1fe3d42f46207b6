"""Schedules as pure functions of the iteration: the loss weight lambda(t) and the learning rate.

Smooth Transfer Learning (paper 002), eq. 4, with t = 1..T the iteration and omega = (t0, tau, alpha):

    lambda(t) = [1 + exp(-(t - T/2 - t0) / tau + alpha)]^-1

and the loss of eq. 3 is lambda(t) * L_target + (1 - lambda(t)) * L_source. Its special cases are
named methods: ``finetune`` is the tau -> 0 limit (eq. 5, a step at T/2 + t0), ``multitask`` the
tau -> inf limit (eq. 6, the constant (1 + e^alpha)^-1) and ``target`` is lambda = 1 without a source.

The config carries t0 and tau in units of T (see `TrainConfig`); `loss_weight` scales them.
`run_loss_weight(config, t, T)` is lambda(t) of any run: its method's own schedule (the schedule
family), the sigmoid of eq. 4 for a method composed with it (``schedule=True``), else lambda = 1.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .methods import method_class

if TYPE_CHECKING:
    from .config import TrainConfig


def _sigmoid(z: float) -> float:
    # Never exponentiate a positive number: exp(-z) for z >= 0 and exp(z) for z < 0 stay in (0, 1].
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def sigmoid_weight(t: float, T: float, t0: float, tau: float, alpha: float) -> float:
    """Eq. 4 in iterations. Stable for any tau > 0, however small or large, and any t0, alpha."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    # (t - T/2 - t0) / tau may overflow to +-inf for tiny tau; the sigmoid of +-inf is exactly 1 or 0.
    with_overflow = (t - T / 2 - t0) / tau if math.isfinite(tau) else 0.0
    z = with_overflow - alpha
    if math.isnan(z):  # inf - inf cannot happen with finite alpha; guard anyway for alpha = +-inf
        raise ValueError("lambda(t) is undefined for infinite alpha")
    return _sigmoid(z)


def step_weight(t: float, T: float, t0: float) -> float:
    """Eq. 5: pre-train on the source, then fine-tune on the target after iteration T/2 + t0."""
    # Strictly after the switch point: with t = 1..T and t0 = 0 that is T/2 source steps, then T/2
    # target steps (eq. 5 leaves t = T/2 + t0 itself open).
    return 1.0 if t > T / 2 + t0 else 0.0


def constant_weight(alpha: float) -> float:
    """Eq. 6: multi-task learning with the fixed weight (1 + e^alpha)^-1."""
    return _sigmoid(-alpha)


def loss_weight(
    method: str, t: int, T: int, *, t0: float = 0.0, tau: float = 1.0, alpha: float = 0.0
) -> float:
    """lambda(t) of a named schedule form (the schedule family's method names); t0 and tau are
    fractions of T (the config's units)."""
    if method == "target":
        return 1.0
    if method == "finetune":
        return step_weight(t, T, t0 * T)
    if method == "multitask":
        return constant_weight(alpha)
    if method == "smooth":
        return sigmoid_weight(t, T, t0 * T, tau * T, alpha)
    raise ValueError(f"unknown method {method!r}")


def run_loss_weight(config: TrainConfig, t: int, T: int) -> float:
    """lambda(t) of a run of `config`, t = 1..T: the one place the loop gets its loss weight from."""
    form = method_class(config.method).schedule_name(bool(config.schedule))
    return loss_weight(form, t, T, t0=config.t0, tau=config.tau, alpha=config.alpha)


def learning_rate(t: int, T: int, *, peak: float, final: float, warmup: float) -> float:
    """Linear warm-up over the first `warmup` fraction of T, then cosine annealing from peak to final.

    t counts iterations from 1 to T (as eq. 7 does).
    """
    n_warm = max(1, math.ceil(warmup * T)) if warmup > 0 else 0
    if t <= n_warm:
        return peak * t / n_warm
    progress = (t - n_warm) / max(1, T - n_warm)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * min(1.0, progress)))

"""Early stopping of a study's trials: plain ASHA, or successive halving that understands schedules.

A study's ``early_stopping`` option picks one (README, "Early stopping"):

- ``none``: every trial trains its full schedule (trainer.epochs epochs).
- ``asha``: Tune's ASHAScheduler on the trial's full-length run; rungs at grace_period * reduction_factor^k
  epochs. A schedule that switches to the target late has a low target accuracy at the early rungs *by
  design*, so plain ASHA stops it before its switch.
- ``schedule_sh``: at each rung a trial trains a *compressed* run of its own schedule (T set to the rung's
  budget of epochs: t0 and tau are fractions of T, so lambda(t/T) keeps its shape, switch included), and
  only the survivors train again, from scratch, at the next rung's budget; the last rung is the
  full-length run. Rung decisions are Tune's ASHA on a rung-level time attr (`RUNG_ATTR`) that the
  trainable reports once at each rung's end.

Either way a trial stopped early reaches Optuna as PRUNED with its last value (the searcher tells a
result without ``final`` as PRUNED), so TPE and /best rank only fully trained trials.
Nothing heavy is imported here: the schema imports this module.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from trainers import TrainConfig, TrainResult

# The time attr Tune's ASHA decides on, in epochs of budget. The trainable reports it where a rung may
# be decided: after each epoch but the last (plain ASHA; at the last epoch the closing `final` report
# carries it, so ASHA's stop at max_t can never cut a trial off before its final result) and at each
# compressed rung's end (schedule_sh).
RUNG_ATTR = "budget_epochs"
RUNG_END = "rung_end"  # marks the one report that closes a compressed rung (schedule_sh)
TRAINED_EPOCHS = "trained_epochs"  # epochs the trial has trained so far, all its rungs' runs together

Kind = Literal["none", "asha", "schedule_sh"]


class EarlyStopping(BaseModel):
    """Early stopping of a study's trials (ASHA rungs at grace_period * reduction_factor^k epochs, up to
    trainer.epochs). ``asha``: stops trials of the full-length schedule at a rung; ``schedule_sh``: each rung
    trains a compressed run of the trial's own schedule (T = the rung's epochs), survivors train again at the
    next rung, the last rung is the full run. A stopped trial is PRUNED in Optuna (never COMPLETE)."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind = Field(default="none", description="none | asha | schedule_sh")
    grace_period: int = Field(default=1, ge=1, le=10_000, description="epochs of the first rung")
    reduction_factor: float = Field(default=3.0, gt=1, le=100, description="1/fraction promoted at a rung")

    @property
    def enabled(self) -> bool:
        return self.kind != "none"


def rung_budgets(option: EarlyStopping, max_epochs: int) -> list[int]:
    """Epochs of each rung, the last one `max_epochs`: grace * rf^k rounded up, below max_epochs."""
    budgets: list[int] = []
    k = 0
    while True:
        b = math.ceil(option.grace_period * option.reduction_factor**k - 1e-9)
        if b >= max_epochs:
            break
        if not budgets or b > budgets[-1]:
            budgets.append(b)
        k += 1
    return [*budgets, max_epochs]


def scheduler(option: EarlyStopping, *, max_epochs: int, metric: str) -> Any:
    """Tune's scheduler for the option: ASHA on `RUNG_ATTR` for both kinds, None (FIFO) for none."""
    if not option.enabled:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr=RUNG_ATTR,
        metric=metric,
        mode="max",
        max_t=max_epochs,
        grace_period=option.grace_period,
        reduction_factor=option.reduction_factor,
        brackets=1,
    )


def rung_config(config: TrainConfig, budget: int) -> TrainConfig:
    """The compressed run of `config` at a rung: its own schedule with T set to `budget` epochs. t0, tau
    and the warm-up are fractions of T (TrainConfig), so lambda(t/T) and the learning-rate curve keep
    their shape; the steps per epoch stay (the epoch is the unit of budget)."""
    return dataclasses.replace(config, epochs=budget)


def train_in_rungs(
    config: TrainConfig,
    budgets: list[int],
    *,
    report: Callable[[dict[str, Any]], None],
    rung_report: Callable[[dict[str, Any]], None],
) -> TrainResult:
    """Successive halving of one trial: a compressed run per rung below the last, each closed by
    `rung_report` (where Tune's ASHA stops the trial: the report does not return then), then the
    full-length run, whose result is returned. `report` gets every epoch of every run, with the rung and
    the epochs trained so far (the step of Optuna's intermediate values: the learning curves in a row)."""
    from trainers import train

    trained = 0
    for rung, budget in enumerate(budgets):
        run_config = rung_config(config, budget) if budget < config.epochs else config

        def epoch(metrics: dict[str, Any], rung: int = rung, before: int = trained) -> None:
            report({**metrics, "rung": rung, TRAINED_EPOCHS: before + int(metrics["epoch"])})

        result = train(run_config, report=epoch)
        trained += result.epochs_run or budget
        if run_config is config:
            return result
        last = result.history[-1] if result.history else {}
        rung_report(
            {
                **last,
                "best_val_acc": result.best_val_acc,
                "rung": rung,
                RUNG_ATTR: budget,
                RUNG_END: True,
                TRAINED_EPOCHS: trained,
            }
        )
    raise AssertionError("the last rung is the full-length run")  # rung_budgets ends at config.epochs

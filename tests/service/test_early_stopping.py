"""Early stopping: the rungs, the compressed run of a schedule at a rung, and the rung loop of a trial."""

import pytest
from pydantic import ValidationError
from ray.tune.schedulers import ASHAScheduler

from service.early_stopping import (
    RUNG_ATTR,
    RUNG_END,
    TRAINED_EPOCHS,
    EarlyStopping,
    rung_budgets,
    rung_config,
    scheduler,
    train_in_rungs,
)
from service.schemas import StudySpec
from trainers import TrainConfig
from trainers.schedule import run_loss_weight

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # t = f T is a whole step at every T here


def test_the_spec_option_defaults_to_none_and_checks_its_fields():
    assert StudySpec().early_stopping.kind == "none" and not StudySpec().early_stopping.enabled
    spec = StudySpec.model_validate({"early_stopping": {"kind": "schedule_sh", "grace_period": 2}})
    assert (spec.early_stopping.grace_period, spec.early_stopping.reduction_factor) == (2, 3.0)
    for bad in ({"kind": "hyperband"}, {"kind": "asha", "reduction_factor": 1}, {"grace_period": 0}):
        with pytest.raises(ValidationError):
            StudySpec.model_validate({"early_stopping": bad})
    assert "early_stopping" in StudySpec.model_json_schema()["properties"]


def test_rungs_are_grace_times_powers_of_the_reduction_factor_up_to_the_max_epochs():
    assert rung_budgets(EarlyStopping(kind="asha"), 27) == [1, 3, 9, 27]
    assert rung_budgets(EarlyStopping(kind="asha", grace_period=2), 30) == [2, 6, 18, 30]
    assert rung_budgets(EarlyStopping(kind="asha", reduction_factor=2.5), 10) == [1, 3, 7, 10]
    assert rung_budgets(EarlyStopping(kind="asha", grace_period=5), 4) == [4]  # no rung below the max


def test_the_scheduler_is_ashas_on_the_rung_attr_and_none_without_early_stopping():
    assert scheduler(EarlyStopping(), max_epochs=9, metric="m") is None
    asha = scheduler(EarlyStopping(kind="schedule_sh", grace_period=1), max_epochs=9, metric="m")
    assert isinstance(asha, ASHAScheduler) and asha._time_attr == RUNG_ATTR and asha._max_t == 9


@pytest.mark.parametrize(
    "schedule",
    [
        {"method": "smooth", "t0": 0.2, "tau": 0.05, "alpha": 0.5},  # a late switch, T/2 + 0.2 T
        {"method": "smooth", "t0": -0.3, "tau": 0.2, "alpha": -1.0},
        {"method": "finetune", "t0": 0.35},  # the step at 0.85 T
        {"method": "finetune", "t0": -0.1},
        {"method": "mixup", "schedule": True, "t0": 0.1, "tau": 0.1},
    ],
)
@pytest.mark.parametrize("budget", [1, 3, 9])
def test_a_compressed_rung_has_the_same_lambda_shape_at_each_fraction_of_its_T(schedule, budget):
    full = TrainConfig(**schedule, epochs=27, steps_per_epoch=10)
    rung = rung_config(full, budget)
    assert rung.epochs == budget and {k: getattr(rung, k) for k in schedule} == schedule
    T, Tr = full.epochs * 10, rung.epochs * 10
    for f in FRACTIONS:
        expected = run_loss_weight(full, round(f * T), T)
        assert run_loss_weight(rung, round(f * Tr), Tr) == pytest.approx(expected)
    # the shape is not trivially flat: the schedule does switch within its run
    lams = [run_loss_weight(rung, round(f * Tr), Tr) for f in FRACTIONS]
    assert max(lams) - min(lams) > 0.3


def test_the_trainer_runs_a_rung_with_the_full_runs_lambda_at_the_same_fractions():
    """The trainer's own reports: epoch e of a 3-epoch rung ends at fraction e/3 of its T, where the
    9-epoch full run's epoch 3e ends; lambda there is the same."""
    full = TrainConfig(method="finetune", t0=0.25, epochs=9, steps_per_epoch=2, n_target=30, num_threads=1)
    rungs, finals = [], []
    result = train_in_rungs(full, [3, 9], report=rungs.append, rung_report=finals.append)
    rung_run = [r for r in rungs if r["rung"] == 0]
    full_run = [r for r in rungs if r["rung"] == 1]
    assert [r["epoch"] for r in rung_run] == [1, 2, 3] and len(full_run) == 9
    for r in rung_run:
        assert r["lambda"] == full_run[3 * r["epoch"] - 1]["lambda"]
    assert [r["lambda"] for r in rung_run] == [0.0, 0.0, 1.0]  # its switch at 0.75 T, as the full run's
    # one report closes the rung, with the rung's budget as ASHA's time attr; the full run is returned
    (end,) = finals
    assert (end[RUNG_ATTR], end[RUNG_END], end["rung"], end[TRAINED_EPOCHS]) == (3, True, 0, 3)
    assert end["best_val_acc"] == max(r["val_acc"] for r in rung_run)
    assert [r[TRAINED_EPOCHS] for r in full_run] == list(range(4, 13))
    assert result.config.epochs == 9 and result.epochs_run == 9

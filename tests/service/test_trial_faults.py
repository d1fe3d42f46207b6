"""A trial's faults, without Ray: a diverged or deterministically failing trial ends with a short error
that the searcher stores as FAIL (not retried by Tune), the first failures of that kind end the run,
and a trial's epoch checkpoint lives under the study's folder and is taken over by a trial that retries
an earlier one."""

import optuna
import pytest

from service.driver import EndOnDeterministicFailures, fail_fast_after
from service.repository import epoch_history
from service.schemas import StudySpec
from service.trainable import (
    DETERMINISTIC,
    DIVERGED,
    ERROR,
    ERROR_KIND,
    PARAMS,
    RUN,
    checkpoint_path,
    run_trial,
)
from tests.service.conftest import make_searcher

FIXED = {"epochs": 3, "steps_per_epoch": 2, "n_target": 40, "batch_size": 16}


@pytest.fixture
def reported(monkeypatch):
    import ray
    from ray import tune

    out = []
    monkeypatch.setattr(tune, "report", out.append)  # the trainable outside a Tune session
    monkeypatch.setattr(
        ray, "get_runtime_context", lambda: type("Ctx", (), {"get_node_id": lambda self: "n1"})()
    )
    return out


def test_a_diverged_trial_ends_with_diverged_at_its_epoch_and_removes_its_checkpoint(reported, tmp_path):
    config = {PARAMS: {"method": "target"}, RUN: {"number": 4}}
    fixed = {**FIXED, "epochs": 8, "lr": 1e6}
    run_trial(config, fixed=fixed, cpus_per_trial=1, checkpoint_dir=str(tmp_path))
    *epochs, last = reported
    assert last[ERROR] == f"diverged at epoch {len(epochs)}" and last[ERROR_KIND] == DIVERGED
    assert last["best_val_acc"] is None and last["final"]  # no objective: never COMPLETE
    assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1)) and len(epochs) < 8
    assert not (tmp_path / "4.pt").exists()


def test_a_missing_dataset_fails_the_trial_with_a_short_error_without_raising(reported, tmp_path):
    fixed = {**FIXED, "target": "cifar10", "source": "cifar100", "data_dir": str(tmp_path / "nowhere")}
    run_trial({PARAMS: {"method": "target"}, RUN: {"number": 0}}, fixed=fixed, cpus_per_trial=1)
    (last,) = reported
    assert last[ERROR_KIND] == DETERMINISTIC
    assert last[ERROR].startswith("DatasetNotFoundError: dataset 'cifar10' not found")
    assert "Traceback" not in last[ERROR] and len(last[ERROR]) <= 500


def test_a_bad_config_fails_the_trial_as_deterministic(reported):
    run_trial({PARAMS: {"method": "no-such-method"}, RUN: {"number": 0}}, fixed=FIXED, cpus_per_trial=1)
    (last,) = reported
    assert last[ERROR_KIND] == DETERMINISTIC and last[ERROR].startswith("ValueError: ")


def test_a_completed_trial_removes_its_checkpoint_and_marks_its_first_report(reported, tmp_path):
    run_trial(
        {PARAMS: {"method": "target"}, RUN: {"number": 2}},
        fixed=FIXED,
        cpus_per_trial=1,
        checkpoint_dir=str(tmp_path),
    )
    *epochs, last = reported
    assert [e["first_report"] for e in epochs] == [True, False, False] and last["final"]
    assert ERROR not in last and not list(tmp_path.iterdir())


def test_a_retry_takes_over_the_earlier_trials_checkpoint(tmp_path):
    (tmp_path / "3.pt").write_bytes(b"epoch 2 of trial 3")
    path = checkpoint_path(str(tmp_path), {"number": 9, "resume_from": 3})
    assert path == tmp_path / "9.pt" and path.read_bytes() == b"epoch 2 of trial 3"
    assert not (tmp_path / "3.pt").exists()
    assert checkpoint_path(None, {"number": 9}) is None


def _space(trial):
    return {"method": "mixup", "mixup_alpha": trial.suggest_float("mixup_alpha", 0.1, 1.0)}


def _searcher(tmp_path):
    return make_searcher(tmp_path / "o.db", _space)


def test_the_searcher_stores_a_reported_failure_as_fail_with_its_error(tmp_path):
    searcher, storage = _searcher(tmp_path)
    searcher.suggest("t1")
    last = {
        "best_val_acc": None,
        "epoch": 2,
        "final": True,
        ERROR: "diverged at epoch 2",
        ERROR_KIND: DIVERGED,
    }
    searcher.on_trial_result("t1", last)
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.FAIL  # at once: the run may end before it completes
    searcher.on_trial_complete("t1", last)
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.FAIL
    assert (trial.user_attrs["error"], trial.user_attrs["error_kind"]) == ("diverged at epoch 2", DIVERGED)


def test_a_dead_drivers_trial_is_retried_by_the_next_one_from_its_checkpoint_keeping_its_epochs(tmp_path):
    searcher, storage = _searcher(tmp_path)
    config = searcher.suggest("t1")
    for e in (1, 2):
        report = {"epoch": e, "val_acc": 0.5, "best_val_acc": 0.5}
        searcher.on_trial_result("t1", {**report, "epoch_report": report, "first_report": e == 1})
    # The driver dies with trial 0 RUNNING; the next one plans from the store.
    searcher, storage = _searcher(tmp_path)
    retry = searcher.suggest("t2")
    assert retry[RUN] == {"number": 1, "resume_from": 0} and retry[PARAMS] == config[PARAMS]
    first, second = optuna.load_study(study_name="s", storage=storage).trials
    assert (first.state.name, second.state.name, second.user_attrs["retry_of"]) == ("FAIL", "RUNNING", 0)
    assert epoch_history(second) == epoch_history(first) and len(epoch_history(first)) == 2
    assert "started_at" not in second.user_attrs  # set by its own first report


def test_the_run_ends_once_its_first_trials_all_failed_deterministically():
    stopper = EndOnDeterministicFailures(3)
    failed = {"final": True, ERROR: "DatasetNotFoundError: x", ERROR_KIND: DETERMINISTIC}
    assert not stopper("a", {"epoch": 1}) and not stopper.stop_all()  # an epoch result is no end
    stopper("a", failed), stopper("b", failed), stopper("b", {**failed, "done": True})  # b's twice
    assert not stopper.stop_all()
    stopper("c", failed)
    assert stopper.stop_all() and stopper.tripped == "DatasetNotFoundError: x"
    mixed = EndOnDeterministicFailures(2)
    mixed("a", failed), mixed("b", {"final": True, "best_val_acc": 0.5})
    mixed("c", failed)
    assert not mixed.stop_all()  # a trial that worked: the failures are the config of some trials only
    diverged = EndOnDeterministicFailures(1)
    diverged("a", {"final": True, ERROR: "diverged at epoch 1", ERROR_KIND: DIVERGED})
    assert not diverged.stop_all()  # a bad hyperparameter, not a broken study


def test_fail_fast_waits_for_one_trial_per_method():
    spec = {"trainer": {"source": "digits", "target": "digits"}, "n_trials": 10}
    assert fail_fast_after(StudySpec.model_validate({**spec, "methods": ["smooth"]})) == 3
    five = ["smooth", "finetune", "multitask", "mixup", "target"]
    assert fail_fast_after(StudySpec.model_validate({**spec, "methods": five})) == 5
    assert fail_fast_after(StudySpec.model_validate({**spec, "n_trials": 2, "methods": ["smooth"]})) == 2

"""The study driver: what it stores of a trial, and the error a failed study keeps."""

import optuna
from ray.tune.search import Searcher
from ray.tune.utils import flatten_dict

from service.db import make_optuna_storage
from service.db_retry import DbRetry
from service.driver import describe_study, nested
from service.repository import epoch_history
from service.schemas import StudySpec
from service.trainable import EPOCH_REPORT, PARAMS, RUN
from tests.service.conftest import make_searcher


def test_nested_puts_a_dict_tune_flattened_together_again():
    result = flatten_dict({"epoch": 2, "info": {"linearity": {"val": 0.5}}, "plain": 1})
    assert result["info/linearity/val"] == 0.5
    assert nested(result, "info") == {"linearity": {"val": 0.5}}
    assert nested(result, "plain") == 1 and nested(result, "missing") is None


def _space(trial):
    return {"method": "mixup", "mixup_alpha": trial.suggest_float("mixup_alpha", 0.1, 1.0)}


def test_the_searcher_stores_each_epoch_as_the_trainer_reported_it_method_keys_included(tmp_path):
    searcher, storage = make_searcher(tmp_path / "o.db", _space)
    assert isinstance(searcher, Searcher)
    config = searcher.suggest("t1")
    where = {"node": "h", "node_id": "n1", "device": "cpu", "started_at": 1.0, "total_steps": 20}
    reports = [
        {
            "epoch": e,
            "lambda": 0.5,
            "best_val_acc": 0.1 * e,
            "mix_lambda": 0.3,
            "a_new_key": None,
            "total_steps": 20,
        }
        for e in (1, 2)
    ]
    for i, report in enumerate(reports, 1):
        # as Tune hands it to searchers: flattened, with its bookkeeping keys
        result = {**report, EPOCH_REPORT: report, **where, "training_iteration": i}
        searcher.on_trial_result("t1", flatten_dict(result))
    final = {**reports[-1], "final": True, "test_acc": 0.4, "info": {"pretrain_cache": {"cache": "hit"}}}
    final = flatten_dict({**final, "best_epoch": 2, "training_iteration": 3})
    searcher.on_trial_result("t1", final)  # Tune hands the last result to both
    searcher.on_trial_complete("t1", final)
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    # The study's trial number rides in Tune's config apart from the params (event log, metrics' tags).
    assert config[RUN] == {"number": 0} and trial.number == 0
    assert trial.user_attrs["sampled"] == config[PARAMS] and trial.state == optuna.trial.TrialState.COMPLETE
    assert epoch_history(trial) == reports
    assert trial.user_attrs["info"] == {"pretrain_cache": {"cache": "hit"}}
    assert (trial.user_attrs["node_id"], trial.user_attrs["test_acc"]) == ("n1", 0.4)


def test_intermediate_values_are_each_epochs_val_acc_and_the_value_is_the_best(tmp_path):
    """optuna-dashboard's learning curve reads the intermediate values: each epoch's validation accuracy
    at its epoch, not Tune's running best at Tune's iteration; the objective stays the best."""
    searcher, storage = make_searcher(tmp_path / "o.db", _space)
    searcher.suggest("t1")
    val = {1: 0.5, 2: 0.3, 3: 0.4}
    for e, acc in val.items():
        report = {"epoch": e, "val_acc": acc, "best_val_acc": max(v for k, v in val.items() if k <= e)}
        searcher.on_trial_result("t1", {**report, EPOCH_REPORT: report, "training_iteration": e})
    final = {"epoch": 3, "val_acc": 0.4, "best_val_acc": 0.5, "final": True, "training_iteration": 4}
    searcher.on_trial_result("t1", final)
    searcher.on_trial_complete("t1", final)
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert trial.intermediate_values == val
    assert trial.value == 0.5


def test_describe_study_names_the_objective_and_keeps_the_study_summary(tmp_path):
    storage = make_optuna_storage(f"sqlite:///{tmp_path / 'o.db'}")
    optuna.create_study(study_name="s", storage=storage, direction="maximize")
    spec = StudySpec.model_validate({"name": "digits", "methods": ["smooth", "mixup"], "n_trials": 6})
    describe_study(optuna.load_study(study_name="s", storage=storage), spec, study_id="abc")
    study = optuna.load_study(study_name="s", storage=storage)
    assert study.metric_names == ["val_acc"]
    attrs = study.user_attrs
    assert (attrs["transched_id"], attrs["name"], attrs["n_trials"]) == ("abc", "digits", 6)
    assert attrs["methods"] == "smooth, mixup"
    assert {"target", "source", "backbone"} <= set(attrs)


def test_a_resumed_driver_fails_left_running_trials_retries_each_config_once_and_counts_the_rest(tmp_path):
    from optuna.trial import TrialState

    from service.ledger import REPLACED, Origin, plan_study
    from tests.service.conftest import add_trial

    storage = make_optuna_storage(f"sqlite:///{tmp_path / 'o.db'}")
    fresh = plan_study(storage, name="s", n_trials=8, attempt=1, arms=["smooth", "finetune"])
    assert fresh.remaining == 8 and [q.params for q in fresh.queued] == [
        {"method": "smooth"},
        {"method": "finetune"},
    ]
    add_trial(storage, "s", method="smooth", value=0.8, t0=0.1)  # 0: kept, and TPE sees it
    add_trial(storage, "s", method="smooth", value=None, state=TrialState.FAIL, t0=0.2)  # 1
    add_trial(storage, "s", method="smooth", value=None, state=TrialState.RUNNING, t0=0.3)  # 2: left
    study = optuna.load_study(study_name="s", storage=storage)
    study.enqueue_trial({"t0": 0.2}, user_attrs={"retry_of": 1})  # 3: trial 1's retry ...
    retry = study.ask()
    assert retry.number == 3 and retry.user_attrs == {"retry_of": 1}  # ... left RUNNING too
    study.enqueue_trial({"method": "finetune"})  # 4: a method point an older version enqueued

    plan = plan_study(storage, name="s", n_trials=8, attempt=1, arms=["smooth", "finetune"])
    trials = study.get_trials(deepcopy=False)
    # Nothing is left RUNNING or WAITING in the store: the WAITING trial is failed, marked replaced, and
    # its config queued (Optuna's ask would run it with the store's sampler, not the driver's TPE).
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL", "FAIL", "FAIL"]
    assert trials[4].system_attrs[REPLACED] is True
    assert plan.retried == [2]  # trial 3 was itself a retry: not run a third time
    assert [(q.params, q.origin) for q in plan.queued] == [
        ({"t0": 0.3}, Origin("retry", 2)),
        ({"method": "finetune"}, Origin()),  # the WAITING trial's config: finetune's method point
    ]
    # Finished: 0 (COMPLETE) and 3 (a retry that failed); 1 and 2 are replaced by their retries, 4 by
    # its queued config.
    assert (plan.remaining, plan.attempt, plan.tried) == (6, 1, {"smooth"})
    assert sorted(t.number for t in plan.finished) == [0, 3]
    # A driver that died again before running anything: the same plan (trial 2's retry was never made,
    # and it is still to be made), no trial added.
    again = plan_study(storage, name="s", n_trials=8, attempt=2, arms=["smooth", "finetune"])
    assert (again.remaining, again.retried, len(study.get_trials())) == (6, [2], 5)
    assert [q.params for q in again.queued] == [{"t0": 0.3}, {"method": "finetune"}]


def test_a_driver_that_dies_leaves_its_study_running_for_the_supervisor_and_a_stale_one_writes_nothing(
    tmp_path,
):
    from service import repository as repo
    from service.db import StudyStatus, create_schema, make_engine, make_sessionmaker
    from service.driver import _finish
    from tests.service.conftest import add_trial

    url = f"sqlite:///{tmp_path / 't.db'}"
    engine, storage = make_engine(url), make_optuna_storage(url)
    create_schema(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as s:
        study = repo.create_study(s, name="x", spec={}, study_id="a1", ray_job_id="j")
        assert repo.start_attempt(s, study_id="a1", attempt=0)
    add_trial(
        storage, study.optuna_study_name, method="smooth", value=None, state=optuna.trial.TrialState.RUNNING
    )
    args = {"study_id": "a1", "optuna_name": study.optuna_study_name}
    _finish(sessions, DbRetry(5), storage, **args, final=None, message="RuntimeError: boom", attempt=0)
    with sessions() as s:
        row = repo.get_study(s, study_id="a1")
        assert (row.status, row.error) == ("running", "the driver died: RuntimeError: boom")
        # Its trials stay RUNNING: the resumed driver fails them and reruns their configs.
        assert repo.trial_counts(s, names=[study.optuna_study_name])[study.optuna_study_name] == {
            "RUNNING": 1
        }
        assert repo.claim_attempt(s, study_id="a1", attempts=0, ray_job_id="j-r1", note="resumed")
    # The old driver's late end is not written over the new attempt's study.
    _finish(sessions, DbRetry(5), storage, **args, final=StudyStatus.failed, message="late", attempt=0)
    with sessions() as s:
        assert (repo.get_study(s, study_id="a1").status, repo.get_study(s, study_id="a1").error) == (
            "pending",
            "resumed",
        )
        assert repo.start_attempt(s, study_id="a1", attempt=1) and not repo.start_attempt(
            s, study_id="a1", attempt=0
        )
    _finish(sessions, DbRetry(5), storage, **args, final=StudyStatus.completed, message=None, attempt=1)
    with sessions() as s:
        row = repo.get_study(s, study_id="a1")
        assert (row.status, row.error) == ("completed", None)  # the "resumed" note is done with
        assert repo.trial_counts(s, names=[study.optuna_study_name])[study.optuna_study_name] == {"FAIL": 1}
    engine.dispose()
    storage.engine.dispose()


def test_a_studys_checkpoints_are_where_its_stored_spec_says_whichever_replica_runs_it(tmp_path):
    """Issue 18: a study resumed by another API replica (another TRANSCHED_DATA_DIR) lost its epoch
    checkpoints, as the folder came from the resuming driver's settings. It comes from the stored spec."""
    from service.driver import checkpoint_dir

    submitted = StudySpec.model_validate({"name": "x"}).with_paths_under(tmp_path / "replica-a")
    assert checkpoint_dir(submitted, "transched-1") == (
        tmp_path / "replica-a" / "checkpoints" / "transched-1"
    )
    stored = StudySpec.model_validate(submitted.model_dump(mode="json"))  # as the resuming driver reads it
    assert checkpoint_dir(stored, "transched-1") == checkpoint_dir(submitted, "transched-1")

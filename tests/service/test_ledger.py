"""The ledger: a trial's typed record and its one mapping to Optuna's user attrs, the writes a trial
costs, and the one definition of the best trial that /best, the report and the driver's log share."""

import logging

import optuna
import pytest
from sqlalchemy import event

from service import ledger, report, studies
from service.ledger import Origin, TrialRecord
from service.trainable import EPOCH_REPORT
from tests.service.conftest import add_trial, make_searcher

COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


def _space(trial):
    return {"method": "mixup", "mixup_alpha": trial.suggest_float("mixup_alpha", 0.1, 1.0)}


def test_a_record_goes_to_user_attrs_and_back_unchanged():
    record = TrialRecord(
        number=3,
        sampled={"method": "smooth", "t0": 0.1},
        origin=Origin("retry", 1),
        node="h",
        node_id="n1",
        device="cpu",
        started_at=1.5,
        finished_at=2.5,
        restarts=1,
        total_steps=20,
        best_epoch=2,
        test_acc=0.0,  # a value that is falsy is still set
        info={"init": "scratch"},
        error=None,
        epochs=[{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.7}],
        rungs=[{"budget_epochs": 1, "best_val_acc": 0.5}],
    )
    attrs = record.attrs()
    assert attrs["retry_of"] == 1 and attrs["epoch:00002"] == {"epoch": 2, "val_acc": 0.7}
    assert "error" not in attrs  # only what is set
    trial = optuna.trial.create_trial(
        state=optuna.trial.TrialState.RUNNING,
        params={"t0": 0.1},
        distributions={"t0": optuna.distributions.FloatDistribution(0, 1)},
        user_attrs=attrs,
    )
    trial.number = 3
    back = TrialRecord.from_trial(trial)
    assert (back.datetime_start, back.state) == (trial.datetime_start, "RUNNING")
    back.datetime_start = None
    assert back == record
    for origin in (Origin(), Origin("reused", 0), Origin("warm", "abc:4"), Origin("retry", 2)):
        assert Origin.from_attrs(origin.attrs()) == origin


def _count_writes(engine, label, out):
    """Append `label` to `out` for each committed transaction on `engine` that wrote (reads not counted)."""
    wrote = []
    event.listen(
        engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *a: wrote.append(statement.lstrip().split()[0].upper()),
    )

    def commit(conn):
        if {"INSERT", "UPDATE", "DELETE"} & set(wrote):
            out.append(label)
        wrote.clear()

    event.listen(engine, "commit", commit)


def test_a_trial_costs_one_transaction_to_create_one_per_result_and_one_to_tell(tmp_path):
    searcher, storage = make_searcher(tmp_path / "o.db", _space)
    commits = []
    _count_writes(searcher.ledger.storage.engine, "storage", commits)
    _count_writes(searcher.ledger.connect.__self__, "ledger", commits)  # Engine.connect's engine
    searcher.suggest("t1")
    assert commits == ["ledger"]  # the trial, its params and its sampled config together
    where = {"node": "h", "node_id": "n1", "device": "cpu", "started_at": 1.0, "total_steps": 4}
    for e in (1, 2):
        report_ = {"epoch": e, "val_acc": 0.5 * e, "best_val_acc": 0.5 * e}
        searcher.on_trial_result("t1", {**report_, EPOCH_REPORT: report_, **where, "training_iteration": e})
    assert commits == ["ledger"] * 3  # each epoch: its attrs and intermediate value together
    final = {"epoch": 2, "best_val_acc": 1.0, "final": True, "test_acc": 0.9, "training_iteration": 3}
    searcher.on_trial_result("t1", final)
    searcher.on_trial_complete("t1", final)
    assert commits == ["ledger"] * 5  # the final result's attrs; the tell (state, value, its time)
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert (trial.state, trial.value, trial.intermediate_values) == (COMPLETE, 1.0, {1: 0.5, 2: 1.0})
    assert (trial.user_attrs["node_id"], trial.user_attrs["test_acc"]) == ("n1", 0.9)


def test_a_write_to_a_trial_that_has_ended_is_refused_and_changes_nothing(tmp_path, caplog):
    searcher, storage = make_searcher(tmp_path / "o.db", _space)
    searcher.suggest("t1")
    number = searcher.numbers["t1"]
    searcher.ledger.tell(number, optuna.trial.TrialState.PRUNED)
    with caplog.at_level(logging.WARNING, logger="transched.ledger"):
        searcher.ledger.write(number, {"node": "late"}, step=1, value=0.5)
    assert "no longer running" in caplog.text
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert "node" not in trial.user_attrs and trial.intermediate_values == {}


def test_tpe_on_the_shadow_samples_what_it_would_sample_on_the_store(tmp_path):
    """The ledger asks TPE on an in-memory copy of the study: the same configs as TPE over the stored
    study, trial for trial (same seed, same trials told)."""
    searcher, _ = make_searcher(tmp_path / "o.db", _space, seed=3)
    store = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=3))
    for i in range(14):
        config = searcher.suggest(f"t{i}")["params"]
        trial = store.ask()
        assert {**trial.params, **_space(trial)} == config
        value = 1 - abs(config["mixup_alpha"] - 0.4)
        searcher.on_trial_complete(f"t{i}", {"final": True, "best_val_acc": value, "epoch": 1})
        store.tell(trial, value)


def test_the_three_consumers_of_best_call_one_function(tmp_path, db, monkeypatch, caplog):
    """/best (studies.best_config), the report and the driver's summary line name the same trial, and
    each finds it with service.ledger.best_trial."""
    from service import repository as repo
    from service.driver import log_summary
    from service.tune_events import TrialEventLog

    with db.sessions() as session:
        study = repo.create_study(session, name="b", spec={"methods": ["smooth"]}, study_id="b1")
    name = study.optuna_study_name
    for value in (0.5, 0.8, 0.8, 0.7):  # trials 1 and 2 tie: the earliest is the best
        add_trial(db.storage, name, method="smooth", value=value, t0=value / 2)
    calls = []
    real = ledger.best_trial

    def spy(*args, **kwargs):
        calls.append(kwargs.get("name"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ledger, "best_trial", spy)
    found = {"best": studies.best_config(study, storage=db.storage).trial_number}
    assert calls == [name]
    found["report"] = report.study_report(study, storage=db.storage).arms["smooth"].best.number
    assert calls == [name, name]
    with caplog.at_level(logging.INFO, logger="transched.trials"):
        log_summary(TrialEventLog("b", metric="best_val_acc", epochs=1), db.storage, name=name)
    assert calls == [name, name, name]
    found["summary"] = int(caplog.text.split("best trial ")[1].split()[0])
    assert found == {"best": 1, "report": 1, "summary": 1}


@pytest.mark.parametrize("ended", [True, False])
def test_best_first_is_the_order_of_best_trial(tmp_path, db, ended):
    name = "transched-order"
    for value in (0.2, 0.9, 0.4, 0.9):
        add_trial(db.storage, name, method="smooth", value=value, t0=value / 3)
    if not ended:
        add_trial(db.storage, name, method="smooth", value=None, state=optuna.trial.TrialState.RUNNING)
    trials = optuna.load_study(study_name=name, storage=db.storage).trials
    ranked = ledger.best_first(trials)
    assert [t.number for t in ranked] == [1, 3, 2, 0]
    assert ledger.best_trial(db.storage, name=name).number == ranked[0].number


def test_a_creation_whose_answer_was_lost_is_adopted_not_made_twice(tmp_path, monkeypatch, caplog):
    import sqlite3

    from service import repository as repo

    searcher, storage = make_searcher(tmp_path / "o.db", _space)
    real, lost = repo.create_running_trial, []

    def commits_then_fails(*args, **kwargs):
        made = real(*args, **kwargs)
        if not lost:  # the first attempt's transaction is committed; its answer never arrives
            lost.append(made)
            raise sqlite3.OperationalError("database is locked")
        return made

    monkeypatch.setattr(repo, "create_running_trial", commits_then_fails)
    with caplog.at_level(logging.WARNING, logger="transched.ledger"):
        config = searcher.suggest("t1")
    assert "adopted trial 0" in caplog.text and config["run"] == {"number": 0}
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert trial.user_attrs["sampled"] == config["params"] and set(trial.params) == {"mixup_alpha"}


def test_a_pruned_trial_keeps_its_last_intermediate_value_in_the_store_and_for_tpe(tmp_path):
    searcher, storage = make_searcher(tmp_path / "o.db", _space)
    searcher.suggest("t1")
    for e, acc in ((1, 0.3), (2, 0.6)):
        report_ = {"epoch": e, "val_acc": acc, "best_val_acc": acc}
        searcher.on_trial_result("t1", {**report_, EPOCH_REPORT: report_, "training_iteration": e})
    cut = {"epoch": 2, "best_val_acc": 0.6, "training_iteration": 2}  # cut at a rung: no final result
    searcher.on_trial_complete("t1", cut)
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    (shadow,) = searcher.ledger.shadow.trials
    assert (trial.state, trial.value, trial.intermediate_values) == (PRUNED, 0.6, {1: 0.3, 2: 0.6})
    assert (shadow.state, shadow.value, shadow.intermediate_values) == (PRUNED, 0.6, {1: 0.3, 2: 0.6})

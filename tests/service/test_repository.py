"""Keyword-only functions over the study table and Optuna's trials, on a real SQLite file and a real
PostgreSQL database: status transitions, pagination, reaping orphaned trials, trial counts."""

import optuna
from sqlalchemy import event

from service import repository as repo
from service.db import StudyStatus, make_optuna_storage


def test_status_moves_only_from_the_states_given(sessions):
    with sessions() as s:
        repo.create_study(s, name="a", spec={"n_trials": 1}, study_id="s1")
        assert repo.get_status(s, study_id="s1") == StudyStatus.pending
        assert not repo.set_status(
            s, study_id="s1", status=StudyStatus.stopping, only_from=(StudyStatus.running,)
        )
        assert repo.set_status(s, study_id="s1", status=StudyStatus.running, only_from=(StudyStatus.pending,))
        study = repo.get_study(s, study_id="s1")
        assert study.started_at is not None and study.finished_at is None
        assert repo.set_status(s, study_id="s1", status=StudyStatus.completed)
        s.refresh(study)
        assert study.finished_at is not None and study.optuna_study_name == "transched-s1"


def test_list_is_paginated_newest_first(sessions):
    with sessions() as s:
        for i in range(5):
            repo.create_study(s, name=f"n{i}", spec={}, study_id=f"id{i}")
        rows, total = repo.list_studies(s, offset=1, limit=2)
        assert total == 5 and [r.name for r in rows] == ["n3", "n2"]


def test_running_trials_of_a_dead_driver_are_reaped_and_finished_ones_kept(url, sessions):
    storage = make_optuna_storage(url)
    study = optuna.create_study(study_name="transched-x", storage=storage, direction="maximize")
    done = study.ask()
    study.tell(done, 0.5)
    study.ask()
    study.ask()
    assert repo.reap_running_trials(storage, name="transched-x") == 2
    states = [t.state for t in optuna.load_study(study_name="transched-x", storage=storage).trials]
    assert states == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.FAIL,
    ]
    assert repo.reap_running_trials(storage, name="no-such-study") == 0


def test_trial_counts_of_many_studies_are_one_grouped_query(url, engine, sessions):
    storage = make_optuna_storage(url)
    for name, states in (("a", ["COMPLETE", "COMPLETE", "FAIL", "RUNNING"]), ("b", ["PRUNED"]), ("c", [])):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        for state in states:
            trial = study.ask()
            if state == "COMPLETE":
                study.tell(trial, 0.5)
            elif state != "RUNNING":
                study.tell(trial, state=optuna.trial.TrialState[state])
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with sessions() as s:
        counts = repo.trial_counts(s, names=["a", "b", "c", "not-created-yet"])
        assert repo.trial_counts(s, names=[]) == {}
    assert counts == {"a": {"COMPLETE": 2, "FAIL": 1, "RUNNING": 1}, "b": {"PRUNED": 1}}
    (statement,) = statements
    assert "GROUP BY" in statement and "trials" in statement

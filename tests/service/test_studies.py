"""The study domain on a real SQLite file and a real PostgreSQL database, with a fake cluster: no
connection is held while the cluster is asked anything, reconciliation, best-trial selection."""

from datetime import timedelta

import pytest
from optuna.trial import TrialState

from service import repository as repo
from service import studies
from service.db import create_schema, utcnow
from service.errors import ClusterUnavailable, Conflict, NotFound
from service.schemas import StudySpec
from service.settings import Settings
from tests.service.conftest import FakeCluster, Store, add_trial


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=database_url, driver_timeout_s=60)


@pytest.fixture
def db(settings):
    store = Store(settings)
    create_schema(store.engine)
    yield store
    store.close()


@pytest.fixture
def cluster(db) -> FakeCluster:
    """Fails the test if a pooled connection is checked out while the cluster is called."""
    cluster = FakeCluster()
    seen = []

    def no_connection_held(name):
        seen.append((name, db.engine.pool.checkedout()))

    cluster.before_call = no_connection_held
    cluster.seen = seen
    return cluster


def _submit(db, cluster, settings, **spec):
    return studies.submit(StudySpec(**spec), sessions=db.sessions, cluster=cluster, settings=settings)


def _reconcile(db, cluster, study):
    found = studies.find(db.sessions, study.id)
    return studies.reconcile(found, sessions=db.sessions, storage=db.storage, cluster=cluster, timeout_s=60)


def test_submit_stores_then_submits_with_no_connection_held(db, cluster, settings):
    study = _submit(db, cluster, settings, n_trials=2)
    assert cluster.seen == [("resources", 0), ("submit_study", 0)]
    stored = studies.find(db.sessions, study.id)
    assert (stored.status, stored.ray_job_id) == ("pending", f"transched-study-{study.id}")
    assert db.engine.pool.checkedout() == 0


def test_a_refused_submission_is_kept_as_failed(db, cluster, settings):
    cluster.submit_error = RuntimeError("no")
    with pytest.raises(ClusterUnavailable, match="kept, as failed"):
        _submit(db, cluster, settings)
    with db.sessions() as s:
        (study,), total = repo.list_studies(s, offset=0, limit=10)
    assert total == 1 and study.status == "failed" and study.ray_job_id is None


def test_reconcile_asks_the_cluster_with_no_connection_held_and_reaps_trials(db, cluster, settings):
    study = _submit(db, cluster, settings)
    db.set_status(study.id, "running", heartbeat_at=utcnow())
    add_trial(db.storage, study.optuna_study_name, method="smooth", value=None, state=TrialState.RUNNING)
    cluster.jobs[study.ray_job_id] = "FAILED"
    cluster.seen.clear()
    ended = _reconcile(db, cluster, study)
    assert cluster.seen == [("job_status", 0)]
    assert (ended.status, ended.error) == ("failed", "the driver's Ray job ended as FAILED")
    with db.sessions() as s:
        assert repo.trial_counts(s, names=[study.optuna_study_name]) == {study.optuna_study_name: {"FAIL": 1}}


def test_a_silent_driver_fails_its_study_and_a_beating_one_does_not(db, cluster, settings):
    silent, alive = _submit(db, cluster, settings), _submit(db, cluster, settings)
    cluster.jobs.clear()  # the cluster forgot both jobs
    db.set_status(silent.id, "running", heartbeat_at=utcnow() - timedelta(seconds=600))
    db.set_status(alive.id, "running", heartbeat_at=utcnow())
    for study in (silent, alive):
        add_trial(db.storage, study.optuna_study_name, method="smooth", value=None, state=TrialState.RUNNING)

    ended = _reconcile(db, cluster, silent)
    assert ended.status == "failed" and "no heartbeat for over 60s" in ended.error
    assert _reconcile(db, cluster, alive).status == "running"
    with db.sessions() as s:
        counts = repo.trial_counts(s, names=[silent.optuna_study_name, alive.optuna_study_name])
    assert counts == {silent.optuna_study_name: {"FAIL": 1}, alive.optuna_study_name: {"RUNNING": 1}}


def test_stop_stops_a_pending_job_with_no_connection_held_and_refuses_an_ended_study(db, cluster, settings):
    study = _submit(db, cluster, settings)
    cluster.seen.clear()
    assert studies.stop(study.id, sessions=db.sessions, cluster=cluster).status == "stopped"
    assert cluster.seen == [("stop_job", 0)]
    with pytest.raises(Conflict, match="already ended"):
        studies.stop(study.id, sessions=db.sessions, cluster=cluster)
    with pytest.raises(NotFound):
        studies.stop("nope", sessions=db.sessions, cluster=cluster)


def test_best_trial_is_the_stores_answer_overall_and_the_earliest_on_ties_of_a_filter(db):
    name = "transched-best"
    assert studies.best_trial(db.storage, name=name) is None  # no Optuna study yet
    add_trial(db.storage, name, method="multitask", value=None, state=TrialState.FAIL)
    assert studies.best_trial(db.storage, name=name) is None
    for method, value in (("smooth", 0.5), ("multitask", 0.9), ("smooth", 0.7), ("smooth", 0.7)):
        add_trial(db.storage, name, method=method, value=value)
    assert studies.best_trial(db.storage, name=name).number == 2
    smooth = studies.method_filter(["smooth", "multitask"], "smooth")
    assert studies.best_trial(db.storage, name=name, where=smooth).number == 3
    assert studies.method_filter(["smooth", "multitask"], "cutmix") is None

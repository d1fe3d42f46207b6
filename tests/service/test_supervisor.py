"""The supervisor's decisions (service.supervisor) on a real SQLite file and a real PostgreSQL database,
with the fake cluster playing Ray: interrupted studies resumed (once, whoever looks), given up after
`max_resumes` with a reason, stopping ones ended, lost submissions repeated, the admission queue, and
idempotent submits. No connection is held while the cluster is asked anything."""

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from service import repository as repo
from service import studies, supervisor
from service.api import create_app
from service.db import utcnow
from service.deps import AppState
from service.errors import InvalidForStudy
from service.ray_cluster import RayUnavailable
from service.schemas import StudySpec
from service.settings import Settings
from tests.service.conftest import FakeCluster, add_trial


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        driver_timeout_s=60,
        max_resumes=2,
        max_running_studies=2,
    )


@pytest.fixture
def cluster(db) -> FakeCluster:
    cluster = FakeCluster()

    def no_connection_held(name):
        assert db.engine.pool.checkedout() == 0, f"a connection was held while calling {name}"

    cluster.before_call = no_connection_held
    return cluster


@pytest.fixture
def state(settings, db, cluster) -> AppState:
    def connect(_settings):
        raise AssertionError("the supervisor reconnected to a cluster that works")

    return AppState(settings, db.engine, db.sessions, db.storage, cluster, connect)


def _submit(state, key=None, **spec):
    spec = {"n_trials": 2, **spec}
    return studies.submit(
        StudySpec(**spec),
        sessions=state.sessions,
        cluster=state.cluster,
        settings=state.settings,
        idempotency_key=key,
    )


def _now(state, study_id):
    return studies.find(state.sessions, study_id)


def _running(state, db, *, heartbeat_s_ago=0.0, trials=1):
    study = _submit(state)
    db.set_status(study.id, "running", heartbeat_at=utcnow() - timedelta(seconds=heartbeat_s_ago))
    for _ in range(trials):
        add_trial(db.storage, study.optuna_study_name, method="smooth", value=None, state=TrialState.RUNNING)
    return _now(state, study.id)


def _counts(db, study):
    with db.sessions() as s:
        return repo.trial_counts(s, names=[study.optuna_study_name]).get(study.optuna_study_name, {})


def test_a_study_whose_driver_died_is_resumed_as_a_new_job_once_whoever_looks(state, db, cluster):
    study = _running(state, db)
    cluster.jobs[study.ray_job_id] = "FAILED"  # the driver was killed
    resumed = supervisor.check(study, state=state)
    job = f"transched-study-{study.id}-r1"
    assert (resumed.status, resumed.attempts, resumed.ray_job_id) == ("pending", 1, job)
    assert resumed.error == "resumed (attempt 1 of 2): its Ray job ended as FAILED"
    assert cluster.attempts[job] == 1 and cluster.jobs[job] == "PENDING"
    # The new driver takes over the trials the dead one left RUNNING (service.driver.plan_resume).
    assert _counts(db, study) == {"RUNNING": 1}
    # A second look, from another sweep or API process holding the old row, submits nothing more.
    assert supervisor.check(study, state=state).ray_job_id == job
    supervisor.sweep(state)
    assert len(cluster.submitted) == 2


def test_a_study_the_cluster_forgot_is_resumed_but_not_while_the_cluster_is_unreachable(state, db, cluster):
    study = _running(state, db)
    cluster.reachable = False
    assert supervisor.check(study, state=state).status == "running"
    cluster.reachable = True
    del cluster.jobs[study.ray_job_id]  # the head was restarted: it knows no job of ours
    resumed = supervisor.check(study, state=state)
    assert (resumed.status, resumed.attempts) == ("pending", 1)
    assert "the Ray cluster no longer knows its job" in resumed.error


def test_a_hung_driver_is_stopped_and_resumed_and_a_beating_one_left_alone(state, db, cluster):
    hung = _running(state, db, heartbeat_s_ago=600)
    alive = _running(state, db, heartbeat_s_ago=5)
    for study in (hung, alive):
        cluster.jobs[study.ray_job_id] = "RUNNING"
    supervisor.sweep(state)
    assert cluster.stopped == [hung.ray_job_id]
    assert _now(state, hung.id).attempts == 1 and "no heartbeat for over 60s" in _now(state, hung.id).error
    assert (_now(state, alive.id).status, _now(state, alive.id).attempts) == ("running", 0)


def test_after_max_resumes_the_study_fails_with_a_reason_and_no_trial_left_running(state, db, cluster):
    study = _running(state, db)
    for attempt in range(1, 3):
        cluster.jobs[_now(state, study.id).ray_job_id] = "FAILED"
        assert supervisor.check(_now(state, study.id), state=state).attempts == attempt
        db.set_status(study.id, "running", heartbeat_at=utcnow())  # its driver started, then died too
    with db.sessions() as s:
        repo.set_error(s, study_id=study.id, error="the driver died: RuntimeError: boom")
    cluster.jobs[_now(state, study.id).ray_job_id] = "FAILED"
    failed = supervisor.check(_now(state, study.id), state=state)
    assert failed.status == "failed" and failed.finished_at is not None
    assert failed.error == (
        "the driver died 3 times (TRANSCHED_MAX_RESUMES=2), the last time because its Ray job ended as "
        "FAILED; "
        "the last driver said: the driver died: RuntimeError: boom"
    )
    assert _counts(db, study) == {"FAIL": 1} and len(cluster.submitted) == 3


def test_a_stopping_study_whose_driver_died_ends_stopped_not_resumed(state, db, cluster):
    study = _running(state, db)
    assert studies.stop(study.id, sessions=state.sessions, cluster=cluster).status == "stopping"
    cluster.jobs[study.ray_job_id] = "FAILED"
    ended = supervisor.check(_now(state, study.id), state=state)
    assert (ended.status, ended.attempts, ended.error) == ("stopped", 0, None)
    assert _counts(db, study) == {"FAIL": 1} and len(cluster.submitted) == 1


def test_a_pending_study_whose_job_the_cluster_never_got_is_submitted_again_as_the_same_job(state, cluster):
    study = _submit(state)
    del cluster.jobs[study.ray_job_id]  # the API died between storing the study and submitting it
    cluster.submitted.clear()
    supervisor.sweep(state)
    assert list(cluster.submitted) == [study.ray_job_id] and cluster.attempts[study.ray_job_id] == 0
    assert _now(state, study.id).status == "pending"


def test_studies_beyond_the_limit_wait_queued_and_are_admitted_oldest_first(state, db, cluster):
    first, second, third, fourth = (_submit(state, name=f"s{i}") for i in range(4))
    assert [s.status for s in (first, second, third, fourth)] == ["pending", "pending", "queued", "queued"]
    assert list(cluster.submitted) == [first.ray_job_id, second.ray_job_id]  # queued: no driver yet
    supervisor.sweep(state)
    assert _now(state, third.id).status == "queued"
    db.set_status(first.id, "completed")
    supervisor.sweep(state)
    assert [_now(state, s.id).status for s in (third, fourth)] == ["pending", "queued"]
    assert third.ray_job_id in cluster.submitted and fourth.ray_job_id not in cluster.submitted
    # Stopping a queued study ends it at once; there is no job to stop.
    assert studies.stop(fourth.id, sessions=state.sessions, cluster=cluster).status == "stopped"
    assert cluster.stopped == []
    db.set_status(second.id, "failed")
    assert supervisor.dispatch(state) == []  # nothing queued is left


def test_the_same_idempotency_key_and_body_give_the_same_study_and_another_body_a_422(state, cluster):
    first = _submit(state, key="k-1", name="a")
    again = _submit(state, key="k-1", name="a")
    assert again.id == first.id and list(cluster.submitted) == [first.ray_job_id]
    with pytest.raises(InvalidForStudy, match="Idempotency-Key 'k-1' was already used for study"):
        _submit(state, key="k-1", name="b")
    assert _submit(state, key="k-2", name="a").id != first.id


def test_without_a_cluster_the_supervisor_connects_and_waits_while_none_answers(state, cluster):
    state.cluster = None
    calls = []

    def connect(_settings):
        calls.append(1)
        if len(calls) == 1:
            raise RayUnavailable("not yet")
        return cluster

    state.connect = connect
    supervisor.sweep(state)
    assert state.cluster is None
    supervisor.sweep(state)
    assert state.cluster is cluster and len(calls) == 2


def test_stopping_a_resumed_study_before_its_new_driver_starts_ends_it_with_no_trial_left_running(
    state, db, cluster
):
    study = _running(state, db)
    cluster.jobs[study.ray_job_id] = "FAILED"
    resumed = supervisor.check(study, state=state)
    assert resumed.status == "pending"
    stopped = studies.stop(study.id, sessions=state.sessions, cluster=cluster, storage=state.storage)
    assert stopped.status == "stopped" and cluster.stopped == [resumed.ray_job_id]
    assert _counts(db, study) == {"FAIL": 1}


def test_a_resume_the_cluster_refuses_stays_pending_and_is_submitted_again_next_sweep(state, db, cluster):
    study = _running(state, db)
    cluster.jobs[study.ray_job_id] = "FAILED"
    cluster.submit_error = RuntimeError("the job API is busy")
    resumed = supervisor.check(study, state=state)
    assert (resumed.status, resumed.attempts) == ("pending", 1) and resumed.ray_job_id not in cluster.jobs
    cluster.submit_error = None
    supervisor.sweep(state)
    assert cluster.jobs[resumed.ray_job_id] == "PENDING" and _now(state, study.id).attempts == 1


def test_the_api_settles_studies_once_at_start_up_before_it_serves(settings, state, db, cluster):
    study = _running(state, db)
    cluster.jobs[study.ray_job_id] = "FAILED"  # the driver died while no API ran
    hourly = settings.model_copy(update={"supervise_interval_s": 3600})  # no second sweep in this test
    with TestClient(create_app(hourly, cluster=cluster)) as client:
        first = client.get(f"/studies/{study.id}").json()  # the first request: the study is resumed
        assert (first["status"], first["ray_job_id"]) == ("pending", f"{study.ray_job_id}-r1")
    assert len(cluster.submitted) == 2

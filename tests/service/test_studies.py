"""The study domain on a real SQLite file and a real PostgreSQL database, with a fake cluster: no
connection is held while the cluster is asked anything, stop, best-trial selection (the supervisor:
test_supervisor.py)."""

import pytest
from optuna.trial import TrialState

from service import ledger, studies
from service import repository as repo
from service.errors import ClusterUnavailable, Conflict, NotFound
from service.schemas import StudySpec
from service.settings import Settings
from tests.service.conftest import FakeCluster, add_trial


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=database_url, driver_timeout_s=60)


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


def test_submit_stores_then_submits_with_no_connection_held(db, cluster, settings):
    study = _submit(db, cluster, settings, n_trials=2)
    assert cluster.seen == [("resources", 0), ("submit_study", 0)]
    stored = studies.find(db.sessions, study.id)
    assert (stored.status, stored.ray_job_id) == ("pending", f"transched-study-{study.id}")
    assert db.engine.pool.checkedout() == 0


def test_a_stored_spec_reads_back_as_submitted_and_is_validated_once(db, cluster, settings):
    spec = StudySpec(n_trials=3, methods=["smooth", {"method": "mixup", "schedule": True}])
    study = studies.submit(spec, sessions=db.sessions, cluster=cluster, settings=settings)
    stored = studies.find(db.sessions, study.id)
    assert studies.stored_spec(stored) == StudySpec.model_validate(stored.spec)  # as stored (paths resolved)
    assert studies.stored_spec(stored).methods == spec.methods
    assert studies.stored_spec(studies.find(db.sessions, study.id)) is studies.stored_spec(stored)
    other = _submit(db, cluster, settings, n_trials=4)
    assert studies.stored_spec(studies.find(db.sessions, other.id)).n_trials == 4


def test_a_refused_submission_is_kept_as_failed(db, cluster, settings):
    cluster.submit_error = RuntimeError("no")
    with pytest.raises(ClusterUnavailable, match="kept, as failed"):
        _submit(db, cluster, settings)
    with db.sessions() as s:
        (study,), total = repo.list_studies(s, offset=0, limit=10)
    # Stored with its job id before the submission: a study is never without the job that runs it.
    assert total == 1 and study.status == "failed" and study.ray_job_id == f"transched-study-{study.id}"


def test_stop_ends_a_pending_job_with_no_connection_held_and_refuses_a_completed_study(db, cluster, settings):
    study = _submit(db, cluster, settings)
    cluster.seen.clear()
    assert studies.stop(study.id, sessions=db.sessions, cluster=cluster).status == "stopped"
    assert cluster.seen == [("stop_job", 0)]
    assert studies.stop(study.id, sessions=db.sessions, cluster=cluster).status == "stopped"  # again: fine
    assert cluster.seen == [("stop_job", 0)]
    db.set_status(study.id, "completed")
    with pytest.raises(Conflict, match="already ended"):
        studies.stop(study.id, sessions=db.sessions, cluster=cluster)
    with pytest.raises(NotFound):
        studies.stop("nope", sessions=db.sessions, cluster=cluster)


def test_best_trial_is_the_stores_answer_overall_and_the_earliest_on_ties_of_a_filter(db):
    name = "transched-best"
    assert ledger.best_trial(db.storage, name=name) is None  # no Optuna study yet
    add_trial(db.storage, name, method="multitask", value=None, state=TrialState.FAIL)
    assert ledger.best_trial(db.storage, name=name) is None
    for method, value in (("smooth", 0.5), ("multitask", 0.9), ("smooth", 0.7), ("smooth", 0.7)):
        add_trial(db.storage, name, method=method, value=value)
    assert ledger.best_trial(db.storage, name=name).number == 2
    smooth = studies.method_filter(["smooth", "multitask"], "smooth")
    assert ledger.best_trial(db.storage, name=name, where=smooth).number == 3
    assert studies.method_filter(["smooth", "multitask"], "cutmix") is None

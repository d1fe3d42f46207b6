"""/studies over a fake cluster and a real SQLite database: submit, list with trial counts, read (a GET
only reads: studies whose driver died are settled by the supervisor's sweep, never by a request), stop."""

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState
from sqlalchemy import select, text

from service import supervisor
from service.api import create_app
from service.db import Study, utcnow
from service.settings import Settings
from tests.service.conftest import SPEC, FakeCluster, Store, add_trial


def _create(client, **changes) -> dict:
    resp = client.post("/studies", json={**SPEC, **changes})
    assert resp.status_code == 202, resp.text
    return resp.json()


def _sweep(client) -> None:
    """One pass of the app's supervisor (the tests' settings start no supervisor thread)."""
    supervisor.sweep(client.app_state["app_state"])


def test_a_study_is_stored_and_its_driver_submitted_as_a_job(client, cluster, settings):
    created = _create(client, trainer={"data_dir": "data"})
    assert created["status"] == "pending" and created["ray_job_id"] == f"transched-fake-{created['id']}"
    assert cluster.jobs == {created["ray_job_id"]: "PENDING"}
    # The job names the study, and links back to it under the URL the client called.
    assert cluster.submitted[created["ray_job_id"]] == {
        "job_name": "transched study fake",
        "transched_study": created["id"],
        "study_name": "fake",
        "methods": "smooth,multitask,mixup+schedule",
        "n_trials": "8",
        "study_url": f"http://testserver/studies/{created['id']}",
    }
    assert created["links"]["self"] == f"http://testserver/studies/{created['id']}"
    study = client.get(f"/studies/{created['id']}").json()
    assert study["ray_job_id"] == created["ray_job_id"] and study["status"] == "pending"
    assert study["spec"]["trainer"]["data_dir"] == str((settings.data_dir / "data").resolve())
    assert (study["n_trials"], study["trial_counts"], study["best"]) == (0, {}, None)


def test_a_study_asking_for_gpus_the_cluster_lacks_is_422_and_not_stored(client, cluster):
    resp = client.post("/studies", json={**SPEC, "gpus_per_trial": 0.5})
    assert resp.status_code == 422
    assert resp.json() == {
        "detail": "gpus_per_trial=0.5 but the Ray cluster has 0 GPU(s); "
        "set gpus_per_trial to 0 to train on CPUs"
    }
    assert client.get("/studies").json()["total"] == 0 and cluster.jobs == {}


def test_unreadable_cluster_resources_do_not_block_a_submission(client, cluster):
    def broken(name):
        if name == "resources":
            raise ConnectionError("status API down")

    cluster.before_call = broken
    assert _create(client)["status"] == "pending"


def test_a_study_ray_refused_is_503_and_kept_as_failed(client, cluster):
    cluster.submit_error = RuntimeError("job API said no")
    resp = client.post("/studies", json=SPEC)
    assert resp.status_code == 503
    detail = resp.json()["detail"]
    assert "it is kept, as failed" in detail and "job API said no" in detail
    (study,) = client.get("/studies").json()["items"]
    assert study["status"] == "failed" and study["error"] == "submission failed: job API said no"


def test_the_list_counts_each_studys_trials_by_state_and_is_paginated_newest_first(client, store):
    ids = [_create(client, name=f"s{i}")["id"] for i in range(3)]
    add_trial(store.storage, f"transched-{ids[0]}", method="smooth", value=0.5, t0=0.1, tau=0.1, alpha=0.0)
    add_trial(store.storage, f"transched-{ids[0]}", method="multitask", value=0.7, alpha=1.0)
    add_trial(store.storage, f"transched-{ids[0]}", method="smooth", value=None, state=TrialState.RUNNING)
    add_trial(store.storage, f"transched-{ids[1]}", method="smooth", value=None, state=TrialState.FAIL)
    page = client.get("/studies?limit=10").json()
    assert page["total"] == 3 and [s["name"] for s in page["items"]] == ["s2", "s1", "s0"]
    by_id = {s["id"]: s for s in page["items"]}
    assert by_id[ids[0]]["trial_counts"] == {"COMPLETE": 2, "RUNNING": 1} and by_id[ids[0]]["n_trials"] == 3
    assert by_id[ids[0]]["best"] == {
        "number": 1,
        "value": 0.7,
        "params": {"method": "multitask", "alpha": 1.0},
    }
    assert by_id[ids[1]]["trial_counts"] == {"FAIL": 1} and by_id[ids[1]]["best"] is None
    assert by_id[ids[2]]["trial_counts"] == {} and by_id[ids[2]]["n_trials"] == 0
    assert [s["name"] for s in client.get("/studies?offset=1&limit=1").json()["items"]] == ["s1"]


@pytest.mark.parametrize("job", ["FAILED", "SUCCEEDED", "STOPPED", None])
def test_a_study_whose_driver_died_is_resumed_by_the_sweep_and_shown_so_alone_or_in_the_list(
    client, cluster, store, job
):
    created = _create(client)
    store.set_status(created["id"], "running", heartbeat_at=utcnow())
    add_trial(
        store.storage, created["optuna_study_name"], method="smooth", value=None, state=TrialState.RUNNING
    )
    assert client.get(f"/studies/{created['id']}").json()["status"] == "running"  # the job still runs
    if job is None:
        del cluster.jobs[created["ray_job_id"]]  # the head was restarted
    else:
        cluster.jobs[created["ray_job_id"]] = job
    assert client.get(f"/studies/{created['id']}").json()["status"] == "running"  # a GET only reads
    _sweep(client)
    (listed,) = client.get("/studies").json()["items"]
    assert (listed["status"], listed["ray_job_id"]) == ("pending", f"{created['ray_job_id']}-r1")
    assert listed["error"].startswith("resumed (attempt 1 of 3): ")
    assert client.get(f"/studies/{created['id']}").json()["ray_job_id"] == f"{created['ray_job_id']}-r1"
    assert list(cluster.submitted) == [created["ray_job_id"], f"{created['ray_job_id']}-r1"]


def test_a_stopping_study_whose_driver_died_ends_stopped_with_its_trials_reaped(client, cluster, store):
    created = _create(client)
    store.set_status(created["id"], "stopping", heartbeat_at=utcnow())
    add_trial(
        store.storage, created["optuna_study_name"], method="smooth", value=None, state=TrialState.RUNNING
    )
    cluster.jobs[created["ray_job_id"]] = "STOPPED"
    _sweep(client)
    study = client.get(f"/studies/{created['id']}").json()
    assert (study["status"], study["error"], study["trial_counts"]) == ("stopped", None, {"FAIL": 1})
    assert study["finished_at"] is not None


def test_a_pending_study_forgotten_by_the_cluster_is_submitted_again(client, cluster):
    created = _create(client)
    cluster.jobs.clear()
    _sweep(client)
    assert client.get(f"/studies/{created['id']}").json()["status"] == "pending"
    assert cluster.jobs == {created["ray_job_id"]: "PENDING"}


def test_stopping_a_running_study_asks_its_driver_any_number_of_times(client, cluster, store):
    created = _create(client)
    store.set_status(created["id"], "running", heartbeat_at=utcnow())
    for _ in range(3):
        resp = client.post(f"/studies/{created['id']}/stop")
        assert resp.status_code == 202 and resp.json()["status"] == "stopping"
    assert cluster.stopped == []  # the driver ends its trials and writes `stopped` itself; never killed


def test_post_studies_with_an_idempotency_key_makes_one_study(client, cluster):
    headers = {"Idempotency-Key": "abc"}
    first = client.post("/studies", json=SPEC, headers=headers)
    again = client.post("/studies", json=SPEC, headers=headers)
    assert first.status_code == again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert len(cluster.submitted) == 1
    other = client.post("/studies", json={**SPEC, "n_trials": 9}, headers=headers)
    assert other.status_code == 422 and "different body" in other.json()["detail"]
    assert client.get("/studies").json()["total"] == 1


def test_stopping_a_pending_study_stops_its_job_and_ends_it_and_again_answers_it(client, cluster):
    created = _create(client)
    for _ in range(2):
        resp = client.post(f"/studies/{created['id']}/stop")
        assert resp.status_code == 202 and resp.json()["status"] == "stopped"
    assert cluster.stopped == [created["ray_job_id"]]


def test_stopping_an_ended_study_is_409(client, store):
    created = _create(client)
    store.set_status(created["id"], "completed")
    resp = client.post(f"/studies/{created['id']}/stop")
    assert resp.status_code == 409
    assert resp.json() == {"detail": f"study {created['id']} has already ended (completed)"}


class CountingCluster:
    """The fake cluster behind a proxy that records every method called on it (attributes such as
    `dashboard_url` are no call)."""

    def __init__(self, cluster: FakeCluster):
        self.cluster, self.calls = cluster, []

    def __getattr__(self, name):
        value = getattr(self.cluster, name)
        if not callable(value):
            return value

        def counted(*args, **kwargs):
            self.calls.append(name)
            return value(*args, **kwargs)

        return counted


def _rows(store: Store) -> list[tuple]:
    with store.sessions() as s:
        studies = s.execute(select(Study.__table__).order_by(Study.id)).all()
        trials = s.execute(text("SELECT trial_id, state FROM trials ORDER BY trial_id")).all()
    return [tuple(row) for row in studies] + [tuple(row) for row in trials]


def test_gets_of_live_studies_make_no_cluster_call_and_change_no_row(database_url, tmp_path):
    """100 GETs of studies that a sweep would settle (a hung driver, dead ones, a lost submission, a
    stopping one): not one cluster call, not one row changed; the sweep afterwards does act."""
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, supervise_interval_s=0, max_running_studies=10
    )
    cluster = CountingCluster(FakeCluster())
    with TestClient(create_app(settings, cluster=cluster)) as client:
        store = Store(settings)
        try:
            ids, stale = [], utcnow() - timedelta(seconds=3600)  # past driver_timeout_s
            for i, (status, job) in enumerate(
                [("running", "RUNNING"), ("running", "FAILED"), ("running", None), ("stopping", "STOPPED")]
            ):
                created = _create(client, name=f"live{i}")
                store.set_status(created["id"], status, heartbeat_at=stale)
                add_trial(
                    store.storage,
                    created["optuna_study_name"],
                    method="smooth",
                    value=None,
                    state=TrialState.RUNNING,
                )
                if job is None:
                    del cluster.jobs[created["ray_job_id"]]  # a restarted head knows it not
                else:
                    cluster.jobs[created["ray_job_id"]] = job
                ids.append(created["id"])
            pending = _create(client, name="lost")
            del cluster.jobs[pending["ray_job_id"]]  # never got to the cluster: a sweep submits it
            ids.append(pending["id"])
            cluster.calls.clear()
            before = _rows(store)

            for i in range(100):
                if i % 2:
                    resp = client.get(f"/studies/{ids[i // 2 % len(ids)]}")
                    assert resp.status_code == 200, resp.text
                else:
                    resp = client.get("/studies?limit=200")
                    assert resp.status_code == 200 and resp.json()["total"] == len(ids), resp.text

            assert cluster.calls == []
            assert _rows(store) == before
            _sweep(client)
            assert {"job_status", "stop_job", "submit_study"} <= set(cluster.calls)
            assert _rows(store) != before
        finally:
            store.close()

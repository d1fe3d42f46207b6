"""Faults for real: `transched serve` on a free port with its own local Ray head and a SQLite file, the
supervisor sweeping every 2 s and one study admitted at a time. The driver is SIGKILLed mid-study, then
the whole Ray head; each study must be resumed and end `completed` with n_trials finished trials, every
trial completed before the fault kept, nothing left RUNNING or WAITING, and each interrupted config run
again exactly once. Also: the admission queue, stop called three times, and an idempotent POST."""

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from service.cli import TERMINAL
from tests.conftest import fresh_database
from tests.service.test_end_to_end import _serve

pytestmark = pytest.mark.slow

N_TRIALS = 4
STUDY = {
    "name": "resume-digits",
    "trainer": {"source": "digits", "target": "digits", "n_target": 60, "epochs": 4, "batch_size": 32},
    "methods": ["smooth", "finetune"],
    "n_trials": N_TRIALS,
    "max_concurrent_trials": 2,
    "cpus_per_trial": 1,
    "seed": 5,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("resume")
    env = {"TRANSCHED_SUPERVISE_INTERVAL_S": "2", "TRANSCHED_MAX_RUNNING_STUDIES": "1"}
    with fresh_database("sqlite", data_dir) as url:
        yield from _serve(data_dir, url, extra_env=env)


def _get(api: str, path: str) -> dict:
    return httpx.get(f"{api}{path}", timeout=30).json()


def _wait(api: str, study_id: str, until, timeout_s: float = 420) -> dict:
    deadline = time.monotonic() + timeout_s
    while not until(study := _get(api, f"/studies/{study_id}")):
        assert time.monotonic() < deadline, study
        time.sleep(0.5)
    return study


def _trials(api: str, study_id: str) -> list[dict]:
    return _get(api, f"/studies/{study_id}/trials?limit=200")["items"]


def _driver_pids(study_id: str) -> list[int]:
    """The study's driver processes (`python -m service.driver STUDY_ID ...`), read from /proc."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"service.driver" in cmd and study_id.encode() in cmd:
            pids.append(int(proc.name))
    return pids


def _check_resumed(server: dict, study: dict, before: list[dict]) -> None:
    """Completed with n_trials finished, the completed ones kept, each interrupted config rerun once;
    read from Optuna's own schema (the `retry_of` user attr is not in the API's trial view)."""
    import optuna

    assert study["status"] == "completed", study
    assert study["error"] is None and study["ray_job_id"].endswith("-r1"), study
    storage = optuna.storages.RDBStorage(server["database_url"])
    try:
        trials = optuna.load_study(study_name=study["optuna_study_name"], storage=storage).trials
    finally:
        storage.engine.dispose()
    by_number = {t.number: t for t in trials}
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and "WAITING" not in states, states  # 0 left RUNNING
    for t in before:  # 0 lost: every trial completed before the fault is there, as it was
        if t["state"] == "COMPLETE":
            assert (by_number[t["number"]].state.name, by_number[t["number"]].value) == (
                "COMPLETE",
                t["value"],
            )
    retry_of = [t.user_attrs.get("retry_of") for t in trials]
    interrupted = [t.number for t in trials if t.state.name == "FAIL" and "retry_of" not in t.user_attrs]
    assert interrupted, states
    for n in interrupted:  # each config the dead driver left RUNNING was run again exactly once
        assert retry_of.count(n) == 1, (n, retry_of)
        (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == n]
        assert {k: retry.params[k] for k in by_number[n].params} == by_number[n].params
    finished = [t for t in trials if t.number not in retry_of]  # a retried trial counts as its retry
    assert len(finished) == N_TRIALS, (states, retry_of)  # 0 duplicated, 0 missing
    assert len(_trials(server["api"], study["id"])) == len(trials)


def _fault_mid_study(server: dict, name: str, kill) -> tuple[dict, list[dict]]:
    """Submit a study, wait for a completed trial while others run, call `kill`; the trials before it."""
    api = server["api"]
    created = httpx.post(f"{api}/studies", json={**STUDY, "name": name}, timeout=60).json()
    _wait(
        api,
        created["id"],
        lambda s: s["trial_counts"].get("COMPLETE", 0) >= 1 and s["trial_counts"].get("RUNNING"),
    )
    before = _trials(api, created["id"])
    kill(created)
    return created, before


def test_a_study_whose_driver_is_killed_is_resumed_and_completes_with_every_trial(server):
    def kill_driver(created):
        (pid,) = _driver_pids(created["id"])
        os.kill(pid, signal.SIGKILL)

    created, before = _fault_mid_study(server, "resume-driver", kill_driver)
    study = _wait(server["api"], created["id"], lambda s: s["status"] in TERMINAL)
    _check_resumed(server, study, before)
    # The resumed driver is this checkout's code, and said what it took over.
    logs = httpx.get(f"{server['api']}/studies/{created['id']}/logs", timeout=30).text
    assert "attempt 1 of transched-" in logs and "left RUNNING retried" in logs, logs


def test_a_second_study_waits_queued_then_runs_and_stopping_it_three_times_ends_it_stopped(server):
    api = server["api"]
    first = {**STUDY, "name": "queue-a", "n_trials": 2, "trainer": {**STUDY["trainer"], "epochs": 2}}
    second = {**STUDY, "name": "queue-b", "n_trials": 20, "trainer": {**STUDY["trainer"], "epochs": 30}}
    a = httpx.post(f"{api}/studies", json=first, timeout=60).json()
    key = {"Idempotency-Key": "queue-b-once"}
    b = httpx.post(f"{api}/studies", json=second, headers=key, timeout=60).json()
    assert (a["status"], b["status"]) == ("pending", "queued")
    # The client retries (its first answer was lost): the same study, not a second one.
    assert httpx.post(f"{api}/studies", json=second, headers=key, timeout=60).json()["id"] == b["id"]
    other = httpx.post(f"{api}/studies", json={**second, "n_trials": 3}, headers=key, timeout=60)
    assert other.status_code == 422 and "different body" in other.json()["detail"]
    # While the first runs, the second waits with no driver: the cluster has no job of it.
    assert httpx.get(f"{api}/studies/{b['id']}/logs", timeout=30).status_code == 409
    seen = []
    _wait(
        api,
        a["id"],
        lambda s: seen.append(_get(api, f"/studies/{b['id']}")["status"]) or s["status"] in TERMINAL,
    )
    assert _get(api, f"/studies/{a['id']}")["status"] == "completed" and set(seen[:-1]) == {"queued"}, seen
    _wait(api, b["id"], lambda s: s["status"] == "running" and s["trial_counts"].get("RUNNING"))
    codes = [httpx.post(f"{api}/studies/{b['id']}/stop", timeout=30) for _ in range(3)]
    assert [r.status_code for r in codes] == [202, 202, 202] and codes[0].json()["status"] == "stopping"
    study = _wait(api, b["id"], lambda s: s["status"] in TERMINAL)
    assert study["status"] == "stopped" and "RUNNING" not in study["trial_counts"], study
    assert httpx.post(f"{api}/studies/{b['id']}/stop", timeout=30).json()["status"] == "stopped"
    total = _get(api, "/studies")["total"]
    assert total == len({s["id"] for s in _get(api, "/studies?limit=200")["items"]})


def test_a_study_whose_ray_head_is_killed_is_resumed_on_a_new_head(server):
    import json

    state = server["data_dir"] / "ray" / "head.json"
    old = json.loads(state.read_text())

    def kill_head(_created):
        os.killpg(old["pid"], signal.SIGKILL)

    created, before = _fault_mid_study(server, "resume-head", kill_head)
    study = _wait(server["api"], created["id"], lambda s: s["status"] in TERMINAL)
    _check_resumed(server, study, before)
    new = json.loads(state.read_text())
    assert (
        new["pid"] != old["pid"] and httpx.get(f"{server['api']}/healthz", timeout=30).json()["ray_dashboard"]
    )

"""Trial faults for real: `transched serve` with its own Ray head and a SQLite file; small digits
studies. A missing dataset ends its study in seconds with the dataset's message, each trial tried once;
a diverged trial is FAIL "diverged at epoch k" and never /best; fewer trials than methods ends; a stop
leaves the trials it cut PRUNED; a trial whose worker is SIGKILLed resumes from its epoch checkpoint."""

import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from service.cli import TERMINAL
from tests.conftest import fresh_database
from tests.service.test_end_to_end import RayWatcher, _serve

pytestmark = pytest.mark.slow

TRAINER = {"source": "digits", "target": "digits", "n_target": 60, "batch_size": 32, "epochs": 3}
BASE = {"max_concurrent_trials": 2, "cpus_per_trial": 1, "seed": 5}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("faults")
    with fresh_database("sqlite", data_dir) as url:
        yield from _serve(data_dir, url)


def submit(server, spec):
    resp = httpx.post(f"{server['api']}/studies", json={**BASE, **spec}, timeout=60)
    assert resp.status_code == 202, resp.text
    return resp.json()


def wait(server, study_id, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while (study := httpx.get(f"{server['api']}/studies/{study_id}", timeout=30).json())[
        "status"
    ] not in TERMINAL:
        assert time.monotonic() < deadline, study
        time.sleep(0.3)
    return study


def trials(server, study_id):
    return httpx.get(f"{server['api']}/studies/{study_id}/trials?limit=100", timeout=30).json()["items"]


def job_log(server, created):
    return RayWatcher(server["data_dir"], created["id"]).final_logs(created["ray_job_id"])


def test_a_missing_dataset_ends_the_study_in_seconds_with_its_reason_each_trial_tried_once(server):
    spec = {
        "name": "no-data",
        "trainer": {**TRAINER, "source": "cifar100", "target": "cifar10", "data_dir": "nowhere"},
        "methods": ["target"],
        "n_trials": 20,
        "max_retries": 2,  # a worker's death would be retried twice: a missing dataset must not be
    }
    created = submit(server, spec)
    started = time.monotonic()
    while httpx.get(f"{server['api']}/studies/{created['id']}", timeout=30).json()["status"] != "running":
        time.sleep(0.2)
    study = wait(server, created["id"])
    took = time.monotonic() - started
    assert study["status"] == "failed"
    error = study["error"]
    assert error.startswith(
        "the first 3 trials failed with an error a retry cannot fix: "
        "DatasetNotFoundError: dataset 'cifar10' not found"
    ), error
    assert "Traceback" not in error and 'File "' not in error and len(error) < 800
    stored = trials(server, created["id"])
    assert "RUNNING" not in study["trial_counts"] and len(stored) < 20
    failed = [t for t in stored if t["state"] == "FAIL"]
    assert len(failed) >= 3 and all(t["error"].startswith("DatasetNotFoundError: ") for t in failed)
    assert all(t["restarts"] == 0 for t in stored)
    log = job_log(server, created)
    assert "is rerun" not in log  # each trial tried once
    started = [int(n) for n in re.findall(r"\[no-data\] trial (\d+) started", log)]
    assert len(started) == len(set(started)) <= 3 + BASE["max_concurrent_trials"], log
    # From the first trial's failure to the study's end: the rest of the study is not run.
    first_failure, end = _at(log, r"\[no-data\] trial \d+ failed"), _at(log, r"study \w+ failed")
    assert end - first_failure < 10, log
    assert took < 120, took  # it was 93 s for 2 trials, retried as if a node had died
    print(
        f"missing dataset: {len(stored)} trials, study ended {end - first_failure:.1f}s after the first "
        f"failure, {took:.1f}s after it started running"
    )


def _at(log: str, pattern: str) -> float:
    """The time of the first log line matching `pattern`, in seconds."""
    from datetime import datetime

    stamp = re.search(rf"^(\S+ \S+) \w+ transched\.\w+: .*{pattern}", log, re.M).group(1)
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_a_diverged_trial_fails_with_its_epoch_and_is_never_best(server):
    spec = {"name": "diverge", "trainer": {**TRAINER, "lr": 1e6, "epochs": 6}, "methods": ["target"]}
    created = submit(server, {**spec, "n_trials": 2})
    study = wait(server, created["id"])
    assert study["status"] == "failed" and study["trial_counts"] == {"FAIL": 2}, study
    for t in trials(server, created["id"]):
        k = len(t["epochs"])
        assert t["error"] == f"diverged at epoch {k}" and 1 <= k < 6, t
        assert t["value"] is None and t["restarts"] == 0
    assert re.fullmatch(r"2 of 2 trials failed: diverged at epoch \d", study["error"]), study["error"]
    best = httpx.get(f"{server['api']}/studies/{created['id']}/best", timeout=30)
    assert best.status_code == 409, best.text
    assert "is rerun" not in job_log(server, created)


def test_a_study_with_fewer_trials_than_methods_ends(server):
    created = submit(
        server, {"name": "one-of-two", "trainer": TRAINER, "methods": ["target", "finetune"], "n_trials": 1}
    )
    study = wait(server, created["id"], timeout_s=120)
    assert study["status"] == "completed" and study["trial_counts"] == {"COMPLETE": 1}, study


def test_stop_leaves_the_trials_it_cut_pruned(server):
    spec = {"name": "stop-me", "trainer": {**TRAINER, "epochs": 40}, "methods": ["smooth"], "n_trials": 10}
    created = submit(server, spec)
    deadline = time.monotonic() + 180
    while sum(len(t["epochs"]) > 0 for t in trials(server, created["id"])) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert httpx.post(f"{server['api']}/studies/{created['id']}/stop", timeout=30).status_code == 202
    study = wait(server, created["id"])
    assert study["status"] == "stopped" and study["error"] is None, study
    stored = trials(server, created["id"])
    assert stored and {t["state"] for t in stored} == {"PRUNED"}, [(t["number"], t["state"]) for t in stored]
    assert all(t["error"] is None for t in stored)
    assert not (server["data_dir"] / "checkpoints" / created["optuna_study_name"]).exists()


def _worker_pids(data_dir: Path) -> list[int]:
    """This server's Tune trial workers: Ray names the process after the trainable's actor, and it
    inherits the server's environment (other Ray heads on this host have other data dirs)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes()
            env = (proc / "environ").read_bytes()
        except (OSError, ValueError):
            continue
        if b"ray::ImplicitFunc" in cmd and f"TRANSCHED_DATA_DIR={data_dir}\0".encode() in env:
            pids.append(int(proc.name))
    return pids


def test_a_trial_whose_worker_is_killed_resumes_from_its_epoch_checkpoint(server):
    epochs = 8
    spec = {
        "name": "kill-worker",
        "trainer": {**TRAINER, "epochs": epochs, "steps_per_epoch": 40},
        "methods": ["target"],
        "n_trials": 1,
        "max_retries": 1,
    }
    created = submit(server, spec)
    checkpoint = server["data_dir"] / "checkpoints" / created["optuna_study_name"] / "0.pt"
    deadline = time.monotonic() + 180
    while not (checkpoint.is_file() and (t := trials(server, created["id"])) and len(t[0]["epochs"]) >= 2):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (pid,) = _worker_pids(server["data_dir"])
    os.kill(pid, signal.SIGKILL)
    study = wait(server, created["id"])
    assert study["status"] == "completed" and study["trial_counts"] == {"COMPLETE": 1}, study
    (trial,) = trials(server, created["id"])
    assert trial["restarts"] == 1 and [e["epoch"] for e in trial["epochs"]] == list(range(1, epochs + 1))
    log = job_log(server, created)
    assert "[kill-worker] trial 0 failed and is rerun" in log
    trained = [int(e) for e in re.findall(r"\[kill-worker\] trial 0 epoch (\d+)/", log)]
    # Every epoch trained and reported once: the rerun went on after its checkpoint's epoch.
    assert sorted(trained) == list(range(1, epochs + 1)), trained
    assert not checkpoint.exists()

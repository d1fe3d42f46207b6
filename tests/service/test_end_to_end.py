"""The whole product path, for real: uvicorn on a free loopback port, a real local Ray head, and a
real database — a SQLite file and a fresh PostgreSQL database in turn. A digits study of 6 trials,
2 at a time, is submitted over HTTP and polled to completion."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import optuna
import pytest

from service.cli import TERMINAL
from service.db import make_optuna_storage
from service.ray_cluster import stop_local_head
from service.settings import Settings
from tests.conftest import BACKENDS, free_port, fresh_database

pytestmark = pytest.mark.slow

# Epochs enough that a trial's live metrics (samples per second: from its 2nd epoch) outlast a few of Ray's
# metrics reports (every 2 s here) while the study runs.
EPOCHS = 6
STUDY = {
    "name": "e2e-digits",
    "trainer": {"source": "digits", "target": "digits", "n_target": 60, "epochs": EPOCHS, "batch_size": 32},
    "methods": ["smooth", "finetune"],
    "n_trials": 6,
    "max_concurrent_trials": 2,
    "cpus_per_trial": 1,
    "seed": 3,
}


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("transched")
    with fresh_database(request.param, data_dir) as url:
        yield from _serve(data_dir, url)


def _serve(data_dir, database_url, extra_env=None):
    """Run `transched serve` on a free port until the generator is closed."""
    port = free_port()
    # Not COLUMNS/LINES either: pytest-xdist's workers set them (80x24), and the CLI run with this
    # environment would fit its lines to that instead of behaving as in a pipe.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "TRANSCHED_")) and k not in ("COLUMNS", "LINES")
    }
    env.update(
        TRANSCHED_DATABASE_URL=database_url,
        TRANSCHED_DATA_DIR=str(data_dir),
        TRANSCHED_PORT=str(port),
        TRANSCHED_RAY_HEAD_PORT=str(free_port()),
        TRANSCHED_RAY_DASHBOARD_PORT=str(free_port()),
        TRANSCHED_RAY_METRICS_EXPORT_PORT=str(free_port()),
        # Ray's own knob (default 10 s): trials here are short, and their metrics are scraped while they run.
        RAY_metrics_report_interval_ms="2000",
        TRANSCHED_RAY_NUM_CPUS="2",
    )
    env.update(extra_env or {})
    log = open(data_dir / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    api = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (data_dir / "server.log").read_text()
            try:
                if httpx.get(f"{api}/healthz", timeout=2).json().get("ray_dashboard"):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.5)
        dashboard = httpx.get(f"{api}/healthz", timeout=2).json()["ray_dashboard"]
        yield {
            "api": api,
            "data_dir": data_dir,
            "env": env,
            "database_url": database_url,
            "ray_dashboard": dashboard,
        }
    finally:
        proc.terminate()
        proc.wait(30)
        stop_local_head(Settings(data_dir=data_dir))


class RayWatcher:
    """What a user sees of a study in Ray while it runs: its job through the job API (as the dashboard's
    Jobs view reads it) and the head's Prometheus endpoint (as the Metrics view and Grafana read it)."""

    def __init__(self, data_dir: Path, study_id: str):
        from ray.job_submission import JobSubmissionClient

        head = json.loads((data_dir / "ray" / "head.json").read_text())
        token = (data_dir / "ray" / "auth_token").read_text().strip()
        self.client = JobSubmissionClient(head["dashboard_url"], headers={"Authorization": f"Bearer {token}"})
        self.metrics_url, self.study_id = head["metrics_url"], study_id
        self.logs_while_running = ""
        self.samples: dict[str, list] = {}  # metric name -> this study's samples, seen while it ran
        self._next = 0.0

    def final_logs(self, job_id: str, timeout_s: float = 60) -> str:
        """The job's whole log, once its driver has exited (just after it writes the study's end)."""
        deadline = time.monotonic() + timeout_s
        while self.client.get_job_status(job_id).value in ("PENDING", "RUNNING"):
            assert time.monotonic() < deadline, f"job {job_id} did not end"
            time.sleep(0.5)
        return self.client.get_job_logs(job_id)

    def look(self, job_id: str) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + 1.0
        self.logs_while_running = self.client.get_job_logs(job_id)
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.metrics_url, timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name.startswith("ray_transched_trial_")
                    and sample.labels.get("study_id") == self.study_id
                ):
                    self.samples.setdefault(sample.name, []).append(sample)


@pytest.fixture(scope="module")
def finished(server):
    api = server["api"]
    resp = httpx.post(f"{api}/studies", json=STUDY, timeout=60)
    assert resp.status_code == 202, resp.text
    created = resp.json()
    ray_watch = RayWatcher(server["data_dir"], created["id"])
    running_counts = []
    deadline = time.monotonic() + 420
    while True:
        study = httpx.get(f"{api}/studies/{created['id']}", timeout=30).json()
        running_counts.append(study["trial_counts"].get("RUNNING", 0))
        if study["status"] in TERMINAL:
            break
        if study["status"] == "running":
            ray_watch.look(created["ray_job_id"])
        assert time.monotonic() < deadline, f"study did not finish: {study}"
        time.sleep(0.5)
    return {"created": created, "study": study, "running_counts": running_counts, "ray": ray_watch}


def test_study_completes_with_every_trial_stored(server, finished):
    study = finished["study"]
    assert study["status"] == "completed", study
    assert study["trial_counts"] == {"COMPLETE": 6}
    trials = httpx.get(f"{server['api']}/studies/{study['id']}/trials?limit=100", timeout=30).json()
    assert trials["total"] == 6 and len(trials["items"]) == 6
    for t in trials["items"]:
        assert t["state"] == "COMPLETE"
        assert t["params"]["method"] in ("smooth", "finetune")
        assert t["node_id"] and t["device"] == "cpu" and t["restarts"] == 0
        expected = {"method", "t0", "tau", "alpha"} if t["params"]["method"] == "smooth" else {"method", "t0"}
        assert set(t["params"]) == expected
        assert [e["epoch"] for e in t["epochs"]] == list(range(1, EPOCHS + 1))
        for e in t["epochs"]:
            assert 0 <= e["val_acc"] <= 1 and 0 <= e["lambda"] <= 1
            assert e["source_weight"] == pytest.approx(1 - e["lambda"])
        assert t["value"] == max(e["val_acc"] for e in t["epochs"])
    # pagination
    page = httpx.get(f"{server['api']}/studies/{study['id']}/trials?offset=4&limit=10", timeout=30).json()
    assert [t["number"] for t in page["items"]] == [4, 5]


def test_the_ray_job_names_the_study_and_logs_each_trial_by_the_studys_own_number(server, finished):
    """The study as the Ray dashboard's Jobs view shows it, read through Ray's job API."""
    api, study_id, client = server["api"], finished["study"]["id"], finished["ray"].client
    job_id = finished["created"]["ray_job_id"]
    assert job_id == f"transched-e2e-digits-{study_id}"
    logs = finished["ray"].final_logs(job_id)
    info = client.get_job_info(job_id)
    assert info.submission_id == job_id and info.status.value == "SUCCEEDED"
    assert info.metadata == {
        "job_name": "transched study e2e-digits",  # the dashboard's Name column
        "transched_study": study_id,
        "study_name": "e2e-digits",
        "methods": "smooth,finetune",
        "n_trials": "6",
        "study_url": f"{api}/studies/{study_id}",
    }
    assert f"{server['ray_dashboard']}/#/jobs/{job_id}" == finished["study"]["links"]["dashboard"]
    # While the study ran, its log already told of its trials ...
    assert re.search(r"\[e2e-digits\] trial \d+ (started|epoch)", finished["ray"].logs_while_running)
    # ... and at its end it has every event of every trial, by the study's own (Optuna's) numbers.
    trials = httpx.get(f"{api}/studies/{study_id}/trials?limit=100", timeout=30).json()["items"]
    for t in trials:
        n, method = t["number"], t["params"]["method"]
        assert len(re.findall(rf"\[e2e-digits\] trial {n} started: .*method={method}", logs)) == 1, logs
        for epoch in range(1, EPOCHS + 1):
            pattern = rf"\[e2e-digits\] trial {n} epoch {epoch}/{EPOCHS}: val_acc=\S+ lambda=\S+"
            assert re.search(pattern, logs)
        assert re.search(rf"\[e2e-digits\] trial {n} finished: best_val_acc={t['value']:.4g} at epoch ", logs)
    assert len(re.findall(r"\[e2e-digits\] trial \d+ started", logs)) == len(trials) == 6
    summary = re.search(
        r"\[e2e-digits\] summary: 6 trials: 6 finished, 0 pruned, 0 failed, 0 stopped; best trial (\d+) "
        r"best_val_acc=(\S+) method=(\w+)",
        logs,
    )
    assert summary, logs
    best = next(t for t in trials if t["number"] == int(summary[1]))
    assert f"{best['value']:.4g}" == summary[2] and best["params"]["method"] == summary[3]
    assert best["value"] == finished["study"]["best"]["value"]
    assert "run_trial_" not in logs  # Tune's own trial names (its verbose tables) are not there


def test_each_running_trial_exports_live_metrics_tagged_with_the_study_and_its_trial_number(finished):
    """Scraped from the Ray head's Prometheus endpoint while the study ran (Ray prefixes `ray_`)."""
    samples = finished["ray"].samples
    names = ("val_acc", "epoch", "lambda", "samples_per_second")
    assert {f"ray_transched_trial_{n}" for n in names} <= set(samples), sorted(samples)
    numbers = {str(i) for i in range(6)}
    for sample in samples["ray_transched_trial_val_acc"]:
        assert sample.labels["study_name"] == "e2e-digits" and sample.labels["trial"] in numbers
        assert sample.labels["method"] in ("smooth", "finetune") and 0 <= sample.value <= 1
    assert {s.value for s in samples["ray_transched_trial_epoch"]} <= set(map(float, range(1, EPOCHS + 1)))
    assert all(s.value > 0 for s in samples["ray_transched_trial_samples_per_second"])


def test_serve_says_where_the_dashboard_token_is(server):
    token = (server["data_dir"] / "ray" / "auth_token").resolve()
    assert f"paste the content of {token}" in (server["data_dir"] / "server.log").read_text()


def test_two_trials_ran_together(server, finished):
    """From the trainables' own wall-clock start/end, stored per trial: some two intervals overlap."""
    storage = make_optuna_storage(server["database_url"])
    trials = optuna.load_study(study_name=finished["created"]["optuna_study_name"], storage=storage).trials
    spans = [(t.user_attrs["started_at"], t.user_attrs["finished_at"]) for t in trials]
    overlaps = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :] if a[0] < b[1] and b[0] < a[1]]
    assert overlaps, spans
    assert max(finished["running_counts"]) <= 2


def test_best_equals_optuna_best_trial_and_training_it_reproduces_the_val_acc(server, finished, tmp_path):
    api, study_id = server["api"], finished["study"]["id"]
    best = httpx.get(f"{api}/studies/{study_id}/best", timeout=30).json()
    storage = make_optuna_storage(server["database_url"])
    ot_best = optuna.load_study(
        study_name=finished["created"]["optuna_study_name"], storage=storage
    ).best_trial
    assert best["trial_number"] == ot_best.number
    assert best["val_acc"] == ot_best.value
    for name, value in ot_best.params.items():
        assert best["config"][name] == value
    assert best["config"]["method"] == ot_best.user_attrs["sampled"]["method"]
    assert best["schedule"]["T"] == ot_best.user_attrs["total_steps"]
    if best["method"] == "smooth":
        assert best["schedule"]["tau"] == pytest.approx(best["config"]["tau"] * best["schedule"]["T"])

    best_file = tmp_path / "best.json"
    best_file.write_text(json.dumps(best))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "train",
            str(best_file),
            "--out",
            str(tmp_path / "run"),
            "--strict",
        ],
        env=server["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reproduced" in out.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best_val_acc"] == best["val_acc"]
    assert Path(tmp_path / "run" / "model.pt").exists()


def test_study_is_listed_and_names_its_optuna_study(server, finished):
    listing = httpx.get(f"{server['api']}/studies", timeout=30).json()
    assert finished["study"]["id"] in [s["id"] for s in listing["items"]]
    assert finished["study"]["optuna_study_name"] == f"transched-{finished['study']['id']}"


def test_stopping_a_finished_study_is_409(server, finished):
    resp = httpx.post(f"{server['api']}/studies/{finished['study']['id']}/stop", timeout=30)
    assert resp.status_code == 409


def test_stop_ends_a_running_study_without_leaving_running_trials(server, finished):
    spec = {**STUDY, "name": "e2e-stop", "n_trials": 40, "trainer": {**STUDY["trainer"], "epochs": 30}}
    api = server["api"]
    created = httpx.post(f"{api}/studies", json=spec, timeout=60).json()
    deadline = time.monotonic() + 180
    while (
        httpx.get(f"{api}/studies/{created['id']}", timeout=30).json()["trial_counts"].get("COMPLETE", 0) < 1
    ):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    resp = httpx.post(f"{api}/studies/{created['id']}/stop", timeout=30)
    assert resp.status_code == 202
    assert resp.json()["status"] == "stopping"
    while (study := httpx.get(f"{api}/studies/{created['id']}", timeout=30).json())["status"] not in TERMINAL:
        assert time.monotonic() < deadline, study
        time.sleep(0.5)
    assert study["status"] == "stopped"
    assert "RUNNING" not in study["trial_counts"]
    # The job's log says which trials the stop cut short (Optuna: PRUNED, or FAIL for those Tune dropped
    # with the run), by the study's numbers.
    logs = finished["ray"].final_logs(created["ray_job_id"])
    cut = {int(n) for n in re.findall(r"\[e2e-stop\] trial (\d+) (?:pruned|stopped) after epoch \d+", logs)}
    trials = httpx.get(f"{api}/studies/{created['id']}/trials?limit=100", timeout=30).json()["items"]
    assert cut and cut == {t["number"] for t in trials if t["state"] != "COMPLETE"}, logs
    assert sum(study["trial_counts"].values()) < 40


def test_a_study_asking_for_gpus_on_a_cluster_without_any_is_rejected_and_not_stored(server, finished):
    before = httpx.get(f"{server['api']}/studies", timeout=30).json()["total"]
    resp = httpx.post(f"{server['api']}/studies", json={**STUDY, "gpus_per_trial": 0.5}, timeout=60)
    assert resp.status_code == 422
    assert "gpus_per_trial=0.5" in resp.json()["detail"] and "0 GPU" in resp.json()["detail"]
    assert httpx.get(f"{server['api']}/studies", timeout=30).json()["total"] == before


def test_a_study_whose_data_is_missing_fails_with_the_datasets_message_not_a_traceback(server, finished):
    spec = {
        "name": "e2e-no-data",
        "trainer": {"source": "cifar100", "target": "cifar10", "backbone": "resnet20", "data_dir": "nowhere"},
        "methods": ["target"],
        "n_trials": 2,
        "max_concurrent_trials": 2,
        "max_retries": 0,
    }
    api = server["api"]
    created = httpx.post(f"{api}/studies", json=spec, timeout=60).json()
    deadline = time.monotonic() + 180
    while (study := httpx.get(f"{api}/studies/{created['id']}", timeout=30).json())["status"] not in TERMINAL:
        assert time.monotonic() < deadline, study
        time.sleep(0.5)
    assert study["status"] == "failed"
    assert study["trial_counts"] == {"FAIL": 2}, study
    error = study["error"]
    assert error.startswith(
        "the first 2 trials failed with an error a retry cannot fix: "
        "DatasetNotFoundError: dataset 'cifar10' not found"
    ), error
    assert str(server["data_dir"] / "nowhere") in error  # the folder looked in, made absolute at submission
    assert "Traceback" not in error and 'File "' not in error
    logs = finished["ray"].final_logs(created["ray_job_id"])
    for n in (0, 1):
        assert re.search(rf"\[e2e-no-data\] trial {n} failed: DatasetNotFoundError: dataset 'cifar10'", logs)
    assert (
        "[e2e-no-data] summary: 2 trials: 0 finished, 0 pruned, 2 failed, 0 stopped; no trial finished"
        in logs
    )

"""The `transched` command, run with typer's CliRunner against the real app (a real SQLite store, the
FakeCluster) through FastAPI's TestClient: the CLI's HTTP is the app's own. The `--wait` path against a
real server and Ray is in test_cli_end_to_end.py."""

import io
import json
import logging
import subprocess
import sys

import httpx
import optuna
import pytest
from rich.console import Console
from typer.testing import CliRunner

from service import repository as repo
from service import supervisor
from service.cli import Cli, app
from service.client import Api
from service.progress import EXIT_CODES, Progress, StudyView, watch
from tests.service.conftest import SPEC, add_trial

FAIL = optuna.trial.TrialState.FAIL
RUNNING = optuna.trial.TrialState.RUNNING


def _console(stderr=False):
    return Console(stderr=stderr, width=200, soft_wrap=True, highlight=False)


@pytest.fixture
def transched(client, settings):
    """Run `transched ARGS` with the CLI's API client being the app; returns (exit code, stdout, stderr)."""

    def run(*args, api=None, stdin=None):
        cli = Cli(
            settings, "http://testserver", _console(), _console(True), poll_s=0.01, _api=api or Api(client)
        )
        result = CliRunner().invoke(app, list(args), obj=cli, input=stdin)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result.exit_code, result.stdout, result.stderr

    return run


def _study(client, **spec):
    created = client.post("/studies", json={**SPEC, **spec})
    assert created.status_code == 202, created.text
    return created.json()


def test_list_shows_each_study_in_a_table(client, store, transched):
    a, b = _study(client, name="first"), _study(client, name="second")
    add_trial(store.storage, a["optuna_study_name"], method="smooth", value=0.8125, t0=0.1)
    store.set_status(a["id"], "running")
    code, out, _ = transched("list")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(rows) == {a["id"], b["id"]}
    assert rows[a["id"]].split()[1:6] == ["first", "running", "1/8", "0.8125", "smooth"]
    assert rows[b["id"]].split()[1:5] == ["second", "pending", "0/8", "-"]
    code, out, _ = transched("list", "--json")
    assert {s["id"] for s in json.loads(out)["items"]} == {a["id"], b["id"]}
    # a log line per HTTP request is noise, not progress: the command sets httpx's loggers to WARNING
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.NOTSET)
    transched("list")
    assert logging.getLogger("httpx").level == logging.getLogger("httpcore").level == logging.WARNING


def test_status_shows_counts_best_method_and_the_failure_reason(client, store, transched):
    s = _study(client)
    name = s["optuna_study_name"]
    add_trial(store.storage, name, method="multitask", value=0.75, alpha=0.5)
    add_trial(store.storage, name, method="smooth", value=0.875, t0=0.1, tau=0.02)
    add_trial(store.storage, name, method="smooth", value=None, state=FAIL)
    add_trial(store.storage, name, method="finetune", value=None, state=RUNNING)
    store.set_status(s["id"], "failed", error="2 of 4 trials failed: RuntimeError: boom")
    code, out, _ = transched("status", s["id"])
    assert code == 0  # reading a status succeeded; only a watched study's end sets the exit status
    assert "3/8: 2 finished · 1 running · 0 pruned · 1 failed" in out
    assert "best val_acc 0.8750 (smooth, trial 1): t0=0.1, tau=0.02" in out
    assert "2 of 4 trials failed: RuntimeError: boom" in out
    assert f"http://fake-ray:8265/#/jobs/{s['ray_job_id']}" in out
    assert "smooth, multitask, mixup+schedule" in out
    code, out, _ = transched("status", s["id"], "--json")
    assert json.loads(out)["trial_counts"] == {"COMPLETE": 2, "FAIL": 1, "RUNNING": 1}


def test_trials_table_has_state_method_value_and_params(client, store, transched):
    s = _study(client)
    epochs = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.625}]
    add_trial(store.storage, s["optuna_study_name"], method="smooth", value=0.625, epochs=epochs, t0=0.25)
    add_trial(store.storage, s["optuna_study_name"], method="multitask", value=None, state=FAIL, alpha=1.0)
    code, out, _ = transched("trials", s["id"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["#", "STATE", "METHOD", "VAL_ACC", "PARAMS"]
    assert lines[1].split()[:6] == ["0", "COMPLETE", "smooth", "0.6250", "t0=0.25", "2"]
    assert lines[2].split()[:6] == ["1", "FAIL", "multitask", "-", "alpha=1", "0"]


def test_best_per_method_to_a_file_and_an_unknown_method_is_one_line(client, store, transched, tmp_path):
    s = _study(client)
    add_trial(store.storage, s["optuna_study_name"], method="smooth", value=0.9, t0=0.1, tau=0.05, alpha=0.0)
    add_trial(store.storage, s["optuna_study_name"], method="multitask", value=0.7, alpha=1.5)
    code, out, _ = transched("best", s["id"])
    assert code == 0 and json.loads(out)["method"] == "smooth"
    path = tmp_path / "best.json"
    code, out, _ = transched("best", s["id"], "--method", "multitask", "-o", str(path))
    assert code == 0 and "method multitask, val_acc 0.7000" in out
    saved = json.loads(path.read_text())
    assert saved["trial_number"] == 1 and saved["config"]["alpha"] == 1.5
    code, out, err = transched("best", s["id"], "-m", "cutmix")
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        f"error: study {s['id']} has no method 'cutmix'; it has smooth, multitask, mixup+schedule (HTTP 422)"
    ]


def test_stop_a_running_study_then_stopping_it_again_is_fine_and_an_ended_one_an_error(
    client, store, transched, cluster
):
    s = _study(client)
    store.set_status(s["id"], "running")
    code, out, _ = transched("stop", s["id"])
    assert code == 0 and f"study {s['id']}: stopping" in out
    code, out, _ = transched("stop", s["id"])  # again: still stopping, its driver left alone
    assert code == 0 and f"study {s['id']}: stopping" in out and cluster.stopped == []
    pending = _study(client)
    code, out, _ = transched("stop", pending["id"])
    assert (
        code == 0 and f"study {pending['id']}: stopped" in out and cluster.stopped == [pending["ray_job_id"]]
    )
    code, out, _ = transched("stop", pending["id"])
    assert code == 0 and f"study {pending['id']}: stopped" in out
    store.set_status(s["id"], "completed")
    code, _, err = transched("stop", s["id"])
    assert code == 1 and "has already ended (completed) (HTTP 409)" in err and "Traceback" not in err


def test_logs_are_the_drivers_ray_job_log(client, transched, cluster):
    s = _study(client)
    cluster.logs[s["ray_job_id"]] = "study starts\ntrial 0 started\ntrial 0 finished\n"
    code, out, _ = transched("logs", s["id"])
    assert code == 0 and out == "study starts\ntrial 0 started\ntrial 0 finished\n"
    code, out, _ = transched("logs", s["id"], "--tail", "1")
    assert out == "trial 0 finished\n"
    del cluster.logs[s["ray_job_id"]]  # the cluster no longer knows the job
    code, _, err = transched("logs", s["id"])
    assert code == 1 and f"no logs of job {s['ray_job_id']}" in err and "(HTTP 404)" in err
    code, _, err = transched("logs", "nope")
    assert code == 1 and "no study nope (HTTP 404)" in err


def test_logs_endpoint_of_a_study_without_a_job_is_409(client, cluster):
    cluster.submit_error = RuntimeError("ray said no")
    assert client.post("/studies", json=SPEC).status_code == 503
    study_id = client.get("/studies").json()["items"][0]["id"]
    resp = client.get(f"/studies/{study_id}/logs")
    assert resp.status_code == 409 and "submission failed: ray said no" in resp.json()["detail"]


def test_presets_table_and_one_preset_as_json(transched):
    code, out, _ = transched("presets")
    assert code == 0 and "stl-cifar@1" in out and "xmixup@1" in out
    code, out, _ = transched("presets", "stl-svhn")
    assert code == 0 and json.loads(out)["trainer"]["backbone"] == "wrn10_2"
    code, _, err = transched("presets", "nope")
    assert code == 1 and "unknown preset" in err


def test_report_downloads_the_figures(transched, tmp_path):
    """Against a stand-in of the report routes (GET /studies/ID/report/{lambda,methods}.{svg,png})."""
    served = {
        f"/studies/s1/report/{n}.{f}": f"{n}-{f}".encode()
        for n in ("lambda", "methods")
        for f in ("svg", "png")
    }

    def handler(request: httpx.Request) -> httpx.Response:
        body = served.get(request.url.path)
        return (
            httpx.Response(200, content=body) if body else httpx.Response(404, json={"detail": "no study s2"})
        )

    api = Api(httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(handler)))
    code, out, _ = transched("report", "s1", "-o", str(tmp_path / "r"), "--format", "png", api=api)
    assert code == 0, out
    assert (tmp_path / "r" / "lambda.png").read_bytes() == b"lambda-png"
    assert (tmp_path / "r" / "methods.png").read_bytes() == b"methods-png"
    assert "http://api.test/studies/s1/report" in out
    code, _, _ = transched("report", "s1", "-o", str(tmp_path / "s"), api=api)
    assert code == 0 and (tmp_path / "s" / "lambda.svg").read_bytes() == b"lambda-svg"
    code, _, err = transched("report", "s2", "-o", str(tmp_path / "t"), api=api)
    assert code == 1 and "no study s2 (HTTP 404)" in err and not (tmp_path / "t").exists()


def test_submit_reads_yaml_and_a_bad_spec_is_one_line_naming_the_field(client, transched, tmp_path, cluster):
    path = tmp_path / "study.yaml"
    path.write_text("name: from-yaml\nmethods: [smooth, target]\nn_trials: 3\n")
    code, out, _ = transched("submit", str(path))
    assert code == 0
    study_id = out.split("submitted study ")[1].split()[0]
    assert client.get(f"/studies/{study_id}").json()["spec"]["n_trials"] == 3
    assert f"transched status {study_id} --watch" in out
    code, out, _ = transched("submit", "-", "--json", stdin='{"name": "stdin", "n_trials": 2}')
    assert code == 0 and json.loads(out)["name"] == "stdin"
    path.write_text("name: x\nn_trials: 0\n")
    code, _, err = transched("submit", str(path))
    assert code == 1 and len(err.strip().splitlines()) == 1 and "n_trials" in err and "(HTTP 422)" in err
    path.write_text("name: [x\n")
    code, _, err = transched("submit", str(path))
    assert code == 1 and "is not valid YAML" in err
    path.write_text("- a list\n")
    code, _, err = transched("submit", str(path))
    assert code == 1 and "holds no mapping" in err


def _play_driver(store, cluster, *, end: str, error=None):
    """When the CLI submits the study, its driver runs it at once: 2 trials, the study ended as `end`
    (the CLI's polls only read: a GET asks the cluster nothing)."""

    def on_call(name):
        if name != "submit_study":
            return
        cluster.before_call = lambda name: None
        with store.sessions() as session:  # the one study, just submitted
            (study,), _ = repo.list_studies(session, offset=0, limit=1)
        study_id = study.id
        add_trial(store.storage, study.optuna_study_name, method="smooth", value=0.625, t0=0.1)
        add_trial(store.storage, study.optuna_study_name, method="target", value=None, state=FAIL)
        store.set_status(study_id, "running")
        store.set_status(study_id, end, error=error)

    cluster.before_call = on_call


@pytest.mark.parametrize(
    ("end", "error"),
    [("completed", None), ("failed", "2 of 2 trials failed: DatasetNotFoundError: no"), ("stopped", None)],
)
def test_submit_wait_prints_progress_lines_a_summary_and_exits_with_how_it_ended(
    store, transched, cluster, tmp_path, end, error
):
    _play_driver(store, cluster, end=end, error=error)
    path = tmp_path / "s.json"
    path.write_text(json.dumps({**SPEC, "n_trials": 2}))
    code, out, err = transched("submit", str(path), "--wait")
    assert code == EXIT_CODES[end] == {"completed": 0, "failed": 3, "stopped": 4}[end]
    study_id = out.split("submitted study ")[1].split()[0]
    last = out.strip().splitlines()[-1 if end != "completed" else -2]
    assert last.startswith(f"study {study_id} (fake) {end} in ")
    assert "2/2 trials (1 finished · 0 running · 0 pruned · 1 failed)" in last
    assert "best val_acc 0.6250 (smooth, trial 0)" in last
    assert "\r" not in out and "\x1b" not in out  # not a terminal: lines, not redraws
    if end == "failed":
        assert err.strip() == f"reason: {error}"
    else:
        assert err == ""
    if end == "completed":
        assert out.strip().splitlines()[-1] == (
            f"best config: transched best {study_id} -o best.json; then: transched train best.json"
        )


def test_status_watch_of_a_study_that_cannot_be_resumed_ends_failed_with_the_reason(
    client, transched, cluster, settings
):
    settings.max_resumes = 0
    s = _study(client)
    cluster.jobs[s["ray_job_id"]] = "FAILED"
    supervisor.sweep(client.app_state["app_state"])  # the supervisor fails it; the watch only reads
    code, out, err = transched("status", s["id"], "--watch")
    reason = "reason: the driver died because its Ray job ended as FAILED (TRANSCHED_MAX_RESUMES=0)"
    assert code == 3 and "failed" in out and reason in err


def test_plain_watch_prints_a_line_on_change_and_while_quiet(client, store, settings):
    s = _study(client)
    store.set_status(s["id"], "running")
    polls = []

    class CountingApi(Api):
        def study(self, study_id):
            polls.append(1)
            if len(polls) == 4:
                add_trial(store.storage, s["optuna_study_name"], method="smooth", value=0.5, t0=0.0)
            if len(polls) == 8:
                store.set_status(s["id"], "completed")
            return super().study(study_id)

    buf = io.StringIO()
    console = Console(file=buf, width=200, soft_wrap=True)
    watch(CountingApi(client), s["id"], console=console, every_s=0.01, quiet_s=3600)
    lines = buf.getvalue().splitlines()
    assert len(polls) == 8
    assert [line.split("] ")[1].split(" |")[0] for line in lines] == [
        "running: 0/8 trials (0 finished · 0 running · 0 pruned · 0 failed)",
        "running: 1/8 trials (1 finished · 0 running · 0 pruned · 0 failed)",
        "completed: 1/8 trials (1 finished · 0 running · 0 pruned · 0 failed)",
    ]
    store.set_status(s["id"], "running")
    polls.clear()
    quiet = Console(file=io.StringIO(), width=200, soft_wrap=True)
    watch(
        CountingApi(client), s["id"], console=quiet, every_s=0.01, quiet_s=0
    )  # nothing changes: still a line
    assert len(quiet.file.getvalue().splitlines()) == len(polls) == 8


def test_live_view_on_a_terminal_shows_the_bar_counts_best_and_times(client, store):
    s = _study(client)
    add_trial(store.storage, s["optuna_study_name"], method="smooth", value=0.8, t0=0.1)
    add_trial(store.storage, s["optuna_study_name"], method="finetune", value=None, state=RUNNING)
    store.set_status(s["id"], "running")
    study = client.get(f"/studies/{s['id']}").json()
    console = Console(record=True, force_terminal=True, width=140, file=io.StringIO())
    console.print(StudyView(study))
    text = console.export_text()
    assert "fake" in text and "running" in text and "1/8 trials" in text and "━" in text
    assert "1 finished · 1 running · 0 pruned · 0 failed" in text
    assert "best val_acc 0.8000 (smooth, trial 0)" in text
    assert "elapsed " in text and "left " in text
    # watched on a terminal, the same view is redrawn until the study ends
    store.set_status(s["id"], "completed")
    terminal = Console(force_terminal=True, width=140, file=io.StringIO())
    assert watch(Api(client), s["id"], console=terminal, every_s=0.01)["status"] == "completed"
    assert "1/8 trials" in terminal.file.getvalue()


def test_time_left_is_the_studys_own_pace():
    study = {
        "status": "running",
        "trial_counts": {"COMPLETE": 3, "FAIL": 1, "RUNNING": 2},
        "spec": {"n_trials": 12},
        "created_at": "2026-01-01T10:00:10",  # elapsed counts from the submission: queueing included
        "started_at": "2026-01-01T10:00:40",
        "finished_at": None,
        "best": None,
    }
    from datetime import UTC, datetime

    p = Progress.of(study, now=datetime(2026, 1, 1, 10, 2, 10, tzinfo=UTC))
    assert (p.done, p.running, p.elapsed_s) == (4, 2, 120.0)
    assert p.eta_s == 120.0 / 4 * 8
    assert p.times_text() == "elapsed 2m00s · left 4m00s"
    assert Progress.of({**study, "trial_counts": {}}).eta_s is None  # no pace yet
    # A resumed study: 2 trials its dead driver left RUNNING are FAIL and ran again; done at n_trials.
    resumed = Progress.of({**study, "status": "completed", "trial_counts": {"COMPLETE": 12, "FAIL": 2}})
    assert resumed.done == 12 and resumed.line().startswith("completed: 12/12 trials")
    assert Progress.of({**study, "status": "queued"}).line().endswith("| waiting for a running study to end")
    assert Progress.of({**study, "status": "completed", "finished_at": "2026-01-01T10:01:10"}).elapsed_s == 60


@pytest.mark.slow  # three new interpreters
def test_cli_errors_are_one_clear_line_not_a_traceback(tmp_path):
    def run(*args):
        out = subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True)
        return out.returncode, out.stdout + out.stderr

    (tmp_path / "best.json").write_text(
        json.dumps({"config": {"target": "cifar10", "data_dir": str(tmp_path)}})
    )
    code, text = run("train", str(tmp_path / "best.json"))
    assert code != 0 and "Traceback" not in text
    assert "dataset 'cifar10' not found" in text and str(tmp_path) in text and "download=True" in text
    code, text = run("submit", str(tmp_path / "missing.json"))
    assert code != 0 and "Traceback" not in text and "missing.json" in text
    (tmp_path / "broken.json").write_text("{x")
    code, text = run("submit", str(tmp_path / "broken.json"))
    assert code != 0 and "Traceback" not in text and "not valid JSON" in text
    code, text = run("--api", "http://127.0.0.1:9", "list")
    assert (
        code == 1
        and text.strip()
        == "error: cannot reach the transched API at http://127.0.0.1:9: [Errno 111] Connection refused"
    )


def test_a_queued_study_is_said_to_wait_by_submit_and_status(client, transched, tmp_path, settings):
    settings.max_running_studies = 1
    _study(client, name="running-one")
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"name": "waits", "n_trials": 2}))
    code, out, _ = transched("submit", str(path))
    assert code == 0 and "queued study " in out and "once fewer studies run than the server allows" in out
    study_id = out.split("queued study ")[1].split()[0]
    assert client.get(f"/studies/{study_id}").json()["status"] == "queued"
    code, out, _ = transched("status", study_id)
    assert code == 0 and "queued" in out
    code, out, _ = transched("stop", study_id)
    assert code == 0 and f"study {study_id}: stopped" in out

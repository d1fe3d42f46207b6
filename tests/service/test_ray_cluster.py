"""The cluster handle: which cluster, and whether a study could ever be scheduled on it."""

import pytest

from service.ray_cluster import resource_problem
from service.schemas import StudySpec


def test_a_study_asking_for_gpus_on_a_cpu_cluster_is_refused_with_a_clear_message():
    problem = resource_problem(StudySpec(gpus_per_trial=0.5), {"CPU": 2.0})
    assert "gpus_per_trial=0.5" in problem and "0 GPU" in problem


def test_fractional_gpus_fit_a_gpu_cluster_and_cpu_studies_fit_a_cpu_cluster():
    assert resource_problem(StudySpec(gpus_per_trial=0.25), {"CPU": 8.0, "GPU": 1.0}) is None
    assert resource_problem(StudySpec(), {"CPU": 2.0}) is None


def test_more_cpus_per_trial_than_the_cluster_has_is_refused():
    assert "cpus_per_trial=4" in resource_problem(StudySpec(cpus_per_trial=4), {"CPU": 2.0})


def test_custom_resources_must_exist_on_the_cluster():
    spec = StudySpec(resources_per_trial={"trial_slot": 1})
    assert "trial_slot" in resource_problem(spec, {"CPU": 2.0})
    assert resource_problem(spec, {"CPU": 2.0, "trial_slot": 2.0}) is None
    assert resource_problem(spec, {"CPU": 2.0}, gpus_only=True) is None
    assert "gpus_per_trial" in resource_problem(StudySpec(gpus_per_trial=1), {}, gpus_only=True)


def test_with_ray_address_the_service_uses_that_cluster_and_starts_nothing(tmp_path):
    from service.ray_cluster import connect
    from service.settings import Settings

    settings = Settings(data_dir=tmp_path, RAY_ADDRESS="10.1.2.3:6380", RAY_AUTH_TOKEN="tok")
    cluster = connect(settings)
    assert (cluster.dashboard_url, cluster.local) == ("http://10.1.2.3:8265", False)
    assert cluster.headers == {"Authorization": "Bearer tok"}
    assert not (tmp_path / "ray").exists()
    explicit = Settings(data_dir=tmp_path, RAY_ADDRESS="ray://h:10001", ray_dashboard_url="http://d:9000/")
    assert connect(explicit).dashboard_url == "http://d:9000"


def test_the_job_client_is_made_once_per_cluster(monkeypatch):
    import ray.job_submission

    from service.ray_cluster import RayCluster

    made = []
    monkeypatch.setattr(
        ray.job_submission, "JobSubmissionClient", lambda url, headers: made.append(url) or url
    )
    cluster = RayCluster("http://h:8265", local=False, token="t")
    assert cluster.client() == cluster.client() == "http://h:8265"
    assert made == ["http://h:8265"]


def test_a_studys_job_is_named_after_the_study_and_keeps_its_id():
    from service.ray_cluster import job_submission_id

    assert job_submission_id("ab12", "Office-31: A→W, N=10") == "transched-office-31-a-w-n-10-ab12"
    assert job_submission_id("ab12", "***") == "transched-ab12"
    assert len(job_submission_id("ab12", "x" * 200)) == len("transched--ab12") + 40


def test_the_dashboard_login_help_names_the_local_heads_token_file(tmp_path):
    from service.ray_cluster import dashboard_login_help
    from service.settings import Settings

    text = dashboard_login_help(Settings(data_dir=tmp_path, ray_dashboard_port=9123))
    token = tmp_path.resolve() / "ray" / "auth_token"
    assert "http://127.0.0.1:9123" in text and f"cat {token}" in text
    assert f"RAY_AUTH_TOKEN_PATH={token} ray get-auth-token" in text


def test_a_local_heads_driver_is_told_the_heads_own_gcs_address(monkeypatch, tmp_path):
    """Several Ray heads may run on one host: a driver joins the head that runs its job, by address."""
    import ray.job_submission

    from service.ray_cluster import RayCluster
    from service.schemas import StudySpec
    from service.settings import Settings

    submitted = []

    class Client:
        def __init__(self, url, headers):
            pass

        def submit_job(self, **kwargs):
            submitted.append(kwargs)
            return kwargs["submission_id"]

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", Client)
    settings = Settings(data_dir=tmp_path)
    local = RayCluster("http://127.0.0.1:1", local=True, gcs_address="127.0.0.1:6391")
    local.submit_study(study_id="ab12", spec=StudySpec(), settings=settings)
    remote = RayCluster("http://h:8265", local=False)
    remote.submit_study(study_id="cd34", spec=StudySpec(), settings=settings)
    envs = [s["runtime_env"]["env_vars"] for s in submitted]
    assert envs[0]["TRANSCHED_RAY_GCS_ADDRESS"] == "127.0.0.1:6391"
    assert "TRANSCHED_RAY_GCS_ADDRESS" not in envs[1]  # a cluster's own head: the job's cluster ("auto")


def test_a_job_id_the_cluster_already_has_counts_as_submitted_and_attempts_name_their_jobs(
    monkeypatch, tmp_path
):
    import ray.job_submission

    from service.ray_cluster import RayCluster, job_submission_id
    from service.schemas import StudySpec
    from service.settings import Settings

    jobs: dict[str, str] = {}

    class Client:
        def __init__(self, url, headers):
            pass

        def submit_job(self, **kwargs):
            if kwargs["submission_id"] in jobs:  # what Ray's job API answers, through its client
                raise RuntimeError(
                    f"Request failed with status code 400: Job with submission_id {kwargs['submission_id']} "
                    "already exists. Please use a different submission_id."
                )
            jobs[kwargs["submission_id"]] = kwargs["entrypoint"]
            return kwargs["submission_id"]

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", Client)
    cluster, settings = RayCluster("http://127.0.0.1:1", local=True), Settings(data_dir=tmp_path)
    first = cluster.submit_study(study_id="ab12", spec=StudySpec(name="s"), settings=settings)
    assert first == job_submission_id("ab12", "s") == "transched-s-ab12"
    assert cluster.submit_study(study_id="ab12", spec=StudySpec(name="s"), settings=settings) == first
    job = job_submission_id("ab12", "s", 2)
    assert job == "transched-s-ab12-r2"
    assert cluster.submit_study(
        study_id="ab12", spec=StudySpec(name="s"), settings=settings, job_id=job, attempt=2
    )
    assert len(jobs) == 2 and jobs[job].endswith("-m service.driver ab12 2")


def _node(node_id: str, state: str, resources: dict[str, float]) -> dict:
    return {
        "node_id": node_id, "node_ip": "127.0.0.1", "is_head_node": node_id == "a", "state": state,
        "state_message": None, "node_name": "127.0.0.1", "resources_total": resources, "labels": {},
        "start_time_ms": 1, "end_time_ms": 0,
    }  # fmt: skip


def test_resources_sum_the_live_nodes_of_rays_state_api_with_the_clusters_token(monkeypatch):
    """Ray's public State API (`/api/v0/nodes`, what `ray list nodes --detail` reads), not the dashboard's
    internal status; the cluster's own token; the 10 s timeout of before; a dead node counts for nothing."""
    import requests

    from service.ray_cluster import RayCluster

    calls = []

    class Answer:
        status_code, text, headers = 200, "", {"Content-Type": "application/json"}

        def json(self):
            nodes = [
                _node("a", "ALIVE", {"CPU": 2.0, "GPU": 1.0, "trial_slot": 1.0}),
                _node("b", "ALIVE", {"CPU": 1.0, "trial_slot": 1.0}),
                _node("c", "DEAD", {"CPU": 8.0, "GPU": 4.0}),
            ]
            page = {"total": 3, "num_after_truncation": 3, "num_filtered": 3, "result": nodes}
            return {"result": True, "msg": "", "data": {"result": {**page, "partial_failure_warning": ""}}}

    def request(method, url, **kwargs):
        calls.append((method, url, kwargs["headers"].get("Authorization"), kwargs["timeout"]))
        return Answer()

    monkeypatch.setattr(requests, "request", request)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # Ray's clients would go there instead
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    got = RayCluster("http://h:8265", local=False, token="tok").resources()
    assert got == {"CPU": 3.0, "GPU": 1.0, "trial_slot": 2.0}
    assert calls == [("GET", "http://h:8265/api/v0/nodes", "Bearer tok", 10)]


@pytest.mark.slow
def test_resources_of_a_real_token_auth_head_from_a_process_that_is_no_ray_driver(tmp_path, monkeypatch):
    """A head of its own (temp dir, ports, token), asked over HTTP as the API process asks it."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    import ray

    from service.ray_cluster import RayCluster, _dashboard_up
    from tests.conftest import free_port

    root = Path(tempfile.mkdtemp(prefix="transched-rc-"))  # short: Ray's socket paths fit in 107 bytes
    token = root / "auth_token"
    token.write_text("t" * 64)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TRANSCHED_"))}
    env.update(
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0"
    )
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)  # this process: the cluster's token from settings alone
    dash = free_port()
    cmd = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={free_port()}",
        "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        "--include-dashboard=true", "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}", f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--temp-dir={root / 'ray'}", "--num-cpus=2",
        "--num-gpus=1", '--resources={"trial_slot": 1}',
    ]  # fmt: skip
    with open(tmp_path / "head.log", "wb") as log:
        head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 90
        while not _dashboard_up(url, token):
            assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "head.log").read_text()
            time.sleep(0.5)
        assert not ray.is_initialized()
        cluster, seen = RayCluster(url, local=False, token=token.read_text()), []
        while "CPU" not in (got := cluster.resources()):  # the dashboard is up before the node registers
            seen.append((round(time.monotonic() - deadline + 90, 1), got))
            assert time.monotonic() < deadline, seen
            time.sleep(0.2)
        assert (got["CPU"], got["GPU"], got["trial_slot"]) == (2.0, 1.0, 1.0), got
        with pytest.raises(Exception, match="(?i)auth"):
            RayCluster(url, local=False, token="wrong").resources()
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
                head.wait(60)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        import shutil

        shutil.rmtree(root, ignore_errors=True)

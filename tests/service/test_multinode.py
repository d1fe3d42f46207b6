"""Studies on an existing multi-node Ray cluster: a head and a second node, started as separate
processes on loopback, with a custom `trial_slot` resource (one per node) so that two concurrent trials
must run on different nodes. The service is pointed at the cluster with RAY_ADDRESS and starts nothing
of its own. The cluster is stopped at the end, whatever happened."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.cli import TERMINAL
from tests.conftest import free_port
from tests.service.test_end_to_end import _serve

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")


def _ray_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    ports = [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
    ]
    out = open(log, "wb")
    return subprocess.Popen(
        [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *ports, *args],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killing it takes its raylet and workers along
    )


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal the node's whole process group (`ray start --block` and the raylet, workers it started)."""
    for s in (sig, signal.SIGKILL):
        try:
            os.killpg(proc.pid, s)
        except ProcessLookupError:
            break
        try:
            proc.wait(60)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.poll()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    token = tmp / "auth_token"
    token.write_text("t" * 64)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TRANSCHED_"))}
    # No Serve drain on SIGTERM (30 s a node otherwise), as the service's own local head.
    env.update(
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0"
    )
    gcs, dash = free_port(), free_port()
    slot = json.dumps({"trial_slot": 1})
    head = _ray_node(
        ["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--num-cpus=1", f"--resources={slot}"],
        env, tmp / "head.log",
    )  # fmt: skip
    nodes = {"head": head}
    try:
        url = f"http://127.0.0.1:{dash}"
        headers = {"Authorization": f"Bearer {token.read_text()}"}
        _wait(lambda: httpx.get(f"{url}/api/version", headers=headers, timeout=2).status_code == 200, 90)
        nodes["worker"] = _ray_node(
            [f"--address=127.0.0.1:{gcs}", "--num-cpus=1", f"--resources={slot}"], env, tmp / "worker.log"
        )

        def alive_nodes():
            rows = httpx.get(f"{url}/api/v0/nodes", headers=headers, timeout=5).json()["data"]["result"][
                "result"
            ]
            return [n for n in rows if n["state"] == "ALIVE"]

        _wait(lambda: len(alive_nodes()) == 2, 90)
        ids = {("head" if n["is_head_node"] else "worker"): n["node_id"] for n in alive_nodes()}
        yield {
            "gcs": f"127.0.0.1:{gcs}",
            "dashboard": url,
            "token": token,
            "env": env,
            "ids": ids,
            "nodes": nodes,
        }
    finally:
        for proc in nodes.values():
            _stop(proc)


def _wait(ok, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ok():
                return
        except (httpx.HTTPError, KeyError):
            pass
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def server(cluster, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("transched-multinode")
    overrides = {
        "RAY_ADDRESS": cluster["gcs"],
        "TRANSCHED_RAY_DASHBOARD_URL": cluster["dashboard"],
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(cluster["token"]),
        "TRANSCHED_DRIVER_PYTHON": sys.executable,
    }
    yield from _serve(data_dir, f"sqlite:///{data_dir / 'transched.db'}", extra_env=overrides)
    assert not (data_dir / "ray" / "head.json").exists(), "the service started a Ray head of its own"


def _study(epochs: int, n_trials: int) -> dict:
    return {
        "name": "multinode",
        "trainer": {"n_target": 60, "epochs": epochs, "batch_size": 32},
        "methods": ["smooth"],
        "n_trials": n_trials,
        "max_concurrent_trials": 2,
        "cpus_per_trial": 1,
        "resources_per_trial": {"trial_slot": 1},
        "seed": 1,
    }


def _run(api: str, spec: dict, *, on_poll=None, timeout_s: float = 400) -> dict:
    created = httpx.post(f"{api}/studies", json=spec, timeout=60)
    assert created.status_code == 202, created.text
    study_id = created.json()["id"]
    deadline = time.monotonic() + timeout_s
    while (study := httpx.get(f"{api}/studies/{study_id}", timeout=30).json())["status"] not in TERMINAL:
        if on_poll:
            on_poll(study_id)
        assert time.monotonic() < deadline, f"study hangs: {study}"
        time.sleep(0.5)
    return study


def _trials(api: str, study_id: str) -> list[dict]:
    return httpx.get(f"{api}/studies/{study_id}/trials?limit=500", timeout=30).json()["items"]


def test_trials_run_on_both_nodes(cluster, server):
    study = _run(server["api"], _study(epochs=3, n_trials=6))
    assert study["status"] == "completed", study
    trials = _trials(server["api"], study["id"])
    assert len(trials) == 6 and all(t["state"] == "COMPLETE" for t in trials)
    assert {t["node_id"] for t in trials} == set(cluster["ids"].values())


def test_losing_a_node_mid_study_finishes_on_the_head_with_the_lost_trial_recorded(cluster, server):
    api, worker_id = server["api"], cluster["ids"]["worker"]
    killed = []

    def kill_worker_once_it_trains(study_id: str) -> None:
        if killed:
            return
        for t in _trials(api, study_id):
            if t["state"] == "RUNNING" and t["node_id"] == worker_id and t["epochs"]:
                _stop(cluster["nodes"]["worker"], signal.SIGKILL)
                killed.append(t["number"])
                return

    study = _run(api, _study(epochs=25, n_trials=4), on_poll=kill_worker_once_it_trains, timeout_s=500)
    assert killed, "no trial ever ran on the second node"
    assert study["status"] == "completed", study
    assert "RUNNING" not in study["trial_counts"]
    lost = next(t for t in _trials(api, study["id"]) if t["number"] == killed[0])
    # Rerun on the head (recorded as a restart, then complete there), or recorded as failed.
    assert (lost["restarts"] >= 1 and lost["node_id"] == cluster["ids"]["head"]) or lost["state"] == "FAIL", (
        lost
    )

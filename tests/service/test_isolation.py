"""Isolation (issue 8, point 1): another Ray head on the same host never captures a study. A second head
(its own token and ports) is started after the service's own, in the temp dir that Ray on this host
uses by default (RAY_TMPDIR points there for the service, its head, drivers and trials), so its
`ray_current_cluster` file names it: what a head without a temp dir of its own, its job supervisor and a
driver calling `ray.init("auto")` would join. The study still runs to completion on the service's head:
its job's driver and every trial on that head's node, and the other head sees no job and no driver.
(Checked: with the local head's `--temp-dir` removed, this test fails.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from service.ray_cluster import _dashboard_up, stop_pid
from tests.conftest import free_port

pytestmark = pytest.mark.slow

STUDY = {
    "name": "isolated",
    "trainer": {"source": "digits", "target": "digits", "n_target": 40, "epochs": 2},
    "methods": ["smooth", "finetune"],
    "n_trials": 2,
    "max_concurrent_trials": 1,
}


def _other_head(root: Path) -> tuple[subprocess.Popen, str, str, dict[str, str]]:
    """`ray start --head` of another "service": its own temp dir (root/ray), ports and token."""
    token = root / "token"
    token.write_text("other-head-token-" + os.urandom(8).hex())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TRANSCHED_"))}
    env |= {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    gcs, dash = free_port(), free_port()
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent))
    cmd = [
        ray_bin, "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
        "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--temp-dir={root / 'ray'}", "--num-cpus=1",
    ]  # fmt: skip
    log = open(root / "head.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 120
    current = root / "ray" / "ray_current_cluster"  # written once the head is up, after its dashboard

    def names_it() -> bool:
        return current.exists() and current.read_text().strip().endswith(f":{gcs}")

    while not (_dashboard_up(url, token) and names_it()):
        assert proc.poll() is None and time.monotonic() < deadline, (root / "head.log").read_text()
        time.sleep(0.5)
    return proc, f"127.0.0.1:{gcs}", url, {"Authorization": f"Bearer {token.read_text()}"}


def test_a_newer_head_on_the_host_does_not_capture_the_study(tmp_path_factory):
    from ray.job_submission import JobSubmissionClient

    from tests.service.test_end_to_end import _serve

    data_dir = tmp_path_factory.mktemp("service")
    # Short, not under pytest's base temp: Ray's socket paths under it must fit in 107 bytes, and an xdist
    # worker's base temp (.../popen-gw0/) is longer.
    other_root = Path(tempfile_dir := tempfile.mkdtemp(prefix="transched-oth-"))
    # Whatever `ray.init("auto")` reads under RAY_TMPDIR is the other head's: the service's head, its
    # drivers and trials all inherit this.
    server = _serve(data_dir, f"sqlite:///{data_dir / 'transched.db'}", {"RAY_TMPDIR": str(tempfile_dir)})
    info = next(server)
    other = None
    try:
        other, other_gcs, other_url, other_auth = _other_head(other_root)
        current = (other_root / "ray" / "ray_current_cluster").read_text().strip()
        assert current.endswith(other_gcs.rsplit(":", 1)[1]), current  # the host's address, its port
        created = httpx.post(f"{info['api']}/studies", json=STUDY, timeout=60)
        assert created.status_code == 202, created.text
        study_id, job_id = created.json()["id"], created.json()["ray_job_id"]
        deadline = time.monotonic() + 300
        while (study := httpx.get(f"{info['api']}/studies/{study_id}", timeout=30).json())["status"] not in (
            "completed",
            "failed",
            "stopped",
        ):
            assert time.monotonic() < deadline, study
            time.sleep(1)
        assert study["status"] == "completed", study["error"]
        trials = httpx.get(f"{info['api']}/studies/{study_id}/trials", timeout=30).json()["items"]
        ray_token = (data_dir / "ray" / "auth_token").read_text().strip()
        ours = JobSubmissionClient(info["ray_dashboard"], headers={"Authorization": f"Bearer {ray_token}"})
        driver_node = ours.get_job_info(job_id).driver_node_id
        assert driver_node and len(trials) == STUDY["n_trials"]
        assert {t["node_id"] for t in trials} == {driver_node}  # every trial on the service's head
        assert [t["state"] for t in trials] == ["COMPLETE"] * STUDY["n_trials"]
        others = JobSubmissionClient(other_url, headers=other_auth).list_jobs()
        assert others == [], others  # no job, and no driver joined the other head
    finally:
        server.close()
        if other is not None:
            stop_pid(other.pid)
        shutil.rmtree(other_root, ignore_errors=True)

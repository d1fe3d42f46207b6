"""Where studies run: a Ray cluster reached through its job API.

With ``RAY_ADDRESS`` unset the service starts a local Ray head as its own process (``ray start --head
--block`` in a new session, so it outlives an API restart and its jobs keep running) and reuses it
while it is alive. Ray 2.60's dashboard and job API require token auth: the local head gets a token
file in the data dir, and every client of it (this process, the drivers) reads the same file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import httpx

from service.schemas import StudySpec
from service.settings import Settings

logger = logging.getLogger(__name__)


# Tune's defaults the service does not use, off for its drivers: the CSV, JSON and TensorBoard result
# loggers (every result of every trial written to three files under ray_results; the study's results live in
# the store). Read by Ray 2.60's ray/tune/utils/callback.py. The driver adds back the JSON one alone:
# Tune's ResultGrid reads each trial's last result from its result.json at the run's end.
TUNE_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


class RayUnavailable(RuntimeError):
    pass


class Cluster(Protocol):
    """What the service needs of the cluster its studies run on; `RayCluster` is the real one, and the
    API tests pass a fake through `create_app(cluster=...)`."""

    dashboard_url: str

    def resources(self) -> dict[str, float]: ...

    def submit_study(
        self,
        *,
        study_id: str,
        spec: StudySpec,
        settings: Settings,
        study_url: str | None = None,
        job_id: str | None = None,
        attempt: int = 0,
    ) -> str: ...

    def job_status(self, job_id: str) -> str | None: ...

    def stop_job(self, job_id: str) -> bool: ...

    def job_logs(self, job_id: str) -> str | None: ...


@dataclass
class RayCluster:
    """A handle on the cluster the studies run on."""

    dashboard_url: str  # http://host:port of the dashboard / job API
    local: bool  # started by us on this machine (drivers can use this interpreter)
    pid: int | None = None
    token_path: Path | None = None
    token: str | None = None
    # The local head's GCS address, handed to its drivers so they join this head and no other.
    gcs_address: str | None = None
    # The job API client, made on first use by `client()`.
    job_client: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def headers(self) -> dict[str, str]:
        return auth_headers(self.token_path, self.token)

    def client(self):  # -> JobSubmissionClient; imported lazily: ray is heavy
        """The job API client, made once (it checks the dashboard's version on creation)."""
        if self.job_client is None:
            from ray.job_submission import JobSubmissionClient

            self.job_client = JobSubmissionClient(self.dashboard_url, headers=self.headers)
        return self.job_client

    def resources(self) -> dict[str, float]:
        """Total logical resources of the cluster's live nodes (CPU, GPU, custom ones, ...), summed over
        Ray's State API node list (`ray.util.state`, the SDK of `ray list nodes --detail`): over HTTP to
        the dashboard, no driver connection. `StateApiClient` is what `ray.util.state.list_nodes` runs,
        made here with this cluster's auth headers (`list_nodes` takes none: it reads only this
        process's RAY_AUTH_* environment, and a remote cluster's token may come from settings)."""
        from ray.util.state import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        # resources_total is a detail column; Ray gives the HTTP request 80% of `timeout`: 13 -> 10 s. All
        # nodes, the dead ones filtered here: with a state filter (Ray pushes it down to the GCS) the
        # answer's `total` counts the dead ones too, and the missing-output check takes them for truncated
        # data. 10k is the API's maximum; the GCS keeps at most 1000 dead nodes by default.
        options = ListApiOptions(detail=True, limit=10_000, timeout=13)
        nodes = StateApiClient(self.dashboard_url, headers=self.headers).list(
            StateResource.NODES, options=options, raise_on_missing_output=True
        )
        total: dict[str, float] = {}
        for node in nodes:
            if node.state != "ALIVE":
                continue
            for name, amount in (node.resources_total or {}).items():
                total[name] = total.get(name, 0.0) + float(amount)
        return total

    def submit_study(
        self,
        *,
        study_id: str,
        spec: StudySpec,
        settings: Settings,
        study_url: str | None = None,
        job_id: str | None = None,
        attempt: int = 0,
    ) -> str:
        """Submit the study's driver (of resume attempt `attempt`) as the Ray job `job_id` (default named
        after the study, see `job_submission_id`). A job id the cluster already has counts as submitted:
        submitting again after a crash, or from two API processes, starts one driver."""
        python = sys.executable if self.local else settings.driver_python
        env = {
            **TUNE_ENV,
            "TRANSCHED_DATA_DIR": str(settings.data_dir.resolve()),
            "TRANSCHED_LOG_LEVEL": settings.log_level,
            "TRANSCHED_DB_RETRY_S": str(settings.db_retry_s),  # how long the driver waits out an outage
            **driver_database_env(settings, local=self.local),
        }
        if self.gcs_address:
            env["TRANSCHED_RAY_GCS_ADDRESS"] = self.gcs_address
        job_id = job_id or job_submission_id(study_id, spec.name)
        try:
            self.client().submit_job(
                entrypoint=f"{python} -m service.driver {study_id} {attempt}",
                submission_id=job_id,
                runtime_env={"env_vars": env},
                metadata=job_metadata(study_id, spec, study_url),
            )
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                raise
            logger.info("Ray job %s of study %s was already submitted", job_id, study_id)
            return job_id
        logger.info("submitted study %s (attempt %d) as Ray job %s", study_id, attempt, job_id)
        return job_id

    def job_status(self, job_id: str) -> str | None:
        try:
            return str(self.client().get_job_status(job_id).value)
        except Exception:  # unknown job (cluster restarted) or unreachable
            logger.debug("no status for job %s", job_id, exc_info=True)
            return None

    def stop_job(self, job_id: str) -> bool:
        try:
            return bool(self.client().stop_job(job_id))
        except Exception:
            logger.warning("could not stop Ray job %s", job_id, exc_info=True)
            return False

    def job_logs(self, job_id: str) -> str | None:
        """The driver's log (stdout and stderr of the job) so far; None if the cluster does not know the
        job (restarted, or the job never started)."""
        try:
            return str(self.client().get_job_logs(job_id))
        except Exception:
            logger.debug("no logs for job %s", job_id, exc_info=True)
            return None


def driver_database_env(settings: Settings, *, local: bool) -> dict[str, str]:
    """How a driver finds the database, without the password in its job's environment (Ray keeps a
    job's runtime env in its GCS, its dashboard and its logs). A local head's drivers read a file only
    this user can read (`secret_url_file`); a remote head's read `driver_database_url_file` (the operator
    put the URL there) or their own environment's TRANSCHED_DATABASE_URL. A URL without a password
    (SQLite, trust auth) travels as it is."""
    from sqlalchemy import make_url

    url = settings.resolved_database_url
    if make_url(url).password is None:
        return {"TRANSCHED_DATABASE_URL": url}
    if local:
        return {"TRANSCHED_DATABASE_URL_FILE": str(secret_url_file(settings))}
    if settings.driver_database_url_file:
        return {"TRANSCHED_DATABASE_URL_FILE": str(settings.driver_database_url_file)}
    return {}


def secret_url_file(settings: Settings) -> Path:
    """data_dir/secrets/database_url, mode 0600 in a 0700 folder: the database URL for local drivers."""
    folder = settings.data_dir.resolve() / "secrets"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / "database_url"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(settings.resolved_database_url)
    path.chmod(0o600)  # a file made earlier with a looser mode
    return path


def masked_url(url: str) -> str:
    """The database URL as it may be shown or logged: the password as ***."""
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


# The service's own secrets, kept out of the local head's environment (its workers and jobs inherit it).
HEAD_ENV_SECRETS = ("TRANSCHED_DATABASE_URL", "TRANSCHED_API_TOKEN")


def job_submission_id(study_id: str, name: str, attempt: int = 0) -> str:
    """The Ray job of a study: `transched-<name as a slug>-<id>`, so the dashboard's Jobs table and
    `ray job list` say which study a job runs; the id keeps it unique. A resumed study's driver of
    attempt k runs as `<that>-r<k>`: deterministic, so a submission repeated after a crash is one job."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    base = f"transched-{slug}-{study_id}" if slug else f"transched-{study_id}"
    return f"{base}-r{attempt}" if attempt else base


def job_metadata(study_id: str, spec: StudySpec, study_url: str | None) -> dict[str, str]:
    """The study as the dashboard shows it with its job: Ray's job metadata is str -> str, and the
    dashboard's Name column reads its `job_name` key."""
    meta = {
        "job_name": f"transched study {spec.name}",
        "transched_study": study_id,
        "study_name": spec.name,
        "methods": ",".join(spec.resolved_methods()),
        "n_trials": str(spec.n_trials),
    }
    if study_url:
        meta["study_url"] = study_url
    return meta


def dashboard_login_help(settings: Settings) -> str:
    """Where the Ray dashboard is, where its token lives and how to log in (`transched serve` prints
    it; the README says the same)."""
    if settings.ray_address:
        return (
            f"Ray dashboard: {settings.ray_dashboard_url or 'the host of RAY_ADDRESS, port 8265'}; log in "
            "with the cluster's token (the one given to this service as RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH)"
        )
    token = _state_dir(settings) / "auth_token"
    return (
        f"Ray dashboard: http://127.0.0.1:{settings.ray_dashboard_port} (another free port if that one is "
        f"taken: GET /healthz names it). It asks for a token: paste the content of {token} "
        f"(`cat {token}`) into its login box. Its hint `ray get-auth-token` finds no token by itself: it "
        f"reads ~/.ray/auth_token, and this head's token is the file above; "
        f"`RAY_AUTH_TOKEN_PATH={token} ray get-auth-token` prints it."
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _dashboard_up(url: str, token_path: Path | None) -> bool:
    try:
        return (
            httpx.get(f"{url}/api/version", timeout=2.0, headers=auth_headers(token_path)).status_code == 200
        )
    except httpx.HTTPError:
        return False


def auth_headers(token_path: Path | None, token: str | None = None) -> dict[str, str]:
    if token:
        return {"Authorization": f"Bearer {token}"}
    if token_path and token_path.exists():
        return {"Authorization": f"Bearer {token_path.read_text().strip()}"}
    return {}


def use_token_auth(state_dir: Path) -> Path:
    """Make this process (and its children: the head, its jobs) token-auth clients of the local head.

    Ray's own clients read RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH from the environment, so they are set here.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    token = state_dir / "auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token.resolve())
    return token


def _state_dir(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "ray"


def _temp_dir(settings: Settings) -> Path:
    """The local head's own Ray temp dir. Ray's default, /tmp/ray, is shared by every head on the host,
    and its `ray_current_cluster` file names the newest one: a job's driver, connecting with "auto",
    could join another service's head. Short (Ray's socket paths must fit in 107 bytes) and fixed per
    data dir."""
    digest = hashlib.sha1(str(settings.data_dir.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"transched-ray-{digest}"


def local_head(settings: Settings) -> RayCluster | None:
    """The local head recorded in the data dir, if it is still alive."""
    state_file = _state_dir(settings) / "head.json"
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    token = use_token_auth(_state_dir(settings))
    if not _alive(state["pid"]) or not _dashboard_up(state["dashboard_url"], token):
        return None
    return RayCluster(
        state["dashboard_url"],
        local=True,
        pid=state["pid"],
        token_path=token,
        gcs_address=state.get("gcs_address"),
    )


def start_local_head(settings: Settings, *, timeout_s: float = 90.0) -> RayCluster:
    """Start `ray start --head --block` as its own process group and wait for its dashboard."""
    existing = local_head(settings)
    if existing:
        logger.info("reusing local Ray head (pid %s, dashboard %s)", existing.pid, existing.dashboard_url)
        return existing
    state_dir = _state_dir(settings)
    token = use_token_auth(state_dir)
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if not ray_bin:
        raise RayUnavailable("the `ray` command was not found next to this Python; is ray installed?")
    port = settings.ray_head_port if _port_free(settings.ray_head_port) else _free_port()
    dash_port = settings.ray_dashboard_port if _port_free(settings.ray_dashboard_port) else _free_port()
    metrics_port = settings.ray_metrics_export_port
    if not _port_free(metrics_port):
        metrics_port = _free_port()
    cmd = [
        ray_bin, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}", "--include-dashboard=true",
        "--disable-usage-stats", f"--dashboard-agent-listen-port={_free_port()}",
        f"--ray-client-server-port={_free_port()}",  # Ray's default, 10001, is one for the whole host
        f"--metrics-export-port={metrics_port}", f"--temp-dir={_temp_dir(settings)}",
        f"--min-worker-port={20000}", f"--max-worker-port={29999}",
    ]  # fmt: skip
    if settings.ray_num_cpus:
        cmd.append(f"--num-cpus={settings.ray_num_cpus}")
    log_path = state_dir / "head.log"
    logger.info("starting a local Ray head: %s", " ".join(cmd))
    with open(log_path, "ab") as log:
        env = {k: v for k, v in os.environ.items() if k not in HEAD_ENV_SECRETS}
        # On SIGTERM, `ray start --block` first drains the node for Ray Serve's sake (up to 30 s by default;
        # here the drain call itself timed out after 30 s): a local head runs no Serve, and `transched down`
        # or a restart should not wait half a minute for nothing. The user's own setting wins.
        env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{dash_port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RayUnavailable(f"the Ray head exited with code {proc.returncode}; see {log_path}")
        if _dashboard_up(url, token):
            break
        time.sleep(0.5)
    else:
        stop_pid(proc.pid)
        raise RayUnavailable(
            f"the Ray head's dashboard did not come up within {timeout_s:.0f}s; see {log_path}"
        )
    state = {
        "pid": proc.pid,
        "dashboard_url": url,
        "gcs_address": f"127.0.0.1:{port}",
        "metrics_url": f"http://127.0.0.1:{metrics_port}/metrics",  # Prometheus text: ray_* metrics
    }
    (state_dir / "head.json").write_text(json.dumps(state))
    logger.info("local Ray head up: dashboard %s, GCS %s", url, state["gcs_address"])
    return RayCluster(url, local=True, pid=proc.pid, token_path=token, gcs_address=state["gcs_address"])


def stop_pid(pid: int, *, timeout_s: float = 40.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)  # `ray start --block` drains and stops its processes on SIGTERM
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)


def stop_local_head(settings: Settings) -> bool:
    state_file = _state_dir(settings) / "head.json"
    if not state_file.exists():
        return False
    pid = json.loads(state_file.read_text())["pid"]
    stop_pid(pid)
    state_file.unlink(missing_ok=True)
    return True


def connect(settings: Settings) -> RayCluster:
    """The cluster studies run on: `RAY_ADDRESS`'s when set, else a local head (started if needed)."""
    if settings.ray_address:
        url = settings.ray_dashboard_url
        if not url:
            addr = settings.ray_address
            if addr.startswith("http"):
                url = addr
            else:
                host = urlparse(f"//{addr.removeprefix('ray://')}").hostname or "127.0.0.1"
                url = f"http://{host}:8265"
        token = settings.ray_auth_token.get_secret_value() if settings.ray_auth_token else None
        return RayCluster(
            url.rstrip("/"),
            local=False,
            token_path=settings.ray_auth_token_path,
            token=token,
        )
    return start_local_head(settings)


def resource_problem(spec: StudySpec, cluster: dict[str, float], *, gpus_only: bool = False) -> str | None:
    """Why no trial of this spec could ever be scheduled on this cluster, or None.

    Tune would otherwise keep such trials pending forever, and the study would hang. `gpus_only` is for
    the API's early check on `RayCluster.resources`, which lags the cluster (a fresh head's node list is
    empty for a moment; a node joining or leaving shows late); the driver checks everything with Ray's
    own view.
    """
    gpus, cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
    if spec.gpus_per_trial > gpus:
        return (
            f"gpus_per_trial={spec.gpus_per_trial:g} but the Ray cluster has {gpus:g} GPU(s); "
            "set gpus_per_trial to 0 to train on CPUs"
        )
    if gpus_only:
        return None
    if spec.cpus_per_trial > cpus:
        return f"cpus_per_trial={spec.cpus_per_trial:g} but the Ray cluster has {cpus:g} CPU(s)"
    for name, amount in spec.resources_per_trial.items():
        if amount > cluster.get(name, 0.0):
            return (
                f"resources_per_trial[{name!r}]={amount:g} but the Ray cluster has {cluster.get(name, 0.0):g}"
            )
    return None

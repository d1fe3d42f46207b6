"""The supervisor: no study is lost to a dead driver, and no more than `max_running_studies` run at once.

Run by the API alone: `sweep()` once at start-up before the API serves, then every
`supervise_interval_s` in a background thread (the lifespan starts and stops it). No request settles a
study: a GET never changes anything and asks the cluster nothing (`GET /studies/{id}/logs` reads the
job's log, the resource itself). Each sweep

- reconnects to the cluster if it has none, or if the local Ray head died (a new head is started);
- resumes every interrupted study: one whose driver's Ray job ended (killed, node lost), that the cluster
  no longer knows (head restarted), or whose driver stopped writing its heartbeat. A new driver is
  submitted as job `<first job id>-r<k>`; it continues the same Optuna study (see `service.driver`). After
  `max_resumes` attempts the study is failed with a reason a person can read. A `stopping` study whose
  driver died ends `stopped`;
- submits again a `pending` study whose job the cluster never got (a crash between insert and submit);
- admits `queued` studies, oldest first, while fewer than `max_running_studies` hold a driver.

Several API processes may supervise one database: each change is a conditional UPDATE (a study is taken
for attempt k+1 only if it is still at attempt k), and job ids are deterministic, so nothing is submitted
twice. No database session is open while Ray is asked anything.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from service import repository as repo
from service import studies
from service.db import Study, StudyStatus
from service.errors import ClusterUnavailable
from service.ray_cluster import RayUnavailable, job_submission_id, local_head

if TYPE_CHECKING:
    from service.deps import AppState
    from service.ray_cluster import Cluster

logger = logging.getLogger(__name__)

ENDED = ("FAILED", "STOPPED", "SUCCEEDED")  # Ray job states of a driver that is gone
_reconnecting = threading.Lock()


def sweep(state: AppState) -> None:
    """One pass: reconnect if needed, settle every live study, admit queued ones."""
    cluster = ensure_cluster(state)
    if cluster is None:
        return
    with state.sessions() as session:
        active = repo.studies_in(session, states=repo.ACTIVE)
    for study in active:
        try:
            check(study, state=state)
        except Exception:  # one study's trouble must not stop the others' supervision
            logger.exception("supervising study %s failed", study.id)
    dispatch(state)


def ensure_cluster(state: AppState) -> Cluster | None:
    """The cluster, connected again if there was none or the local head is dead (a new head starts; its
    drivers resume the interrupted studies)."""
    with _reconnecting:
        cluster = state.cluster
        if cluster is not None and not getattr(cluster, "local", False):
            return cluster  # a cluster of RAY_ADDRESS (or a test's): nothing of it is ours to restart
        head = local_head(state.settings) if cluster is not None else None
        if head is not None:
            if head.dashboard_url != cluster.dashboard_url:  # another API process started a new head
                state.cluster = head
            return state.cluster
        if cluster is not None:
            logger.warning("the local Ray head is gone; starting a new one")
        try:
            state.cluster = state.connect(state.settings)
        except RayUnavailable:
            logger.exception("no Ray cluster: studies wait until one is reachable")
        return state.cluster


def check(study: Study, *, state: AppState) -> Study:
    """Settle one study against its driver's Ray job: left alone while the driver lives; resumed,
    submitted again, stopped or failed when it does not. Returns the study as it now is."""
    status, cluster, settings = StudyStatus(study.status), state.cluster, state.settings
    if status.terminal or status == StudyStatus.queued or cluster is None:
        return study
    job = cluster.job_status(study.ray_job_id) if study.ray_job_id else None
    if job is None and not _answers(cluster):
        return study  # the cluster is unreachable: nothing can be told about the driver
    if job in ("PENDING", "RUNNING"):
        if status == StudyStatus.pending or not studies.stale(study, settings.driver_timeout_s):
            return study
        # Ray says it runs but it has not written its heartbeat: hung. End it before another one starts.
        cluster.stop_job(study.ray_job_id)
        why = f"the driver stopped reporting (no heartbeat for over {settings.driver_timeout_s:.0f}s)"
    elif job is None and status == StudyStatus.pending:
        # Never got to the cluster (crash between insert and submit, or a new head): the same job again.
        _launch(study, state)
        return studies.find(state.sessions, study.id)
    else:
        why = f"its Ray job ended as {job}" if job else "the Ray cluster no longer knows its job"
    return _interrupted(study, why, state=state)


def _answers(cluster: Cluster) -> bool:
    try:
        cluster.resources()
    except Exception:
        return False
    return True


def _interrupted(study: Study, why: str, *, state: AppState) -> Study:
    """The driver is gone: a stopping study ends stopped; another is resumed, or failed after
    `max_resumes` attempts."""
    live = (StudyStatus.pending, StudyStatus.running, StudyStatus.stopping)
    if study.status == StudyStatus.stopping:
        _end(study, StudyStatus.stopped, None, state=state, only_from=(StudyStatus.stopping,))
    elif study.attempts >= state.settings.max_resumes:
        last = f"; the last driver said: {study.error}" if study.error else ""
        limit = f"TRANSCHED_MAX_RESUMES={state.settings.max_resumes}"
        if study.attempts:
            reason = (
                f"the driver died {study.attempts + 1} times ({limit}), the last time because {why}{last}"
            )
        else:
            reason = f"the driver died because {why} ({limit}){last}"
        _end(study, StudyStatus.failed, reason, state=state, only_from=live)
    else:
        attempt = study.attempts + 1
        job_id = job_submission_id(study.id, study.name, attempt)
        note = f"resumed (attempt {attempt} of {state.settings.max_resumes}): {why}"
        with state.sessions() as session:
            claimed = repo.claim_attempt(
                session, study_id=study.id, attempts=study.attempts, ray_job_id=job_id, note=note
            )
        if claimed:
            logger.warning("study %s: %s; resuming it as Ray job %s", study.id, why, job_id)
            _launch(studies.find(state.sessions, study.id), state)
    return studies.find(state.sessions, study.id)


def _end(study: Study, final: StudyStatus, error: str | None, *, state: AppState, only_from: tuple) -> None:
    with state.sessions() as session:
        moved = repo.set_status(session, study_id=study.id, status=final, error=error, only_from=only_from)
    if moved:  # else someone (the driver, another supervisor) wrote its end meanwhile
        logger.warning("study %s ended %s: %s", study.id, final.value, error or "stopped")
        repo.reap_running_trials(state.storage, name=study.optuna_study_name)


def _launch(study: Study, state: AppState) -> None:
    """Submit a resumed (or never submitted) driver; a refusal is logged, and the study stays pending for
    the next sweep to submit again as the same job."""
    studies.launch(study, sessions=state.sessions, cluster=state.cluster, settings=state.settings, fail=False)


def dispatch(state: AppState) -> list[str]:
    """Admit queued studies, oldest first, while slots are free; the ids admitted."""
    if state.cluster is None:
        return []
    with state.sessions() as session:
        queued = repo.studies_in(session, states=(StudyStatus.queued,))
    admitted = []
    for study in queued:
        try:
            if not studies.dispatch_one(
                study, sessions=state.sessions, cluster=state.cluster, settings=state.settings
            ):
                break
        except ClusterUnavailable:
            pass  # the study is failed with the reason; the next one may still go
        admitted.append(study.id)
    return admitted


class Supervisor:
    """`sweep` once in `start()` (before the API serves: a study whose driver died is settled before
    anyone reads it), then in a background thread every `interval_s` until `stop()`. `interval_s` 0:
    never (tests call `sweep` themselves)."""

    def __init__(self, state: AppState, interval_s: float):
        self._state, self._interval_s = state, interval_s
        self._stopping = threading.Event()
        self._swept = False
        self._thread = threading.Thread(target=self._run, name="transched-supervisor", daemon=True)

    def start(self) -> None:
        if self._interval_s > 0:
            if self._state.cluster is not None:  # none: the thread connects, not holding up the start
                self._sweep()
                self._swept = True
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _sweep(self) -> None:
        try:
            sweep(self._state)
        except Exception:  # e.g. the database is unreachable: try again next time
            logger.exception("supervisor sweep failed")

    def _run(self) -> None:
        if not self._swept:
            self._sweep()
        while not self._stopping.wait(self._interval_s):
            self._sweep()

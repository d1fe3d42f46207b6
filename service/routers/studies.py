"""/studies: submit, list, read and stop studies. A GET only reads: it never changes a study and asks
the cluster nothing; settling a study whose driver died is the supervisor's loop alone
(service.supervisor)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, status

from service import studies
from service.db import Study
from service.deps import ClusterDep, State
from service.schemas import InvalidProblem, Links, Problem, StudyCreated, StudyOut, StudyPage, StudySpec

router = APIRouter(prefix="/studies", tags=["studies"])

NOT_FOUND = {404: {"model": Problem, "description": "no study with this id"}}
RAY_DOWN = {
    503: {
        "model": Problem,
        "description": "the Ray cluster is not reachable, or the database is unavailable for now "
        "(then with Retry-After)",
    }
}


def links(request: Request, state: State) -> Callable[[str, str | None], Links]:
    """The links of a study, under the URL the client called."""
    base, cluster = str(request.base_url).rstrip("/"), state.cluster

    def of(study_id: str, ray_job_id: str | None) -> Links:
        return Links(
            self=f"{base}/studies/{study_id}",
            trials=f"{base}/studies/{study_id}/trials",
            best=f"{base}/studies/{study_id}/best",
            stop=f"{base}/studies/{study_id}/stop",
            report=f"{base}/studies/{study_id}/report",
            optuna_dashboard=f"{base}/studies/{study_id}/dashboard",
            dashboard=f"{cluster.dashboard_url}/#/jobs/{ray_job_id}" if cluster and ray_job_id else None,
        )

    return of


LinksDep = Annotated[Callable[[str, str | None], Links], Depends(links)]


def _overview(state: State, study: Study, link: Callable[[str, str | None], Links]) -> StudyOut:
    return studies.overviews([study], sessions=state.sessions, storage=state.storage, links=link)[0]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        422: {
            "model": InvalidProblem,
            "description": "invalid study spec (nothing is stored), or an Idempotency-Key already used "
            "with a different body",
        },
        **RAY_DOWN,
    },
)
def create_study(
    spec: StudySpec,
    request: Request,
    state: State,
    cluster: ClusterDep,
    link: LinksDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="Any unique string: the same key with the same body returns the study the first "
            "request made (no second study); with a different body it is a 422.",
        ),
    ] = None,
) -> StudyCreated:
    """Store the study and submit its driver to Ray as a job (202: it runs in the background), or queue
    it (`queued`) while `max_running_studies` studies run."""
    api_url = str(request.base_url).rstrip("/")
    study = studies.submit(
        spec,
        sessions=state.sessions,
        cluster=cluster,
        settings=state.settings,
        api_url=api_url,
        idempotency_key=idempotency_key,
    )
    return StudyCreated(
        id=study.id,
        name=study.name,
        status=study.status,
        optuna_study_name=study.optuna_study_name,
        ray_job_id=study.ray_job_id,
        links=link(study.id, study.ray_job_id),
    )


@router.get("")
def list_studies(
    state: State,
    link: LinksDep,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,  # past the data: an empty page
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> StudyPage:
    """Studies, newest first, each with its trial counts and best trial so far, as stored (the
    supervisor settles a study whose driver died; reading changes nothing)."""
    return studies.study_page(
        sessions=state.sessions, storage=state.storage, offset=offset, limit=limit, links=link
    )


@router.get("/{study_id}", responses=NOT_FOUND)
def get_study(study_id: str, state: State, link: LinksDep) -> StudyOut:
    """Status, trial counts by state, the best trial so far, and the Optuna study's name, as stored."""
    return _overview(state, studies.find(state.sessions, study_id), link)


@router.post(
    "/{study_id}/stop",
    status_code=status.HTTP_202_ACCEPTED,
    responses={**NOT_FOUND, 409: {"model": Problem, "description": "the study already completed or failed"}},
)
def stop(study_id: str, state: State, link: LinksDep) -> StudyOut:
    """Ask the driver to stop: running trials end, the study ends as `stopped`. Idempotent: a queued or
    pending study ends `stopped` at once; a stopping or stopped one is answered as it is."""
    study = studies.stop(study_id, sessions=state.sessions, cluster=state.cluster, storage=state.storage)
    return _overview(state, study, link)

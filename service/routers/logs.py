"""/studies/{id}/logs: the log of the study's driver, read from its Ray job."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from service import studies
from service.deps import State
from service.routers.studies import NOT_FOUND, RAY_DOWN
from service.schemas import problem_response

router = APIRouter(prefix="/studies/{study_id}", tags=["studies"])


@router.get(
    "/logs",
    response_class=PlainTextResponse,
    responses={
        404: problem_response(NOT_FOUND[404]["description"]),
        503: problem_response(RAY_DOWN[503]["description"]),
        409: problem_response("the study has no Ray job (its submission failed)"),
    },
)
def logs(study_id: str, state: State) -> str:
    """The driver's log so far (one line per trial event, Tune's progress), as Ray's job API keeps it;
    404 also when the cluster no longer knows the job."""
    return studies.job_logs(study_id, sessions=state.sessions, cluster=state.cluster)

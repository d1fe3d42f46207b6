"""/studies/{id}/report: the study's report page (HTML, every style and figure inline) and its figures
as SVG or PNG files (see `service.report`)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from service import report, studies
from service.deps import State
from service.routers.studies import NOT_FOUND, LinksDep
from service.schemas import problem_response

router = APIRouter(prefix="/studies", tags=["views"])

MEDIA = {"svg": "image/svg+xml", "png": "image/png"}
NO_STUDY = {404: problem_response(NOT_FOUND[404]["description"])}  # JSON, whatever the page's own type


@router.get("/{study_id}/report", response_class=HTMLResponse, responses=NO_STUDY)
def report_page(study_id: str, state: State, link: LinksDep) -> HTMLResponse:
    """The study's report: the lambda(t) curves of the best trials of each method, the best validation
    accuracy of each method, and the trials; linked to the study's other views."""
    study = studies.find(state.sessions, study_id)
    rep = report.study_report(study, storage=state.storage)
    links = link(study_id, study.ray_job_id)
    views = {
        "study (API)": links.self,
        "trials (API)": links.trials,
        "best config (API)": links.best,
        "optuna-dashboard": links.optuna_dashboard,
        "Ray job": links.dashboard,
        "API docs": "/docs",
    }
    return HTMLResponse(report.report_html(rep, views))


@router.get(
    "/{study_id}/report/{name}.{fmt}",
    response_class=Response,
    responses={**NO_STUDY, 200: {"content": {m: {} for m in MEDIA.values()}}},
)
def report_figure(
    study_id: str, name: Literal["lambda", "methods"], fmt: Literal["svg", "png"], state: State
) -> Response:
    """One figure of the report: `lambda` (lambda(t) of the best trials of each method) or `methods`
    (best validation accuracy of each method), as SVG or PNG."""
    rep = report.study_report(studies.find(state.sessions, study_id), storage=state.storage)
    return Response(report.figure(rep, name, fmt), media_type=MEDIA[fmt])

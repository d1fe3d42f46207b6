"""/studies/{id}/trials and /studies/{id}/best: what the trials found, read from Optuna's schema."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service import studies
from service.deps import State
from service.routers.studies import NOT_FOUND
from service.schemas import BestConfig, InvalidProblem, Problem, TrialPage

router = APIRouter(prefix="/studies/{study_id}", tags=["studies"])


@router.get("/trials", responses=NOT_FOUND)
def list_trials(
    study_id: str,
    state: State,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,  # past the data: an empty page
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> TrialPage:
    """Trials by number: params, Optuna state, value and per-epoch metrics."""
    study = studies.find(state.sessions, study_id)
    return studies.trials_page(study, storage=state.storage, offset=offset, limit=limit)


@router.get(
    "/best",
    responses={
        **NOT_FOUND,
        409: {"model": Problem, "description": "no trial (of that method) has completed yet"},
        422: {"model": InvalidProblem, "description": "the study has no such method"},
    },
)
def best(
    study_id: str,
    state: State,
    method: Annotated[
        str | None, Query(description="best of one method: a method name, or an arm like mixup+schedule")
    ] = None,
) -> BestConfig:
    """The best trial's complete trainer config, ready for `transched train`; the best overall, or
    with `?method=` the best of that method."""
    study = studies.find(state.sessions, study_id)
    return studies.best_config(study, storage=state.storage, method=method)

"""GET /healthz: the database answers, and where the Ray dashboard is (null while no cluster)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import text

from service.deps import State

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz(state: State) -> dict[str, Any]:
    with state.sessions() as session:
        session.execute(text("SELECT 1"))
    cluster = state.cluster
    return {"status": "ok", "database": "ok", "ray_dashboard": cluster.dashboard_url if cluster else None}

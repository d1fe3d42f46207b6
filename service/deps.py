"""What the app makes once at startup and hands to every handler, as typed FastAPI dependencies."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.db import create_schema, engine_from, make_sessionmaker, optuna_storage_from, schema_lock
from service.errors import ClusterUnavailable
from service.ray_cluster import Cluster, RayUnavailable
from service.repository import ensure_optuna_indexes
from service.settings import Settings

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

logger = logging.getLogger(__name__)


@dataclass
class AppState:
    """The engine, the Optuna storage on the same database, and the cluster client (None while no
    cluster is reachable: studies are then refused with 503, everything else still answers). The
    supervisor (service.supervisor) replaces `cluster` when it reconnects, through `connect`."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    storage: RDBStorage
    cluster: Cluster | None
    connect: Callable[[Settings], Cluster]

    @classmethod
    def open(
        cls, settings: Settings, *, cluster: Cluster | None, connect: Callable[[Settings], Cluster]
    ) -> AppState:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = engine_from(settings)
        with schema_lock(engine):  # replicas starting together set the schema up one after the other
            create_schema(engine)
            storage = optuna_storage_from(settings)
            with storage.engine.begin() as connection:  # Optuna made its tables by now
                ensure_optuna_indexes(connection)
        if cluster is None:
            try:
                cluster = connect(settings)
            except RayUnavailable:
                logger.exception("no Ray cluster: studies cannot be submitted until one is reachable")
        return cls(settings, engine, make_sessionmaker(engine), storage, cluster, connect)

    def close(self) -> None:
        self.engine.dispose()
        self.storage.engine.dispose()


def _state(request: Request) -> AppState:
    return request.state.app_state  # the lifespan's state (see service.api.create_app)


State = Annotated[AppState, Depends(_state)]


def _cluster(state: State) -> Cluster:
    if state.cluster is None:
        raise ClusterUnavailable("the Ray cluster is not reachable")
    return state.cluster


ClusterDep = Annotated[Cluster, Depends(_cluster)]

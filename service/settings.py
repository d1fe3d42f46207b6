"""The one place that reads the environment."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRANSCHED_", extra="ignore")

    data_dir: Path = Field(default=Path(".transched"), description="SQLite file, Ray head state, artifacts")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in data_dir")
    # A file holding the URL (read when database_url is unset): how drivers get it without the password
    # travelling in a Ray job's environment. The service writes data_dir/secrets/database_url (mode 0600)
    # for a local head; for a remote cluster, `driver_database_url_file` is where the operator put it there.
    database_url_file: Path | None = None
    driver_database_url_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    # Unset: the service starts (or reuses) its own local Ray head. Set: use that cluster, start nothing.
    ray_address: str | None = Field(
        default=None, validation_alias=AliasChoices("RAY_ADDRESS", "TRANSCHED_RAY_ADDRESS")
    )
    # Dashboard (job API) URL of that cluster; derived from ray_address's host and 8265 when unset.
    ray_dashboard_url: str | None = None
    # Token file of a token-auth Ray cluster (Ray 2.60's dashboard and job API require one). For the local
    # head the service makes one in data_dir/ray; for your own cluster point this at its token.
    ray_auth_token_path: Path | None = Field(
        default=None, validation_alias=AliasChoices("RAY_AUTH_TOKEN_PATH", "TRANSCHED_RAY_AUTH_TOKEN_PATH")
    )
    # Set by the service for its drivers (the local head's GCS address): a driver joins exactly this
    # cluster, whatever other Ray heads run on the host. Unset: the cluster the job runs on ("auto").
    ray_gcs_address: str | None = None
    ray_auth_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("RAY_AUTH_TOKEN"))
    # The Python that runs a study's driver on the cluster's head node (the local head uses this one's).
    driver_python: str = "python"
    # The local head's ports: Redis holds 6379 on many machines, so the GCS port is explicit.
    ray_head_port: int = 6390
    ray_dashboard_port: int = 8265
    # The local head's Prometheus endpoint (http://127.0.0.1:PORT/metrics): Ray's metrics and the trials'
    # own (`ray_transched_trial_*`, see service/trainable.py); the dashboard's Metrics view reads it too.
    ray_metrics_export_port: int = 8266
    ray_num_cpus: int | None = Field(default=None, description="CPUs the local head offers; default all")
    # A running study whose driver has written no heartbeat for this long is taken for interrupted and
    # resumed (its Ray job is stopped first if the cluster still says it runs).
    driver_timeout_s: float = 300.0
    # Studies whose drivers may run at once (pending, running or stopping); more wait as `queued`.
    max_running_studies: int = Field(default=4, ge=1)
    # How often the API's supervisor looks for interrupted studies and queued ones (0: never, tests).
    supervise_interval_s: float = 10.0
    # Drivers started again for a study whose driver died, before it is failed.
    max_resumes: int = Field(default=3, ge=0)
    sqlite_busy_timeout_ms: int = 30_000
    db_pool_size: int = 5
    db_max_overflow: int = 5
    # How long a request waits for a pooled connection before it is answered 503 (not SQLAlchemy's 30 s).
    db_pool_timeout_s: float = 10.0
    # How long a study's driver retries a database write (backoff with jitter) across an outage before
    # the study fails: SQLite locked by another writer, PostgreSQL restarting or its connections killed.
    db_retry_s: float = 300.0
    # The Retry-After (seconds) of the API's 503 while the database is unreachable.
    db_retry_after_s: int = 5
    log_level: str = "INFO"

    # --- security (README "Security") ---------------------------------------------------------------
    # Bearer token of the API: set, every request that creates, stops or changes needs
    # `Authorization: Bearer <token>`, and reads too unless public_reads.
    api_token: SecretStr | None = None
    public_reads: bool = False
    # Serving on a non-loopback address without api_token is refused unless this says it is meant.
    allow_unauthenticated: bool = False
    # Directories (besides data_dir) that paths in a study spec may point into; JSON list or comma-separated.
    allowed_data_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("allowed_data_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.strip()
            return json.loads(v) if v.startswith("[") else [p for p in v.split(",") if p.strip()]
        return v

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        if self.database_url_file:
            return self.database_url_file.read_text().strip()
        return f"sqlite:///{(self.data_dir / 'transched.db').resolve()}"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}"

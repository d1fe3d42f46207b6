"""The study spec: one pydantic model from the REST request to the driver, stored as it came.

``trainer`` holds the fixed fields of `trainers.TrainConfig` (same names, validated by the dataclass
itself); ``methods`` is a tagged union on ``method`` whose members carry that method's search-range
overrides. The trainable merges the two once: ``TrainConfig(**trainer, **sampled)``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from search_spaces import Param, method_space
from trainers.config import TrainConfig

METRIC = "best_val_acc"  # the trial's objective: best target validation accuracy so far (early stopping)


class _MethodBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def overrides(self) -> dict[str, Param | None]:
        return {k: v for k, v in self if k != "method"}


class TargetMethod(_MethodBase):
    """Train on the target only (lambda = 1). Nothing to search."""

    method: Literal["target"] = "target"


class FinetuneMethod(_MethodBase):
    """Pre-train on the source, then fine-tune from T/2 + t0 on (eq. 5)."""

    method: Literal["finetune"] = "finetune"
    t0: Param | None = None


class MultitaskMethod(_MethodBase):
    """Fixed-weight multi-task learning, lambda = (1 + e^alpha)^-1 (eq. 6)."""

    method: Literal["multitask"] = "multitask"
    alpha: Param | None = None


class SmoothMethod(_MethodBase):
    """Smooth Transfer Learning, the sigmoid schedule of eq. 4."""

    method: Literal["smooth"] = "smooth"
    t0: Param | None = None
    tau: Param | None = None
    alpha: Param | None = None


MethodSpec = Annotated[
    TargetMethod | FinetuneMethod | MultitaskMethod | SmoothMethod, Field(discriminator="method")
]


class StudySpec(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "name": "digits-demo",
                "trainer": {"source": "digits", "target": "digits", "backbone": "small_cnn", "n_target": 100},
                "methods": [{"method": "smooth", "tau": {"low": 0.001}}, "finetune", "multitask", "target"],
                "n_trials": 12,
                "max_concurrent_trials": 2,
            }
        },
    )

    name: str = Field(default="study", min_length=1, max_length=200)
    trainer: TrainConfig = Field(default_factory=TrainConfig, description="fixed trainer config fields")
    methods: list[MethodSpec] = Field(default_factory=lambda: [SmoothMethod()], min_length=1)
    n_trials: int = Field(default=12, ge=1, le=100_000)
    max_concurrent_trials: int = Field(default=1, ge=1, le=1024)
    cpus_per_trial: float = Field(default=1.0, gt=0)
    gpus_per_trial: float = Field(
        default=0.0, ge=0, description="fractional allowed: 0.25 = four trials a GPU"
    )
    resources_per_trial: dict[str, float] = Field(
        default_factory=dict, description='custom Ray resources each trial needs, e.g. {"big_mem": 1}'
    )
    max_retries: int = Field(default=1, ge=0, le=10, description="times a trial whose worker died is rerun")
    seed: int = Field(default=0, description="seed of the TPE sampler")
    n_startup_trials: int | None = Field(
        default=None, ge=1, description="random trials before TPE; default min(10, max(3, n_trials // 3))"
    )

    @field_validator("methods", mode="before")
    @classmethod
    def _names_as_methods(cls, v: Any) -> Any:
        # "smooth" is shorthand for {"method": "smooth"}.
        if isinstance(v, list):
            return [{"method": m} if isinstance(m, str) else m for m in v]
        return v

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        names = [m.method for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"methods must be distinct, got {names}")
        for m in self.methods:
            method_space(m.method, m.overrides())  # raises ValueError naming the bad bound
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ValueError("gpus_per_trial above 1 must be a whole number")
        bad = [k for k, v in self.resources_per_trial.items() if k in ("CPU", "GPU", "cpu", "gpu") or v < 0]
        if bad:
            raise ValueError(f"resources_per_trial: {bad} (use cpus_per_trial/gpus_per_trial; amounts >= 0)")
        return self

    def resolved_methods(self) -> dict[str, dict[str, Param]]:
        return {m.method: method_space(m.method, m.overrides()) for m in self.methods}

    @property
    def startup_trials(self) -> int:
        return self.n_startup_trials or min(10, max(3, self.n_trials // 3))


# --- responses ---------------------------------------------------------------------------------------


class Links(BaseModel):
    self: str
    trials: str
    best: str
    stop: str
    dashboard: str | None = None


class StudyCreated(BaseModel):
    id: str
    name: str
    status: str
    optuna_study_name: str
    ray_job_id: str | None
    links: Links


class BestSoFar(BaseModel):
    number: int
    value: float
    params: dict[str, Any]


class StudyOut(BaseModel):
    id: str
    name: str
    status: str
    error: str | None
    optuna_study_name: str
    ray_job_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    n_trials: int
    trial_counts: dict[str, int] = Field(description="trials by Optuna state")
    best: BestSoFar | None
    spec: StudySpec
    links: Links


class StudyPage(BaseModel):
    items: list[StudyOut]
    total: int
    offset: int
    limit: int


class TrialOut(BaseModel):
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    epochs: list[dict[str, Any]] = Field(description="per-epoch metrics as reported by the trainer")
    node: str | None = Field(default=None, description="hostname the trial ran on")
    node_id: str | None = Field(default=None, description="Ray node id the trial ran on (its last attempt)")
    device: str | None = None
    restarts: int = Field(default=0, description="times the trial was rerun after its worker died")
    total_steps: int | None = None
    datetime_start: datetime | None
    datetime_complete: datetime | None


class TrialPage(BaseModel):
    items: list[TrialOut]
    total: int
    offset: int
    limit: int


class Schedule(BaseModel):
    """lambda(t) in iterations t = 1..T. smooth: eq. 4, [1 + exp(-(t - T/2 - t0)/tau + alpha)]^-1;
    finetune: the step at T/2 + t0 (eq. 5); multitask: the constant (1 + e^alpha)^-1 (eq. 6).
    A parameter the method's lambda does not use is null."""

    method: str
    t0: float | None
    tau: float | None
    alpha: float | None
    T: int


class BestConfig(BaseModel):
    """Everything `transched train` needs, and what it should reproduce."""

    study_id: str
    optuna_study_name: str
    trial_number: int
    method: str
    val_acc: float
    test_acc: float | None
    config: dict[str, Any] = Field(description="the full trainers.TrainConfig with the best params merged in")
    schedule: Schedule | None = Field(description="lambda(t) in iterations, for the schedule methods")


class Problem(BaseModel):
    detail: str

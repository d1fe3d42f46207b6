"""The study spec: one pydantic model from the REST request to the driver, stored as it came.

``trainer`` holds the fixed fields of `trainers.TrainConfig` (same names, validated by the dataclass
itself); ``methods`` is a tagged union on ``method`` whose members carry that method's search-range
overrides. The trainable merges the two once: ``TrainConfig(**trainer, **sampled)``.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from annotated_types import Interval
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    create_model,
    field_validator,
    model_validator,
)

from search_spaces import Param, arm_defaults, arm_name, method_space
from service.early_stopping import EarlyStopping
from trainers.config import PATH_FIELDS, TrainConfig, field_bounds, within
from trainers.methods import method_class, method_names

METRIC = "best_val_acc"  # the trial's objective: best target validation accuracy so far (early stopping)


class _MethodBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def overrides(self) -> dict[str, Param | None]:
        return {k: v for k, v in self if k not in ("method", "schedule")}

    @property
    def arm(self) -> str:
        """The key of this entry in the study's space: the method, or ``<method>+schedule``."""
        return arm_name(self.method, getattr(self, "schedule", False))

    def resolved(self, trainer: dict[str, Any] | None = None) -> dict[str, Param]:
        """Its resolved params in a study with these fixed trainer fields."""
        schedule = getattr(self, "schedule", False)
        return method_space(self.method, self.overrides(), schedule=schedule, trainer=trainer)


def _method_model(method: str) -> type[_MethodBase]:
    """One member of the tagged union: `method`, an optional override per searchable param and, for a
    composable (mixup-family) method, `schedule` (compose with the sigmoid schedule: t0, tau, alpha
    join its space). The doc is the method class's one-line `doc`."""
    cls = method_class(method)
    params = list(arm_defaults(method, schedule=cls.composable))
    fields: dict[str, Any] = {"method": (Literal[method], method)}
    fields |= {name: (Param | None, None) for name in params}
    if cls.composable:
        fields["schedule"] = (bool, Field(default=False, description="add the sigmoid loss-weight schedule"))
    camel = "".join(part.title() for part in method.split("_"))
    return create_model(f"{camel}Method", __base__=_MethodBase, __doc__=cls.doc, **fields)


# Built when this module is imported, from the method registry as it is then (a method registered
# before the service is imported is part of the REST schema).
METHOD_MODELS = {m: _method_model(m) for m in method_names()}
MethodSpec = Annotated[Union[tuple(METHOD_MODELS.values())], Field(discriminator="method")]  # noqa: UP007


Amount = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]


def _nul_in(data: Any, where: str = "spec") -> str | None:
    """Where the first string (key or value) holding a NUL character is, or None."""
    if isinstance(data, str):
        return where if "\x00" in data else None
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        if isinstance(key, str) and "\x00" in key:
            return f"{where}.{key!r}"
        if found := _nul_in(value, f"{where}.{key}"):
            return found
    return None


def _within_field_bounds(where: str, field: str, param: Param) -> None:
    """A searched or fixed parameter stays inside its trainer field's bounds (trainers.config)."""
    bound = field_bounds().get(field)
    if bound is None or not isinstance(bound[0], Interval):
        return
    for key in ("low", "high", "value"):
        value = getattr(param, key)
        if value is not None and not within(value, bound[0]):
            raise ValueError(f"{where}: {key} ({value}) out of bounds: {field} must be {bound[1]}")


class StudySpec(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
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
    methods: list[MethodSpec] = Field(
        default_factory=lambda: [METHOD_MODELS["smooth"]()],
        min_length=1,
        max_length=64,
        description="methods to compare; with several, the method is a TPE choice, each tried once first",
    )
    n_trials: int = Field(default=12, ge=1, le=100_000)
    max_concurrent_trials: int = Field(default=1, ge=1, le=1024)
    cpus_per_trial: float = Field(default=1.0, gt=0, le=1024)
    gpus_per_trial: float = Field(
        default=0.0, ge=0, le=64, description="fractional allowed: 0.25 = four trials a GPU"
    )
    resources_per_trial: dict[Annotated[str, Field(min_length=1, max_length=64)], Amount] = Field(
        default_factory=dict,
        max_length=32,
        description='custom Ray resources each trial needs, e.g. {"big_mem": 1}',
    )
    max_retries: int = Field(default=1, ge=0, le=10, description="times a trial whose worker died is rerun")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="seed of the TPE sampler")
    n_startup_trials: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="random trials before TPE; default min(10, max(3, n_trials // 3))",
    )
    early_stopping: EarlyStopping = Field(
        default_factory=EarlyStopping,
        description='stop weak trials at rungs of epochs: {"kind": "none" | "asha" | "schedule_sh", '
        '"grace_period": 1, "reduction_factor": 3}; the last rung is trainer.epochs',
    )

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        # PostgreSQL cannot store a NUL in text or JSON: refused here, naming where it is.
        if where := _nul_in(data):
            raise ValueError(f"{where}: strings must not contain NUL (\\u0000) characters")
        return data

    @field_validator("methods", mode="before")
    @classmethod
    def _names_as_methods(cls, v: Any) -> Any:
        # "smooth" is shorthand for {"method": "smooth"}.
        if isinstance(v, list):
            return [{"method": m} if isinstance(m, str) else m for m in v]
        return v

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        arms = [m.arm for m in self.methods]
        if len(set(arms)) != len(arms):
            raise ValueError(f"methods must be distinct, got {arms}")
        for m in self.methods:
            for name, param in m.resolved(self.trainer.to_dict()).items():  # ValueError naming a bad bound
                _within_field_bounds(f"{m.arm}.{name}", name, param)
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ValueError("gpus_per_trial above 1 must be a whole number")
        bad = [k for k, v in self.resources_per_trial.items() if k in ("CPU", "GPU", "cpu", "gpu") or v < 0]
        if bad:
            raise ValueError(f"resources_per_trial: {bad} (use cpus_per_trial/gpus_per_trial; amounts >= 0)")
        return self

    def resolved_methods(self) -> dict[str, dict[str, Param]]:
        """The study's arms (``smooth``, ``mixup+schedule``, ...) with their resolved params."""
        trainer = self.trainer.to_dict()
        return {m.arm: m.resolved(trainer) for m in self.methods}

    def with_paths_under(self, root: Path) -> StudySpec:
        """Relative paths of the trainer made absolute under `root`: trials run in their own working
        directories on any node, where a relative path would point somewhere else."""
        changes = {}
        for name in PATH_FIELDS:
            value = getattr(self.trainer, name, None)
            if value and not Path(value).is_absolute():
                changes[name] = str((root / value).resolve())
        return (
            self.model_copy(update={"trainer": dataclasses.replace(self.trainer, **changes)})
            if changes
            else self
        )

    def paths_outside(self, roots: list[Path]) -> list[str]:
        """`trainer.FIELD: why` for each path of the trainer that, symlinks and `..` resolved, lies in
        none of `roots` (call after `with_paths_under`). The message never says what is there."""
        allowed = [Path(r).resolve() for r in roots]
        bad = []
        for name in PATH_FIELDS:
            value = getattr(self.trainer, name, None)
            if value and not any(Path(value).resolve().is_relative_to(r) for r in allowed):
                bad.append(f"trainer.{name}: {value!r} is outside the data dir and the allowed directories")
        return bad

    @property
    def startup_trials(self) -> int:
        return self.n_startup_trials or min(10, max(3, self.n_trials // 3))

    # --- issue 11: study presets (service/presets.py) ----------------------------------------------
    preset: str | None = Field(
        default=None,
        max_length=100,
        description='a paper recipe to start from: "stl-cifar" (newest version) or "stl-cifar@1"; the '
        "spec's own fields win, trainer fields merge key by key; stored expanded, as name@version",
    )

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset"):
            from service.presets import expand

            return expand(data)
        return data


# --- responses ---------------------------------------------------------------------------------------

# Every datetime an answer gives is UTC-aware. SQLite hands our UTC timestamps back naive; Optuna stores
# its trials' times as naive local time.
StoredUtc = Annotated[datetime, AfterValidator(lambda d: d.replace(tzinfo=UTC) if d.tzinfo is None else d)]
OptunaTime = Annotated[datetime, AfterValidator(lambda d: d.astimezone(UTC))]


class Links(BaseModel):
    self: str
    trials: str
    best: str
    stop: str
    report: str  # the study's report page (lambda(t) of the best trials, methods compared, trials)
    optuna_dashboard: str  # redirects to the study's page in optuna-dashboard (mounted at /dashboard)
    dashboard: str | None = None  # the study's Ray job in the Ray dashboard


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
    created_at: StoredUtc
    started_at: StoredUtc | None
    finished_at: StoredUtc | None
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
    error: str | None = Field(
        default=None,
        description="why a FAIL trial failed, short: 'diverged at epoch k', or an error a retry cannot fix",
    )
    info: dict[str, Any] = Field(
        default_factory=dict,
        description="what the run found: XMixup's class pairing, the linearity diagnostics (interpolation "
        "losses, paper 000 eq. 1), the pretrained-source cache, the test accuracy",
    )
    total_steps: int | None = None
    reused_from: int | None = Field(
        default=None, description="the trial whose result this one reuses (same config, not trained again)"
    )
    datetime_start: OptunaTime | None
    datetime_complete: OptunaTime | None


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
    schedule: Schedule | None = Field(description="lambda(t) in iterations, where the method has one")
    info: dict[str, Any] = Field(default_factory=dict, description="as in the trial listing")


class Problem(BaseModel):
    detail: str


class InvalidProblem(BaseModel):
    """A 422: the domain's refusal (`detail` a message), or a request that does not validate (`detail`
    FastAPI's list of errors, each with its `loc`, `msg` and `type`)."""

    detail: str | list[dict[str, Any]]


def problem_response(description: str) -> dict[str, Any]:
    """An error answer of a route whose success is not JSON (text, HTML, a figure): the error body is
    JSON all the same, so OpenAPI must say application/json (FastAPI would give it the route's type)."""
    schema = {"$ref": "#/components/schemas/Problem"}
    return {"model": Problem, "description": description, "content": {"application/json": {"schema": schema}}}

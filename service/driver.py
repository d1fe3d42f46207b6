"""A study's driver: runs as its own Ray job, reads only the stored spec, runs Tune + OptunaSearch.

    python -m service.driver STUDY_ID [ATTEMPT]

The driver moves the study pending -> running -> completed | stopped | failed. Trials still RUNNING when
Tune's run has ended were cut by it (a stop, or the first trials all failing with an error a retry cannot
fix): they are PRUNED.

A driver of attempt k > 0 (started by service.supervisor after one died) continues the same Optuna
study: completed trials stay and TPE sees them; trials the dead driver left RUNNING are failed and their
configs enqueued once more (user attr `retry_of`: the trial resumes from its last epoch checkpoint); it
runs only the trials still missing to `n_trials`. A driver that dies of an unexpected error leaves the
study `running` (with its error noted) for the supervisor to resume; only a study that cannot go on (no
resources, every trial failed) ends `failed`.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from ray.tune import Stopper
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.util import unflatten_dict

from service.db import StudyStatus, engine_from, make_sessionmaker, optuna_storage_from
from service.db_retry import DbRetry, is_transient, retrying_storage, short, with_session
from service.early_stopping import RUNG_ATTR, RUNG_END, TRAINED_EPOCHS, rung_budgets, scheduler
from service.ray_cluster import masked_url, resource_problem
from service.repository import (
    EPOCH_ATTR_PREFIX,
    get_status,
    get_study,
    heartbeat,
    reap_running_trial_numbers,
    reap_running_trials,
    set_error,
    set_status,
    start_attempt,
)
from service.reuse import COPIED_ATTRS, REUSE, REUSED_FROM, ReuseIndex, reused_result
from service.schemas import METRIC, StudySpec
from service.settings import Settings
from service.studies import trial_arm
from service.trainable import (
    DETERMINISTIC,
    EPOCH_REPORT,
    ERROR,
    ERROR_KIND,
    FIRST_REPORT,
    RESUME_FROM,
    TRIAL_NUMBER,
)
from service.tune_events import TrialEventLog, error_summary

logger = logging.getLogger("transched.driver")

OBJECTIVE_NAME = "val_acc"  # the objective's name in Optuna: a trial's best validation accuracy (METRIC)
INTERMEDIATE = "val_acc"  # the epoch metric reported as Optuna's intermediate value at each epoch


def nested(result: dict[str, Any], key: str) -> Any:
    """`result[key]` as the trainable reported it: Tune hands searchers flattened results
    ("info/linearity/val/label_il"), so a nested dict is put together again."""
    flat = {k: v for k, v in result.items() if k.startswith(f"{key}/")}
    return unflatten_dict(flat).get(key, result.get(key)) if flat else result.get(key)


class StoredOptunaSearch(OptunaSearch):
    """OptunaSearch that also keeps what the API needs in the Optuna trial: the sampled config
    (constants included, which Optuna's params lack), per-epoch metrics, node and timings."""

    # Tune pickles its searcher (the Tuner's state, and `save` under the run's folder): without the
    # Optuna study, its trials and the storage, which hold the database URL and its password.
    _UNPICKLED = ("_storage", "_ot_study", "_ot_trials", "_parked")

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._UNPICKLED}

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reuse = ReuseIndex()  # no wasted trials: see service/reuse.py
        self._configs: dict[str, tuple[dict, int]] = {}  # Tune trial id -> (sampled config, number)
        self._parked: tuple[Any, dict] | None = None  # (Optuna trial, config) waiting for its twin to end
        self._seen: dict[str, Any] = {}  # Tune trial id -> training_iteration of the last result stored

    def _unseen(self, trial_id: str, result: dict) -> bool:
        known = "epoch" in result or bool(result.get("final"))
        return known and self._seen.get(trial_id) != result.get("training_iteration")

    def suggest(self, trial_id: str) -> dict | None:
        if self._parked is not None:  # a config identical to a running trial's waits for its result
            ot_trial, config = self._parked
            if self._reuse.match(config)[0] == "running":
                return None  # Tune asks again later
            self._parked = None
            self._ot_trials[trial_id] = ot_trial
            return self._start(trial_id, ot_trial, config)
        config = super().suggest(trial_id)
        if config is None:
            return None
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr("sampled", config)
        self._reuse.load(self._ot_study)
        kind, twin = self._reuse.match(config)
        # A retry of a dead driver's trial (its config is that trial's) never waits: it is that trial.
        if kind == "running" and "retry_of" not in ot_trial.user_attrs:
            del self._ot_trials[trial_id]
            self._parked = (ot_trial, config)
            logger.info("trial %d waits for running trial %d's result (same config)", ot_trial.number, twin)
            return None
        return self._start(trial_id, ot_trial, config)

    def _start(self, trial_id: str, ot_trial: Any, config: dict) -> dict:
        """The config Tune runs: the sampled one with the study's trial number (see service.tune_events)
        and, for a config identical to a COMPLETE trial's, that trial's result to report (not trained)."""
        kind, twin = self._reuse.match(config)
        self._configs[trial_id] = (config, ot_trial.number)
        if kind != "complete":  # a new config (or a retry of one still marked running)
            self._reuse.started(config, ot_trial.number)
            run = {**config, TRIAL_NUMBER: ot_trial.number}  # see service.tune_events
            retry_of = ot_trial.user_attrs.get("retry_of")
            if retry_of is not None:  # a trial a dead driver left: resume from its epoch checkpoint
                run[RESUME_FROM] = int(retry_of)
                self._copy_epochs(int(retry_of), ot_trial)
            return run
        storage, study_id = self._ot_study._storage, self._ot_study._study_id
        original = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, twin))
        reused = reused_result(original)
        for key, value in original.user_attrs.items():
            if key.startswith(EPOCH_ATTR_PREFIX) or key in COPIED_ATTRS:
                ot_trial.set_user_attr(key, value)
        ot_trial.set_user_attr(REUSED_FROM, twin)
        logger.info(
            "trial %d reuses the result of trial %d (identical config, not trained again): %s=%s",
            ot_trial.number, twin, METRIC, reused["value"],
        )  # fmt: skip
        return {**config, TRIAL_NUMBER: ot_trial.number, REUSE: reused}

    def _copy_epochs(self, number: int, ot_trial: Any) -> None:
        """The epochs an earlier trial stored, kept by the trial that retries it from its checkpoint
        (the epochs it trains again, after that checkpoint's, are stored over them)."""
        earlier = next((t for t in self._ot_study.get_trials(deepcopy=False) if t.number == number), None)
        for key, value in (earlier.user_attrs if earlier is not None else {}).items():
            if key.startswith(EPOCH_ATTR_PREFIX):
                ot_trial.set_user_attr(key, value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # A trial ended before its last result (study stopped, scheduler) has only a partial value:
        # it reaches Optuna as PRUNED, not COMPLETE, so TPE and /best only see fully trained trials.
        failed = result is not None and bool(result.get(ERROR))
        complete = result is not None and not error and not failed and bool(result.get("final"))
        if trial_id not in self._completed_trials:  # else told already (a failure, on its last result)
            if failed:
                self._fail(trial_id, result)
            else:
                if result is not None and not error and self._unseen(trial_id, result):
                    # Tune hands the result a scheduler stopped the trial at (ASHA stops a trial at a rung,
                    # and at max_t on its final result) to on_trial_complete only: store it as any other
                    self.on_trial_result(trial_id, result)
                super().on_trial_complete(trial_id, result=result if complete else None, error=error)
        if trial_id in self._configs:  # the reuse index learns how the config ended, whatever the path
            config, number = self._configs.pop(trial_id)
            self._reuse.finished(config, number, complete=complete and result.get(METRIC) is not None)

    def _fail(self, trial_id: str, result: dict) -> None:
        """A trial that failed for good (diverged, or an error a retry cannot fix) says why in its last
        result: FAIL with that reason, told at once, so that a run ended meanwhile cannot lose it."""
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr("error", result[ERROR])
        ot_trial.set_user_attr("error_kind", result.get(ERROR_KIND))
        super().on_trial_complete(trial_id, result=None, error=True)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Not OptunaSearch's own: it reports the objective (the running best) at Tune's iteration. Optuna's
        # intermediate values here are each epoch's validation accuracy at its epoch, the learning curve
        # optuna-dashboard draws; the objective (`tell`) stays the best validation accuracy.
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return
        self._seen[trial_id] = result.get("training_iteration")
        if not result.get("final") and result.get(INTERMEDIATE) is not None:
            # The step: epochs trained so far (schedule_sh's rung runs in a row), the epoch otherwise.
            ot_trial.report(float(result[INTERMEDIATE]), int(result.get(TRAINED_EPOCHS) or result["epoch"]))
        if result.get(ERROR):
            self._fail(trial_id, result)
            return
        if result.get("final"):
            for key in ("test_acc", "best_epoch", "total_steps", "finished_at"):
                ot_trial.set_user_attr(key, result.get(key))
            ot_trial.set_user_attr("info", nested(result, "info"))
            return
        if result.get(RUNG_END):  # a compressed rung's end (schedule_sh): its epochs are stored already
            rungs = ot_trial.user_attrs.get("rungs", [])
            ot_trial.set_user_attr("rungs", [*rungs, {k: result.get(k) for k in (RUNG_ATTR, METRIC)}])
            return
        # The first epoch of an attempt (the epoch after its checkpoint's when it resumed from one; the
        # first of a trial's rung runs under schedule_sh).
        if result.get(FIRST_REPORT, result.get("epoch") == 1):
            if "started_at" in ot_trial.user_attrs:  # the trial was rerun after its worker died
                ot_trial.set_user_attr("restarts", ot_trial.user_attrs.get("restarts", 0) + 1)
            for key in ("node", "node_id", "device", "started_at", "total_steps"):
                ot_trial.set_user_attr(key, result.get(key))
        # The trainer's epoch report, stored as it is: its keys are the trainer's, method keys included.
        ot_trial.set_user_attr(f"{EPOCH_ATTR_PREFIX}{int(result['epoch']):05d}", nested(result, EPOCH_REPORT))


def describe_study(ot_study: Any, spec: StudySpec, *, study_id: str) -> None:
    """What a reader of the Optuna study (optuna-dashboard, `optuna.load_study`) needs to know which study
    it is: the objective's name and the transched study's id, name and spec summary, as study user attrs."""
    with warnings.catch_warnings():  # set_metric_names is marked experimental; it is what the dashboard reads
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ot_study.set_metric_names([OBJECTIVE_NAME])
    trainer = spec.trainer
    summary = {
        "transched_id": study_id,
        "name": spec.name,
        "methods": ", ".join(spec.resolved_methods()),
        "n_trials": spec.n_trials,
        "target": trainer.target,
        "source": trainer.source,
        "backbone": trainer.backbone,
        "epochs": trainer.epochs,
        "n_target": trainer.n_target,
        # Paths on the API that serves this dashboard (it is mounted in the API process, same host).
        "api": f"/studies/{study_id}",
        "report": f"/studies/{study_id}/report",
    }
    for key, value in summary.items():
        ot_study.set_user_attr(key, value)


class StopWhenAsked(Stopper):
    """A Tune stopper that ends the whole run once the study's stored status is `stopping`.

    Tune pickles its run config with the Tuner, so the database engine is made lazily and neither it nor
    the settings (the database URL) are pickled: an unpickled one reads its settings from the environment.
    """

    def __init__(self, settings: Settings, study_id: str, every_s: float = 2.0):
        self._settings, self._study_id, self._every_s = settings, study_id, every_s
        self._sessions: Any = None
        self._db: DbRetry | None = None
        self._last, self._stop = 0.0, False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sessions": None, "_settings": None, "_db": None}

    def __call__(self, trial_id: str, result: dict) -> bool:
        return self.stop_all()

    def stop_all(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._last >= self._every_s:
            self._last = now
            if self._sessions is None:
                settings = self._settings or Settings()
                self._sessions = make_sessionmaker(engine_from(settings, pool_size=1, max_overflow=0))
                self._db = DbRetry(settings.db_retry_s)
            # Waits out a database outage as the searcher's writes do (see service.db_retry).
            with_session(self._sessions, self._db, heartbeat, study_id=self._study_id)
            status = with_session(self._sessions, self._db, get_status, study_id=self._study_id)
            self._stop = status == StudyStatus.stopping
        return self._stop


class EndOnDeterministicFailures(Stopper):
    """A Tune stopper that ends the run once the first `first` trials to end all failed with an error a
    retry cannot fix (missing dataset, bad config): every other trial would fail the same way.
    `tripped` holds the first such error after it has ended the run."""

    def __init__(self, first: int):
        self.first, self.tripped = first, None
        self.outcomes: dict[str, str | None] = {}  # trial id -> its error, None if it worked; in order

    def __call__(self, trial_id: str, result: dict) -> bool:
        # A function trainable's last result comes twice (again with done=True when it returns).
        if result.get("final") and trial_id not in self.outcomes:
            failed = result.get(ERROR_KIND) == DETERMINISTIC
            self.outcomes[trial_id] = result.get(ERROR) if failed else None
            if len(self.outcomes) == self.first and all(self.outcomes.values()):
                self.tripped = next(iter(self.outcomes.values()))
        return False

    def stop_all(self) -> bool:
        return self.tripped is not None


def fail_fast_after(spec: StudySpec) -> int:
    """How many trials must fail deterministically, and first, to end a study: at least one per
    method, so that a method of its own with a bad config does not end the others."""
    return min(spec.n_trials, max(3, len(spec.resolved_methods())))


def checkpoint_dir(settings: Settings, optuna_name: str) -> Path:
    """The study's epoch checkpoints: `<data_dir>/checkpoints/<optuna study name>/<trial number>.pt`."""
    return (settings.data_dir / "checkpoints" / optuna_name).resolve()


def _searcher(spec: StudySpec, plan: ResumePlan, *, optuna_name: str, storage: Any) -> StoredOptunaSearch:
    """OptunaSearch with TPE over the study's space, writing its trials into `optuna_name`."""
    from search_spaces import build_space

    sampler = optuna.samplers.TPESampler(
        # A resumed driver draws other random startup configs than the first one (same seed: repeats).
        seed=(spec.seed + plan.attempt) % 2**32,
        constant_liar=True,  # parallel trials: pending ones count as bad guesses, not as nothing
        multivariate=True,
        group=True,  # the space is conditional on the method
        n_startup_trials=spec.startup_trials,
    )
    arms = spec.resolved_methods()
    return StoredOptunaSearch(
        space=build_space(arms),
        # Each method once before TPE chooses, so every method of the study is tried; never more points
        # than trials (Optuna would keep the rest WAITING forever).
        points_to_evaluate=(
            [{"method": a} for a in arms if a not in plan.tried][: plan.remaining] if len(arms) > 1 else None
        ),
        metric=METRIC,
        mode="max",
        sampler=sampler,
        study_name=optuna_name,
        storage=storage,
    )


def build_tuner(
    spec: StudySpec,
    *,
    study_id: str,
    optuna_name: str,
    storage: Any,
    settings: Settings,
    fail_fast: EndOnDeterministicFailures | None = None,
    plan: ResumePlan | None = None,
):
    """Tune + OptunaSearch (TPE) over the study's space, writing its trials into `optuna_name`; with a
    resume `plan`, only the trials still missing and the method points of arms not tried yet."""
    plan = plan or ResumePlan(remaining=spec.n_trials)
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.stopper import CombinedStopper

    from service.trainable import run_trial

    searcher = _searcher(spec, plan, optuna_name=optuna_name, storage=storage)
    # OptunaSearch has created the Optuna study by now (a space is given): name and describe it.
    describe_study(optuna.load_study(study_name=optuna_name, storage=storage), spec, study_id=study_id)
    fail_fast = fail_fast or EndOnDeterministicFailures(fail_fast_after(spec))
    es = spec.early_stopping
    resources = {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial, **spec.resources_per_trial}
    trainable = tune.with_resources(
        partial(
            run_trial,
            fixed=spec.trainer.to_dict(),
            cpus_per_trial=spec.cpus_per_trial,
            gpus_per_trial=spec.gpus_per_trial,
            study={"study_id": study_id, "study_name": spec.name},
            checkpoint_dir=str(checkpoint_dir(settings, optuna_name)),
            rungs=rung_budgets(es, spec.trainer.epochs) if es.kind == "schedule_sh" else None,
        ),
        resources,
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=plan.remaining,
            max_concurrent_trials=spec.max_concurrent_trials,
            scheduler=scheduler(es, max_epochs=spec.trainer.epochs, metric=METRIC),
            reuse_actors=True,  # measured here: 0.4 s per trial instead of 2.0 s
        ),
        run_config=tune.RunConfig(
            name=optuna_name if not plan.attempt else f"{optuna_name}-r{plan.attempt}",
            storage_path=str((settings.data_dir / "ray_results").resolve()),
            stop=CombinedStopper(StopWhenAsked(settings, study_id), fail_fast),
            # A trial whose worker or node died is rerun (on any node that fits) up to max_retries times.
            failure_config=tune.FailureConfig(max_failures=spec.max_retries),
            # JSON results alone (see service.ray_cluster.TUNE_ENV): the ResultGrid reads result.json.
            callbacks=[
                TrialEventLog(spec.name, metric=METRIC, epochs=spec.trainer.epochs),
                JsonLoggerCallback(),
            ],
            verbose=0,  # Tune's status tables name trials as Tune does; TrialEventLog names them as the study
        ),
    )


@dataclass
class ResumePlan:
    """What a driver runs: `remaining` trials, method points only for arms not `tried`."""

    remaining: int
    attempt: int = 0
    tried: set[str] = field(default_factory=set)
    retried: list[int] = field(default_factory=list)  # trials left RUNNING whose configs run again


def plan_resume(storage: Any, *, optuna_name: str, n_trials: int, attempt: int) -> ResumePlan:
    """Take over the Optuna study a dead driver left (a no-op for a new study).

    Trials left RUNNING are marked FAIL, and each one's config is enqueued once more with user attr
    `retry_of` (the trainable resumes it from that trial's last epoch checkpoint); a trial that was itself
    a retry is not retried again. Finished trials: COMPLETE, PRUNED, and FAIL except a failed trial
    whose retry is enqueued (the retry takes its place). The driver runs `n_trials` minus those; WAITING
    (enqueued) trials are among them, taken first."""
    from service.repository import load_optuna_study

    ot_study = load_optuna_study(storage, name=optuna_name)
    if ot_study is None:
        return ResumePlan(remaining=n_trials, attempt=attempt)
    left = set(reap_running_trial_numbers(storage, name=optuna_name))
    trials = ot_study.get_trials(deepcopy=False)
    retried_of = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    plan = ResumePlan(remaining=0, attempt=attempt)
    for t in trials:
        if t.number in left and "retry_of" not in t.user_attrs and t.number not in retried_of:
            ot_study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            retried_of.add(t.number)
            plan.retried.append(t.number)
    state = optuna.trial.TrialState
    finished = [
        t
        for t in trials
        if t.state in (state.COMPLETE, state.PRUNED) or (t.state == state.FAIL and t.number not in retried_of)
    ]
    plan.remaining = max(n_trials - len(finished), 0)
    for t in trials:
        fixed = t.system_attrs.get("fixed_params") or {}
        if t.user_attrs.get("sampled") or fixed.get("method"):
            plan.tried.add(trial_arm(t) if t.user_attrs.get("sampled") else fixed["method"])
    logger.info(
        "attempt %d of %s: %d finished trials kept, %d left RUNNING retried (%s), %d to run",
        attempt, optuna_name, len(finished), len(plan.retried), plan.retried, plan.remaining,
    )  # fmt: skip
    return plan


def run_study(study_id: str, settings: Settings, attempt: int = 0) -> StudyStatus:
    import ray

    # Small pools: a driver needs few connections, and many drivers share one PostgreSQL (see README).
    engine = engine_from(settings, pool_size=1, max_overflow=0)
    sessions = make_sessionmaker(engine)
    # Every database call of the driver waits out an outage (see service.db_retry), the searcher's too.
    db = DbRetry(settings.db_retry_s)
    row = with_session(sessions, db, get_study, study_id=study_id)
    if row is None:
        raise SystemExit(f"no study {study_id} in {masked_url(settings.resolved_database_url)}")
    spec = StudySpec.model_validate(row.spec)
    optuna_name = row.optuna_study_name
    if not with_session(sessions, db, start_attempt, study_id=study_id, attempt=attempt):
        logger.warning("study %s is %s at attempt %d, not %d: nothing to run", study_id, row.status,
                       row.attempts, attempt)  # fmt: skip
        return StudyStatus(row.status)

    storage = retrying_storage(db.call(optuna_storage_from, settings, pool_size=2, max_overflow=2), db)
    final: StudyStatus | None = None
    message: str | None = None
    try:
        ray.init(address=settings.ray_gcs_address or "auto", logging_level=logging.WARNING)
        problem = resource_problem(spec, ray.cluster_resources())
        if problem:
            final, message = StudyStatus.failed, problem
            logger.error("study %s cannot run: %s", study_id, problem)
            return final
        plan = plan_resume(storage, optuna_name=optuna_name, n_trials=spec.n_trials, attempt=attempt)
        final, message = _run_tuner(spec, plan, study_id=study_id, optuna_name=optuna_name,
                                    storage=storage, settings=settings, sessions=sessions, db=db)  # fmt: skip
        return final
    except BaseException as exc:
        message = f"{type(exc).__name__}: {exc}"[:500]
        if is_transient(exc):  # Optuna's own message would blame "invalid data in the commit"
            message = f"the database was unavailable for over {settings.db_retry_s:.0f}s: {short(exc)}"
        raise
    finally:
        _finish(sessions, db, storage, study_id=study_id, optuna_name=optuna_name, final=final,
                message=message, attempt=attempt)  # fmt: skip
        db.outage.close()  # an outage the study outlived is said to be over, in the driver's log
        engine.dispose()


def _run_tuner(spec: StudySpec, plan: ResumePlan, *, study_id: str, optuna_name: str, storage: Any,
               settings: Settings, sessions: Any, db: DbRetry) -> tuple[StudyStatus, str | None]:  # fmt: skip
    """Run the planned trials; the study's end and its message."""
    fail_fast = EndOnDeterministicFailures(fail_fast_after(spec))
    results: list[Any] = []
    if plan.remaining > 0:
        tuner = build_tuner(spec, study_id=study_id, optuna_name=optuna_name, storage=storage,
                            settings=settings, fail_fast=fail_fast, plan=plan)  # fmt: skip
        results = list(tuner.fit())
    final, message = _outcome(sessions, db, study_id, results, fail_fast)
    # Trials still RUNNING were cut by the run's end (a stop, or the failures above): not failures.
    n = reap_running_trials(storage, name=optuna_name, state=optuna.trial.TrialState.PRUNED)
    if n:
        logger.info("marked %d trial(s) cut by the run's end as PRUNED", n)
    shutil.rmtree(checkpoint_dir(settings, optuna_name), ignore_errors=True)
    logger.info("study %s %s (%d trials): %s", study_id, final.value, len(results), message or "ok")
    return final, message


def _finish(sessions: Any, db: DbRetry, storage: Any, *, study_id: str, optuna_name: str,
            final: StudyStatus | None, message: str | None, attempt: int) -> None:  # fmt: skip
    """Write the study's end, if the study is still this driver's attempt (else a newer driver runs it).
    A driver that died of an unexpected error (`final` None) ends a stopping study `stopped`; any other
    it leaves `running`, its trials as they are, with the error noted, for the supervisor to resume (or
    to fail with that note after `max_resumes`)."""
    row = with_session(sessions, db, get_study, study_id=study_id)
    if row is None or row.attempts != attempt:
        logger.warning("study %s has moved on to attempt %s: its end is not ours to write", study_id,
                       row.attempts if row else None)  # fmt: skip
        return
    if final is None and row.status != StudyStatus.stopping:
        error = f"the driver died: {message}"
        with_session(sessions, db, set_error, study_id=study_id, error=error, attempt=attempt)
        return
    # Reap before the final status is written: whoever sees the study ended sees no RUNNING trial.
    n = reap_running_trials(storage, name=optuna_name)
    if n:
        logger.warning("marked %d trial(s) left RUNNING as FAIL", n)
    if final is None:
        final, message = StudyStatus.stopped, None
    with_session(sessions, db, set_status, study_id=study_id, status=final, error=message, attempt=attempt)
    if message is None:  # a resumed study's "resumed ..." note is done with
        with_session(sessions, db, set_error, study_id=study_id, error=None, attempt=attempt)


def trial_errors(results: Any) -> list[str]:
    """Each failed trial's error, short: Tune's (a crash, retries used up), else the one it reported
    (diverged, or an error a retry cannot fix)."""
    errors = []
    for r in results:
        if r.error is not None:
            errors.append(error_summary(r.error, limit=500))
        elif (r.metrics or {}).get(ERROR):
            errors.append(r.metrics[ERROR])
    return errors


def _outcome(sessions: Any, db: DbRetry, study_id: str, results: Any, fail_fast: EndOnDeterministicFailures):
    """The study's final status and error message once Tune's run has ended."""
    errors = trial_errors(results)
    message = f"{len(errors)} of {len(results)} trials failed: {errors[0]}" if errors else None
    if with_session(sessions, db, get_status, study_id=study_id) == StudyStatus.stopping:
        return StudyStatus.stopped, message
    if fail_fast.tripped is not None:
        return StudyStatus.failed, (
            f"the first {fail_fast.first} trials failed with an error a retry cannot fix: {fail_fast.tripped}"
        )
    if errors and len(errors) == len(results):
        return StudyStatus.failed, message
    return StudyStatus.completed, message


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2) or (len(argv) == 2 and not argv[1].isdigit()):
        print("usage: python -m service.driver STUDY_ID [ATTEMPT]", file=sys.stderr)
        return 2
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    status = run_study(argv[0], settings, int(argv[1]) if len(argv) == 2 else 0)
    return 0 if status in (StudyStatus.completed, StudyStatus.stopped) else 1


if __name__ == "__main__":
    raise SystemExit(main())

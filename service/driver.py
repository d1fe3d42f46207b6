"""A study's driver: runs as its own Ray job, reads only the stored spec, runs Tune over the ledger.

    python -m service.driver STUDY_ID [ATTEMPT]

The driver moves the study pending -> running -> completed | stopped | failed. Trials still RUNNING when
Tune's run has ended were cut by it (a stop, or the first trials all failing with an error a retry cannot
fix): they are PRUNED.

A driver of attempt k > 0 (started by service.supervisor after one died) continues the same Optuna
study: completed trials stay and TPE sees them; trials the dead driver left RUNNING are failed and their
configs run once more first (origin `retry`, user attr `retry_of`: the trial resumes from its last epoch
checkpoint); it runs only the trials still missing to `n_trials` (service.ledger.plan_study). A driver
that dies of an unexpected error leaves the study `running` (with its error noted) for the supervisor
to resume; only a study that cannot go on (no resources, every trial failed) ends `failed`.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import sys
import time
import warnings
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune import Stopper
from ray.tune.search import Searcher

import service.ledger
from service.db import StudyStatus, check_optuna_schema, engine_from, make_sessionmaker, optuna_storage_from
from service.db_retry import DbRetry, is_transient, retrying_storage, short, with_session
from service.early_stopping import RUNG_ATTR, RUNG_END, TRAINED_EPOCHS, rung_budgets, scheduler
from service.ledger import (
    COPIED,
    OBJECTIVE_NAME,
    Draft,
    Ledger,
    Origin,
    Plan,
    epoch_key,
    plan_study,
)
from service.ray_cluster import masked_url, resource_problem
from service.repository import (
    get_status,
    get_study,
    heartbeat,
    reap_running_trials,
    set_error,
    set_status,
    start_attempt,
)
from service.reuse import ReuseIndex
from service.schemas import METRIC, StudySpec
from service.settings import Settings
from service.trainable import (
    DETERMINISTIC,
    EPOCH_REPORT,
    ERROR,
    ERROR_KIND,
    FIRST_REPORT,
    PARAMS,
    RUN,
    TrialRun,
)
from service.tune_events import TrialEventLog, error_summary

logger = logging.getLogger("transched.driver")

INTERMEDIATE = "val_acc"  # the epoch metric reported as Optuna's intermediate value at each epoch
FINAL_FIELDS = ("test_acc", "best_epoch", "total_steps", "finished_at", "info")  # of a trial's last result


def nested(result: dict[str, Any], key: str) -> Any:
    """`result[key]` as the trainable reported it: Tune hands searchers flattened results
    ("info/linearity/val/label_il"), so a nested dict is put together again."""
    prefix = f"{key}/"
    flat = {k[len(prefix) :]: v for k, v in result.items() if k.startswith(prefix)}
    if not flat:
        return result.get(key)
    out: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


class TrialSearcher(Searcher):
    """Tune's searcher for a study: a thin class on Ray Tune's public `Searcher` hooks over the ledger
    (service.ledger), which asks TPE for configs and writes every fact of a trial to the store.

    `suggest` hands Tune the config to run (`{"params": sampled config, "run": TrialRun}`); a config
    identical to a COMPLETE trial's reuses its result, one identical to a running trial's waits for it
    (service.reuse). `on_trial_result` stores each epoch (one transaction), `on_trial_complete` tells the
    trial's end: COMPLETE only for a trial that reported its final result (a trial a stop or a scheduler
    cut is PRUNED, so TPE and /best only see fully trained trials), FAIL with the reason it reported."""

    def __init__(self, ledger: Ledger, *, metric: str, mode: str = "max"):
        super().__init__(metric=metric, mode=mode)
        self.ledger = ledger
        self.reuse = ReuseIndex()  # no wasted trials: see service/reuse.py
        self.reuse.load(ledger.complete_configs())
        self.numbers: dict[str, int] = {}  # Tune trial id -> the study's trial number
        self.parked: Draft | None = None  # a config waiting for its running twin's result
        self.seen: dict[str, Any] = {}  # Tune trial id -> training_iteration of the last result stored
        self.told: set[str] = set()
        self.configs: dict[str, dict] = {}  # Tune trial id -> the sampled config it runs

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its searcher (the Tuner's state): without the ledger, which holds the store.
        return {"numbers": dict(self.numbers)}

    def save(self, checkpoint_path: str) -> None:
        # The study's state is the store (a resumed driver plans from it), not a file of Tune's.
        Path(checkpoint_path).write_text(json.dumps({"study": self.ledger.name}))

    def restore(self, checkpoint_path: str) -> None:
        pass

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the space is the ledger's; Tune's metric and mode are the study's

    def suggest(self, trial_id: str) -> dict | None:
        waited, self.parked = self.parked, None
        draft = waited or self.ledger.ask()
        kind, twin = self.reuse.match(draft.config)
        # A retry of a dead driver's trial (its config is that trial's) never waits: it is that trial.
        if kind == "running" and draft.origin.kind != "retry":
            if waited is None:
                logger.info("a config waits for running trial %d's result (the same config)", twin)
            self.parked = draft
            return None  # Tune asks again later
        if kind == "complete":  # identical to a finished trial: its result, not trained again
            original = self.ledger.record_of(twin)
            record = self.ledger.start(replace(draft, origin=Origin("reused", twin)), copied=original)
            logger.info(
                "trial %d reuses the result of trial %d (identical config, not trained again): %s=%s",
                record.number, twin, METRIC, original.value,
            )  # fmt: skip
            found = {k: getattr(original, k) for k in COPIED if getattr(original, k) not in (None, {})}
            run = TrialRun(number=record.number, reuse={"number": twin, "value": original.value, **found})
        else:
            record = self.ledger.start(draft)
            self.reuse.started(draft.config, record.number)
            run = TrialRun(number=record.number)
            if draft.origin.kind == "retry":  # a trial a dead driver left: resume from its epoch checkpoint
                run["resume_from"] = int(draft.origin.of)
        self.numbers[trial_id], self.configs[trial_id] = record.number, draft.config
        return {PARAMS: draft.config, RUN: run}

    def unseen(self, trial_id: str, result: dict) -> bool:
        known = "epoch" in result or bool(result.get("final"))
        return known and self.seen.get(trial_id) != result.get("training_iteration")

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        number = self.numbers.get(trial_id)
        if number is None or trial_id in self.told:
            return
        self.seen[trial_id] = result.get("training_iteration")
        record = self.ledger.live[number]
        if result.get(ERROR):
            self.fail(trial_id, result)
            return
        if result.get("final"):
            record.test_acc, record.best_epoch = result.get("test_acc"), result.get("best_epoch")
            record.total_steps, record.finished_at = result.get("total_steps"), result.get("finished_at")
            record.info = nested(result, "info") or {}
            self.ledger.write(
                number, {k: getattr(record, k) for k in FINAL_FIELDS if getattr(record, k) is not None}
            )
            return
        if result.get(RUNG_END):  # a compressed rung's end (schedule_sh): its epochs are stored already
            record.rungs.append({k: result.get(k) for k in (RUNG_ATTR, METRIC)})
            self.ledger.write(number, {"rungs": record.rungs})
            return
        attrs: dict[str, Any] = {}
        # The first epoch of an attempt (the epoch after its checkpoint's when it resumed from one; the
        # first of a trial's rung runs under schedule_sh): where it runs.
        if result.get(FIRST_REPORT, result.get("epoch") == 1):
            if record.started_at is not None:  # the trial was rerun after its worker died
                record.restarts += 1
                attrs["restarts"] = record.restarts
            for key in ("node", "node_id", "device", "started_at", "total_steps"):
                setattr(record, key, result.get(key))
                attrs[key] = result.get(key)
        # The trainer's epoch report, stored as it is: its keys are the trainer's, method keys included.
        epoch = nested(result, EPOCH_REPORT)
        if epoch is not None:
            record.epochs = [e for e in record.epochs if e.get("epoch") != epoch.get("epoch")] + [epoch]
            attrs[epoch_key(result["epoch"])] = epoch
        # Optuna's intermediate values are each epoch's validation accuracy at its step (epochs trained so
        # far: schedule_sh's rung runs in a row), the learning curve optuna-dashboard draws.
        value = result.get(INTERMEDIATE)
        step = int(result.get(TRAINED_EPOCHS) or result["epoch"])
        self.ledger.write(number, attrs, step=step if value is not None else None, value=value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number = self.numbers.get(trial_id)
        if number is None:
            return
        failed = result is not None and bool(result.get(ERROR))
        value = (result or {}).get(METRIC)
        complete = (
            result is not None
            and not error
            and not failed
            and bool(result.get("final"))
            and value is not None
        )
        if trial_id not in self.told:  # else told already (a failure, on its last result)
            if failed:
                self.fail(trial_id, result)
            else:
                if result is not None and not error and self.unseen(trial_id, result):
                    # Tune hands the result a scheduler stopped the trial at (ASHA stops a trial at a rung,
                    # and at max_t on its final result) to on_trial_complete only: store it as any other
                    self.on_trial_result(trial_id, result)
                self.told.add(trial_id)
                state = TrialState.COMPLETE if complete else (TrialState.FAIL if error else TrialState.PRUNED)
                self.ledger.tell(number, state, float(value) if complete else None)
        config = self.configs.pop(trial_id, None)
        if config is not None:  # the reuse index learns how the config ended, whatever the path
            self.reuse.finished(config, number, complete=complete)

    def fail(self, trial_id: str, result: dict) -> None:
        """A trial that failed for good (diverged, or an error a retry cannot fix) says why in its last
        result: FAIL with that reason, told at once, so that a run ended meanwhile cannot lose it."""
        number = self.numbers[trial_id]
        record = self.ledger.live[number]
        record.error, record.error_kind = result[ERROR], result.get(ERROR_KIND)
        self.ledger.write(number, {"error": record.error, "error_kind": record.error_kind})
        self.told.add(trial_id)
        self.ledger.tell(number, TrialState.FAIL)


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


def checkpoint_dir(spec: StudySpec, optuna_name: str) -> Path:
    """The study's epoch checkpoints: `checkpoints/<optuna study name>/<trial number>.pt` beside its
    artifact cache (by default `<data dir>/checkpoints/...`). The stored spec's, not the driver's data
    dir: whichever API replica resumes a study, its retries find the dead driver's checkpoints (issue 18).
    The spec's paths are absolute once stored (StudySpec.with_paths_under, at submission)."""
    return (Path(spec.trainer.artifact_dir).parent / "checkpoints" / optuna_name).resolve()


def sampler_for(spec: StudySpec, plan: Plan) -> optuna.samplers.TPESampler:
    """TPE over the study's space, as every attempt of the study samples."""
    return optuna.samplers.TPESampler(
        # A resumed driver draws other random startup configs than the first one (same seed: repeats).
        seed=(spec.seed + plan.attempt) % 2**32,
        constant_liar=True,  # parallel trials: pending ones count as bad guesses, not as nothing
        multivariate=True,
        group=True,  # the space is conditional on the method
        n_startup_trials=spec.startup_trials,
    )


def open_ledger(
    spec: StudySpec, plan: Plan, *, optuna_name: str, storage: Any, connect: Any, db: DbRetry
) -> Ledger:
    """The study's ledger: its Optuna study in the store (created if new), TPE on the shadow."""
    from search_spaces import build_space

    return Ledger(
        storage,
        name=optuna_name,
        connect=connect,
        db=db,
        sampler=sampler_for(spec, plan),
        space=build_space(spec.resolved_methods()),
        plan=plan,
    )


def build_tuner(
    spec: StudySpec,
    *,
    study_id: str,
    ledger: Ledger,
    settings: Settings,
    plan: Plan,
    fail_fast: EndOnDeterministicFailures | None = None,
    events: TrialEventLog | None = None,
):
    """Tune over the ledger's searcher: the planned trials, `plan.remaining` of them."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.stopper import CombinedStopper

    from service.trainable import run_trial

    optuna_name = ledger.name
    describe_study(ledger.study, spec, study_id=study_id)
    fail_fast = fail_fast or EndOnDeterministicFailures(fail_fast_after(spec))
    events = events or TrialEventLog(spec.name, metric=METRIC, epochs=spec.trainer.epochs)
    es = spec.early_stopping
    resources = {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial, **spec.resources_per_trial}
    trainable = tune.with_resources(
        partial(
            run_trial,
            fixed=spec.trainer.to_dict(),
            cpus_per_trial=spec.cpus_per_trial,
            gpus_per_trial=spec.gpus_per_trial,
            study={"study_id": study_id, "study_name": spec.name},
            checkpoint_dir=str(checkpoint_dir(spec, optuna_name)),
            rungs=rung_budgets(es, spec.trainer.epochs) if es.kind == "schedule_sh" else None,
        ),
        resources,
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=TrialSearcher(ledger, metric=METRIC, mode="max"),
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
            callbacks=[events, JsonLoggerCallback()],
            verbose=0,  # Tune's status tables name trials as Tune does; TrialEventLog names them as the study
        ),
    )


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

    store = db.call(optuna_storage_from, settings, pool_size=2, max_overflow=2)
    db.call(check_optuna_schema, store)  # the ledger writes Optuna's tables directly: only its schema
    storage = retrying_storage(store, db)
    final: StudyStatus | None = None
    message: str | None = None
    try:
        ray.init(address=settings.ray_gcs_address or "auto", logging_level=logging.WARNING)
        problem = resource_problem(spec, ray.cluster_resources())
        if problem:
            final, message = StudyStatus.failed, problem
            logger.error("study %s cannot run: %s", study_id, problem)
            return final
        plan = plan_study(storage, name=optuna_name, n_trials=spec.n_trials, attempt=attempt,
                          arms=list(spec.resolved_methods()))  # fmt: skip
        final, message = _run_tuner(spec, plan, study_id=study_id, optuna_name=optuna_name,
                                    storage=storage, settings=settings, sessions=sessions, db=db,
                                    connect=engine.connect)  # fmt: skip
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


def _run_tuner(spec: StudySpec, plan: Plan, *, study_id: str, optuna_name: str, storage: Any,
               settings: Settings, sessions: Any, db: DbRetry,
               connect: Any) -> tuple[StudyStatus, str | None]:  # fmt: skip
    """Run the planned trials; the study's end and its message."""
    fail_fast = EndOnDeterministicFailures(fail_fast_after(spec))
    events = TrialEventLog(spec.name, metric=METRIC, epochs=spec.trainer.epochs)
    results: list[Any] = []
    ledger = open_ledger(spec, plan, optuna_name=optuna_name, storage=storage, connect=connect, db=db)
    if plan.remaining > 0:
        tuner = build_tuner(spec, study_id=study_id, ledger=ledger, settings=settings, plan=plan,
                            fail_fast=fail_fast, events=events)  # fmt: skip
        # Everything alive now (imports, Ray, Tune's and the ledger's setup) lives as long as the driver:
        # the garbage collector need not walk it again at every collection. Measured in B2: 1/5 of the
        # driver's CPU per trial was collections walking these objects.
        gc.freeze()
        results = list(tuner.fit())
    else:
        describe_study(ledger.study, spec, study_id=study_id)
    final, message = _outcome(sessions, db, study_id, results, fail_fast)
    # Trials still RUNNING were cut by the run's end (a stop, or the failures above): not failures.
    n = reap_running_trials(storage, name=optuna_name, state=optuna.trial.TrialState.PRUNED)
    if n:
        logger.info("marked %d trial(s) cut by the run's end as PRUNED", n)
    log_summary(events, storage, name=optuna_name)
    shutil.rmtree(checkpoint_dir(spec, optuna_name), ignore_errors=True)
    logger.info("study %s %s (%d trials): %s", study_id, final.value, len(results), message or "ok")
    return final, message


def log_summary(events: TrialEventLog, storage: Any, *, name: str) -> None:
    """The study's summary line in the driver's log, naming the study's best trial (the one definition
    of it, service.ledger.best_trial: the trial /best and the report name)."""
    try:
        best = service.ledger.best_trial(storage, name=name)
    except Exception as exc:  # a line of the log is not worth the study: say so and go on
        logger.warning("no summary line: the best trial could not be read (%s)", short(exc))
        return
    events.log_summary(best)


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

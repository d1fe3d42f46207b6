"""A study's driver: runs as its own Ray job, reads only the stored spec, runs Tune + OptunaSearch.

    python -m service.driver STUDY_ID [ATTEMPT]

The driver moves the study pending -> running -> completed | stopped | failed, and on the way out
fails any Optuna trial still RUNNING (Optuna's heartbeat does not run under ask-and-tell).

A driver of attempt k > 0 (started by service.supervisor after one died) continues the same Optuna
study: completed trials stay and TPE sees them; trials the dead driver left RUNNING are failed and their
configs enqueued once more (user attr `retry_of`); it runs only the trials still missing to `n_trials`.
A driver that dies of an unexpected error leaves the study `running` (with its error noted) for the
supervisor to resume; only a study that cannot go on (no resources, every trial failed) ends `failed`.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ray.tune import Stopper
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.util import unflatten_dict

from service.db import StudyStatus, engine_from, make_sessionmaker, optuna_storage_from
from service.ray_cluster import resource_problem
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
from service.schemas import METRIC, StudySpec
from service.settings import Settings
from service.studies import trial_arm
from service.trainable import EPOCH_REPORT, TRIAL_NUMBER
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

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config is not None:
            self._ot_trials[trial_id].set_user_attr("sampled", config)
            config = {**config, TRIAL_NUMBER: self._ot_trials[trial_id].number}  # see service.tune_events
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # A trial ended before its last result (study stopped, scheduler) has only a partial value:
        # it reaches Optuna as PRUNED, not COMPLETE, so TPE and /best only see fully trained trials.
        if result is not None and not error and not result.get("final"):
            result = None
        super().on_trial_complete(trial_id, result=result, error=error)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Not OptunaSearch's own: it reports the objective (the running best) at Tune's iteration. Optuna's
        # intermediate values here are each epoch's validation accuracy at its epoch, the learning curve
        # optuna-dashboard draws; the objective (`tell`) stays the best validation accuracy.
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return
        if not result.get("final") and result.get(INTERMEDIATE) is not None:
            ot_trial.report(float(result[INTERMEDIATE]), int(result["epoch"]))
        if result.get("final"):
            for key in ("test_acc", "best_epoch", "total_steps", "finished_at"):
                ot_trial.set_user_attr(key, result.get(key))
            ot_trial.set_user_attr("info", nested(result, "info"))
            return
        if result.get("epoch") == 1:
            if f"{EPOCH_ATTR_PREFIX}00001" in ot_trial.user_attrs:  # the trial was rerun after a failure
                ot_trial.set_user_attr("restarts", ot_trial.user_attrs.get("restarts", 0) + 1)
            for key in ("node", "node_id", "device", "started_at", "total_steps"):
                ot_trial.set_user_attr(key, result.get(key))
        # The trainer's epoch report, stored as it is: its keys are the trainer's, method keys included.
        ot_trial.set_user_attr(f"{EPOCH_ATTR_PREFIX}{int(result['epoch']):05d}", nested(result, EPOCH_REPORT))


def describe_study(ot_study: Any, spec: StudySpec, *, study_id: str) -> None:
    """What a reader of the Optuna study (optuna-dashboard, `optuna.load_study`) needs to know which study
    it is: the objective's name and the transched study's id, name and spec summary, as study user attrs."""
    import warnings

    import optuna

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

    Tune pickles its run config with the Tuner, so the database engine is made lazily and not pickled.
    """

    def __init__(self, settings: Settings, study_id: str, every_s: float = 2.0):
        self._settings, self._study_id, self._every_s = settings, study_id, every_s
        self._sessions: Any = None
        self._last, self._stop = 0.0, False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sessions": None}

    def __call__(self, trial_id: str, result: dict) -> bool:
        return self.stop_all()

    def stop_all(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._last >= self._every_s:
            self._last = now
            if self._sessions is None:
                self._sessions = make_sessionmaker(engine_from(self._settings, pool_size=1, max_overflow=0))
            with self._sessions() as s:
                heartbeat(s, study_id=self._study_id)
                self._stop = get_status(s, study_id=self._study_id) == StudyStatus.stopping
        return self._stop


def build_tuner(
    spec: StudySpec,
    *,
    study_id: str,
    optuna_name: str,
    storage: Any,
    settings: Settings,
    plan: ResumePlan | None = None,
):
    """Tune + OptunaSearch (TPE) over the study's space, writing its trials into `optuna_name`; with a
    resume `plan`, only the trials still missing and the method points of arms not tried yet."""
    plan = plan or ResumePlan(remaining=spec.n_trials)
    import optuna
    from ray import tune

    from search_spaces import build_space
    from service.trainable import run_trial

    sampler = optuna.samplers.TPESampler(
        # A resumed driver draws other random startup configs than the first one (same seed: repeats).
        seed=None if spec.seed is None else spec.seed + plan.attempt,
        constant_liar=True,  # parallel trials: pending ones count as bad guesses, not as nothing
        multivariate=True,
        group=True,  # the space is conditional on the method
        n_startup_trials=spec.startup_trials,
    )
    arms = spec.resolved_methods()
    searcher = StoredOptunaSearch(
        space=build_space(arms),
        # Each method once before TPE chooses, so every method of the study is tried.
        points_to_evaluate=[{"method": a} for a in arms if a not in plan.tried] if len(arms) > 1 else None,
        metric=METRIC,
        mode="max",
        sampler=sampler,
        study_name=optuna_name,
        storage=storage,
    )
    # OptunaSearch has created the Optuna study by now (a space is given): name and describe it.
    describe_study(optuna.load_study(study_name=optuna_name, storage=storage), spec, study_id=study_id)
    resources = {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial, **spec.resources_per_trial}
    trainable = tune.with_resources(
        partial(
            run_trial,
            fixed=spec.trainer.to_dict(),
            cpus_per_trial=spec.cpus_per_trial,
            gpus_per_trial=spec.gpus_per_trial,
            study={"study_id": study_id, "study_name": spec.name},
        ),
        resources,
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=plan.remaining,
            max_concurrent_trials=spec.max_concurrent_trials,
            reuse_actors=True,  # measured here: 0.4 s per trial instead of 2.0 s
        ),
        run_config=tune.RunConfig(
            name=optuna_name if not plan.attempt else f"{optuna_name}-r{plan.attempt}",
            storage_path=str((settings.data_dir / "ray_results").resolve()),
            stop=StopWhenAsked(settings, study_id),
            # A trial whose worker or node died is rerun (on any node that fits) up to max_retries times.
            failure_config=tune.FailureConfig(max_failures=spec.max_retries),
            callbacks=[TrialEventLog(spec.name, metric=METRIC, epochs=spec.trainer.epochs)],
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
    import optuna

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
    with sessions() as s:
        row = get_study(s, study_id=study_id)
        if row is None:
            raise SystemExit(f"no study {study_id} in {settings.resolved_database_url}")
        spec = StudySpec.model_validate(row.spec)
        optuna_name = row.optuna_study_name
        if not start_attempt(s, study_id=study_id, attempt=attempt):
            logger.warning("study %s is %s at attempt %d, not %d: nothing to run", study_id, row.status,
                           row.attempts, attempt)  # fmt: skip
            return StudyStatus(row.status)

    storage = optuna_storage_from(settings, pool_size=2, max_overflow=2)
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
                                    storage=storage, settings=settings, sessions=sessions)  # fmt: skip
        return final
    except BaseException as exc:
        message = f"{type(exc).__name__}: {exc}"[:500]
        raise
    finally:
        _finish(sessions, storage, study_id=study_id, optuna_name=optuna_name, final=final, message=message,
                attempt=attempt)  # fmt: skip
        engine.dispose()


def _run_tuner(spec: StudySpec, plan: ResumePlan, *, study_id: str, optuna_name: str, storage: Any,
               settings: Settings, sessions: Any) -> tuple[StudyStatus, str | None]:  # fmt: skip
    """Run the planned trials; the study's end and its message."""
    errors, n = [], 0
    if plan.remaining > 0:
        tuner = build_tuner(spec, study_id=study_id, optuna_name=optuna_name, storage=storage,
                            settings=settings, plan=plan)  # fmt: skip
        results = tuner.fit()
        errors, n = [r.error for r in results if r.error is not None], len(results)
    with sessions() as s:
        if get_status(s, study_id=study_id) == StudyStatus.stopping:
            final = StudyStatus.stopped
        elif errors and len(errors) == n:
            final = StudyStatus.failed
        else:
            final = StudyStatus.completed
    message = f"{len(errors)} of {n} trials failed: {error_summary(errors[0])}" if errors else None
    logger.info("study %s %s (%d trials, %d errors)", study_id, final.value, n, len(errors))
    return final, message


def _finish(sessions: Any, storage: Any, *, study_id: str, optuna_name: str, final: StudyStatus | None,
            message: str | None, attempt: int) -> None:  # fmt: skip
    """Write the study's end, if the study is still this driver's attempt (else a newer driver runs it).
    A driver that died of an unexpected error (`final` None) ends a stopping study `stopped`; any other
    it leaves `running`, its trials as they are, with the error noted, for the supervisor to resume (or
    to fail with that note after `max_resumes`)."""
    with sessions() as s:
        row = get_study(s, study_id=study_id)
        if row is None or row.attempts != attempt:
            logger.warning("study %s has moved on to attempt %s: its end is not ours to write", study_id,
                           row.attempts if row else None)  # fmt: skip
            return
        if final is None and row.status != StudyStatus.stopping:
            set_error(s, study_id=study_id, error=f"the driver died: {message}", attempt=attempt)
            return
    # Reap before the final status is written: whoever sees the study ended sees no RUNNING trial.
    n = reap_running_trials(storage, name=optuna_name)
    if n:
        logger.warning("marked %d trial(s) left RUNNING as FAIL", n)
    with sessions() as s:
        if final is None:
            final, message = StudyStatus.stopped, None
        set_status(s, study_id=study_id, status=final, error=message, attempt=attempt)
        if message is None:  # a resumed study's "resumed ..." note is done with
            set_error(s, study_id=study_id, error=None, attempt=attempt)


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

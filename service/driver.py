"""A study's driver: runs as its own Ray job, reads only the stored spec, runs Tune + OptunaSearch.

    python -m service.driver STUDY_ID

The driver moves the study pending -> running -> completed | stopped | failed, and on the way out
fails any Optuna trial still RUNNING (Optuna's heartbeat does not run under ask-and-tell).
"""

from __future__ import annotations

import logging
import sys
import time
from functools import partial
from typing import Any

from ray.tune import Stopper
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils.util import unflatten_dict

from service.db import StudyStatus, engine_from, make_sessionmaker, optuna_storage_from
from service.early_stopping import RUNG_ATTR, RUNG_END, TRAINED_EPOCHS, rung_budgets, scheduler
from service.ray_cluster import resource_problem
from service.repository import (
    EPOCH_ATTR_PREFIX,
    get_status,
    get_study,
    heartbeat,
    reap_running_trials,
    set_status,
)
from service.reuse import COPIED_ATTRS, REUSE, REUSED_FROM, ReuseIndex, reused_result
from service.schemas import METRIC, StudySpec
from service.settings import Settings
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
        if kind == "running":
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
        if kind != "complete":
            self._reuse.started(config, ot_trial.number)
            return {**config, TRIAL_NUMBER: ot_trial.number}
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

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # A trial ended before its last result (study stopped, scheduler) has only a partial value:
        # it reaches Optuna as PRUNED, not COMPLETE, so TPE and /best only see fully trained trials.
        complete = result is not None and not error and bool(result.get("final"))
        if result is not None and not error and self._unseen(trial_id, result):
            # Tune hands the result a scheduler stopped the trial at (ASHA stops a trial at a rung, and at
            # max_t on its final result) to on_trial_complete only: store it as any other result
            self.on_trial_result(trial_id, result)
        if not complete:
            result = None
        super().on_trial_complete(trial_id, result=result, error=error)
        if trial_id in self._configs:
            config, number = self._configs.pop(trial_id)
            self._reuse.finished(config, number, complete=complete and result.get(METRIC) is not None)

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
        if result.get("final"):
            for key in ("test_acc", "best_epoch", "total_steps", "finished_at"):
                ot_trial.set_user_attr(key, result.get(key))
            ot_trial.set_user_attr("info", nested(result, "info"))
            return
        if result.get(RUNG_END):  # a compressed rung's end (schedule_sh): its epochs are stored already
            rungs = ot_trial.user_attrs.get("rungs", [])
            ot_trial.set_user_attr("rungs", [*rungs, {k: result.get(k) for k in (RUNG_ATTR, METRIC)}])
            return
        if result.get("epoch") == 1 and not result.get("rung"):  # rung > 0: a new run of schedule_sh
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


def build_tuner(spec: StudySpec, *, study_id: str, optuna_name: str, storage: Any, settings: Settings):
    """Tune + OptunaSearch (TPE) over the study's space, writing its trials into `optuna_name`."""
    import optuna
    from ray import tune

    from search_spaces import build_space
    from service.trainable import run_trial

    sampler = optuna.samplers.TPESampler(
        seed=spec.seed,
        constant_liar=True,  # parallel trials: pending ones count as bad guesses, not as nothing
        multivariate=True,
        group=True,  # the space is conditional on the method
        n_startup_trials=spec.startup_trials,
    )
    arms = spec.resolved_methods()
    searcher = StoredOptunaSearch(
        space=build_space(arms),
        # Each method once before TPE chooses, so every method of the study is tried.
        points_to_evaluate=[{"method": arm} for arm in arms] if len(arms) > 1 else None,
        metric=METRIC,
        mode="max",
        sampler=sampler,
        study_name=optuna_name,
        storage=storage,
    )
    # OptunaSearch has created the Optuna study by now (a space is given): name and describe it.
    describe_study(optuna.load_study(study_name=optuna_name, storage=storage), spec, study_id=study_id)
    es = spec.early_stopping
    resources = {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial, **spec.resources_per_trial}
    trainable = tune.with_resources(
        partial(
            run_trial,
            fixed=spec.trainer.to_dict(),
            cpus_per_trial=spec.cpus_per_trial,
            gpus_per_trial=spec.gpus_per_trial,
            study={"study_id": study_id, "study_name": spec.name},
            rungs=rung_budgets(es, spec.trainer.epochs) if es.kind == "schedule_sh" else None,
        ),
        resources,
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=spec.n_trials,
            max_concurrent_trials=spec.max_concurrent_trials,
            scheduler=scheduler(es, max_epochs=spec.trainer.epochs, metric=METRIC),
            reuse_actors=True,  # measured here: 0.4 s per trial instead of 2.0 s
        ),
        run_config=tune.RunConfig(
            name=optuna_name,
            storage_path=str((settings.data_dir / "ray_results").resolve()),
            stop=StopWhenAsked(settings, study_id),
            # A trial whose worker or node died is rerun (on any node that fits) up to max_retries times.
            failure_config=tune.FailureConfig(max_failures=spec.max_retries),
            callbacks=[TrialEventLog(spec.name, metric=METRIC, epochs=spec.trainer.epochs)],
            verbose=0,  # Tune's status tables name trials as Tune does; TrialEventLog names them as the study
        ),
    )


def run_study(study_id: str, settings: Settings) -> StudyStatus:
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
        if not set_status(s, study_id=study_id, status=StudyStatus.running, only_from=(StudyStatus.pending,)):
            logger.warning("study %s is %s, not pending: nothing to run", study_id, row.status)
            return StudyStatus(row.status)

    storage = optuna_storage_from(settings, pool_size=2, max_overflow=2)
    final, message = StudyStatus.failed, "the driver ended unexpectedly"
    try:
        ray.init(address=settings.ray_gcs_address or "auto", logging_level=logging.WARNING)
        problem = resource_problem(spec, ray.cluster_resources())
        if problem:
            final, message = StudyStatus.failed, problem
            logger.error("study %s cannot run: %s", study_id, problem)
            return final
        tuner = build_tuner(
            spec, study_id=study_id, optuna_name=optuna_name, storage=storage, settings=settings
        )
        results = tuner.fit()
        errors = [r.error for r in results if r.error is not None]
        with sessions() as s:
            if get_status(s, study_id=study_id) == StudyStatus.stopping:
                final = StudyStatus.stopped
            elif errors and len(errors) == len(results):
                final = StudyStatus.failed
            else:
                final = StudyStatus.completed
        message = (
            f"{len(errors)} of {len(results)} trials failed: {error_summary(errors[0])}" if errors else None
        )
        logger.info("study %s %s (%d trials, %d errors)", study_id, final.value, len(results), len(errors))
        return final
    except BaseException as exc:
        final, message = StudyStatus.failed, f"{type(exc).__name__}: {exc}"
        raise
    finally:
        # Reap before the final status is written: whoever sees the study ended sees no RUNNING trial.
        n = reap_running_trials(storage, name=optuna_name)
        if n:
            logger.warning("marked %d trial(s) left RUNNING as FAIL", n)
        with sessions() as s:
            set_status(s, study_id=study_id, status=final, error=message)
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m service.driver STUDY_ID", file=sys.stderr)
        return 2
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    status = run_study(argv[0], settings)
    return 0 if status in (StudyStatus.completed, StudyStatus.stopped) else 1


if __name__ == "__main__":
    raise SystemExit(main())

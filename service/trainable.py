"""The Ray Tune trainable: merge the study's fixed trainer fields with one trial's sampled params
(search_spaces.merge_config), train, and report every epoch. The only place where `trainers` meets Ray."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, TypedDict

logger = logging.getLogger("transched.trial")

# Each epoch's result carries the trainer's report dict, as it came, under this key: the driver stores
# exactly that dict, so the epoch schema is the trainer's own (its common keys and each method's keys).
EPOCH_REPORT = "epoch_report"
# A trial's Tune config has two parts: the sampled trainer params (`PARAMS`, merged over the spec's fixed
# fields, search_spaces.merge_config) and what the driver tells the run (`RUN`, a `TrialRun`), apart, so
# that nothing but trainer fields ever reaches the trainer config.
PARAMS, RUN = "params", "run"


class TrialRun(TypedDict, total=False):
    """What the driver's searcher tells a trial's run besides its params (service.driver.TrialSearcher)."""

    number: int  # the study's own number of the trial (Optuna's): its metrics and log lines name it
    resume_from: int  # an earlier trial whose epoch checkpoint it resumes from (a dead driver's trial)
    reuse: dict[str, Any]  # a finished trial's result it reports instead of training (service.reuse)


# A trial that cannot succeed ends with a last result carrying `error` (a short message) and
# `error_kind`: "deterministic" (bad config, missing data: a retry would fail the same way) or
# "diverged" (a non-finite loss). It returns normally, so Tune does not retry it as if its worker died.
ERROR, ERROR_KIND = "error", "error_kind"
DETERMINISTIC, DIVERGED = "deterministic", "diverged"
# Errors a rerun cannot fix: config values (ValueError, TypeError, LookupError) and files that are not
# there (trainers.DatasetNotFoundError, PretrainedWeightsNotFoundError). Anything else (a CUDA error,
# out of memory, a lost worker) is left to Tune's retries.
DETERMINISTIC_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    LookupError,
    FileNotFoundError,
    NotImplementedError,
)
ERROR_LIMIT = 500  # characters of a stored error message
# True in the first epoch result of each attempt: the driver records where the attempt runs from it.
FIRST_REPORT = "first_report"
# The epoch report's keys a result carries flat (beside the whole report, nested): the objective (METRIC,
# service.schemas) and what Tune's schedulers, the driver's searcher and its log read.
TUNE_KEYS = ("epoch", "val_acc", "lambda", "best_val_acc", "total_steps", "rung", "trained_epochs")
# What a run found, kept with the trial (see trainers.TrainResult.metrics).
INFO_KEYS = ("xmixup_pairing", "linearity", "pretrain_cache", "init", "method_info", "data_sizes")


def claim_device(gpus_per_trial: float) -> str:
    """The device this trial trains on. A trial given a share of a GPU caps its own memory at that
    share: Ray's fractional GPUs are bookkeeping only and limit nothing on the device."""
    import torch

    if gpus_per_trial <= 0 or not torch.cuda.is_available():
        return "cpu"
    if gpus_per_trial < 1:
        torch.cuda.set_per_process_memory_fraction(gpus_per_trial, device=0)
    return f"cuda:0 ({torch.cuda.get_device_name(0)})"


class TrialMetrics:
    """A trial's live metrics, exported through Ray's metrics agent (Prometheus at the node's metrics
    export port as `ray_transched_trial_*`, and the dashboard's Metrics view): each epoch's validation
    accuracy, the epoch, lambda(t) at its end, and the training throughput, tagged with the study and the
    trial's number. Samples per second: the target samples of the steps between two epoch reports
    (steps x batch_size) over the wall time between them, evaluation included; from epoch 2 on, as the
    first epoch's time would count the trial's setup."""

    _gauges: dict[str, Any] = {}  # one Gauge per name and process: a reused actor runs many trials
    TAGS = ("study_id", "study_name", "trial", "method")

    def __init__(self, tags: dict[str, str], batch_size: int):
        from ray.util.metrics import Gauge

        self.tags, self.batch_size = tags, batch_size
        self.last: tuple[float, int] | None = None  # (time, step) of the previous report
        for name, doc in (
            ("val_acc", "validation accuracy of the trial's latest epoch"),
            ("epoch", "the trial's latest finished epoch"),
            ("lambda", "lambda(t), the target weight of the mixed loss, at the latest epoch's end"),
            ("samples_per_second", "target samples trained per second between the latest two epochs"),
        ):
            if name not in self._gauges:
                self._gauges[name] = Gauge(f"transched_trial_{name}", description=doc, tag_keys=self.TAGS)

    def epoch(self, metrics: dict[str, Any]) -> None:
        values = {
            "val_acc": metrics.get("val_acc"),
            "epoch": metrics.get("epoch"),
            "lambda": metrics.get("lambda"),
        }
        now, step = time.monotonic(), int(metrics.get("step") or 0)
        if self.last is not None and now > self.last[0]:
            values["samples_per_second"] = (step - self.last[1]) * self.batch_size / (now - self.last[0])
        self.last = (now, step)
        for name, value in values.items():
            if value is not None:
                self._gauges[name].set(float(value), tags=self.tags)


def short_error(exc: BaseException) -> str:
    """`Type: message`, cut to ERROR_LIMIT characters: what a trial's error attr and the study keep."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= ERROR_LIMIT else text[: ERROR_LIMIT - 3] + "..."


def checkpoint_path(checkpoint_dir: str | None, run: TrialRun) -> Path | None:
    """Where this trial keeps its epoch checkpoint: `<checkpoint_dir>/<trial number>.pt`, the same for
    every Tune retry of the trial. A trial that retries an earlier one (`resume_from`) takes over that
    trial's checkpoint first, so it resumes where the earlier one was cut."""
    number = run.get("number")
    if checkpoint_dir is None or number is None:
        return None
    path = Path(checkpoint_dir) / f"{int(number)}.pt"
    earlier = run.get("resume_from")
    if earlier is not None and not path.exists():
        source = Path(checkpoint_dir) / f"{int(earlier)}.pt"
        if source.is_file():
            os.replace(source, path)  # atomic; the earlier trial is over and never reads it again
            logger.info("trial %s resumes from trial %s's checkpoint", number, earlier)
    return path


def run_trial(
    config: dict[str, Any],
    *,
    fixed: dict[str, Any],
    cpus_per_trial: float,
    gpus_per_trial: float = 0.0,
    study: dict[str, str] | None = None,
    checkpoint_dir: str | None = None,
    rungs: list[int] | None = None,
) -> None:
    """One trial: `config` is `{PARAMS: sampled params, RUN: TrialRun}` (see PARAMS). `study`
    ({"study_id", "study_name"}) tags its live metrics; `checkpoint_dir` (the study's folder of epoch
    checkpoints, on storage every node can read) makes it resumable; `rungs`, the epochs of each rung of
    schedule-aware successive halving (service/early_stopping.py), None: one full-length run (a run in
    rungs is not resumed from a checkpoint: each rung trains anew)."""
    import ray
    from ray import tune

    from search_spaces import merge_config
    from service.early_stopping import RUNG_ATTR, train_in_rungs
    from trainers import train

    sampled, run = config[PARAMS], TrialRun(**config.get(RUN, {}))
    if run.get("reuse"):  # identical to a finished trial (service/reuse.py): its result, not trained again
        reused = run["reuse"]
        epochs = int(fixed.get("epochs") or 0)
        tune.report({"final": True, "best_val_acc": reused["value"], RUNG_ATTR: epochs, **reused})
        return
    where = {
        "node": socket.gethostname(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "device": claim_device(gpus_per_trial),
        "started_at": time.time(),
    }
    path = checkpoint_path(checkpoint_dir, run)
    first = True

    def report(metrics: dict[str, Any]) -> None:
        nonlocal first
        live.epoch(metrics)
        # ASHA may decide at any epoch but the full run's last: there the closing report (`final`) does.
        rung = {RUNG_ATTR: metrics["epoch"]} if rungs is None and metrics["epoch"] < trainer.epochs else {}
        # Nested for the store (see EPOCH_REPORT), and flat only what Tune and the driver's log read:
        # Tune keeps running statistics of every flat key of every result, so the whole report twice
        # cost its driver more per result than the store does (BENCHMARKS B2). Where the trial runs is
        # told once per attempt, with `first_report` (the epoch after its checkpoint's, if resumed).
        flat = {k: metrics[k] for k in TUNE_KEYS if k in metrics}
        tune.report(
            {**flat, EPOCH_REPORT: dict(metrics), **(where if first else {}), FIRST_REPORT: first, **rung}
        )
        first = False

    try:
        trainer = merge_config(fixed, sampled, cpus_per_trial=cpus_per_trial)
        tags = {**(study or {}), "trial": str(run.get("number", "")), "method": trainer.method}
        live = TrialMetrics({k: tags.get(k, "") for k in TrialMetrics.TAGS}, trainer.batch_size)
        if rungs:
            rung_end = lambda r: tune.report(r | where)  # noqa: E731
            result = train_in_rungs(trainer, rungs, report=report, rung_report=rung_end)
        else:
            result = train(trainer, report=report, checkpoint=path)
    except DETERMINISTIC_ERRORS as exc:
        logger.error("trial %s failed, not retried: %s", run.get("number"), exc, exc_info=True)
        _report_failure(where, short_error(exc), DETERMINISTIC)
        _remove(path)
        return
    _remove(path)
    if result.diverged:
        _report_failure(where, f"diverged at epoch {result.epochs_run}", DIVERGED, epoch=result.epochs_run)
        return
    _report_final(result, epochs=trainer.epochs)


def _remove(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def _report_failure(where: dict[str, Any], message: str, kind: str, epoch: int = 0) -> None:
    """The last result of a trial that failed for good: the searcher stores it as FAIL with `message`."""
    from ray import tune

    from service.schemas import METRIC

    # The objective's key must be there (Tune checks every result for it), with no value.
    tune.report({METRIC: None, "epoch": epoch, "final": True, ERROR: message, ERROR_KIND: kind, **where})


def _report_final(result: Any, *, epochs: int) -> None:
    """A last result after training: the test accuracy of the best-validation model, and the run's end."""
    from ray import tune

    from service.early_stopping import RUNG_ATTR

    summary = result.metrics()
    info = {k: summary.get(k) for k in INFO_KEYS if summary.get(k) is not None}
    last = result.history[-1] if result.history else {}
    tune.report(
        {
            **{k: last[k] for k in TUNE_KEYS if k in last},
            "best_val_acc": result.best_val_acc,
            "final": True,
            "test_acc": result.test_acc,
            "info": {**info, "test_acc": result.test_acc, "best_epoch": result.best_epoch},
            "best_epoch": result.best_epoch,
            "total_steps": result.total_steps,
            "finished_at": time.time(),
            RUNG_ATTR: epochs,
        }
    )

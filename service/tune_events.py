"""The study's own account of its trials, in its driver's log (the Ray job's log in the dashboard).

One line per trial event, each naming the study's trial by its Optuna number (the number /trials,
/best and optuna-dashboard show), never by Tune's generated name (`run_trial_267a6bf4`):

    [digits-demo] trial 3 started: method=smooth t0=0.12 tau=0.31 alpha=0.05
    [digits-demo] trial 3 epoch 2/4: val_acc=0.8125 lambda=0.4211 best_val_acc=0.8125
    [digits-demo] trial 3 finished: best_val_acc=0.8438 at epoch 3 of 4, test_acc=0.8271
    [digits-demo] trial 5 pruned after epoch 2: best_val_acc=0.5
    [digits-demo] trial 6 failed: DatasetNotFoundError: dataset 'cifar10' not found ...
    [digits-demo] trial 7 stopped after epoch 3: best_val_acc=0.75
    [digits-demo] summary: 8 trials: 5 finished, 1 pruned, 1 failed, 1 stopped; best trial 3 ...

The Optuna number reaches Tune in the trial's config, in its `TrialRun` (`config["run"]["number"]`), put
there by the driver's searcher; the sampled params are `config["params"]`. The summary's best trial is the
study's best (service.ledger.best_trial), the same as /best's and the report's.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from ray.tune import Callback

from service.trainable import ERROR, PARAMS, RUN

logger = logging.getLogger("transched.trials")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def error_summary(error: BaseException | str, limit: int = 2000) -> str:
    """The exception a trial died of, without Ray's remote tracebacks around it: from the last line that
    names an exception ("trainers.data.DatasetNotFoundError: dataset 'cifar10' not found ...") to the end,
    its message may span lines, with the module path dropped."""
    text = str(error).strip()
    heads = list(
        re.finditer(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Interrupt|Exit)): ", text, re.M)
    )
    if heads:
        last = heads[-1]
        text = f"{last.group(1)}: {text[last.end() :]}".strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_text(trial: Any) -> str | None:
    """The trial's error as Tune wrote it: the local error file (written before this callback runs;
    the copy under the storage path may not be there yet), else the stored one."""
    path = trial.error_file
    if path and Path(path).is_file():
        return Path(path).read_text()
    return trial.get_error()


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _number(trial: Any) -> int:
    return (trial.config.get(RUN) or {}).get("number", -1)


def _sampled(trial: Any) -> dict[str, Any]:
    return trial.config.get(PARAMS) or {}


class TrialEventLog(Callback):
    """A Tune callback that logs each trial's start, epoch results and end, and a summary at the end.

    `metric` is the study's objective (the value Optuna records); `epochs` the planned epochs per trial.
    """

    def __init__(self, study_name: str, *, metric: str, epochs: int):
        self.prefix, self.metric, self.epochs = f"[{study_name}]", metric, epochs
        self.ended: dict[str, str] = {}  # Tune trial id -> finished | pruned | failed
        self.trials: list = []  # Tune's trials, once the run has ended

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        logger.info("%s trial %s started: %s", self.prefix, _number(trial), _params(_sampled(trial)))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("final"):  # the closing report repeats the last epoch; on_trial_complete says it
            return
        if result.get("rung_end"):  # schedule_sh: a compressed run of the trial's schedule ended (a rung)
            logger.info(
                "%s trial %s rung %s (%s-epoch run of its schedule) done: %s=%s",
                self.prefix, _number(trial), result.get("rung"), result.get("budget_epochs"),
                self.metric, _fmt(result.get(self.metric)),
            )  # fmt: skip
            return
        logger.info(
            "%s trial %s epoch %s/%s: val_acc=%s lambda=%s %s=%s",
            self.prefix,
            _number(trial),
            result.get("epoch"),
            self.epochs,
            _fmt(result.get("val_acc")),
            _fmt(result.get("lambda")),
            self.metric,
            _fmt(result.get(self.metric)),
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        value = _fmt(last.get(self.metric))
        if last.get(ERROR):  # failed for good (diverged, or an error a retry cannot fix): not retried
            self.ended[trial.trial_id] = "failed"
            logger.warning("%s trial %s failed: %s", self.prefix, _number(trial), last[ERROR])
        elif last.get("final"):
            self.ended[trial.trial_id] = "finished"
            logger.info(
                "%s trial %s finished: %s=%s at epoch %s of %s, test_acc=%s",
                self.prefix, _number(trial), self.metric, value, last.get("best_epoch"),
                last.get("epoch"), _fmt(last.get("test_acc")),
            )  # fmt: skip
        else:  # ended before its last epoch (the study was stopped): Optuna records it as PRUNED
            self.ended[trial.trial_id] = "pruned"
            logger.info(
                "%s trial %s pruned after epoch %s: %s=%s",
                self.prefix, _number(trial), last.get("epoch", 0), self.metric, value,
            )  # fmt: skip

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended[trial.trial_id] = "failed"
        error = _error_text(trial) or "unknown error (see the trial's error file)"
        logger.warning("%s trial %s failed: %s", self.prefix, _number(trial), error_summary(error, limit=300))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        logger.warning(
            "%s trial %s failed and is rerun (its worker or node died)", self.prefix, _number(trial)
        )

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # A stopped study ends Tune with its running trials cut off and no callback for them: say so here
        # (the driver then fails them in Optuna, as it does every trial left RUNNING).
        for trial in trials:
            if trial.trial_id not in self.ended and (trial.last_result or {}).get(ERROR):
                self.ended[trial.trial_id] = "failed"  # its failure ended the run before Tune closed it
                logger.warning(
                    "%s trial %s failed: %s", self.prefix, _number(trial), trial.last_result[ERROR]
                )
            elif trial.trial_id not in self.ended and trial.last_result:
                self.ended[trial.trial_id] = "stopped"
                logger.info(
                    "%s trial %s stopped after epoch %s: %s=%s",
                    self.prefix, _number(trial), trial.last_result.get("epoch", 0), self.metric,
                    _fmt(trial.last_result.get(self.metric)),
                )  # fmt: skip
        self.trials = list(trials)  # the summary line follows, from the driver (log_summary)

    def counts(self, trials: list) -> str:
        counts = {
            kind: sum(1 for k in self.ended.values() if k == kind)
            for kind in ("finished", "pruned", "failed", "stopped")
        }
        return f"{len(trials)} trials: " + ", ".join(f"{n} {kind}" for kind, n in counts.items())

    def log_summary(self, best: Any) -> None:
        """The study's summary line, once the run has ended and the store is settled: this run's trials
        by how they ended, and the study's best trial (`best`: service.ledger.best_trial's)."""
        logger.info("%s summary: %s", self.prefix, self.summary(best))

    def summary(self, best: Any) -> str:
        text = self.counts(self.trials)
        if best is None:
            return text + "; no trial finished"
        from service.ledger import sampled_config

        params = sampled_config(best)
        return (
            f"{text}; best trial {best.number} {self.metric}={_fmt(best.value)} "
            f"method={params.get('method')} params: {_params(params)}"
        )

"""The driver's trial log: one line per trial event, each naming the study's (Optuna's) trial number."""

import logging
from types import SimpleNamespace

import optuna

from service.tune_events import TrialEventLog, error_summary


def _trial(tune_id, number, **config):
    return SimpleNamespace(
        trial_id=tune_id,
        config={"params": config, "run": {"number": number}},
        last_result={},
        error_file=None,
        get_error=lambda: None,
    )


def test_each_trial_event_is_one_line_naming_the_studys_trial_number_and_a_summary_ends_it(caplog, tmp_path):
    log = TrialEventLog("demo", metric="best_val_acc", epochs=2)
    done = _trial("run_trial_267a6bf4", 4, method="smooth", t0=0.125)
    stopped = _trial("run_trial_00000001", 5, method="finetune")
    broken = _trial("run_trial_00000002", 6, method="finetune")
    broken.error_file = tmp_path / "error.txt"  # Tune's local copy, there before the callback runs
    broken.error_file.write_text(
        "Traceback ...\ntrainers.data.DatasetNotFoundError: dataset 'cifar10' not found"
    )
    cut_off = _trial("run_trial_00000003", 7, method="smooth")  # running when the study was stopped
    trials = [done, stopped, broken, cut_off]
    with caplog.at_level(logging.INFO, logger="transched.trials"):
        for t in trials:
            log.on_trial_start(0, trials, t)
        for epoch in (1, 2):
            result = {"epoch": epoch, "val_acc": 0.25 * epoch, "lambda": 0.5, "best_val_acc": 0.25 * epoch}
            done.last_result = result
            log.on_trial_result(0, trials, done, result)
        done.last_result = {**done.last_result, "final": True, "best_epoch": 2, "test_acc": 0.4}
        log.on_trial_result(0, trials, done, done.last_result)  # the closing report: no epoch line
        log.on_trial_complete(0, trials, done)
        stopped.last_result = {"epoch": 1, "best_val_acc": 0.1}
        log.on_trial_complete(0, trials, stopped)
        log.on_trial_error(0, trials, broken)
        cut_off.last_result = {"epoch": 1, "best_val_acc": 0.75}
        log.on_experiment_end(trials)
        # The driver then logs the summary with the study's best trial (service.ledger.best_trial's).
        best = optuna.trial.create_trial(
            value=0.5,
            params={"t0": 0.125},
            distributions={"t0": optuna.distributions.FloatDistribution(0, 1)},
            user_attrs={"sampled": {"method": "smooth", "t0": 0.125}},
        )
        best.number = 4
        log.log_summary(best)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "[demo] trial 4 started: method=smooth t0=0.125",
        "[demo] trial 5 started: method=finetune",
        "[demo] trial 6 started: method=finetune",
        "[demo] trial 7 started: method=smooth",
        "[demo] trial 4 epoch 1/2: val_acc=0.25 lambda=0.5 best_val_acc=0.25",
        "[demo] trial 4 epoch 2/2: val_acc=0.5 lambda=0.5 best_val_acc=0.5",
        "[demo] trial 4 finished: best_val_acc=0.5 at epoch 2 of 2, test_acc=0.4",
        "[demo] trial 5 pruned after epoch 1: best_val_acc=0.1",
        "[demo] trial 6 failed: DatasetNotFoundError: dataset 'cifar10' not found",
        "[demo] trial 7 stopped after epoch 1: best_val_acc=0.75",
        "[demo] summary: 4 trials: 1 finished, 1 pruned, 1 failed, 1 stopped; best trial 4 best_val_acc=0.5 "
        "method=smooth params: method=smooth t0=0.125",
    ]
    assert not any("run_trial_" in line for line in lines)


def test_error_summary_keeps_the_exception_and_its_whole_message_and_drops_rays_tracebacks():

    ray_text = (
        "Failure # 1 (occurred at 2026-11-22_05-00-00)\n"
        "ray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)\n"
        "Traceback (most recent call last):\n"
        '  File "/x/trainers/data.py", line 1, in load\n'
        "    raise _not_found(name, root) from exc\n"
        "trainers.data.DatasetNotFoundError: dataset 'cifar10' not found in /d. To provide it, run\n"
        '    python -c "..."\n'
        "and copy what it writes into /d."
    )
    assert error_summary(ray_text) == (
        "DatasetNotFoundError: dataset 'cifar10' not found in /d. To provide it, run\n"
        '    python -c "..."\n'
        "and copy what it writes into /d."
    )
    assert error_summary("no exception named here") == "no exception named here"
    assert len(error_summary("ValueError: " + "x" * 5000)) == 2000

"""No wasted trials: the driver's searcher on a real Optuna store (a SQLite file)."""

import logging

import optuna

from search_spaces import build_space
from service.ledger import REUSED_FROM
from service.schemas import StudySpec
from service.trainable import EPOCH_REPORT, PARAMS, RUN
from tests.service.conftest import make_searcher

COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


def _searcher(tmp_path, methods):
    arms = StudySpec.model_validate({"methods": methods}).resolved_methods()
    return make_searcher(tmp_path / "o.db", build_space(arms), arms=list(arms))


def _train(searcher, trial_id, value, epochs=2, final=True):
    """What the trainable reports of a run: its epochs, then (when it finished) the closing result."""
    for e in range(1, epochs + 1):
        report = {"epoch": e, "val_acc": value, "best_val_acc": value}
        searcher.on_trial_result(trial_id, {**report, EPOCH_REPORT: report, "started_at": 1.0})
    last = {"epoch": epochs, "best_val_acc": value, "final": final, "test_acc": 0.5, "best_epoch": 1}
    if final:
        searcher.on_trial_result(trial_id, last)
    searcher.on_trial_complete(trial_id, last if final else {"epoch": epochs, "best_val_acc": value})


def test_an_arm_with_nothing_to_search_is_trained_once_and_then_reused(tmp_path, caplog):
    searcher, storage = _searcher(tmp_path, ["target"])
    first = searcher.suggest("t0")
    assert first == {PARAMS: {"method": "target"}, RUN: {"number": 0}}
    _train(searcher, "t0", 0.9)
    with caplog.at_level(logging.INFO, logger="transched.driver"):
        again = searcher.suggest("t1")
    reuse = again[RUN]["reuse"]
    assert reuse["number"] == 0 and reuse["value"] == 0.9 and again[RUN]["number"] == 1
    assert "trial 1 reuses the result of trial 0" in caplog.text
    # the trainable reports the reused result as the trial's final one (service/trainable.py)
    searcher.on_trial_result("t1", {"final": True, "best_val_acc": 0.9, **reuse})
    searcher.on_trial_complete("t1", {"final": True, "best_val_acc": 0.9, **reuse})
    original, reused = optuna.load_study(study_name="s", storage=storage).trials
    assert (reused.state, reused.value, reused.user_attrs[REUSED_FROM]) == (COMPLETE, 0.9, 0)
    assert reused.user_attrs["epoch:00002"] == original.user_attrs["epoch:00002"]
    assert reused.user_attrs["test_acc"] == 0.5 and "started_at" not in reused.user_attrs  # never trained


def test_a_twin_of_a_running_trial_waits_for_it_and_then_reuses_its_result(tmp_path):
    searcher, storage = _searcher(tmp_path, ["source_finetune"])
    assert searcher.suggest("t0")[RUN]["number"] == 0
    assert searcher.suggest("t1") is None  # same config as trial 0, still running: wait
    assert searcher.suggest("t2") is None
    _train(searcher, "t0", 0.8)
    config = searcher.suggest("t3")  # the parked Optuna trial, now under Tune's new trial id
    assert (config[RUN]["number"], config[RUN]["reuse"]["number"]) == (1, 0)
    searcher.on_trial_complete("t3", {"final": True, "best_val_acc": 0.8, **config[RUN]["reuse"]})
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [(t.number, t.state, t.value) for t in trials] == [(0, COMPLETE, 0.8), (1, COMPLETE, 0.8)]


def test_a_twin_of_a_pruned_trial_is_trained_and_a_sampled_config_only_when_identical(tmp_path):
    searcher, storage = _searcher(tmp_path, ["target", "finetune"])
    configs = {}
    runs = {}
    for i in range(6):
        config = searcher.suggest(f"t{i}")
        configs[i], runs[i] = config[PARAMS], config[RUN]
        assert "reuse" not in runs[i] or configs[i]["method"] == "target"
        _train(searcher, f"t{i}", 0.5 + i / 100, final=configs[i]["method"] != "target")
    # target was pruned (ended early) each time it came: a partial result is never reused
    targets = [i for i, c in configs.items() if c["method"] == "target"]
    assert targets and all("reuse" not in runs[i] for i in targets)
    states = {t.number: t.state for t in optuna.load_study(study_name="s", storage=storage).trials}
    assert all(states[runs[i]["number"]] == PRUNED for i in targets)
    finetunes = [c for c in configs.values() if c["method"] == "finetune"]
    assert len({c["t0"] for c in finetunes}) == len(finetunes)  # TPE's distinct samples all train

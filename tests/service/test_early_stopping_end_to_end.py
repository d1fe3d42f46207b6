"""Early stopping and no wasted trials through the real server, a real Ray head and a SQLite store: each
early-stopping kind prunes trials (PRUNED in Optuna's own tables, fewer epochs than the maximum), and an
arm with nothing to search is trained once."""

import httpx
import optuna
import pytest

from service.db import make_optuna_storage
from service.repository import epoch_history
from tests.service.test_all_methods import _run
from tests.service.test_end_to_end import _serve

pytestmark = pytest.mark.slow

EPOCHS = 9
TRAINER = {"n_target": 30, "epochs": EPOCHS, "batch_size": 16, "steps_per_epoch": 3}
SPEC = {"trainer": TRAINER, "max_concurrent_trials": 2, "cpus_per_trial": 1, "seed": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("transched-es")
    yield from _serve(data_dir, f"sqlite:///{data_dir / 'transched.db'}")


def _trials(server, study):
    return httpx.get(f"{server['api']}/studies/{study['id']}/trials?limit=100", timeout=30).json()["items"]


def _optuna_trials(server, study):
    storage = make_optuna_storage(server["database_url"])
    return optuna.load_study(study_name=study["optuna_study_name"], storage=storage).trials


@pytest.mark.parametrize("kind", ["asha", "schedule_sh"])
def test_early_stopping_stores_stopped_trials_as_pruned_with_fewer_epochs(server, kind):
    spec = {
        **SPEC,
        "name": f"es-{kind}",
        # smooth: t0, tau and alpha spread the early-rung accuracies, so the rungs have trials to stop
        "methods": ["smooth"],
        "n_trials": 8,
        "early_stopping": {"kind": kind, "grace_period": 1, "reduction_factor": 3},
    }
    study = _run(server["api"], spec)
    assert study["status"] == "completed", study
    trials, stored = _trials(server, study), _optuna_trials(server, study)
    assert len(trials) == len(stored) == 8
    pruned = [t for t in stored if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in stored if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned and complete and len(pruned) + len(complete) == 8, [t.state for t in stored]
    assert study["trial_counts"].get("PRUNED") == len(pruned)
    for t in pruned:
        epochs = epoch_history(t)
        assert 1 <= len(epochs) < EPOCHS
        # its value is its last intermediate value (Optuna's PRUNED rule), never a COMPLETE objective
        assert t.value == t.intermediate_values[max(t.intermediate_values)]
        assert "test_acc" not in t.user_attrs
    for t in complete:  # only fully trained trials are COMPLETE: /best ranks those
        assert len(epoch_history(t)) == EPOCHS and t.user_attrs.get("test_acc") is not None
    api_pruned = {t["number"] for t in trials if t["state"] == "PRUNED"}
    assert api_pruned == {t.number for t in pruned}
    best = httpx.get(f"{server['api']}/studies/{study['id']}/best", timeout=30).json()
    assert best["trial_number"] in {t.number for t in complete}
    if kind == "schedule_sh":
        # a survivor trained compressed runs of its schedule at the rungs below, then its full run
        rungs = [t.user_attrs.get("rungs") for t in complete]
        assert all(r and [x["budget_epochs"] for x in r] == [1, 3][: len(r)] for r in rungs), rungs
        assert all(max(t.intermediate_values) > EPOCHS for t in complete)  # steps: all runs in a row


def test_an_arm_with_nothing_to_search_runs_once_and_its_twins_reuse_it(server):
    spec = {**SPEC, "name": "once", "methods": ["target"], "n_trials": 3}
    study = _run(server["api"], spec)
    assert study["status"] == "completed", study
    trials = sorted(_trials(server, study), key=lambda t: t["number"])
    assert [t["state"] for t in trials] == ["COMPLETE"] * 3 and study["trial_counts"] == {"COMPLETE": 3}
    assert [t["reused_from"] for t in trials] == [None, 0, 0]
    assert len({t["value"] for t in trials}) == 1 and all(len(t["epochs"]) == EPOCHS for t in trials)
    stored = sorted(_optuna_trials(server, study), key=lambda t: t.number)
    # trained once: only trial 0 ever started a run (the trainable stamps started_at when it trains)
    assert ["started_at" in t.user_attrs for t in stored] == [True, False, False]
    logs = httpx.get(f"{server['api']}/studies/{study['id']}/logs", timeout=30).text
    assert "trial 1 reuses the result of trial 0" in logs and "trial 2 reuses the result of trial 0" in logs

"""service.report: the per-arm summary and the lambda(t) curves of a study's trials."""

import math

import pytest
from optuna.trial import TrialState

from service import report
from service.studies import find
from tests.service.conftest import SPEC, add_trial
from trainers.config import TrainConfig
from trainers.schedule import run_loss_weight

SMOOTH = {"t0": 0.1, "tau": 0.05, "alpha": 0.0}


@pytest.fixture
def rep(client, store):
    study_id = client.post("/studies", json=SPEC).json()["id"]
    name = client.get(f"/studies/{study_id}").json()["optuna_study_name"]
    add_trial(store.storage, name, method="smooth", value=0.6, **SMOOTH)
    add_trial(store.storage, name, method="smooth", value=0.7, **{**SMOOTH, "t0": -0.3})
    add_trial(store.storage, name, method="multitask", value=0.5, alpha=2.0)
    add_trial(store.storage, name, method="multitask", value=None, state=TrialState.FAIL, alpha=0.0)
    return report.study_report(find(store.sessions, study_id), storage=store.storage)


def test_each_arm_of_the_spec_has_its_best_first_and_its_counts(rep):
    assert list(rep.arms) == ["smooth", "multitask", "mixup+schedule"]
    smooth, multitask, mixup = rep.arms.values()
    assert [t.number for t in smooth.top] == [1, 0] and smooth.best.value == 0.7
    assert (multitask.trials, multitask.complete, multitask.best.number) == (2, 1, 2)
    assert (mixup.trials, mixup.best, mixup.top) == (0, None, [])


def test_a_curve_is_the_training_loops_own_lambda_of_the_trials_merged_config(rep):
    trial = rep.arms["smooth"].best
    x, y = rep.curve(trial)
    T = 100  # add_trial's total_steps
    config = TrainConfig.from_dict({**rep.spec.trainer.to_dict(), "method": "smooth", **SMOOTH, "t0": -0.3})
    assert x[0] == pytest.approx(1 / T) and x[-1] == 1.0
    assert y == [run_loss_weight(config, round(t * T), T) for t in x]
    assert y[0] < 0.05 < 0.95 < y[-1]  # the sigmoid rises through T/2 + t0 = 0.2 T (tau = 0.05 T)
    flat = rep.curve(rep.arms["multitask"].best)[1]  # eq. 6: the constant (1 + e^alpha)^-1
    assert flat == pytest.approx([1 / (1 + math.exp(2.0))] * len(flat))


def test_figures_are_svg_and_png(rep):
    assert report.figure(rep, "lambda", "svg").lstrip().startswith(b"<?xml")
    assert report.figure(rep, "methods", "png").startswith(b"\x89PNG")

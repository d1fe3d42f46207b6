"""/studies/{id}/trials and /best over a fake cluster, with trials written into Optuna's schema."""

import optuna
import pytest
from optuna.trial import TrialState

from tests.service.conftest import SPEC, add_trial

SMOOTH = {"t0": 0.1, "tau": 0.05, "alpha": 0.0}
MIXUP = {"mixup_alpha": 0.4, **SMOOTH}


@pytest.fixture
def study(client, store):
    """A study of smooth, multitask and mixup+schedule with five trials, one of them running."""
    created = client.post("/studies", json=SPEC).json()
    name = created["optuna_study_name"]
    epochs = [{"epoch": 1, "lambda": 0.2, "val_acc": 0.5, "mix_lambda": 0.31, "anything_new": [1, 2]}]
    add_trial(store.storage, name, method="smooth", value=0.6, **SMOOTH)
    add_trial(store.storage, name, method="mixup", schedule=True, value=0.8, epochs=epochs, **MIXUP)
    add_trial(store.storage, name, method="multitask", value=0.8, alpha=1.5)
    add_trial(store.storage, name, method="smooth", value=0.7, **{**SMOOTH, "tau": 0.2})
    add_trial(store.storage, name, method="multitask", value=None, state=TrialState.RUNNING, alpha=0.0)
    return created


def test_trials_are_listed_by_number_with_their_epochs_as_the_trainer_reported_them(client, study):
    page = client.get(f"/studies/{study['id']}/trials").json()
    assert page["total"] == 5 and [t["number"] for t in page["items"]] == [0, 1, 2, 3, 4]
    mixup = page["items"][1]
    assert mixup["params"] == {"method": "mixup", "schedule": True, **MIXUP}
    assert mixup["epochs"] == [
        {"epoch": 1, "lambda": 0.2, "val_acc": 0.5, "mix_lambda": 0.31, "anything_new": [1, 2]}
    ]
    running = page["items"][4]
    assert (running["state"], running["value"]) == ("RUNNING", None)
    page = client.get(f"/studies/{study['id']}/trials?offset=3&limit=10").json()
    assert [t["number"] for t in page["items"]] == [3, 4]
    assert client.get(f"/studies/{study['id']}/trials?limit=501").status_code == 422


def test_best_is_the_stores_own_best_trial(client, study, store):
    best = client.get(f"/studies/{study['id']}/best").json()
    ot_best = optuna.load_study(study_name=study["optuna_study_name"], storage=store.storage).best_trial
    assert (best["trial_number"], best["val_acc"]) == (ot_best.number, ot_best.value)
    assert best["config"]["method"] == ot_best.user_attrs["sampled"]["method"]


def test_best_of_an_arm_a_bare_method_and_the_earliest_on_ties(client, study):
    def best(method):
        return client.get(f"/studies/{study['id']}/best", params={"method": method}).json()

    smooth = best("smooth")
    assert (smooth["trial_number"], smooth["val_acc"], smooth["method"]) == (3, 0.7, "smooth")
    assert smooth["config"]["tau"] == 0.2
    assert smooth["schedule"] == {"method": "smooth", "t0": 10.0, "tau": 20.0, "alpha": 0.0, "T": 100}
    arm = best("mixup+schedule")
    assert arm["trial_number"] == 1 and arm["config"]["schedule"] is True
    assert arm["config"]["mixup_alpha"] == 0.4
    assert best("mixup")["trial_number"] == 1  # a bare method matches its arms
    multitask = best("multitask")
    assert multitask["trial_number"] == 2 and multitask["schedule"]["alpha"] == 1.5


def test_best_of_a_method_the_study_lacks_is_422_and_of_one_without_completed_trials_409(client, study):
    resp = client.get(f"/studies/{study['id']}/best", params={"method": "cutmix"})
    assert resp.status_code == 422
    assert resp.json() == {
        "detail": f"study {study['id']} has no method 'cutmix'; it has smooth, multitask, mixup+schedule"
    }
    fresh = client.post("/studies", json=SPEC).json()
    resp = client.get(f"/studies/{fresh['id']}/best")
    assert resp.status_code == 409 and resp.json() == {
        "detail": f"study {fresh['id']} has no completed trial yet"
    }
    resp = client.get(f"/studies/{study['id']}/best", params={"method": "mixup+schedule"})
    assert resp.status_code == 200


def test_best_of_a_method_whose_trials_all_failed_is_409(client, store):
    created = client.post("/studies", json=SPEC).json()
    add_trial(store.storage, created["optuna_study_name"], method="smooth", value=0.5, **SMOOTH)
    add_trial(
        store.storage, created["optuna_study_name"], method="multitask", value=None, state=TrialState.FAIL
    )
    resp = client.get(f"/studies/{created['id']}/best", params={"method": "multitask"})
    assert resp.status_code == 409
    assert resp.json() == {
        "detail": f"study {created['id']} has no completed trial of method 'multitask' yet"
    }

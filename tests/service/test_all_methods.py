"""Every method through the real server: one digits study naming all of them (the schedule family, the
mixup family, and mixup composed with the schedule), then a second study that reuses the cached
source-pretrained backbone."""

import time

import httpx
import optuna
import pytest

from service.cli import TERMINAL
from service.db import make_optuna_storage
from tests.service.test_end_to_end import _serve
from trainers.methods import method_names

pytestmark = pytest.mark.slow

TRAINER = {"n_target": 60, "epochs": 3, "batch_size": 32, "pretrain_epochs": 2}
METHODS = method_names()  # the registry's, now
ARMS = [*METHODS, "mixup+schedule"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("transched-methods")
    yield from _serve(data_dir, f"sqlite:///{data_dir / 'transched.db'}")


def _run(api: str, spec: dict, timeout_s: float = 500) -> dict:
    resp = httpx.post(f"{api}/studies", json=spec, timeout=60)
    assert resp.status_code == 202, resp.text
    study_id = resp.json()["id"]
    deadline = time.monotonic() + timeout_s
    while (study := httpx.get(f"{api}/studies/{study_id}", timeout=30).json())["status"] not in TERMINAL:
        assert time.monotonic() < deadline, study
        time.sleep(1)
    return study


def _arm(params: dict) -> str:
    return params["method"] + ("+schedule" if params.get("schedule") else "")


@pytest.fixture(scope="module")
def study(server):
    methods = [m for m in METHODS] + [{"method": "mixup", "schedule": True}]
    spec = {"name": "all-methods", "trainer": TRAINER, "methods": methods, "n_trials": len(ARMS) + 1}
    return _run(server["api"], {**spec, "max_concurrent_trials": 2, "seed": 5})


@pytest.fixture(scope="module")
def trials(server, study):
    return httpx.get(f"{server['api']}/studies/{study['id']}/trials?limit=100", timeout=30).json()["items"]


def test_the_study_finishes_and_tries_every_method(study, trials):
    assert study["status"] == "completed", study
    assert len(trials) == len(ARMS) + 1
    assert {_arm(t["params"]) for t in trials} == set(ARMS)
    failed = [t for t in trials if t["state"] != "COMPLETE"]
    assert not failed, failed


def test_trials_carry_their_method_params_and_findings(trials):
    for t in trials:
        assert t["epochs"] and "method" in t["params"]
        assert "linearity" in t["info"] and t["info"]["test_acc"] is not None
    xmixup = next(t for t in trials if t["params"]["method"] == "xmixup")
    pairing = xmixup["info"]["xmixup_pairing"]["target_to_source"]
    assert len(pairing) == 5 and len(set(pairing.values())) == 5  # one-to-one over the 5 target classes
    # ... and in the dataset's own labels: digits 5-9 (target) fed by digits 0-4 (source)
    by_label = xmixup["info"]["xmixup_pairing"]["target_class_to_source_class"]
    assert set(by_label) == {"5", "6", "7", "8", "9"} and set(by_label.values()) == {0, 1, 2, 3, 4}
    assert "mixup_alpha" in xmixup["params"]
    scheduled = next(t for t in trials if _arm(t["params"]) == "mixup+schedule")
    assert {"t0", "tau", "alpha", "mixup_alpha"} <= set(scheduled["params"])
    for e in scheduled["epochs"]:
        assert e["source_weight"] == pytest.approx(1 - e["lambda"])


def test_each_epoch_keeps_the_trainers_whole_report_method_keys_included(trials):
    """The driver stores the trainer's epoch dict as it came: a method's own report keys reach /trials."""
    for t in trials:
        for e in t["epochs"]:
            assert {"epoch", "lambda", "val_acc", "best_val_acc", "train_loss_target"} <= set(e)
    mixing = [t for t in trials if t["params"]["method"] in ("mixup", "cutmix", "xmixup")]
    assert len(mixing) >= 3
    for t in mixing:
        assert all(0 <= e["mix_lambda"] <= 1 for e in t["epochs"]), t["epochs"]
    ict = next(t for t in trials if t["params"]["method"] == "ict")
    assert all(e["ict_weight"] is not None for e in ict["epochs"]), ict["epochs"]


def test_source_pretrained_methods_share_one_pretraining_run(trials):
    cached = [t["info"]["pretrain_cache"] for t in trials if t["info"].get("pretrain_cache")]
    assert {t for t in ("source_finetune", "xmixup", "smile", "automix")} <= {
        t["params"]["method"] for t in trials if t["info"].get("pretrain_cache")
    }
    assert [c["cache"] for c in cached].count("miss") == 1
    assert len({c["key_hash"] for c in cached}) == 1


def test_best_and_best_per_method_are_consistent_with_the_store(server, study, trials):
    api = server["api"]
    best = httpx.get(f"{api}/studies/{study['id']}/best", timeout=30).json()
    storage = make_optuna_storage(server["database_url"])
    ot_best = optuna.load_study(study_name=study["optuna_study_name"], storage=storage).best_trial
    assert (best["trial_number"], best["val_acc"]) == (ot_best.number, ot_best.value)
    for arm in ARMS:
        mine = [t for t in trials if _arm(t["params"]) == arm and t["state"] == "COMPLETE"]
        top = max(mine, key=lambda t: (t["value"], -t["number"]))
        got = httpx.get(f"{api}/studies/{study['id']}/best", params={"method": arm}, timeout=30).json()
        assert got["trial_number"] == top["number"] and got["val_acc"] == top["value"], arm
        assert _arm(got["config"]) == arm
        assert got["val_acc"] <= best["val_acc"]
    resp = httpx.get(f"{api}/studies/{study['id']}/best", params={"method": "nope"}, timeout=30)
    assert resp.status_code == 422 and "no method 'nope'" in resp.json()["detail"]


def test_a_second_study_reuses_the_pretrained_source(server, study):
    second = _run(server["api"], {"trainer": TRAINER, "methods": ["source_finetune"], "n_trials": 1})
    assert second["status"] == "completed", second
    trial = httpx.get(f"{server['api']}/studies/{second['id']}/trials", timeout=30).json()["items"][0]
    assert trial["info"]["pretrain_cache"]["cache"] == "hit"
    assert trial["info"]["pretrain_cache"]["pretrain_runs"] == 1

"""Study presets (service/presets.py): each preset's values against the papers (the table below, typed
from the papers in shared/papers, not from the module), the expansion rules, the API listing (the CLI's
is in test_cli.py), and a study submitted with a preset end to end through the REST API up to `/best`
and `transched train`. No Ray: the cluster is a recording fake (submitting is not what these tests are
about)."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pytest
from typer.testing import CliRunner

from service import repository as repo
from service.presets import PRESETS, get_preset
from service.schemas import StudySpec
from trainers import DatasetNotFoundError, TrainConfig, config_fields, train

# --- the papers' values ------------------------------------------------------------------------------
# Paper 002 (Smooth Transfer Learning), appendix A.1 (CIFAR-100 -> CIFAR-10) and A.3 (common):
A1 = {
    "source": "cifar100",  # sec. 3
    "target": "cifar10",  # sec. 3
    "backbone": "resnet20",  # A.1 "We use ResNet20"
    "dropout": 0.0,  # A.1 "We do not use dropout in the ResNet20"
    "bn": "shared",  # A.1 "batch statistics are shared between the source and target datasets"
    "batch_size": 128,  # A.1 "the same sub-batch size 128"
    "lr": 0.1,  # A.1 "peak and final learning rates are 0.1 and 1e-3"
    "final_lr": 1e-3,
    "warmup": 0.025,  # A.3 "Linear warmup [...] 2.5% of total duration"
    "momentum": 0.9,  # A.3 "momentum rate of 0.9"
    "weight_decay": 1e-4,  # A.1 "Weight decay rate is 1e-4"
    "val_size": 5000,  # A.1 "45,000 training samples and 5,000 validation samples"
    "n_target": 45000,  # Table 1, top row
}
# Paper 002, appendix A.2 (MNIST -> SVHN) and A.3:
A2 = {
    "source": "mnist",
    "target": "svhn",
    "backbone": "wrn10_2",  # A.2 "WideResNet-10-2"
    "dropout": 0.4,  # A.2 "Dropout ratio [...] is 0.4"
    "bn": "per_domain",  # A.2 "dataset-specific batch statistics are used"
    "batch_size": 128,  # A.2 "the same sub-batch size 128"
    "lr": 1e-2,  # A.2 "peak and final learning rates are 1e-2 and 1e-4"
    "final_lr": 1e-4,
    "warmup": 0.025,  # A.3
    "momentum": 0.9,  # A.3
    "weight_decay": 5e-4,  # A.2 "Weight decay rate is 5e-4"
    "val_size": 0.1,  # A.2 "65,931 training samples (90%) and 7,326 validation samples (10%)"
    "n_target": 65931,  # Table 1, top row
}
PAPER = {
    # A.1: smooth & multi-task "380 epochs"; single dataset training "200 epochs";
    # TPE "11 workers that run in parallel [...] repeat the parallel training 9 times".
    "stl-cifar@1": (
        {**A1, "method": "smooth", "epochs": 380},
        {"methods": ["smooth"], "n_trials": 99, "max_concurrent_trials": 11},
    ),
    "stl-cifar-baselines@1": (
        {**A1, "method": "finetune", "epochs": 380},
        {"methods": ["finetune", "multitask"], "n_trials": 99, "max_concurrent_trials": 11},
    ),
    "stl-cifar-target@1": (
        {**A1, "method": "target", "epochs": 200},
        {"methods": ["target"], "n_trials": 1, "max_concurrent_trials": 1},
    ),
    # A.2: "336 epochs" / "160 epochs"; TPE "9 workers which sequentially train models 11 times".
    "stl-svhn@1": (
        {**A2, "method": "smooth", "epochs": 336},
        {"methods": ["smooth"], "n_trials": 99, "max_concurrent_trials": 9},
    ),
    "stl-svhn-baselines@1": (
        {**A2, "method": "finetune", "epochs": 336},
        {"methods": ["finetune", "multitask"], "n_trials": 99, "max_concurrent_trials": 9},
    ),
    "stl-svhn-target@1": (
        {**A2, "method": "target", "epochs": 160},
        {"methods": ["target"], "n_trials": 1, "max_concurrent_trials": 1},
    ),
    # Paper 001 (XMixup) sec. 4.2: ResNet-50 ImageNet-pretrained, flip + 224 crop, SGD momentum 0.9,
    # batch 48, 9,000 iterations, lr 0.01 divided by 10 (cosine to 0.001 here); sec. 5.3: alpha searched.
    "xmixup@1": (
        {
            "method": "xmixup",
            "source": "imagefolder",
            "target": "imagefolder",
            "backbone": "resnet50",
            "pretrained": True,
            "image_size": 224,
            "augment": True,
            "batch_size": 48,
            "epochs": 90,
            "steps_per_epoch": 100,
            "lr": 0.01,
            "final_lr": 0.001,
            "warmup": 0.0,
            "momentum": 0.9,
            "n_target": None,
        },
        {"methods": ["xmixup"]},
    ),
    # Paper 003 sec. 3: batch 128, w(t) 0 -> 100 over 40% of training, Dirichlet alpha 0.5 (CIFAR),
    # labeled sizes {250, ...}; baselines ERM, mixup, ICT[K].
    "ict-cifar10@1": (
        {
            "method": "ict",
            "target": "cifar10",
            "backbone": "wrn10_2",
            "batch_size": 128,
            "ict_w_max": 100.0,
            "ict_rampup": 0.4,
            "mixup_alpha": 0.5,
            "n_target": 250,
        },
        {
            "methods": [
                {
                    "method": "ict",
                    "ict_w_max": {"value": 100.0},
                    "ict_rampup": {"value": 0.4},
                    "mixup_alpha": {"value": 0.5},
                },
                {"method": "kmixup", "mixup_alpha": {"value": 0.5}},
                {"method": "mixup", "mixup_alpha": {"value": 0.5}},
                "target",
            ],
            "n_trials": 8,
        },
    ),
    # Paper 004 (AutoMix) sec. 4.2: 200 epochs, SGD lr 0.001, weight decay 0.0005, batch 16, ImageNet
    # weights; sec. 4: alpha = 2, layer l = 3, m from 0.999; Table 5: R-18, Vanilla/MixUp/CutMix.
    "automix-finegrained@1": (
        {
            "method": "automix",
            "target": "imagefolder",
            "backbone": "resnet18",
            "pretrained": True,
            "image_size": 224,
            "augment": True,
            "epochs": 200,
            "batch_size": 16,
            "lr": 0.001,
            "weight_decay": 5e-4,
            "momentum": 0.9,
            "mixup_alpha": 2.0,
            "automix_stage": 3,
            "ema_decay": 0.999,
            "n_target": None,
        },
        {
            "methods": [
                {"method": "automix", "mixup_alpha": {"value": 2.0}, "automix_stage": {"value": 3}},
                "mixup",
                "cutmix",
                "source_finetune",
            ]
        },
    ),
}
PATHS = {"target_path": "/data/target", "source_path": "/data/source"}


def _paths(preset) -> dict[str, str]:
    return {k.split(".", 1)[1]: PATHS[k.split(".", 1)[1]] for k in preset.requires}


# --- the values ----------------------------------------------------------------------------------------


def test_every_preset_is_in_the_papers_table():
    assert set(PRESETS) == set(PAPER)


@pytest.mark.parametrize("key", sorted(PAPER))
def test_preset_values_are_the_papers(key):
    trainer, study = PAPER[key]
    preset = PRESETS[key]
    assert preset.trainer == trainer
    assert preset.study == study


@pytest.mark.parametrize("key", sorted(PAPER))
def test_preset_fields_are_real_fields_and_each_value_cites_its_source(key):
    preset = PRESETS[key]
    assert set(preset.trainer) <= set(config_fields())
    assert set(preset.study) <= set(StudySpec.model_fields) - {"trainer", "preset", "name"}
    cited = {k for k in preset.cites}
    # every value but the trainer's method (the study's methods decide it) says where it comes from
    assert {f"trainer.{k}" for k in preset.trainer if k != "method"} <= cited
    assert {f"study.{k}" for k in preset.study if k != "max_concurrent_trials"} <= cited
    assert preset.paper.startswith("paper 00")


@pytest.mark.parametrize("key", sorted(PAPER))
def test_each_preset_expands_to_a_valid_spec_storing_its_key(key):
    preset = PRESETS[key]
    spec = StudySpec.model_validate({"preset": preset.name, "trainer": _paths(preset)})
    assert spec.preset == key
    assert spec.name == preset.name
    for field, value in preset.trainer.items():
        assert getattr(spec.trainer, field) == value, field
    assert spec.n_trials == preset.study.get("n_trials", StudySpec.model_fields["n_trials"].default)


def test_epochs_differ_by_method_as_in_the_paper():
    # A.1: 200 epochs for target-only and source pretraining, 380 for multi-task and the schedule.
    assert get_preset("stl-cifar").trainer["epochs"] == 380
    assert get_preset("stl-cifar-target").trainer["epochs"] == 200
    assert get_preset("stl-svhn").trainer["epochs"] == 336
    assert get_preset("stl-svhn-target").trainer["epochs"] == 160


# --- the expansion rules -----------------------------------------------------------------------------


def test_explicit_fields_win_and_trainer_fields_merge_key_by_key():
    spec = StudySpec.model_validate(
        {
            "preset": "stl-cifar@1",
            "name": "mine",
            "n_trials": 5,
            "trainer": {"n_target": 1420, "epochs": 3},
        }
    )
    assert (spec.name, spec.n_trials, spec.max_concurrent_trials) == ("mine", 5, 11)
    assert (spec.trainer.n_target, spec.trainer.epochs) == (1420, 3)
    assert (spec.trainer.backbone, spec.trainer.lr, spec.trainer.weight_decay) == ("resnet20", 0.1, 1e-4)


def test_the_stored_spec_is_expanded_and_revalidates_to_itself():
    spec = StudySpec.model_validate({"preset": "stl-svhn", "trainer": {"n_target": 659}})
    stored = spec.model_dump(mode="json")
    assert stored["preset"] == "stl-svhn@1"
    assert stored["trainer"]["backbone"] == "wrn10_2" and stored["trainer"]["n_target"] == 659
    assert StudySpec.model_validate(stored) == spec


def test_without_a_preset_the_digits_defaults_stay():
    spec = StudySpec.model_validate({})
    assert spec.preset is None
    assert spec.trainer == TrainConfig()
    assert (spec.trainer.source, spec.trainer.backbone) == ("digits", "small_cnn")


@pytest.mark.parametrize("name", ["nope", "stl-cifar@2", "stl-cifar@x"])
def test_unknown_preset_or_version_is_a_validation_error(name):
    with pytest.raises(ValueError, match="unknown preset"):
        StudySpec.model_validate({"preset": name})


def test_a_bad_override_is_still_validated():
    with pytest.raises(ValueError, match="trainer.epochs"):
        StudySpec.model_validate({"preset": "stl-cifar", "trainer": {"epochs": 0}})


# --- the API and the CLI -------------------------------------------------------------------------------


def test_api_lists_presets_and_shows_one(client):
    listed = client.get("/presets")
    assert listed.status_code == 200
    assert {f"{p['name']}@{p['version']}" for p in listed.json()} == set(PAPER)
    one = client.get("/presets/stl-cifar")
    assert one.status_code == 200
    body = one.json()
    assert body["trainer"] == {**PAPER["stl-cifar@1"][0]}
    assert "A.1" in body["cites"]["trainer.epochs"]
    assert client.get("/presets/stl-cifar@1").json() == body
    missing = client.get("/presets/nope")
    assert missing.status_code == 404 and "unknown preset" in missing.json()["detail"]


def _submit_and_complete(store, client, cluster, body) -> tuple[str, dict]:
    """POST the spec, then play the driver: one completed trial in the study's Optuna storage."""
    created = client.post("/studies", json=body)
    assert created.status_code == 202, created.text
    study_id = created.json()["id"]
    assert list(cluster.jobs) == [created.json()["ray_job_id"]]
    with store.sessions() as session:  # the row itself: the API would re-expand a bare preset name
        stored = repo.get_study(session, study_id=study_id).spec
    assert client.get(f"/studies/{study_id}").json()["spec"] == stored
    sampled = {"method": "smooth", "t0": 0.1, "tau": 0.05, "alpha": -1.0}
    ot = optuna.create_study(
        storage=store.storage, study_name=created.json()["optuna_study_name"], direction="maximize"
    )
    dist = optuna.distributions.FloatDistribution
    ot.add_trial(
        optuna.trial.create_trial(
            params={"t0": 0.1, "tau": 0.05, "alpha": -1.0},
            distributions={"t0": dist(-0.5, 0.5), "tau": dist(1e-4, 10, log=True), "alpha": dist(-6, 6)},
            value=0.5,
            user_attrs={"sampled": sampled, "total_steps": 1000, "test_acc": 0.5},
        )
    )
    return study_id, stored


@pytest.mark.parametrize("key", ["stl-cifar@1", "stl-svhn@1"])
def test_study_with_a_preset_stores_the_expanded_spec(store, client, cluster, key, tmp_path):
    _, stored = _submit_and_complete(store, client, cluster, {"preset": key.split("@")[0]})
    assert stored["preset"] == key
    trainer, study = PAPER[key]
    for field, value in trainer.items():
        assert stored["trainer"][field] == value, field
    assert (stored["n_trials"], stored["max_concurrent_trials"]) == (
        study["n_trials"],
        study["max_concurrent_trials"],
    )
    assert [m["method"] for m in stored["methods"]] == study["methods"]


def test_best_of_a_preset_study_is_a_config_transched_train_runs(store, client, cluster, settings, tmp_path):
    """`/best` holds the preset's recipe with the trial's params; TrainConfig accepts it unchanged, and
    `transched train` runs it up to the data: CIFAR cannot be downloaded here, so the run ends at the
    loader's clear 'not found' error (not at a config error) -- the honest end of this path here."""
    from service import cli

    study_id, _ = _submit_and_complete(
        store, client, cluster, {"preset": "stl-cifar", "trainer": {"n_target": 1420, "data_dir": "no-cifar"}}
    )
    best = client.get(f"/studies/{study_id}/best")
    assert best.status_code == 200, best.text
    body = best.json()
    config = TrainConfig.from_dict(body["config"])
    assert (config.backbone, config.epochs, config.lr, config.n_target, config.t0) == (
        "resnet20",
        380,
        0.1,
        1420,
        0.1,
    )
    path = tmp_path / "best.json"
    path.write_text(json.dumps(body))
    result = CliRunner().invoke(
        cli.app, ["train", str(path), "--out", str(tmp_path / "run")], obj=cli.Cli(settings, "http://unused")
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    message = " ".join(result.stderr.split())  # one message, wrapped or not
    assert message.startswith("error: dataset 'cifar10' not found") and "never downloads" in message
    with pytest.raises(DatasetNotFoundError):
        train(config)


@pytest.mark.slow  # a ResNet-20 / WRN-10-2 run each
@pytest.mark.parametrize("key", ["stl-cifar@1", "stl-svhn@1"])
def test_the_best_config_trains_with_only_the_data_swapped(store, client, cluster, key):
    """The recipe itself (backbone, bn, dropout, lr schedule, batch) runs through trainers.train: the same
    /best config with the data fields pointed at the synthetic set and a two-step budget."""
    study_id, _ = _submit_and_complete(store, client, cluster, {"preset": key.split("@")[0]})
    config = TrainConfig.from_dict(client.get(f"/studies/{study_id}/best").json()["config"])
    tiny = dataclasses.replace(
        config,
        source="synthetic",
        target="synthetic",
        source_classes=[0, 1, 2, 3, 4],
        target_classes=[5, 6, 7, 8, 9],
        n_target=40,
        val_size=0.2,
        batch_size=8,
        epochs=1,
        steps_per_epoch=2,
    )
    result = train(tiny)
    assert result.steps_run == 2 and 0.0 <= result.best_val_acc <= 1.0
    assert (result.config.backbone, result.config.bn, result.config.dropout) == (
        PAPER[key][0]["backbone"],
        PAPER[key][0]["bn"],
        PAPER[key][0]["dropout"],
    )

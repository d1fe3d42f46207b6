"""Every method trains end to end: a 2-step smoke run on generated data (CPU) and on CUDA (GPU mark)."""

import json

import pytest
import torch

from trainers import REPORT_KEYS, train
from trainers.methods import METHOD_REPORT_KEYS, method_class, method_names
from trainers.schedule import loss_weight

MIXUP_METHODS = [m for m in method_names() if method_class(m).composable]  # the registry's, now


def tiny(method, tmp_path, **overrides):
    base = dict(
        method=method,
        source="synthetic",
        target="synthetic",
        source_classes=[0, 1, 2, 3, 4],
        target_classes=[5, 6, 7],
        image_size=16,
        n_target=24,
        batch_size=8,
        epochs=1,
        steps_per_epoch=2,
        pretrain_epochs=1,
        num_threads=1,
        artifact_dir=str(tmp_path / "artifacts"),
        device="cpu",
    )
    return {**base, **overrides}


@pytest.mark.parametrize("method", MIXUP_METHODS)
def test_two_step_smoke_run(method, tmp_path):
    reports = []
    result = train(tiny(method, tmp_path, automix_stage=2), reports.append)
    assert result.steps_run == 2 and not result.diverged
    assert reports == result.history
    for m in reports:
        assert tuple(m) == REPORT_KEYS + METHOD_REPORT_KEYS[method]
        assert m["source_weight"] == 0.0  # schedule off: no source loss
    metrics = json.loads(json.dumps(result.metrics(), allow_nan=False))
    lin = metrics["linearity"]
    assert lin["val"]["label_il"] >= 0 and lin["val"]["feature_il"] >= 0 and lin["train"]["n_pairs"] == 24
    nonlin = lin["nonlinearity"]  # paper 003 eq. 3, per layer, on the test split
    assert list(nonlin["layers"]) == ["stage1", "stage2", "stage3", "pool", "logits"]
    assert nonlin["n_pairs"] == result.data_sizes["n_test"] and all(
        0 <= v <= 2 for v in nonlin["layers"].values()
    )
    if method in ("source_finetune", "xmixup", "smile", "automix"):
        assert metrics["init"]["init"] == "source_pretrained" and metrics["pretrain_cache"]["cache"] == "miss"
    else:
        assert metrics["init"]["init"] == "scratch" and metrics["pretrain_cache"] is None
    if method == "xmixup":
        pairs = metrics["xmixup_pairing"]["target_to_source"]
        assert sorted(pairs) == ["0", "1", "2"] and len(set(pairs.values())) == 3


@pytest.mark.parametrize("method", ["mixup", "xmixup", "ict"])
def test_with_the_schedule_the_reported_source_weight_is_one_minus_lambda(method, tmp_path):
    params = dict(t0=-0.1, tau=0.2, alpha=0.5)
    result = train(tiny(method, tmp_path, schedule=True, epochs=3, **params))
    T = result.total_steps
    for m in result.history:
        lam = loss_weight("smooth", m["step"], T, **params)
        assert m["lambda"] == lam and m["source_weight"] == 1.0 - lam
        assert m["train_loss_source"] is not None


def test_ict_unlabeled_pool_can_be_another_dataset(tmp_path):
    result = train(
        tiny("ict", tmp_path, source="digits", target="synthetic", unlabeled="synthetic", source_classes=None)
    )
    assert result.steps_run == 2


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("method", MIXUP_METHODS)
def test_two_step_cuda_run(method, tmp_path):
    result = train(tiny(method, tmp_path, device="cuda", automix_stage=2))
    assert result.device.startswith("cuda") and result.steps_run == 2
    assert next(result.model.parameters()).is_cuda
    json.dumps(result.metrics(), allow_nan=False)

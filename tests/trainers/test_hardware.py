"""The hardware paths (trainers/hardware.py): bf16 autocast, channels_last, torch.compile, cuDNN settings.

The CUDA defaults (bf16, channels_last) run here on the CPU by asking for them explicitly: the same code
paths, so they are tested without a GPU. What only CUDA can show (kernels in bf16 on the device, no host
sync in the step loop, a fractional trial's memory cap) is marked `gpu` and skipped visibly elsewhere.
"""

import math

import pytest
import torch

from trainers import REPORT_KEYS, TrainConfig, hardware, train
from trainers.loop import _EpochSums, _setup, _step, evaluate

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")


def digits(tmp_path, **overrides):
    base = dict(
        method="smooth",
        t0=-0.2,
        tau=0.1,
        n_target=100,
        batch_size=32,
        epochs=3,
        steps_per_epoch=15,
        num_threads=1,
        device="cpu",
        seed=1,
        artifact_dir=str(tmp_path / "artifacts"),
    )
    return {**base, **overrides}


def test_auto_means_bf16_and_channels_last_on_cuda_and_plain_fp32_on_cpu():
    auto = TrainConfig()
    assert (auto.precision, auto.channels_last, auto.compile_model) == ("auto", None, False)
    assert hardware.autocast_dtype(auto, CPU) is None and not hardware.uses_channels_last(auto, CPU)
    assert hardware.autocast_dtype(auto, CUDA) is torch.bfloat16 and hardware.uses_channels_last(auto, CUDA)
    fp32 = TrainConfig(precision="fp32", channels_last=False)
    assert hardware.autocast_dtype(fp32, CUDA) is None and not hardware.uses_channels_last(fp32, CUDA)
    assert hardware.autocast_dtype(TrainConfig(precision="bf16"), CPU) is torch.bfloat16


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be auto, fp32 or bf16"):
        TrainConfig(precision="fp16")


def test_explicit_fp32_is_the_cpu_default_to_the_bit(tmp_path):
    default = train(digits(tmp_path, epochs=1, steps_per_epoch=5))
    explicit = train(digits(tmp_path, epochs=1, steps_per_epoch=5, precision="fp32", channels_last=False))
    assert default.history == explicit.history and default.test_acc == explicit.test_acc


def test_bf16_autocast_runs_the_forward_in_bf16_on_the_cpu(tmp_path):
    run = _setup(TrainConfig.from_dict(digits(tmp_path, precision="bf16")), CPU)
    assert run.autocast_dtype is torch.bfloat16
    x, _ = run.ctx.target()
    with hardware.autocast(CPU, run.autocast_dtype):
        assert run.model(x).dtype is torch.bfloat16
    _step(run, 1.0, 0.01, sums := _EpochSums(CPU))
    assert math.isfinite(sums.means()[0])
    for p in run.model.parameters():  # autocast casts activations; the weights and their updates stay fp32
        assert p.dtype is torch.float32


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return train(digits(tmp_path_factory.mktemp("fp32")))


@pytest.mark.parametrize(
    "overrides",
    [
        # bf16 in the default layout takes ~40 s on this CPU (no native bf16 convolutions): slow
        pytest.param(dict(precision="bf16"), marks=pytest.mark.slow),
        dict(channels_last=True),
        dict(precision="bf16", channels_last=True),
    ],
)
def test_bf16_and_channels_last_train_as_well_as_fp32_on_cpu(tmp_path, overrides, fp32):
    reports = []
    result = train(digits(tmp_path, **overrides), reports.append)
    assert reports == result.history and tuple(reports[0]) == REPORT_KEYS  # the same API
    assert not result.diverged and all(math.isfinite(m["train_loss_target"]) for m in result.history)
    assert math.isfinite(result.history[0]["train_loss_source"])  # the source phase (t0 < 0) ran too
    # 5 classes, 100 labeled digits, 45 steps: fp32 reaches ~0.93; the other paths as well within noise.
    assert fp32.best_val_acc > 0.85 and result.best_val_acc > fp32.best_val_acc - 0.05
    assert result.test_acc > 0.85


def test_channels_last_converts_the_network_and_keeps_its_results_loadable(tmp_path):
    result = train(digits(tmp_path, epochs=1, steps_per_epoch=3, channels_last=True))
    conv = next(m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    model_path, _ = result.save(tmp_path / "out")
    from trainers import load_model

    loaded, _ = load_model(model_path)
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(loaded(x), result.model(x), atol=1e-5)


def test_evaluate_in_bf16_agrees_with_fp32(tmp_path):
    run = _setup(TrainConfig.from_dict(digits(tmp_path)), CPU)
    for _ in range(20):
        _step(run, 0.5, 0.05, _EpochSums(CPU))
    acc32, loss32 = evaluate(run.model, run.data.val_x, run.data.val_y)
    acc16, loss16 = evaluate(run.model, run.data.val_x, run.data.val_y, autocast_dtype=torch.bfloat16)
    assert abs(acc16 - acc32) <= 0.05 and abs(loss16 - loss32) < 0.05 * loss32


@pytest.mark.slow  # compiling takes ~20-60 s on this CPU
def test_compile_model_trains_and_keeps_plain_state_dict_keys(tmp_path):
    plain = train(digits(tmp_path, epochs=1, steps_per_epoch=3))
    compiled = train(digits(tmp_path, epochs=1, steps_per_epoch=3, compile_model=True))
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())
    assert math.isfinite(compiled.history[0]["train_loss_target"])
    assert abs(compiled.history[0]["val_acc"] - plain.history[0]["val_acc"]) < 0.1


def test_cudnn_benchmark_is_only_switched_on_for_cuda_and_restored():
    before = torch.backends.cudnn.benchmark
    with hardware.device_settings(CPU):
        assert torch.backends.cudnn.benchmark == before
    with hardware.device_settings(CUDA):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark == before


# --- CUDA only ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@gpu
def test_cuda_defaults_train_in_bf16_channels_last(tmp_path):
    result = train(
        digits(tmp_path, device="cuda", backbone="resnet20", target="synthetic", source="synthetic")
    )
    conv = next(m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_cuda and conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not result.diverged and result.best_val_acc > 0


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    "method", ["smooth", "target", "mixup", "kmixup", "cutmix", "ict", "smile", "automix"]
)  # not xmixup (its one sync)
def test_the_cuda_step_loop_never_waits_for_the_device(tmp_path, method):
    """No host synchronisation inside the step loop: CUDA's sync debug mode raises on any."""
    config = digits(tmp_path, device="cuda", method=method, augment=True, automix_stage=2, n_target=60)
    run = _setup(TrainConfig.from_dict(config), CUDA)
    sums = _EpochSums(CUDA)
    _step(run, 0.5, 0.01, sums)  # warm-up: first-call allocations may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            run.step += 1
            _step(run, 0.5, 0.01, sums)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@gpu
def test_a_fractional_trial_caps_its_memory():
    from service.trainable import claim_device

    claim_device(0.25)
    total = torch.cuda.get_device_properties(0).total_memory
    with pytest.raises(torch.OutOfMemoryError):
        torch.empty(int(0.3 * total), dtype=torch.uint8, device="cuda")
    torch.cuda.set_per_process_memory_fraction(1.0, device=0)

"""Runs on a machine with a CUDA device; skipped, with the reason shown, where there is none."""

import pytest
import torch

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@needs_cuda
def test_a_fractional_gpu_trial_caps_its_memory_and_records_the_device():
    from service.trainable import claim_device

    device = claim_device(0.25)
    assert device.startswith("cuda:0 (")
    total = torch.cuda.get_device_properties(0).total_memory
    with pytest.raises(torch.OutOfMemoryError):
        torch.empty(int(total * 0.3), dtype=torch.uint8, device="cuda")  # above the 25% share
    torch.cuda.set_per_process_memory_fraction(1.0, device=0)


@needs_cuda
def test_a_two_epoch_training_run_on_cuda():
    from trainers import TrainConfig, train

    result = train(TrainConfig(epochs=2, steps_per_epoch=2, n_target=40, device="cuda"))
    assert result.metrics()["device"].startswith("cuda")

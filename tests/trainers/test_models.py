"""Every backbone trains through `train()`; per-domain batch norm keeps its own statistics."""

import math

import pytest
import torch

from trainers import BACKBONES, PretrainedWeightsNotFoundError, TrainConfig, train
from trainers.models import DomainBatchNorm2d, TransferNet, build_backbone, count_parameters


def tiny(**overrides):
    base = dict(
        method="smooth",
        source="synthetic",
        target="synthetic",
        image_size=16,
        batch_size=4,
        steps_per_epoch=2,
        epochs=1,
        lr=0.01,
        num_threads=2,
        device="cpu",
    )
    return TrainConfig(**{**base, **overrides})


@pytest.mark.parametrize("bn", ["shared", "per_domain"])
@pytest.mark.parametrize(
    "backbone",
    # The CIFAR-size backbones take seconds a run on CPU: out of `make test-fast`, in `make test`.
    [pytest.param(b, marks=pytest.mark.slow) if b != "small_cnn" else b for b in BACKBONES],
)
def test_two_step_smoke_run_for_each_backbone(backbone, bn):
    reports = []
    result = train(
        tiny(backbone=backbone, bn=bn, dropout=0.3 if backbone == "wrn10_2" else 0.0), reports.append
    )
    assert len(reports) == 1 and reports[0]["step"] == 2 == result.total_steps
    # the multitask-like midpoint of a 2-step smooth run: both branches ran
    for key in ("train_loss_target", "train_loss_source", "val_loss"):
        assert reports[0][key] is not None and math.isfinite(reports[0][key]), key
    assert 0.0 <= result.test_acc <= 1.0 and result.best_epoch == 1


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_backbones_take_any_channels_and_sizes(backbone, in_channels):
    net = build_backbone(backbone, in_channels).eval()
    for size in (8, 17):
        with torch.no_grad():
            out = net(torch.randn(2, in_channels, size, size))
        assert out.shape == (2, net.out_features)


def test_paper_backbone_sizes():
    # ResNet-20 option A ~0.27M and WRN-10-2 ~0.30M parameters with a 10-way head (methods-reference)
    assert count_parameters(TransferNet(build_backbone("resnet20"), 0, 10)) == pytest.approx(
        0.270e6, rel=0.01
    )
    assert count_parameters(TransferNet(build_backbone("wrn10_2"), 0, 10)) == pytest.approx(0.304e6, rel=0.01)


def test_per_domain_bn_keeps_separate_running_stats():
    torch.manual_seed(0)
    net = TransferNet(build_backbone("small_cnn", 3), n_source=4, n_target=3, bn="per_domain")
    bns = [m for m in net.modules() if isinstance(m, DomainBatchNorm2d)]
    wrapped = {id(b) for m in bns for b in m.bns}
    plain = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 3 and all(id(m) in wrapped for m in plain)  # every BN of the backbone was replaced
    first = bns[0].bns
    before_t, before_s = first[0].running_mean.clone(), first[1].running_mean.clone()
    net.train()
    net(torch.randn(8, 3, 8, 8) + 5.0, "source")  # only the source statistics may move
    assert torch.equal(first[0].running_mean, before_t)
    assert not torch.equal(first[1].running_mean, before_s)
    net(torch.randn(8, 3, 8, 8) - 5.0, "target")
    assert not torch.equal(first[0].running_mean, before_t)
    # the two domains saw opposite inputs, so their statistics point in different directions
    assert not torch.allclose(first[0].running_mean, first[1].running_mean)
    # and each domain has its own affine parameters
    assert first[0].weight is not first[1].weight


def test_per_domain_bn_after_training_differs_between_domains():
    result = train(tiny(backbone="resnet20", bn="per_domain", steps_per_epoch=3))
    for m in result.model.modules():
        if isinstance(m, DomainBatchNorm2d):
            target, source = m.bns
            assert not torch.equal(target.running_mean, source.running_mean)
            assert int(target.num_batches_tracked) == 3 and int(source.num_batches_tracked) == 3


def test_shared_bn_has_one_set_of_statistics():
    result = train(tiny(backbone="small_cnn", bn="shared"))
    assert not any(isinstance(m, DomainBatchNorm2d) for m in result.model.modules())
    # both sub-batches go through as one batch: each BN saw one batch per step
    bn = next(m for m in result.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 2


def test_pretrained_weights_missing_raise_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: nothing to find, nothing fetched
    with pytest.raises(PretrainedWeightsNotFoundError) as info:
        build_backbone("resnet18", 3, pretrained=True)
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "weights=" in message
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ValueError):
        build_backbone("small_cnn", 3, pretrained=True)


def test_pretrained_weights_load_from_the_local_cache(tmp_path, monkeypatch):
    # Fake a cached file with the right keys (random values): the loader must read it, not download.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    net = build_backbone("resnet18", 1, pretrained=True)  # grey input: the stem is adapted
    assert torch.equal(net.net.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert net.net.conv1.weight.shape[1] == 1
    expected = reference.conv1.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(net.net.conv1.weight, expected)

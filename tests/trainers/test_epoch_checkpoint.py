"""Epoch checkpoints: a run interrupted after epoch k and resumed from its checkpoint gives the same
result, bit for bit, as one that was never interrupted."""

import pytest
import torch

from trainers import train


class Interrupted(Exception):
    pass


def digits(**overrides):
    base = dict(
        source="digits",
        target="digits",
        n_target=50,
        epochs=4,
        batch_size=32,
        num_threads=1,
        device="cpu",
        steps_per_epoch=5,
    )
    return {**base, **overrides}


def interrupt_at(epoch):
    """A report that kills the run at `epoch`'s report: the checkpoint then holds epoch - 1."""

    def report(metrics):
        if metrics["epoch"] == epoch:
            raise Interrupted

    return report


def assert_same(resumed, whole):
    assert resumed.history == whole.history
    assert (resumed.best_val_acc, resumed.best_epoch, resumed.test_acc) == (
        whole.best_val_acc,
        whole.best_epoch,
        whole.test_acc,
    )
    assert resumed.steps_run == whole.steps_run
    for (k, a), (_, b) in zip(
        resumed.model.state_dict().items(), whole.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k


@pytest.mark.parametrize(
    "config",
    [
        # two samplers, shared augmentation, the global RNG (dropout) and SGD momentum
        digits(method="smooth", augment=True, t0=0.0, tau=0.2),
        digits(method="mixup"),  # the method's numpy and torch generators
        digits(method="ict", n_target=40, unlabeled="target"),  # a teacher and an unlabeled pool
        digits(method="automix", init="scratch", epochs=3),  # Mix Block, momentum encoder and its momentum
    ],
    ids=["smooth-augment", "mixup", "ict", "automix"],
)
def test_a_run_resumed_after_epoch_k_equals_the_uninterrupted_run(config, tmp_path):
    whole = train(config)
    path = tmp_path / "ckpt" / "0.pt"
    with pytest.raises(Interrupted):
        train(config, interrupt_at(3 if config["epochs"] > 3 else 2), checkpoint=path)
    assert path.is_file() and not list(path.parent.glob(".*tmp"))
    reports = []
    resumed = train(config, reports.append, checkpoint=path)
    done = 2 if config["epochs"] > 3 else 1
    assert [m["epoch"] for m in reports] == list(range(done + 1, config["epochs"] + 1))  # none redone
    assert_same(resumed, whole)


def test_a_run_killed_after_its_last_epoch_only_finishes(tmp_path):
    config = digits(method="target", epochs=2)
    path = tmp_path / "0.pt"
    whole = train(config, checkpoint=path)
    reports = []
    assert_same(train(config, reports.append, checkpoint=path), whole)
    assert reports == []


def test_a_checkpoint_of_another_config_is_ignored(tmp_path):
    path = tmp_path / "0.pt"
    with pytest.raises(Interrupted):
        train(digits(method="target", lr=0.05), interrupt_at(2), checkpoint=path)
    reports = []
    resumed = train(digits(method="target", lr=0.02), reports.append, checkpoint=path)
    assert [m["epoch"] for m in reports] == [1, 2, 3, 4]
    assert_same(resumed, train(digits(method="target", lr=0.02)))


def test_a_torn_checkpoint_is_ignored(tmp_path):
    path = tmp_path / "0.pt"
    path.write_bytes(b"not a checkpoint")
    reports = []
    train(digits(method="target", epochs=2), reports.append, checkpoint=path)
    assert [m["epoch"] for m in reports] == [1, 2]

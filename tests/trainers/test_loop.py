"""The training loop: branches, schedules as reported, determinism, learning, saving."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainers import REPORT_KEYS, TrainConfig, load_model, train
from trainers.batches import augment_batch
from trainers.data import load_transfer_data
from trainers.loop import evaluate
from trainers.models import TransferNet
from trainers.schedule import learning_rate, loss_weight

REPO = Path(__file__).resolve().parents[2]


def digits(**overrides):
    base = dict(
        source="digits", target="digits", n_target=50, epochs=2, batch_size=32, num_threads=1, device="cpu"
    )
    return {**base, **overrides}


def run(config):
    reports = []
    result = train(config, reports.append)
    assert reports == result.history
    return result, reports


def test_target_method_never_touches_the_source(tmp_path, monkeypatch):
    heads = []
    original = TransferNet.head
    monkeypatch.setattr(
        TransferNet, "head", lambda self, domain: heads.append(domain) or original(self, domain)
    )
    # The source is a dataset that is not even on disk: "target" must not try to read it.
    config = digits(method="target", source="mnist", data_dir=str(tmp_path / "absent"), epochs=3)
    result, reports = run(config)
    assert set(heads) == {"target"}
    assert result.model.source_head is None and result.data_sizes["n_source"] == 0
    for m in reports:
        assert m["train_loss_source"] is None and m["train_loss_target"] is not None
        assert m["lambda"] == 1.0 and m["source_weight"] == 0.0
    # one epoch = one pass over the target training set
    assert result.total_steps == 3 * math.ceil(50 / 32)


def test_finetune_first_half_is_source_only_then_target_only():
    result, reports = run(digits(method="finetune", epochs=4))
    spe = math.ceil(result.data_sizes["n_source"] / 32)  # the source is the larger set
    assert result.total_steps == 4 * spe
    assert [m["source_weight"] for m in reports] == [1.0, 1.0, 0.0, 0.0]
    assert reports[0]["train_loss_target"] is None and reports[1]["train_loss_target"] is None
    assert reports[2]["train_loss_source"] is None and reports[3]["train_loss_source"] is None
    assert all(reports[i]["train_loss_source"] is not None for i in (0, 1))


@pytest.mark.parametrize(
    "method, params",
    [
        ("smooth", dict(t0=0.1, tau=0.15, alpha=0.3)),
        ("multitask", dict(alpha=-1.0)),
        ("smooth", dict(tau=1e-6)),
    ],
)
def test_reported_schedule_is_the_schedule_at_that_step(method, params):
    config = digits(method=method, epochs=3, warmup=0.1, lr=0.02, final_lr=0.001, **params)
    result, reports = run(config)
    T = result.total_steps
    cfg = TrainConfig(**config)
    for m in reports:
        assert tuple(m) == REPORT_KEYS
        json.dumps(m, allow_nan=False)  # JSON-able, no NaN
        lam = loss_weight(method, m["step"], T, t0=cfg.t0, tau=cfg.tau, alpha=cfg.alpha)
        assert m["lambda"] == lam and m["source_weight"] == 1.0 - lam
        assert m["lr"] == learning_rate(m["step"], T, peak=0.02, final=0.001, warmup=0.1)
        assert m["total_steps"] == T and m["step"] == m["epoch"] * (T // 3)
    assert [m["best_val_acc"] for m in reports] == [
        max(m["val_acc"] for m in reports[: i + 1]) for i in range(len(reports))
    ]


DETERMINISM = digits(
    method="smooth", epochs=3, t0=-0.1, tau=0.1, augment=True, dropout=0.2, bn="per_domain", seed=7
)


def test_same_config_same_results_and_caller_rng_untouched():
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    a = train(DETERMINISM)
    assert torch.equal(torch.rand(3), expected_draw)  # training neither used nor moved the caller's RNG
    assert torch.get_num_threads() == threads  # num_threads is restored afterwards
    torch.manual_seed(999)  # a different global state must not matter either
    b = train(DETERMINISM)
    assert a.history == b.history and a.best_val_acc == b.best_val_acc and a.test_acc == b.test_acc
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = train({**DETERMINISM, "seed": 8})
    assert c.history != a.history


@pytest.mark.slow  # a new interpreter importing torch
def test_a_separate_process_gets_bit_identical_results():
    here = train(DETERMINISM)
    code = (
        "import json, sys; from trainers import train; "
        "r = train(json.loads(sys.argv[1])); "
        "print(json.dumps({'best': r.best_val_acc, 'test': r.test_acc, 'history': r.history}))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(DETERMINISM)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    there = json.loads(out.stdout.strip().splitlines()[-1])
    assert there["best"] == here.best_val_acc and there["test"] == here.test_acc
    assert there["history"] == here.history  # floats survive JSON exactly (repr round-trips)


def test_digits_smooth_run_learns():
    result, reports = run(digits(method="smooth", n_target=100, epochs=5))
    assert result.best_val_acc > 0.6  # 5 classes: chance is 0.2
    assert result.test_acc > 0.6
    assert reports[-1]["train_loss_target"] < reports[0]["train_loss_target"]


def test_best_weights_are_kept_and_early_stopping():
    config = digits(method="multitask", epochs=6, patience=1, lr=0.1)
    result, reports = run(config)
    accs = [m["val_acc"] for m in reports]
    assert (
        result.best_val_acc == max(accs) and result.best_epoch == accs.index(max(accs)) + 1
    )  # ties: earlier
    # patience 1: stops at the first epoch without a better val accuracy
    improved = [i == 0 or accs[i] > max(accs[:i]) for i in range(len(accs))]
    assert len(reports) == (improved.index(False) + 1 if False in improved else 6)
    assert result.stopped_early == (len(reports) < 6)
    # the returned model carries the best epoch's weights
    data = load_transfer_data(TrainConfig(**config))
    assert evaluate(result.model, data.val_x, data.val_y)[0] == result.best_val_acc
    assert evaluate(result.model, data.test_x, data.test_y)[0] == result.test_acc


def test_divergence_stops_and_stays_json_able():
    result, reports = run(digits(epochs=3, lr=1e4, final_lr=0.0))
    assert result.diverged and result.stopped_early and len(reports) == 1
    json.dumps(result.metrics(), allow_nan=False)


def test_save_writes_loadable_files(tmp_path):
    result, _ = run(digits(method="smooth", bn="per_domain", epochs=2))
    model_path, metrics_path = result.save(tmp_path / "run")
    assert model_path.name == "model.pt" and metrics_path.name == "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    assert metrics == json.loads(json.dumps(result.metrics()))
    assert metrics["best_val_acc"] == result.best_val_acc and "model" not in metrics
    checkpoint = torch.load(model_path, weights_only=True)
    assert TrainConfig.from_dict(checkpoint["config"]) == result.config
    model, config = load_model(model_path)
    assert config == result.config
    data = load_transfer_data(config)
    assert evaluate(model, data.test_x, data.test_y)[0] == result.test_acc


def test_config_errors_come_before_any_work():
    with pytest.raises(ValueError, match="unknown trainer config field"):
        train({"method": "smooth", "learning_rate": 0.1})
    with pytest.raises(ValueError, match="method"):
        train({"method": "no_such_method"})


def test_augment_translates_with_zero_padding_and_flips_only_when_allowed():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16) + 1
    gen = torch.Generator().manual_seed(0)
    for hflip in (False, True):
        out = augment_batch(x, hflip, gen)
        assert out.shape == x.shape
        padded = torch.nn.functional.pad(x, (2, 2, 2, 2))  # size/8 = 2 pixels
        for i in range(2):
            crops = [padded[i, :, dy : dy + 16, dx : dx + 16] for dy in range(5) for dx in range(5)]
            candidates = crops + ([c.flip(-1) for c in crops] if hflip else [])
            assert any(torch.equal(out[i], c) for c in candidates)

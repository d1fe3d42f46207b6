"""The pretrained-source cache: one pretraining run per key, also under concurrency."""

import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch

from trainers import TrainConfig, train
from trainers.pretrain import ensure_pretrained, key_hash, load_init_checkpoint, pretrain_key, read_counter

BASE = dict(
    method="source_finetune",
    n_target=30,
    epochs=1,
    steps_per_epoch=2,
    batch_size=64,
    pretrain_epochs=1,
    num_threads=1,
    device="cpu",
)


def _ask(config_dict, queue):
    # In a fresh (spawned) process: ask the cache for the key, report what happened.
    torch.set_num_threads(1)
    _, info = ensure_pretrained(TrainConfig(**config_dict))
    queue.put(info["cache"])


@pytest.mark.slow  # two spawned interpreters importing torch
def test_two_concurrent_processes_pretrain_once_and_a_later_request_pretrains_nothing(tmp_path):
    config = dict(BASE, artifact_dir=str(tmp_path / "artifacts"))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ask, args=(config, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    outcomes = sorted(queue.get(timeout=5) for _ in procs)
    assert outcomes == ["hit", "miss"]
    (key_dir,) = [p for p in (tmp_path / "artifacts").iterdir() if p.is_dir()]
    assert read_counter(key_dir)["pretrain_runs"] == 1
    assert not list(key_dir.glob("*.tmp"))  # nothing half-written left behind
    key = json.loads((key_dir / "key.json").read_text())
    assert key_hash(key) == key_dir.name and key["source"] == "digits" and key["backbone"] == "small_cnn"

    # A later trial (another "study") with the same key: a cache hit, no pretraining.
    result = train(config)
    assert result.init_info["pretrain_cache"]["cache"] == "hit"
    assert result.metrics()["pretrain_cache"]["pretrain_runs"] == 1
    assert read_counter(key_dir)["pretrain_runs"] == 1


def test_key_changes_with_the_recipe_and_not_with_the_method(tmp_path):
    from trainers.data import load_transfer_data

    cfg = TrainConfig(**dict(BASE, artifact_dir=str(tmp_path)))
    data = load_transfer_data(cfg)
    k = pretrain_key(cfg, data)
    assert pretrain_key(TrainConfig(**dict(BASE, method="xmixup")), data) == k
    assert pretrain_key(TrainConfig(**dict(BASE, pretrain_lr=0.01)), data) != k
    assert pretrain_key(TrainConfig(**dict(BASE, seed=1)), data) != k


def test_source_pretrained_start_differs_from_scratch_and_checkpoint_init_loads_it(tmp_path):
    config = dict(BASE, artifact_dir=str(tmp_path))
    result = train(config)
    ckpt_path = Path(result.init_info["pretrain_cache"]["path"])
    assert ckpt_path.is_file()
    # the saved model.pt and the cache file are both valid init checkpoints
    model_path, _ = result.save(tmp_path / "run")
    for path in (ckpt_path, model_path):
        loaded = load_init_checkpoint(path)
        assert loaded["backbone"] and loaded["source_head"]
    again = train(dict(config, init="checkpoint", init_checkpoint=str(ckpt_path)))
    assert again.init_info["init"] == "checkpoint"

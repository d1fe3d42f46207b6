"""The Ray Tune trainable: merge the study's fixed trainer fields with one trial's sampled params,
train, and report every epoch. The only place where `trainers` meets Ray."""

from __future__ import annotations

import socket
import time
from typing import Any


def merge_config(fixed: dict[str, Any], sampled: dict[str, Any], *, cpus_per_trial: float):
    """The one merge of a trial: fixed spec fields, then sampled params on top (same names)."""
    from trainers import TrainConfig

    merged = {**fixed, **sampled}
    # Pin intra-op threads to the trial's CPU share: it keeps concurrent trials from fighting over cores,
    # and `transched train best.json` uses the same count, so it reproduces the result bit for bit.
    if merged.get("num_threads") is None:
        merged["num_threads"] = max(1, int(cpus_per_trial))
    return TrainConfig.from_dict(merged)


def run_trial(sampled: dict[str, Any], *, fixed: dict[str, Any], cpus_per_trial: float) -> None:
    from ray import tune

    from trainers import train

    config = merge_config(fixed, sampled, cpus_per_trial=cpus_per_trial)
    node = socket.gethostname()
    started = time.time()

    def report(metrics: dict[str, Any]) -> None:
        tune.report({**metrics, "node": node, "started_at": started})

    result = train(config, report=report)
    # A last result after training: the test accuracy of the best-validation model, and the run's end.
    last = result.history[-1] if result.history else {}
    tune.report(
        {
            **last,
            "best_val_acc": result.best_val_acc,
            "final": True,
            "test_acc": result.test_acc,
            "best_epoch": result.best_epoch,
            "total_steps": result.total_steps,
            "node": node,
            "started_at": started,
            "finished_at": time.time(),
        }
    )

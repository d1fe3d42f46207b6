"""The one merge of a trial's config: the study's fixed trainer fields, then the sampled params on top.

Domain logic with no Ray in it: the trainable merges with it before training, and the API and the report
merge with it to show what a trial trained (`/best`'s config trains exactly what the trial trained).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainers import TrainConfig


def merge_config(fixed: dict[str, Any], sampled: dict[str, Any], *, cpus_per_trial: float) -> TrainConfig:
    """Fixed spec fields, then sampled params on top (the same names: a space's keys are trainer fields)."""
    from trainers import TrainConfig

    merged = {**fixed, **sampled}
    # Pin intra-op threads to the trial's CPU share: it keeps concurrent trials from fighting over cores,
    # and `transched train best.json` uses the same count, so it reproduces the result bit for bit.
    if merged.get("num_threads") is None:
        merged["num_threads"] = max(1, int(cpus_per_trial))
    return TrainConfig.from_dict(merged)

"""No wasted trials: a config identical to a finished trial's is not trained again.

Training is deterministic (same config, same seed, same result: trainers/loop.py), so an arm with nothing
to search (``target``, ``source_finetune``) or a config TPE samples a second time would only repeat a
result the study has. The driver's searcher asks `ReuseIndex.match` for each sampled config:

- identical to a COMPLETE trial: the new trial reuses its result: the trainable trains nothing and reports
  the stored value (`REUSE` in its config), the trial is told COMPLETE with the same value and keeps the
  original's epochs and findings, with the user attr ``reused_from`` (shown in the API);
- identical to a trial still running: the searcher waits for it (suggests nothing meanwhile), then reuses;
- identical only to a PRUNED or FAILED trial, or to none: trained as usual.

So the study still runs `n_trials` Optuna trials, each accounted for.
"""

from __future__ import annotations

import json
from typing import Any

REUSE = "reuse"  # key of the sampled config that carries the reused result to the trainable
REUSED_FROM = "reused_from"  # the user attr naming the trial whose result a trial reuses
# What a reusing trial copies from the original's user attrs: its epochs, findings and timings.
COPIED_ATTRS = ("test_acc", "best_epoch", "total_steps", "info", "node", "node_id", "device")


def config_key(config: dict[str, Any]) -> str:
    """One string per distinct trainer config (floats exactly as sampled)."""
    return json.dumps(config, sort_keys=True, default=str)


class ReuseIndex:
    """The study's finished and running configs by `config_key`, read once from the store (a resumed
    study's trials count) and then kept up to date by the searcher."""

    def __init__(self) -> None:
        self._loaded = False
        self.complete: dict[str, int] = {}  # key -> number of a COMPLETE trial with that config
        self.running: dict[str, int] = {}  # key -> number of a trial of that config not finished yet

    def load(self, study: Any) -> None:
        if self._loaded:
            return
        from optuna.trial import TrialState

        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            sampled = t.user_attrs.get("sampled")
            if sampled is not None and REUSED_FROM not in t.user_attrs:
                self.complete.setdefault(config_key(sampled), t.number)
        self._loaded = True

    def match(self, config: dict[str, Any]) -> tuple[str, int | None]:
        """("complete", n), ("running", n) or ("new", None) for a sampled config."""
        key = config_key(config)
        if key in self.complete:
            return "complete", self.complete[key]
        if key in self.running:
            return "running", self.running[key]
        return "new", None

    def started(self, config: dict[str, Any], number: int) -> None:
        self.running.setdefault(config_key(config), number)

    def finished(self, config: dict[str, Any], number: int, *, complete: bool) -> None:
        key = config_key(config)
        if self.running.get(key) == number:
            del self.running[key]
        if complete:
            self.complete.setdefault(key, number)


def reused_result(original: Any) -> dict[str, Any]:
    """What a reusing trial's trainable reports (and its trial stores) of the original trial."""
    attrs = original.user_attrs
    return {
        "number": original.number,
        "value": original.value,
        **{k: attrs.get(k) for k in COPIED_ATTRS if attrs.get(k) is not None},
    }

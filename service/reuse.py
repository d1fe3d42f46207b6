"""No wasted trials: a config identical to a finished trial's is not trained again.

Training is deterministic (same config, same seed, same result: trainers/loop.py), so an arm with nothing
to search (``target``, ``source_finetune``) or a config TPE samples a second time would only repeat a
result the study has. The driver's searcher asks `ReuseIndex.match` for each sampled config:

- identical to a COMPLETE trial: the new trial reuses its result: the trainable trains nothing and reports
  the stored value (`reuse` in its `TrialRun`), the trial is told COMPLETE with the same value and keeps
  the original's epochs and findings, with origin `reused` (user attr ``reused_from``, shown in the API);
- identical to a trial still running: the searcher waits for it (suggests nothing meanwhile), then reuses;
- identical only to a PRUNED or FAILED trial, or to none: trained as usual.

So the study still runs `n_trials` Optuna trials, each accounted for.
"""

from __future__ import annotations

import json
from typing import Any


def config_key(config: dict[str, Any]) -> str:
    """One string per distinct trainer config (floats exactly as sampled)."""
    return json.dumps(config, sort_keys=True, default=str)


class ReuseIndex:
    """The study's finished and running configs by `config_key`: loaded with the stored COMPLETE trials
    that trained (a resumed study's count; service.ledger.Ledger.complete_configs), then kept up to date
    by the searcher."""

    def __init__(self) -> None:
        self.complete: dict[str, int] = {}  # key -> number of a COMPLETE trial with that config
        self.running: dict[str, int] = {}  # key -> number of a trial of that config not finished yet

    def load(self, complete: list[tuple[dict[str, Any], int]]) -> None:
        for config, number in complete:
            self.complete.setdefault(config_key(config), number)

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

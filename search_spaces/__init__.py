"""TPE search spaces over the trainer config's fields.

A space is a plain function ``space(trial) -> dict`` that only calls ``trial.suggest_*``; the keys it
returns are `trainers.TrainConfig` field names, so sampled params merge into the config unrenamed.
"""

from search_spaces.params import Param, resolve
from search_spaces.schedule import DEFAULTS, METHOD_SPACE_PARAMS, build_space, method_space

__all__ = ["DEFAULTS", "METHOD_SPACE_PARAMS", "Param", "build_space", "method_space", "resolve"]

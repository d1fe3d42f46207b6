"""TPE search spaces over the trainer config's fields.

A space is a plain function ``space(trial) -> dict`` that only calls ``trial.suggest_*``; the keys it
returns are `trainers.TrainConfig` field names, so sampled params merge into the config unrenamed.
Each method's default ranges are facts of the method (trainers/methods/, the registry).
"""

from search_spaces.merge import merge_config
from search_spaces.methods import DEFAULTS, method_defaults, to_param
from search_spaces.params import Param, resolve
from search_spaces.space import arm_defaults, arm_name, build_space, method_space, parse_arm

__all__ = [
    "DEFAULTS",
    "Param",
    "arm_defaults",
    "arm_name",
    "build_space",
    "merge_config",
    "method_defaults",
    "method_space",
    "parse_arm",
    "resolve",
    "to_param",
]

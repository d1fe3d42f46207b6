import math

import optuna
import pytest

from search_spaces import DEFAULTS, Param, build_space, method_space
from trainers.config import TrainConfig, config_fields, schedule_params
from trainers.methods import method_class, method_names

# The schedule family, from the registry; the mixup arms: test_method_spaces.
METHODS = [m for m in method_names() if not method_class(m).composable]


def _fixed_trial_for(methods):
    params = {"method": list(methods)[0]} if len(methods) > 1 else {}
    for ps in methods.values():
        for name, p in ps.items():
            if not p.fixed:
                params[name] = p.low
    return optuna.trial.FixedTrial(params)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_space_runs_through_fixed_trial_and_names_match_the_trainer(method):
    methods = {method: method_space(method)}
    config = build_space(methods)(_fixed_trial_for(methods))
    assert config["method"] == method
    assert set(config) - {"method"} == set(schedule_params(method))
    assert set(config) <= set(config_fields())
    TrainConfig(**config)  # the sampled params are valid trainer config fields and values


def test_multi_method_space_is_conditional_on_the_method():
    methods = {m: method_space(m) for m in METHODS}
    space = build_space(methods)
    for m in METHODS:
        params = {"method": m, "t0": 0.1, "tau": 0.01, "alpha": 1.0}
        config = space(optuna.trial.FixedTrial(params))
        assert config["method"] == m
        assert set(config) == {"method", *schedule_params(m)}


def test_tpe_samples_only_the_chosen_methods_params():
    methods = {m: method_space(m) for m in METHODS}
    space = build_space(methods)
    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3), direction="maximize"
    )
    seen = set()
    for _ in range(20):
        trial = study.ask()
        config = space(trial)
        seen.add(config["method"])
        assert set(trial.params) == {"method", *schedule_params(config["method"])}
        study.tell(trial, 0.5)
    assert seen == set(METHODS)


def test_defaults_follow_the_paper_tau_log_offsets_linear_and_reach_both_extremes():
    assert DEFAULTS["tau"].log and not DEFAULTS["t0"].log and not DEFAULTS["alpha"].log
    # The switch point T/2 + t0*T covers the whole run.
    assert DEFAULTS["t0"].low <= -0.5 and DEFAULTS["t0"].high >= 0.5
    # Smallest tau: lambda goes from ~0 to ~1 within a few iterations for T = 10^4 (the step of eq. 5).
    assert DEFAULTS["tau"].low * 1e4 <= 1
    # Largest tau: lambda moves < 0.05 over the whole run (the constant of eq. 6).
    assert 1 / DEFAULTS["tau"].high / 4 < 0.05
    # alpha reaches weights near 0 and near 1.
    assert (
        1 / (1 + math.exp(DEFAULTS["alpha"].high)) < 0.01 and 1 / (1 + math.exp(DEFAULTS["alpha"].low)) > 0.99
    )


def test_overrides_bounds_log_flag_and_fixed_value():
    ps = method_space(
        "smooth", {"tau": Param(low=0.01), "t0": Param(value=0.2), "alpha": Param(log=False, high=1)}
    )
    assert ps["tau"] == Param(low=0.01, high=DEFAULTS["tau"].high, log=True)
    assert ps["t0"].fixed and ps["t0"].value == 0.2
    config = build_space({"smooth": ps})(optuna.trial.FixedTrial({"tau": 0.5, "alpha": 0.0}))
    assert config == {"method": "smooth", "t0": 0.2, "tau": 0.5, "alpha": 0.0}


@pytest.mark.parametrize(
    "override, message",
    [
        ({"tau": Param(low=20)}, "low (20.0) must be <= high (10.0)"),
        ({"tau": Param(low=-1, high=1)}, "log-scale range needs low > 0"),
        ({"beta": Param(low=0, high=1)}, "has no parameter(s) beta"),
    ],
)
def test_invalid_overrides_are_rejected_naming_the_parameter(override, message):
    with pytest.raises(ValueError) as err:
        method_space("smooth", override)
    assert message in str(err.value)


def test_param_rejects_inconsistent_input():
    with pytest.raises(ValueError, match="low .* must be <= high"):
        Param(low=2, high=1)
    with pytest.raises(ValueError, match="either value"):
        Param(value=1, low=0)

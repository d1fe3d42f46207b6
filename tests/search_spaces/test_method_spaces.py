"""The mixup-family search spaces: FixedTrial, names against the trainer config, conditional multi-method
spaces, integer params, the schedule arm, overrides."""

import optuna
import pytest

from search_spaces import Param, arm_name, build_space, method_defaults, method_space, parse_arm
from trainers.config import SCHEDULE_PARAMS, TrainConfig, config_fields
from trainers.methods import method_class, method_names

MIXUP_METHODS = [m for m in method_names() if method_class(m).composable]  # the registry's, now
SCHEDULE_METHODS = [m for m in method_names() if not method_class(m).composable]
ARMS = [*MIXUP_METHODS, *(arm_name(m, True) for m in MIXUP_METHODS)]


def fixed_params(methods, arm=None):
    arm = arm or next(iter(methods))
    params = {"method": arm} if len(methods) > 1 else {}
    for name, p in methods[arm].items():
        if not p.fixed:
            params[name] = int(p.low) if p.integer else p.low
    return params


@pytest.mark.parametrize("arm", ARMS)
def test_each_arm_runs_through_fixed_trial_and_names_match_the_trainer(arm):
    methods = {arm: method_space(arm)}
    config = build_space(methods)(optuna.trial.FixedTrial(fixed_params(methods)))
    method, schedule = parse_arm(arm)
    assert config["method"] == method and config["schedule"] is schedule
    assert set(config) <= set(config_fields())
    expected = set(method_defaults(method)) | (set(SCHEDULE_PARAMS) if schedule else set())
    assert set(config) - {"method", "schedule"} == expected
    TrainConfig(**config)  # valid values


def test_integer_params_are_suggested_as_ints():
    methods = {m: method_space(m) for m in ("kmixup", "ict", "automix")}
    space = build_space(methods)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4))
    for _ in range(12):
        trial = study.ask()
        config = space(trial)
        for name in ("k_points", "automix_stage"):
            if name in config:
                assert isinstance(config[name], int)
        assert config.get("ema_decay", 0.999) == 0.999 or config["method"] != "automix"
        TrainConfig(**config)
        study.tell(trial, 0.5)
    assert method_space("kmixup")["k_points"].integer


def test_one_conditional_space_over_every_method_and_arm():
    arms = [*SCHEDULE_METHODS, *ARMS]
    methods = {a: method_space(a) for a in arms}
    space = build_space(methods)
    for arm in arms:
        config = space(optuna.trial.FixedTrial(fixed_params(methods, arm)))
        method, schedule = parse_arm(arm)
        assert config["method"] == method
        assert set(config) - {"method", "schedule"} == set(methods[arm])
        TrainConfig(**config)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1, n_startup_trials=5))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        config = space(trial)
        arm = trial.params["method"]
        seen.add(arm)
        assert set(trial.params) == {"method", *(n for n, p in methods[arm].items() if not p.fixed)}
        study.tell(trial, 0.1)
    assert len(seen) >= len(arms) // 2


def test_schedule_arm_and_overrides():
    assert arm_name("mixup", True) == "mixup+schedule" and parse_arm("mixup+schedule") == ("mixup", True)
    assert method_space("mixup", schedule=True) == method_space("mixup+schedule")
    with pytest.raises(ValueError):
        arm_name("smooth", True)
    with pytest.raises(ValueError):
        method_space("smooth+schedule")
    # overrides per parameter, as for the schedule: a range, a fixed value, an int range
    ps = method_space("ict+schedule", {"tau": Param(value=0.1), "k_points": Param(low=3, high=3)})
    assert ps["tau"].fixed and ps["k_points"].integer and ps["k_points"].low == 3
    with pytest.raises(ValueError, match="no parameter"):
        method_space("mixup", {"tau": Param(value=0.1)})
    with pytest.raises(ValueError, match="whole number"):
        Param(low=2.5, high=4, integer=True)
    fixed = method_space("automix", {"automix_stage": Param(value=2)})
    config = build_space({"automix": fixed})(optuna.trial.FixedTrial({"mixup_alpha": 2.0}))
    assert config["automix_stage"] == 2 and isinstance(config["automix_stage"], int)


def test_paper_ranges():
    x = method_defaults("xmixup")["mixup_alpha"]
    assert (x.low, x.high, x.log) == (2.0**-3, 2.0**6, True)  # paper 001 sec. 5.3
    a = method_defaults("automix")
    assert a["mixup_alpha"].low <= 2.0 <= a["mixup_alpha"].high  # paper 004: alpha = 2
    assert a["automix_stage"].low <= 3 <= a["automix_stage"].high  # paper 004: l = 3
    assert set(method_defaults("smile")) == {
        "mixup_alpha",
        "smile_feature_weight",
        "smile_source_weight",
        "ema_decay",
    }
    assert set(method_defaults("ict")) == {"ict_w_max", "ict_rampup", "mixup_alpha", "k_points"}


def test_the_spaces_are_in_step_with_the_method_registry_and_the_config():
    from search_spaces import to_param
    from trainers.methods import REGISTRY

    for name, cls in REGISTRY.items():
        defaults = method_defaults(name)
        assert defaults == {k: to_param(v) for k, v in cls.search_space.items()}
        arms = [name, arm_name(name, True)] if cls.composable else [name]
        for arm in arms:
            methods = {arm: method_space(arm)}
            config = build_space(methods)(optuna.trial.FixedTrial(fixed_params(methods)))
            assert TrainConfig(**config).method == name

"""The method registry is the one description of the methods: the config, lambda(t) and the groupings
derived from it agree with it, and `register` refuses a class whose facts are wrong."""

import dataclasses

import pytest

from trainers import REPORT_KEYS, TrainConfig, config_fields
from trainers.config import schedule_params
from trainers.methods import (
    BUILTIN,
    METHOD_REPORT_KEYS,
    REGISTRY,
    SCHEDULE_PARAMS,
    Fixed,
    Method,
    Range,
    build_method,
    method_class,
    method_names,
    register,
)
from trainers.schedule import loss_weight, run_loss_weight


def test_the_registry_holds_every_builtin_method_once_and_the_derived_names_agree():
    assert tuple(REGISTRY.values())[: len(BUILTIN)] == BUILTIN
    assert method_names() == tuple(REGISTRY) == tuple(cls.name for cls in BUILTIN)
    schedule_family = {m for m in method_names() if not method_class(m).composable}
    assert schedule_family == {"target", "finetune", "multitask", "smooth"}
    assert METHOD_REPORT_KEYS == {m: REGISTRY[m].report_keys for m in method_names()}
    assert all(schedule_params(m) == REGISTRY[m].schedule_params(False) for m in method_names())


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_method_is_accepted_by_the_config_and_its_facts_name_config_fields(name):
    cls = method_class(name)
    config = TrainConfig(method=name)
    assert type(build_method(config)) is cls and cls.name == name
    assert config.resolved_init == cls.init
    assert config.resolved_mixup_alpha == cls.mixup_alpha
    assert dataclasses.replace(config, mixup_alpha=0.3).resolved_mixup_alpha == 0.3
    fields = set(config_fields())
    assert set(cls.search_space) <= fields, "a searched param must be a TrainConfig field"
    assert set(cls.schedule_params(True)) | set(cls.schedule_params(False)) <= fields
    assert not set(cls.report_keys) & set(REPORT_KEYS), "a method's report keys add to the common ones"
    assert cls.doc and cls.paper
    if cls.composable:
        assert schedule_params(name, True) == SCHEDULE_PARAMS and schedule_params(name, False) == ()
        TrainConfig(method=name, schedule=True)
    else:
        assert set(cls.search_space) == set(cls.schedule_params(False))  # it searches its lambda(t)
        with pytest.raises(ValueError, match="schedule family"):
            TrainConfig(method=name, schedule=True)


def test_the_config_rejects_a_name_the_registry_does_not_hold():
    with pytest.raises(ValueError, match="method must be one of target, finetune"):
        TrainConfig(method="not_a_method")


@pytest.mark.parametrize(
    "overrides, form",
    [
        (dict(method="smooth"), "smooth"),
        (dict(method="finetune"), "finetune"),
        (dict(method="multitask"), "multitask"),
        (dict(method="target"), "target"),
        (dict(method="mixup"), "target"),  # not composed: lambda = 1
        (dict(method="ict", schedule=True), "smooth"),  # composed: the sigmoid of eq. 4
    ],
)
def test_lambda_of_a_run_is_its_methods_schedule(overrides, form):
    config = TrainConfig(t0=0.1, tau=0.05, alpha=0.7, **overrides)
    T = 50
    got = [run_loss_weight(config, t, T) for t in range(1, T + 1)]
    assert got == [loss_weight(form, t, T, t0=0.1, tau=0.05, alpha=0.7) for t in range(1, T + 1)]


def _method(**facts):
    return type("Throwaway", (Method,), {"name": "throwaway_x", "doc": "d", **facts})


@pytest.mark.parametrize(
    "facts, message",
    [
        (dict(name="Bad-Name"), "lower-case identifier"),
        (dict(name="mixup"), "already registered"),
        (dict(init="imagenet"), "init must be one of"),
        (dict(doc=""), "one-line doc"),
        (dict(search_space={"mixup_alpha": (0.1, 1.0)}), "Range or a Fixed"),
    ],
)
def test_register_checks_the_facts(facts, message):
    with pytest.raises((ValueError, TypeError), match=message):
        register(_method(**facts))
    assert "throwaway_x" not in REGISTRY


def test_search_space_defaults_are_plain_data():
    assert Range(0.1, 1.0, log=True) == Range(low=0.1, high=1.0, log=True, integer=False)
    assert Fixed(3, integer=True).value == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        Range(0.0, 1.0).low = 2.0  # type: ignore[misc]

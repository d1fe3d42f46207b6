"""bench/b4_early_stopping.py: its studies are valid specs of each early-stopping kind, its task has the
late switch the benchmark is about, and its rank correlation is Spearman's."""

from __future__ import annotations

import pytest

from bench import b4_early_stopping as b4
from service.early_stopping import rung_budgets
from service.schemas import StudySpec


@pytest.mark.parametrize("kind", b4.KINDS)
def test_each_variant_is_a_valid_study_of_the_same_budget(kind):
    spec = StudySpec.model_validate(b4._spec(kind, 24))
    assert spec.early_stopping.kind == kind and spec.n_trials == 24 and spec.trainer.epochs == b4.EPOCHS
    assert rung_budgets(spec.early_stopping, spec.trainer.epochs) == [2, 6, 18]
    # t0 spans early and late switches (T/2 + t0 from 0 to T) in both arms
    for arm, params in spec.resolved_methods().items():
        assert (params["t0"].low, params["t0"].high) == (-0.5, 0.5), arm


def test_spearman_ranks():
    assert b4.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert b4.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert b4._switch({"t0": 0.3}) == pytest.approx(0.8)

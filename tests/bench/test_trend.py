"""bench/trend.py: the paper-002 trend benchmark runs end to end on a minimal budget, and its reading of
the best lambda(t) names the special case a schedule is close to."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from trainers.schedule import loss_weight

_PATH = Path(__file__).resolve().parents[2] / "bench" / "trend.py"


@pytest.fixture(scope="module")
def trend():
    spec = importlib.util.spec_from_file_location("bench_trend", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_lambda_shape_names_the_special_case(trend):
    step = trend.lambda_shape({"t0": 0.1, "tau": 1e-4, "alpha": 0.0}, 1000)
    assert step["kind"].startswith("~fine-tune") and "0.60" in step["kind"]
    flat = trend.lambda_shape({"t0": 0.0, "tau": 10.0, "alpha": 1.0}, 1000)
    assert flat["kind"].startswith("~multi-task") and "0.27" in flat["kind"]
    slow = trend.lambda_shape({"t0": 0.0, "tau": 0.2, "alpha": 0.0}, 1000)
    assert slow["kind"].startswith("gradual")
    # the printed values are eq. 4 at those fractions of T
    assert slow["lambda_at"]["0.75"] == round(loss_weight("smooth", 750, 1000, t0=0.0, tau=0.2, alpha=0.0), 3)


@pytest.mark.slow  # trains a few dozen short runs
def test_trend_runs_on_a_minimal_budget(trend, tmp_path):
    budget = trend.Budget(
        sizes=(20,),
        seeds=(0,),
        trials={"finetune": 1, "multitask": 1, "smooth": 2},
        epochs=1,
        steps_per_epoch=3,
    )
    report = trend.run_trend(budget, tmp_path / "data", workers=1)
    (row,) = report["summary"]
    assert row["n"] == 20 and 650 < row["n_source"] < 800  # the clean 40% of digits
    for method in trend.METHODS:
        assert 0.0 <= row[method]["val_mean"] <= 1.0
    (cell,) = report["cells"]
    assert cell["methods"]["target"]["total_steps"] == cell["methods"]["smooth"]["total_steps"] == 3
    assert set(row["shapes"][0]["lambda_at"]) == {"0", "0.25", "0.5", "0.75", "1"}
    table = trend.markdown(report)
    assert "| 20 |" in table and "lambda(0.5T)" in table

"""Seeds and results stay bit-identical, on any machine (issue 7's check, issue 16's shape).

A refactor must not change a single bit of any history or weight. Exact results hold per kind of CPU, so
the golden runs are checked three ways (golden_runs.py says why): (a) every config trained in two
processes here is bit-identical; (b) it matches every recorded kind's run, the schedule exactly and the
floats within a stated tolerance; (c) it is bit-identical to this kind's record, where one exists. A kind
with no record skips (c) only. The last tests show that a one-bit change of the loop fails (a) and (b).
(a) starts a new interpreter, so it is `slow`; (b), (c) and the one-bit checks run in `make test-fast`.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainers import golden_runs as golden
from tests.trainers.golden_runs import CONFIGS, load, machine_key, run, tolerance

_MACHINES = load()
_KEY = machine_key()
_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def here() -> dict[str, dict]:
    """Every config trained in this process."""
    return {name: run(name) for name in CONFIGS}


@pytest.fixture(scope="module")
def other_process(tmp_path_factory) -> dict[str, dict]:
    """Every config trained in a second interpreter (a new process: `slow`)."""
    out = tmp_path_factory.mktemp("golden") / "other_process.json"
    other = subprocess.run(
        [sys.executable, "-m", "tests.trainers.golden_runs", "--json", str(out)],
        cwd=_ROOT,
        capture_output=True,
        timeout=600,
    )
    assert other.returncode == 0, (other.stdout + other.stderr).decode()
    return json.loads(out.read_text())


def test_the_record_covers_every_config_and_every_method():
    from trainers.methods import REGISTRY

    recorded = set().union(*(set(runs) for runs in _MACHINES.values()))
    assert recorded == set(CONFIGS), "record a new config with `python -m tests.trainers.golden_runs NAME`"
    assert {c["method"] for c in CONFIGS.values()} == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_recorded_kinds_agree_within_the_tolerance(name):
    """The records themselves pass (b) against each other: a change of results recorded as a new kind's
    is caught here."""
    records = [(key, runs[name]) for key, runs in _MACHINES.items() if name in runs]
    for key, record in records:
        for other_key, other in records:
            diffs = golden.tolerant_differences(*_on_common_facts(record, other), tolerance(name))
            assert not diffs, f"{key} vs {other_key}: {diffs}"


def _on_common_facts(a: dict, b: dict) -> tuple[dict, dict]:
    """Both records with only the method facts both have (an older record has fewer of them)."""
    info_a, info_b = a.get("method_info", {}), b.get("method_info", {})

    def common(x, y):
        if isinstance(x, dict) and isinstance(y, dict):
            return {k: x[k] for k in x.keys() & y.keys()}
        return x

    keys = info_a.keys() & info_b.keys()
    return (
        {**a, "method_info": {k: common(info_a[k], info_b[k]) for k in keys}},
        {**b, "method_info": {k: common(info_b[k], info_a[k]) for k in keys}},
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_run_is_bit_identical_in_another_process(name, here, other_process):
    assert golden.exact_differences(here[name], other_process[name]) == []


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_run_matches_every_record_within_the_tolerance(name, here):
    for key, runs in _MACHINES.items():
        if name in runs:
            assert golden.tolerant_differences(here[name], runs[name], tolerance(name)) == [], key


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_run_is_bit_identical_to_this_kinds_record(name, here):
    if name not in _MACHINES.get(_KEY, {}):
        pytest.skip(f"no exact record of {name!r} for {_KEY}; (a) and (b) hold it on this machine")
    assert golden.exact_differences(here[name], _MACHINES[_KEY][name]) == []


# --- the checks can fail ---------------------------------------------------------------------------------

# One config per kind of loop: plain target, a schedule over two domains, a mixing method, ICT's pool.
_FLIPPED = ["target", "smooth", "mixup", "ict_target_pool"]


@pytest.mark.parametrize("name", _FLIPPED)
def test_one_bit_of_a_sampler_seed_fails_a_and_b(name, here, monkeypatch):
    """The loop's target sampler seeded with its lowest bit flipped: the run fails (a)'s exact comparison
    with the same config's unchanged run (the one (a) shows every process reproduces), and (b) against
    every record."""
    import trainers.loop

    seeds = trainers.loop.run_seeds
    monkeypatch.setattr(
        trainers.loop,
        "run_seeds",
        lambda seed: {**seeds(seed), "target_sampler": seeds(seed)["target_sampler"] ^ 1},
    )
    flipped = run(name)
    assert golden.exact_differences(flipped, here[name])
    for key, runs in _MACHINES.items():
        assert golden.tolerant_differences(flipped, runs[name], tolerance(name)), key


def test_one_ulp_of_the_schedule_or_a_loss_beyond_the_tolerance_fails_b():
    record = next(iter(_MACHINES.values()))["smooth"]

    def changed(epoch: int, key: str, value: float) -> dict:
        history = [dict(e) for e in record["history"]]
        history[epoch][key] = value
        return {**record, "history": history}

    lr = record["history"][1]["lr"]
    tol = golden.TOLERANCE
    assert golden.tolerant_differences(changed(1, "lr", math.nextafter(lr, math.inf)), record, tol)
    loss = record["history"][0]["train_loss_target"]
    assert golden.tolerant_differences(changed(0, "train_loss_target", loss * (1 + 2e-4)), record, tol)
    assert not golden.tolerant_differences(changed(0, "train_loss_target", loss * (1 + 2e-7)), record, tol)
    # An accuracy two validation samples off fails; one sample off passes.
    val = record["history"][0]["val_acc"]
    n_val = record["data_sizes"]["n_val"]
    assert golden.tolerant_differences(changed(0, "val_acc", val + 2 / n_val), record, tol)
    assert not golden.tolerant_differences(changed(0, "val_acc", val + 1 / n_val), record, tol)
    assert golden.exact_differences(changed(0, "train_loss_target", math.nextafter(loss, 0.0)), record)

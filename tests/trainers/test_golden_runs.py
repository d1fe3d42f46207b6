"""Seeds and results stay bit-identical: every method's short run equals the recorded golden run.

The golden file was first written by `python -m tests.trainers.golden_runs` with the code before the loop
was split into parts (issue 7); a refactor must not change a single bit of any history or weight. Exact
results hold per kind of machine (see `golden_runs.machine_key`), so the exact check is against this
machine's runs. Every kind's runs must also agree with each other's first epoch: its schedule (lr, lambda,
source weight, steps) exactly, its losses and accuracies within 5% (a pretrained source phase grows the
last-bit differences), which catches a change of results recorded as a new machine's.
"""

import json
import math

import pytest

from tests.trainers.golden_runs import CONFIGS, load, machine_key, run

_MACHINES = load()
_KEY = machine_key()


def test_the_golden_file_covers_every_config_and_every_method_on_this_machine():
    from trainers.methods import REGISTRY

    assert _KEY in _MACHINES, (
        f"no golden runs for this kind of machine ({_KEY}); recorded: {sorted(_MACHINES)}. Record them with "
        "`python -m tests.trainers.golden_runs --machine` at a commit whose results are trusted."
    )
    for runs in _MACHINES.values():
        assert set(runs) == set(CONFIGS)
    assert {c["method"] for c in CONFIGS.values()} == set(REGISTRY)


SCHEDULE = ("epoch", "step", "total_steps", "lr", "lambda", "source_weight")


def _close(a: dict, b: dict) -> bool:
    if a.keys() != b.keys() or any(a[k] != b[k] for k in SCHEDULE if k in a):
        return False
    floats = [k for k in a if isinstance(a[k], float) or isinstance(b[k], float)]
    return all(a[k] == b[k] for k in a if k not in floats) and all(
        a[k] is not None and b[k] is not None and math.isclose(a[k], b[k], rel_tol=0.05) for k in floats
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_machine_agrees_on_the_first_epoch(name):
    firsts = {key: runs[name]["history"][0] for key, runs in _MACHINES.items()}
    reference = next(iter(firsts.values()))
    assert all(_close(first, reference) for first in firsts.values()), firsts


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_run_is_bit_identical_to_the_golden_run(name):
    assert _KEY in _MACHINES, f"no golden runs for {_KEY} (see the test above)"
    got = json.loads(json.dumps(run(name), allow_nan=False))  # the same JSON types as the file
    want = _MACHINES[_KEY][name]
    assert got["history"] == want["history"]
    # A method may record more facts than it did (issue 11 added XMixup's pairing rounds); the recorded
    # ones must be unchanged, and every result field exactly so.
    got_info, want_info = got.pop("method_info", {}), want.get("method_info", {})
    assert {k: v for k, v in want.items() if k != "method_info"} == got
    for key, value in want_info.items():
        got_value = got_info[key]
        assert ({k: got_value[k] for k in value} if isinstance(value, dict) else got_value) == value

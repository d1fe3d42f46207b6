"""Seeds and results stay bit-identical: every method's short run equals the recorded golden run.

The golden file was written by `python -m tests.trainers.golden_runs` with the code before the loop
was split into parts (issue 7); a refactor must not change a single bit of any history or weight.
"""

import json

import pytest

from tests.trainers.golden_runs import CONFIGS, GOLDEN, run

_GOLDEN = json.loads(GOLDEN.read_text())


def test_the_golden_file_covers_every_config_and_every_method():
    from trainers.methods import REGISTRY

    assert set(_GOLDEN) == set(CONFIGS)
    assert {c["method"] for c in CONFIGS.values()} == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_run_is_bit_identical_to_the_golden_run(name):
    got = json.loads(json.dumps(run(name), allow_nan=False))  # the same JSON types as the file
    want = _GOLDEN[name]
    assert got["history"] == want["history"]
    # A method may record more facts than it did (issue 11 added XMixup's pairing rounds); the recorded
    # ones must be unchanged, and every result field exactly so.
    got_info, want_info = got.pop("method_info", {}), want.get("method_info", {})
    assert {k: v for k, v in want.items() if k != "method_info"} == got
    for key, value in want_info.items():
        got_value = got_info[key]
        assert ({k: got_value[k] for k in value} if isinstance(value, dict) else got_value) == value

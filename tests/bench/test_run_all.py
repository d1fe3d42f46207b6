"""bench/run_all.py (`make bench`): runs the benchmark modules it finds, rewrites their sections of
BENCHMARKS.md between markers and keeps everything else; a quick smoke run of the real B1, B3 and B7.

Not a timed test: the figures of a smoke run mean nothing; what is checked is that the suite runs and
the file is written as documented.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_PATH = ROOT / "bench" / "run_all.py"


def _runner():
    spec = importlib.util.spec_from_file_location("bench_run_all", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


runner = _runner()

OLD = textwrap.dedent(
    """\
    # Benchmarks

    ## An older section

    Its text stays.

    <!-- bench:B3 -->
    old B3 figures
    <!-- /bench:B3 -->

    <!-- bench:B5 -->
    old B5 figures
    <!-- /bench:B5 -->
    """
)


def _bench(folder: Path, name: str, body: str) -> None:
    (folder / name).write_text(textwrap.dedent(body))


def test_sections_are_replaced_or_inserted_in_order_and_the_rest_is_kept(tmp_path, capsys):
    bench = tmp_path / "bench"
    bench.mkdir()
    good = """\
        def run(*, quick=False):
            lines = ["| a |", "quick=" + str(quick)]
            return {"id": "%s", "title": "T %s", "lines": lines, "target": "x", "met": %s}
        """
    _bench(bench, "b1_one.py", good % ("B1", "B1", "True"))
    _bench(bench, "b4_four.py", good % ("B4", "B4", "False"))
    _bench(bench, "b5_five.py", "def run(*, quick=False):\n    raise RuntimeError('boom')\n")
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(OLD)

    argv = ["--only", "B1,B2,B4,B5", "--file", str(out), "--bench-dir", str(bench)]
    assert runner.main(argv) == 1  # B5 failed
    text = out.read_text()
    printed = capsys.readouterr().out
    assert "B2: skipped, no bench/b2_*.py in this checkout" in printed
    assert "B5: FAILED" in printed and "B1: T B1: target met" in printed
    assert text.startswith("# Benchmarks\n\n## An older section\n\nIts text stays.\n")
    assert "old B3 figures" in text and "old B5 figures" in text  # not run / failed: untouched
    order = [m.group(1) for m in re.finditer(r"<!-- bench:(B\d) -->", text)]
    assert order == ["B1", "B3", "B4", "B5"]
    b1 = re.search(r"<!-- bench:B1 -->.*?<!-- /bench:B1 -->", text, re.S).group(0)
    assert "### B1: T B1" in b1 and "Target: x: **met**." in b1 and "quick=False" in b1
    assert re.search(r"Measured \d{4}-\d\d-\d\d \d\d:\d\d UTC", b1) and "cores" in b1 and "torch " in b1
    assert "Target: x: **missed**." in text

    # A second run replaces the sections instead of adding new ones; --quick says so.
    assert runner.main(["--only", "B1", "--quick", "--file", str(out), "--bench-dir", str(bench)]) == 0
    again = out.read_text()
    b1 = re.search(r"<!-- bench:B1 -->.*?<!-- /bench:B1 -->", again, re.S).group(0)
    assert again.count("<!-- bench:B1 -->") == 1 and "quick=True" in b1 and "quick=False" not in b1
    assert "not judged (quick smoke run" in b1 and "Target: x: **missed**." in again  # B4 kept


def test_a_result_without_the_documented_keys_is_a_failure(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    _bench(bench, "b1_bad.py", "def run(*, quick=False):\n    return {'id': 'B1', 'lines': []}\n")
    out = tmp_path / "B.md"
    assert runner.main(["--only", "B1", "--file", str(out), "--bench-dir", str(bench)]) == 1
    assert not out.exists()


def test_unknown_ids_are_refused():
    with pytest.raises(SystemExit):
        runner.main(["--only", "B9"])


@pytest.mark.slow  # new interpreters, real training (~2-4 min on 2 busy cores)
def test_quick_run_of_the_real_benchmarks(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(OLD)
    proc = subprocess.run(
        [sys.executable, str(_PATH), "--quick", "--only", "B1,B3,B7", "--file", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()
    for bench_id in ("B1", "B3", "B7"):
        assert text.count(f"<!-- bench:{bench_id} -->") == 1 and f"<!-- /bench:{bench_id} -->" in text
    assert "old B3 figures" not in text and "old B5 figures" in text
    assert "| small CNN, digits 8x8 |" in text and "| ResNet-20, generated 3x32x32 |" in text
    assert "TPE needs a median of" in text
    assert "Needs CUDA" in text or "trials per GPU-hour" in text

"""`transched submit --wait` against the real server (uvicorn, a local Ray head, SQLite), as a user runs
it: a study that completes ends with its summary line and exit 0; a study whose trials all fail ends
with the failure reason and the `failed` exit status."""

import subprocess
import sys

import pytest

from service.progress import EXIT_CODES
from tests.service.test_end_to_end import _serve

pytestmark = pytest.mark.slow

DIGITS = """\
name: cli-digits
trainer: {source: digits, target: digits, n_target: 40, epochs: 2, batch_size: 32}
methods: [smooth, finetune]
n_trials: 2
max_concurrent_trials: 2
cpus_per_trial: 1
"""

NO_DATA = """\
{"name": "cli-no-data", "trainer": {"source": "cifar100", "target": "cifar10", "backbone": "resnet20",
 "data_dir": "nowhere"}, "methods": ["target"], "n_trials": 2, "max_concurrent_trials": 2, "max_retries": 0}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("transched-cli")
    yield from _serve(data_dir, f"sqlite:///{data_dir / 'transched.db'}")


def _transched(server, *args, timeout=420):
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "--api", server["api"], *args],
        env=server["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return out.returncode, out.stdout, out.stderr


def test_submit_wait_ends_with_a_summary_and_exit_0(server, tmp_path):
    spec = tmp_path / "digits.yaml"
    spec.write_text(DIGITS)
    code, out, err = _transched(server, "submit", str(spec), "--wait")
    assert code == 0, out + err
    study_id = out.split("submitted study ")[1].split()[0]
    summary = [line for line in out.splitlines() if line.startswith(f"study {study_id}")]
    assert summary and "completed" in summary[-1] and "2/2 trials" in summary[-1], out
    assert "best val_acc 0." in summary[-1]
    # Not a terminal: plain progress lines, no redrawing, no library log lines.
    assert "\r" not in out and "\x1b[" not in out
    assert "HTTP Request" not in out + err and "httpx" not in out + err
    assert " running: " in out or " pending: " in out  # progress lines before the end

    code, listing, _ = _transched(server, "list")
    assert code == 0 and study_id in listing and "cli-digits" in listing
    code, table, _ = _transched(server, "trials", study_id)
    assert code == 0 and table.count("COMPLETE") == 2
    code, log, _ = _transched(server, "logs", study_id)
    assert code == 0 and log.strip(), log


def test_submit_wait_of_a_study_whose_trials_all_fail_prints_the_reason_and_exits_failed(server, tmp_path):
    spec = tmp_path / "no-data.json"
    spec.write_text(NO_DATA)
    code, out, err = _transched(server, "submit", str(spec), "--wait")
    assert code == EXIT_CODES["failed"] == 3, out + err
    assert "failed" in out.splitlines()[-1] and "0 finished" in out.splitlines()[-1] and "2 failed" in out
    assert (  # the console wraps long lines
        "reason: the first 2 trials failed with an error a retry cannot fix: DatasetNotFoundError: "
        "dataset 'cifar10' not found" in " ".join(err.split())
    ), err
    assert "Traceback" not in out + err

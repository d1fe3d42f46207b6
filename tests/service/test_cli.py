"""The `transched` command."""


def test_cli_errors_are_one_clear_line_not_a_traceback(tmp_path):
    import json
    import subprocess
    import sys

    def run(*args):
        out = subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True)
        return out.returncode, out.stdout + out.stderr

    (tmp_path / "best.json").write_text(
        json.dumps({"config": {"target": "cifar10", "data_dir": str(tmp_path)}})
    )
    code, text = run("train", str(tmp_path / "best.json"))
    assert code != 0 and "Traceback" not in text
    assert "dataset 'cifar10' not found" in text and str(tmp_path) in text and "download=True" in text
    code, text = run("submit", str(tmp_path / "missing.json"))
    assert code != 0 and "Traceback" not in text and "missing.json" in text
    (tmp_path / "broken.json").write_text("{x")
    code, text = run("submit", str(tmp_path / "broken.json"))
    assert code != 0 and "Traceback" not in text and "not valid JSON" in text

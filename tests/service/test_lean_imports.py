"""The API server and the study driver never train: importing them must not import torch (1.7 s and
~650 MB of resident memory per process), nor scikit-learn. Each check is a fresh interpreter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "sklearn")


@pytest.mark.slow
@pytest.mark.parametrize(
    "module", ["service.api", "service.driver", "service.cli", "trainers", "search_spaces"]
)
def test_importing_it_does_not_import_torch(module):
    code = f"import json, sys; import {module}; print(json.dumps(sorted(set(sys.modules) & {set(HEAVY)!r})))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.slow
def test_the_trainers_torch_names_still_load_on_use():
    code = "import sys, trainers\nfrom trainers import TransferNet, train\nprint('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"

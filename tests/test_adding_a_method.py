"""Adding a method is one class registered in one place (README, "Adding a method").

In a fresh interpreter a throwaway `Method` subclass, with one searchable param and one report key, is
registered before anything else of the product is imported; then the trainer config, the REST schema
(the study spec and the OpenAPI document of the app), the search space and the training loop all know
it, with no file of the repository touched.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    '''
    import json, sys
    from pathlib import Path

    import torch.nn.functional as F

    from trainers.methods import Method, Range, register


    @register  # the one place: the registry entry
    class Throwaway(Method):
        """Target cross-entropy scaled by mixup_alpha: nothing of any paper, just a new method."""

        name = "throwaway"
        paper = "none (a test)"
        doc = "A throwaway method: the target cross-entropy times mixup_alpha."
        mixup_alpha = 0.75
        report_keys = ("throwaway_scale",)
        search_space = {"mixup_alpha": Range(0.5, 2.0, log=True)}

        def loss(self, ctx, step, total):
            x, y = ctx.target()
            scale = self.config.resolved_mixup_alpha
            return scale * F.cross_entropy(ctx.model(x, "target"), y), {"throwaway_scale": scale}


    # Only now the rest of the product.
    import optuna
    from search_spaces import build_space
    from service.api import create_app
    from service.schemas import StudySpec
    from service.settings import Settings
    from trainers import TrainConfig, train

    tmp = Path(sys.argv[1])
    out = {}
    out["config_alpha"] = TrainConfig(method="throwaway").resolved_mixup_alpha
    out["config_schedule"] = TrainConfig(method="throwaway", schedule=True).schedule

    spec = StudySpec.model_validate(
        {"methods": [{"method": "throwaway", "mixup_alpha": {"low": 0.6}}, "smooth"], "n_trials": 2}
    )
    try:
        StudySpec.model_validate({"methods": [{"method": "throwaway", "tau": {"low": 0.1}}]})
        out["unknown_param"] = "accepted"
    except ValueError:
        out["unknown_param"] = "rejected"
    arms = spec.resolved_methods()
    out["arm_params"] = {k: v.model_dump(exclude_none=True) for k, v in arms["throwaway"].items()}

    doc = create_app(Settings(data_dir=tmp / "service"), cluster=object()).openapi()
    schemas = doc["components"]["schemas"]
    out["openapi_model"] = {k: v.get("description") for k, v in schemas.items() if k.startswith("Throwaway")}
    out["openapi_fields"] = sorted(schemas.get("ThrowawayMethod", {}).get("properties", {}))

    space = build_space(arms)
    sampled = space(optuna.trial.FixedTrial({"method": "throwaway", "mixup_alpha": 1.5}))
    out["sampled"] = sampled
    config = TrainConfig(
        **{**sampled, "source": "digits", "target": "digits", "n_target": 40, "batch_size": 16},
        epochs=1, steps_per_epoch=2, num_threads=1, device="cpu", artifact_dir=str(tmp / "artifacts"),
    )
    result = train(config)
    out["history_keys"] = list(result.history[-1])
    out["scale"] = result.history[-1]["throwaway_scale"]
    out["steps"] = result.steps_run
    print("RESULT " + json.dumps(out))
    '''
)


@pytest.mark.slow  # a new interpreter
def test_a_method_registered_in_one_place_is_accepted_everywhere_and_trains(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])

    assert out["config_alpha"] == 0.75 and out["config_schedule"] is True  # the config knows it
    assert out["unknown_param"] == "rejected"  # its REST model has its params only
    assert out["arm_params"] == {"mixup_alpha": {"low": 0.6, "high": 2.0, "log": True}}
    assert out["openapi_model"] == {
        "ThrowawayMethod": "A throwaway method: the target cross-entropy times mixup_alpha."
    }
    # its own param, and (composable by default) the schedule switch with the schedule's params
    assert out["openapi_fields"] == ["alpha", "method", "mixup_alpha", "schedule", "t0", "tau"]
    assert out["sampled"] == {"method": "throwaway", "schedule": False, "mixup_alpha": 1.5}
    assert out["history_keys"][-1] == "throwaway_scale" and out["scale"] == 1.5 and out["steps"] == 2
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before  # no file of the repository touched

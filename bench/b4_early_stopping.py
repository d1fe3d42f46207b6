"""B4: early stopping that understands schedules, against plain ASHA and no early stopping.

    .venv/bin/python -m bench.b4_early_stopping [--quick]

One digits schedule study (finetune and smooth, t0 over [-0.5, 0.5]: switches from T/0 to T), run three
times on the same trial budget and TPE seed through the real driver (`service.driver.run_study` on a
local Ray head, 2 trials at a time): early_stopping none, asha and schedule_sh (grace 2 epochs,
reduction factor 3: rungs 2, 6, 18 epochs). The task is built so that the best schedules switch late:
the source is digits 0-9 (the target's own images held out), the target 5-9 with 15 labelled images, so
a long source phase then a short fine-tune wins, and a late switch has a chance-level target accuracy at
the early rungs by design.

Per variant: total epochs trained (every run of every trial, schedule_sh's compressed rung runs
included), the best validation accuracy of a fully trained trial, and the Spearman rank correlation
between a trial's rung-1 score and its final accuracy, over the no-early-stopping study's trials (all
fully trained): plain ASHA's rung-1 score is the full run's best accuracy after `grace` epochs; schedule
SH's is the best accuracy of the trial's compressed `grace`-epoch run of its schedule (trained here).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

EPOCHS, GRACE, FACTOR = 18, 2, 3
TRAINER = {
    "source": "digits",
    "target": "digits",
    "source_classes": list(range(10)),
    "target_classes": [5, 6, 7, 8, 9],
    "n_target": 15,
    "backbone": "small_cnn",
    "epochs": EPOCHS,
    "steps_per_epoch": 8,
    "batch_size": 32,
}
METHODS = ["finetune", {"method": "smooth", "tau": {"low": 0.005, "high": 0.2}, "alpha": {"value": 0.0}}]
KINDS = ("none", "asha", "schedule_sh")
TARGET = ">= 3x fewer epochs than no early stopping, best within 0.5 points of it"


def _spec(kind: str, n_trials: int) -> dict[str, Any]:
    return {
        "name": f"b4-{kind}",
        "trainer": TRAINER,
        "methods": METHODS,
        "n_trials": n_trials,
        "max_concurrent_trials": 2,
        "cpus_per_trial": 1,
        "seed": 7,
        "n_startup_trials": 6,
        "early_stopping": {"kind": kind, "grace_period": GRACE, "reduction_factor": FACTOR},
    }


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _switch(params: dict[str, Any]) -> float:
    """Where the schedule switches to the target, as a fraction of T (T/2 + t0)."""
    return 0.5 + float(params.get("t0", 0.0))


def _figures(trials: list[Any]) -> dict[str, Any]:
    from optuna.trial import TrialState

    from service.repository import epoch_history

    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    return {
        "epochs": sum(max(t.intermediate_values, default=0) for t in trials),  # steps: epochs in a row
        "best": best.value,
        "best_switch": _switch(best.user_attrs["sampled"]),
        "complete": len(complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "late_complete": sum(_switch(t.user_attrs["sampled"]) >= 0.6 for t in complete),
        "history": {t.number: epoch_history(t) for t in trials},
    }


def _rung_correlations(trials: list[Any], budget: int) -> dict[str, float]:
    """Spearman(score at a rung of `budget` epochs, final accuracy) over the fully trained trials, for
    plain ASHA (the full run's best accuracy after `budget` epochs) and schedule SH (the best accuracy of
    the trial's compressed `budget`-epoch run of its schedule, trained here)."""
    from optuna.trial import TrialState

    from service.early_stopping import rung_config
    from service.repository import epoch_history
    from trainers import TrainConfig, train

    done = [t for t in trials if t.state == TrialState.COMPLETE]
    final = [t.value for t in done]
    asha = [max(e["val_acc"] for e in epoch_history(t)[:budget]) for t in done]
    sh = []
    for t in done:
        config = TrainConfig.from_dict({**TRAINER, **t.user_attrs["sampled"], "num_threads": 1})
        sh.append(train(rung_config(config, budget)).best_val_acc)
    return {"asha": spearman(asha, final), "schedule_sh": spearman(sh, final)}


def _run_studies(n_trials: int, root: Path) -> dict[str, Any]:
    """The three studies, one after the other, each by the study driver as the service runs it (its own
    process, `python -m service.driver`) on one local Ray head of 2 CPUs."""
    import optuna

    from bench.api_store import free_port
    from service.db import create_schema, make_engine, make_optuna_storage, make_sessionmaker
    from service.ray_cluster import start_local_head, stop_local_head
    from service.repository import create_study, get_study
    from service.schemas import StudySpec
    from service.settings import Settings

    url = f"sqlite:///{root / 'transched.db'}"
    settings = Settings(
        data_dir=root,
        database_url=url,
        ray_head_port=free_port(),
        ray_dashboard_port=free_port(),
        ray_metrics_export_port=free_port(),
        ray_num_cpus=2,
    )
    engine = make_engine(url)
    create_schema(engine)
    sessions = make_sessionmaker(engine)
    head = start_local_head(settings)  # sets RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH for the drivers
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSCHED_")}
    env.update(
        TRANSCHED_DATABASE_URL=url,
        TRANSCHED_DATA_DIR=str(root),
        TRANSCHED_RAY_GCS_ADDRESS=head.gcs_address or "",
        TRANSCHED_LOG_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]),
    )
    out: dict[str, Any] = {}
    try:
        for kind in KINDS:
            spec = StudySpec.model_validate(_spec(kind, n_trials))
            study_id = uuid.uuid4().hex[:12]
            with sessions() as s:
                create_study(s, name=spec.name, spec=spec.model_dump(mode="json"), study_id=study_id)
                name = get_study(s, study_id=study_id).optuna_study_name
            start = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "service.driver", study_id], env=env, capture_output=True, text=True
            )
            if done.returncode != 0:
                raise RuntimeError(f"the {kind} study failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            trials = optuna.load_study(study_name=name, storage=make_optuna_storage(url)).trials
            out[kind] = {**_figures(trials), "seconds": time.monotonic() - start, "trials": trials}
    finally:
        stop_local_head(settings)
        engine.dispose()
    return out


def run(*, quick: bool = False) -> dict[str, Any]:
    """B4 for the bench runner: {"id", "title", "lines", "target", "met"}."""
    logging.getLogger("transched").setLevel(logging.WARNING)
    n_trials = 12 if quick else 24
    with tempfile.TemporaryDirectory(prefix="b4-") as tmp:
        studies = _run_studies(n_trials, Path(tmp))
    corr = _rung_correlations(studies["none"]["trials"], GRACE)
    corr2 = _rung_correlations(studies["none"]["trials"], GRACE * FACTOR)
    base = studies["none"]
    lines = [
        f"digits 0-9 -> 5-9 (15 labelled), small CNN, {EPOCHS} epochs x 8 steps, finetune + smooth, "
        f"t0 in [-0.5, 0.5]; {n_trials} trials each, 2 at a time, TPE seed 7; "
        f"rungs {GRACE}, {GRACE * FACTOR}, {EPOCHS} epochs (grace {GRACE}, factor {FACTOR}).",
        "",
        "| early stopping | epochs trained | fewer than none | best val acc | vs none (points) "
        "| best's switch (of T) | complete / pruned | late switches (>= 0.6 T) fully trained "
        "| Spearman rung-1 vs final | rung-2 vs final | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    met = True
    for kind in KINDS:
        f = studies[kind]
        ratio = base["epochs"] / f["epochs"]
        delta = 100 * (f["best"] - base["best"])
        rho = "- | -" if kind == "none" else f"{corr[kind]:.2f} | {corr2[kind]:.2f}"
        lines.append(
            f"| {kind} | {f['epochs']} | {ratio:.1f}x | {f['best']:.4f} | {delta:+.1f} "
            f"| {f['best_switch']:.2f} | {f['complete']} / {f['pruned']} | {f['late_complete']} "
            f"| {rho} | {f['seconds']:.0f} |"
        )
        if kind == "schedule_sh":
            met = ratio >= 3 and delta >= -0.5
    return {"id": "B4", "title": "Early stopping: epochs saved, best kept", "lines": lines, "target": TARGET,
            "met": met}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    result = run(quick=p.parse_args().quick)
    print(f"{result['id']}: {result['title']} (target: {result['target']}; met: {result['met']})")
    print("\n".join(result["lines"]))


if __name__ == "__main__":
    main()

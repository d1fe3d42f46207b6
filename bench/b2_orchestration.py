"""B2 orchestration: seconds per trial of the full service (REST, Ray job, Tune, store) for a near-zero-cost
trial, against the same trainer called in a loop and against bare Ray Tune with actor reuse, at 2
concurrent trials; and the study start (POST to the first trial training) on a warm cluster, with a
profile of where it goes.

    python -m bench.b2_orchestration [--quick]

One local Ray head (started by the API server, as `transched serve` does, on free ports) serves both the
service's studies and the bare Tune run; a 2-trial study first warms the cluster (workers, imports).
Per trial, two figures for each side:
- the whole span over the number of trials (POST to the study's end for the service, `fit()` for bare
  Tune, the loop's time for the trainer): a short study pays its start in every trial;
- the marginal cost of one more trial: (span of N_LONG trials - span of N_SHORT) / (N_LONG - N_SHORT),
  the same for both sides, so each side's start (the service's job and driver, Tune's new actors) cancels
  out. The target is judged on this one, and the start on its own.
Study start is POST to the first trial's `started_at` (the trainable's start, after its imports). The
profile splits it with the phases the store records (the driver marks the study running; its first
Optuna ask) and the cold costs of its two new processes measured alone, side by side in the same run:
the driver (`import service.driver`) and a trial worker (Ray Tune, the trainer and torch, then a first
1-step trial, whose extra over a warm one is torch.optim's first use importing torch._dynamo and the
digits loader importing scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

TRAINER = {
    "source": "digits",
    "target": "digits",
    "source_classes": [0, 1, 2, 3, 4],
    "target_classes": [5, 6, 7, 8, 9],
    "n_target": 20,
    "backbone": "small_cnn",
    "epochs": 1,
    "steps_per_epoch": 1,
    "batch_size": 8,
    "num_threads": 1,
}
CONCURRENT = 2
TARGET_START_S = 3.0
N_SHORT, N_LONG = 10, 40  # trials of the two runs whose difference gives the marginal cost of a trial
# How often the bench asks the API whether the study ended: each GET costs the server ~15 ms of the 2 cores
# the trials share, and the study's end is known to within it (+-0.5 s over spans of 15-30 s).
POLL_S = 0.5


def _study(n: int, name: str) -> dict:
    return {
        "name": name,
        "trainer": TRAINER,
        "methods": ["smooth"],
        "n_trials": n,
        "max_concurrent_trials": CONCURRENT,
        "cpus_per_trial": 1,
        "seed": 0,
    }


def loop_per_trial(n: int, data_dir: Path) -> float:
    """The trainer called in a loop, in this process, after one warm-up call."""
    from trainers import TrainConfig, train

    configs = [
        TrainConfig(**TRAINER, method="smooth", t0=0.1 * (i % 9), artifact_dir=str(data_dir))
        for i in range(n)
    ]
    train(configs[0])
    t = time.perf_counter()
    for c in configs:
        train(c)
    return (time.perf_counter() - t) / n


def bare_tune_spans(sizes: tuple[int, ...], gcs_address: str, data_dir: Path) -> dict[int, float]:
    """Bare Ray Tune (function trainable calling the trainer, reuse_actors, 2 concurrent): `fit()`'s
    seconds for each number of trials in `sizes`."""
    import ray
    from ray import tune

    ray.init(address=gcs_address, logging_level="WARNING")
    base = {**TRAINER, "method": "smooth", "artifact_dir": str(data_dir)}

    def trainable(config: dict) -> None:  # a closure: pickled by value, nothing to import on the workers
        from trainers import TrainConfig, train

        result = train(TrainConfig(**base, t0=config["t0"]), report=lambda m: tune.report(dict(m)))
        tune.report({"best_val_acc": result.best_val_acc, "final": True})

    def fit(samples: int) -> float:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={"t0": tune.uniform(0.0, 1.0)},
            tune_config=tune.TuneConfig(
                num_samples=samples, max_concurrent_trials=CONCURRENT, reuse_actors=True
            ),
            run_config=tune.RunConfig(storage_path=str(data_dir / "bare_tune"), verbose=0),
        )
        t = time.perf_counter()
        tuner.fit()
        return time.perf_counter() - t

    try:
        fit(CONCURRENT)  # warm: its actors' imports are not the steady state
        return {n: fit(n) for n in sizes}
    finally:
        ray.shutdown()


def _serve(data_dir: Path) -> tuple[subprocess.Popen, str, dict]:
    from bench.api_store import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TRANSCHED_"))}
    env.update(
        TRANSCHED_DATA_DIR=str(data_dir),
        TRANSCHED_PORT=str(port),
        TRANSCHED_RAY_HEAD_PORT=str(free_port()),
        TRANSCHED_RAY_DASHBOARD_PORT=str(free_port()),
        TRANSCHED_RAY_METRICS_EXPORT_PORT=str(free_port()),
        TRANSCHED_RAY_NUM_CPUS=str(CONCURRENT),
    )
    log = open(data_dir / "server.log", "wb")  # noqa: SIM115 (the server's, closed with it)
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=env, stdout=log, stderr=log)
    api = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start: {(data_dir / 'server.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"{api}/healthz", timeout=5).json().get("ray_dashboard"):
                return proc, api, env
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


def run_study(api: str, spec: dict, timeout_s: float = 600) -> dict:
    """POST the study and poll it to its end: {"posted": t, "ended": t, "study": its final view}."""
    posted = time.time()
    resp = httpx.post(f"{api}/studies", json=spec, timeout=60)
    resp.raise_for_status()
    study_id = resp.json()["id"]
    deadline = time.monotonic() + timeout_s
    while True:
        study = httpx.get(f"{api}/studies/{study_id}", timeout=60).json()
        if study["status"] in ("completed", "failed", "stopped"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"study {study_id} did not end: {study['status']}")
        time.sleep(POLL_S)
    ended = time.time()
    if study["status"] != "completed":
        raise RuntimeError(f"study {study_id} ended {study['status']}: {study.get('error')}")
    return {"posted": posted, "ended": ended, "study": study}


def service_figures(api: str, sizes: tuple[int, ...], data_dir: Path) -> dict[str, Any]:
    """The service's span for each number of trials in `sizes` (POST to the study's end), and the phases
    of the largest study's start, in seconds after its POST."""
    import optuna

    run_study(api, _study(CONCURRENT, "b2-warm-up"))  # a warm cluster: workers up, trainer imported
    spans, run = {}, {}
    for n in sizes:
        run = run_study(api, _study(n, f"b2-{n}"))
        spans[n] = run["ended"] - run["posted"]
    storage = f"sqlite:///{data_dir / 'transched.db'}"
    trials = optuna.load_study(study_name=run["study"]["optuna_study_name"], storage=storage).trials
    # `started_at`: the trainable's start (service.trainable.run_trial), kept by the driver as a user attr
    starts = sorted(t.user_attrs["started_at"] for t in trials if t.user_attrs.get("started_at"))
    ends = sorted(t.user_attrs["finished_at"] for t in trials if t.user_attrs.get("finished_at"))
    asked = min(t.datetime_start.timestamp() for t in trials)  # naive local time, as Optuna hands it back
    driver = datetime.fromisoformat(run["study"]["started_at"])
    driver = driver.replace(tzinfo=driver.tzinfo or UTC).timestamp()
    return {
        "spans": spans,
        "start": starts[0] - run["posted"] if starts else float("nan"),
        "driver_running": driver - run["posted"],
        "first_asked": asked - run["posted"],
        "first_finished": ends[0] - run["posted"] if ends else float("nan"),
    }


# A new trial worker's cold costs, phase by phase (run alone in a fresh interpreter, as Ray starts one).
TRIAL_PROCESS = """
import json, sys, time
t = [time.perf_counter()]
import ray.tune; t.append(time.perf_counter())
from service.trainable import run_trial; from trainers import TrainConfig, train; import torch
t.append(time.perf_counter())
import sklearn.datasets; t.append(time.perf_counter())
import torch._dynamo; t.append(time.perf_counter())
config = TrainConfig(**json.loads(sys.argv[1]), method="smooth", t0=0.1, artifact_dir=sys.argv[2])
train(config); t.append(time.perf_counter())
train(config); t.append(time.perf_counter())
print(json.dumps([b - a for a, b in zip(t, t[1:])]))
"""
TRIAL_PHASES = (
    "import ray.tune",
    "import the trainable, trainer and torch",
    "import scikit-learn (the digits loader)",
    "import torch._dynamo (torch.optim's first use)",
    "first 1-step trial, the rest",
    "a warm 1-step trial",
)


def cold_processes(data_dir: Path) -> dict[str, Any]:
    """Wall seconds of a fresh interpreter importing the driver, and of a fresh trial worker's phases."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import service.driver"], check=True, env=env)
    driver = time.perf_counter() - t
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", TRIAL_PROCESS, json.dumps(TRAINER), str(data_dir)],
        check=True, env=env, capture_output=True, text=True,
    )  # fmt: skip
    trial = time.perf_counter() - t
    return {"driver": driver, "trial": trial, "trial_phases": json.loads(out.stdout.strip().splitlines()[-1])}


def run(*, quick: bool = False) -> dict:
    from service.ray_cluster import stop_local_head, use_token_auth
    from service.settings import Settings

    sizes = (4, 12) if quick else (N_SHORT, N_LONG)
    short, long = sizes
    with tempfile.TemporaryDirectory(prefix="transched-b2-") as tmp:
        data_dir = Path(tmp)
        loop = loop_per_trial(long, data_dir)
        proc, api, _env = _serve(data_dir)
        try:
            service = service_figures(api, sizes, data_dir)
            head = json.loads((data_dir / "ray" / "head.json").read_text())
            use_token_auth(data_dir / "ray")
            bare = bare_tune_spans(sizes, head["gcs_address"], data_dir)
        finally:
            proc.terminate()
            proc.wait(60)
            stop_local_head(Settings(data_dir=data_dir))
        cold = cold_processes(data_dir)
    spans = service["spans"]
    marginal = {
        "service": (spans[long] - spans[short]) / (long - short),
        "bare": (bare[long] - bare[short]) / (long - short),
    }
    whole = {"service": spans[long] / long, "bare": bare[long] / long}
    start = service["start"]
    phases = cold["trial_phases"]
    lines = [
        f"Near-zero trials (digits, small CNN, 1 step), {CONCURRENT} concurrent; runs of {short} and {long} "
        "trials for each side; seconds.",
        "",
        f"| what | s per trial, whole span of {long} | vs bare Tune | marginal s per trial | vs bare Tune |",
        "|---|---:|---:|---:|---:|",
        f"| trainer called in a loop (in process) | {loop:.3f} | {loop / whole['bare']:.2f} | {loop:.3f} "
        f"| {loop / marginal['bare']:.2f} |",
        f"| bare Ray Tune, reuse_actors, `fit()` only | {whole['bare']:.3f} | 1.00 | {marginal['bare']:.3f} "
        "| 1.00 |",
        f"| the service: POST to study completed | {whole['service']:.3f} "
        f"| {whole['service'] / whole['bare']:.2f} | {marginal['service']:.3f} "
        f"| {marginal['service'] / marginal['bare']:.2f} |",
        "",
        f"Study start (POST to the first trial training, warm cluster): **{start:.2f} s** "
        f"(target < {TARGET_START_S:.0f} s). Its profile, seconds after the POST of the {long}-trial study:",
        "",
        "| phase | at (s) | took (s) |",
        "|---|---:|---:|",
        f"| Ray job submitted, driver process started and imported, study marked running "
        f"| {service['driver_running']:.2f} | {service['driver_running']:.2f} |",
        f"| driver: Ray connected, Optuna study and Tune set up, first trial asked "
        f"| {service['first_asked']:.2f} | {service['first_asked'] - service['driver_running']:.2f} |",
        f"| Tune: trial actor's worker process started and imported, the trainable entered "
        f"| {start:.2f} | {start - service['first_asked']:.2f} |",
        f"| first trial's first (only) epoch done | {service['first_finished']:.2f} "
        f"| {service['first_finished'] - start:.2f} |",
        "",
        f"Cold costs of the two new processes, measured alone in this run: a fresh interpreter importing the "
        f"driver {cold['driver']:.2f} s; a fresh trial worker {cold['trial']:.2f} s, of which "
        + "; ".join(f"{name} {sec:.2f}" for name, sec in zip(TRIAL_PHASES, phases, strict=True))
        + f". The trial worker's imports and first-use costs before its first step ({sum(phases[:4]):.2f} s) "
        "are paid by every new worker process, bare Tune's too; a study is a new Ray job, whose workers "
        "Ray does not share with other jobs, so each study pays them once more, after its driver's "
        f"({cold['driver']:.2f} s).",
        f"Load average during the run (1 min, {os.cpu_count()} CPUs): {os.getloadavg()[0]:.1f}.",
    ]
    met = marginal["service"] < marginal["bare"] and start < TARGET_START_S
    return {
        "id": "B2",
        "title": "Orchestration: seconds per trial and study start",
        "lines": lines,
        "target": "marginal cost per trial below bare Ray Tune's; study start < 3 s on a warm cluster",
        "met": met,
        "figures": {"loop": loop, "whole": whole, "marginal": marginal, "start": start, "cold": cold},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    print("\n".join(run(quick=p.parse_args().quick)["lines"]))


if __name__ == "__main__":
    main()

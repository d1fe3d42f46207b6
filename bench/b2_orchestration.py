"""B2 orchestration: seconds per trial of the full service (REST, Ray job, Tune, store) for a near-zero-cost
trial, against the same trainer called in a loop and against bare Ray Tune with actor reuse, at 2
concurrent trials; and the study start (POST to the first trial training) on a warm cluster.

    python -m bench.b2_orchestration [--quick]

One local Ray head (started by the API server, as `transched serve` does, on free ports) serves both the
service's studies and the bare Tune run; a 2-trial study first warms the cluster (workers, imports).
Study start is POST to the first trial's `started_at` (the trainable's start, after its imports);
per trial is the whole span over the number of trials: POST to the study's end for the service, `fit()`
for bare Tune, the loop's time for the trainer.
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


def bare_tune_per_trial(n: int, gcs_address: str, data_dir: Path) -> float:
    """Bare Ray Tune (function trainable calling the trainer, reuse_actors, 2 concurrent), `fit()` only."""
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
        return fit(n) / n
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
        time.sleep(0.1)
    ended = time.time()
    if study["status"] != "completed":
        raise RuntimeError(f"study {study_id} ended {study['status']}: {study.get('error')}")
    return {"posted": posted, "ended": ended, "study": study}


def service_figures(api: str, n: int, data_dir: Path) -> dict[str, float]:
    import optuna

    run_study(api, _study(CONCURRENT, "b2-warm-up"))  # a warm cluster: workers up, trainer imported
    run = run_study(api, _study(n, "b2"))
    storage = f"sqlite:///{data_dir / 'transched.db'}"
    trials = optuna.load_study(study_name=run["study"]["optuna_study_name"], storage=storage).trials
    # `started_at`: the trainable's start (service.trainable.run_trial), kept by the driver as a user attr
    starts = sorted(t.user_attrs["started_at"] for t in trials if t.user_attrs.get("started_at"))
    asked = min(t.datetime_start.timestamp() for t in trials)  # naive local time, as Optuna hands it back
    driver = datetime.fromisoformat(run["study"]["started_at"])
    driver = driver.replace(tzinfo=driver.tzinfo or UTC).timestamp()
    return {
        "per_trial": (run["ended"] - run["posted"]) / n,
        "start": starts[0] - run["posted"] if starts else float("nan"),
        "driver_running": driver - run["posted"],
        "first_asked": asked - run["posted"],
    }


def run(*, quick: bool = False) -> dict:
    from service.ray_cluster import stop_local_head
    from service.settings import Settings

    n = 10 if quick else 30
    with tempfile.TemporaryDirectory(prefix="transched-b2-") as tmp:
        data_dir = Path(tmp)
        loop = loop_per_trial(n, data_dir)
        proc, api, _env = _serve(data_dir)
        try:
            service = service_figures(api, n, data_dir)
            head = json.loads((data_dir / "ray" / "head.json").read_text())
            from service.ray_cluster import use_token_auth

            use_token_auth(data_dir / "ray")
            bare = bare_tune_per_trial(n, head["gcs_address"], data_dir)
        finally:
            proc.terminate()
            proc.wait(60)
            stop_local_head(Settings(data_dir=data_dir))
    per = service["per_trial"]
    lines = [
        f"{n} near-zero trials (digits, small CNN, 1 step), {CONCURRENT} concurrent, one run; seconds.",
        "",
        "| what | s per trial | vs bare Tune |",
        "|---|---:|---:|",
        f"| trainer called in a loop (in process) | {loop:.3f} | {loop / bare:.2f} |",
        f"| bare Ray Tune, reuse_actors, `fit()` only | {bare:.3f} | 1.00 |",
        f"| the service: POST to study completed | {per:.3f} | {per / bare:.2f} |",
        "",
        f"Study start (POST to the first trial training, warm cluster): {service['start']:.2f} s "
        f"(target < {TARGET_START_S:.0f} s): the driver marks the study running at "
        f"{service['driver_running']:.2f} s, asks Optuna for the first trial at "
        f"{service['first_asked']:.2f} s.",
        f"Load average during the run (1 min, {os.cpu_count()} CPUs): {os.getloadavg()[0]:.1f}.",
    ]
    met = service["per_trial"] < bare and service["start"] < TARGET_START_S
    return {
        "id": "B2",
        "title": "Orchestration: seconds per trial and study start",
        "lines": lines,
        "target": "per trial below bare Ray Tune's; study start < 3 s on a warm cluster",
        "met": met,
        "figures": {
            "loop": loop,
            "bare_tune": bare,
            "service": service["per_trial"],
            "start": service["start"],
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    print("\n".join(run(quick=p.parse_args().quick)["lines"]))


if __name__ == "__main__":
    main()

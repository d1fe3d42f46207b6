"""B2 orchestration: seconds per trial of the full service (REST, Ray job, Tune, store) for a near-zero-cost
trial, against the same trainer called in a loop and against bare Ray Tune with actor reuse, at 2
concurrent trials; and the study start (POST to the first trial training) on a warm cluster, with a
profile of where it goes.

    python -m bench.b2_orchestration [--quick]

One local Ray head (started by the API server, as `transched serve` does, on free ports) serves both the
service's studies and the bare Tune run; a 2-trial study first warms the cluster (workers, imports).
Per trial, two figures for each side, from one run of N trials:
- the whole span over the number of trials (POST to the study's end for the service, `fit()` for bare
  Tune, the loop's time for the trainer): a study pays its start in every trial;
- the steady cost of one more trial: the time between the trial endings after the first SKIP, over their
  number (a pipeline's rate, read where each trial ends: the trainable's last report, on both sides).
  Each side's start (the service's job and driver, Tune's new actors) is left out, and so is the noise of
  those starts, which a difference of two runs' spans carries. The target is judged on this one, and the
  start on its own.
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
import threading
import time
from collections.abc import Callable
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
SETTLE_S = 10.0  # after the service's study, before the bare runs
TARGET_START_S = 3.0
N_TRIALS, SKIP = 40, 10  # trials of a run; trial endings left out of its steady rate (the start's)
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


def bare_tune_run(
    n: int, gcs_address: str, data_dir: Path, skip: int = SKIP, *, tpe: bool = False, ours: bool = False
) -> dict[str, Any]:
    """Bare Ray Tune (function trainable calling the trainer, reuse_actors, 2 concurrent), after a warm-up
    fit: `fit()`'s seconds for `n` trials, each trial's end (time.time() at its last report) and the CPU
    seconds per trial of this process (Tune's driver) over the steady window. `tpe`: with Tune's own
    OptunaSearch and the service's TPE settings, in memory (no store), instead of random search. `ours`:
    the service's trainable (service.trainable.run_trial: its epoch checkpoint, live metrics and
    reports) instead of the closure, to tell the trainable's cost from the driver's."""
    import ray
    from ray import tune

    ray.init(address=gcs_address, logging_level="WARNING")
    base = {**TRAINER, "method": "smooth", "artifact_dir": str(data_dir)}

    def trainable(config: dict) -> None:  # a closure: pickled by value, nothing to import on the workers
        from trainers import TrainConfig, train

        result = train(TrainConfig(**base, t0=config["t0"]), report=lambda m: tune.report(dict(m)))
        tune.report({"best_val_acc": result.best_val_acc, "final": True, "finished_at": time.time()})

    def searcher() -> Any:
        if not tpe:
            return None
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        sampler = optuna.samplers.TPESampler(seed=0, constant_liar=True, multivariate=True, group=True)
        return OptunaSearch(metric="best_val_acc", mode="max", sampler=sampler)

    space: dict[str, Any] = {"t0": tune.uniform(0.0, 1.0)}
    run: Any = trainable
    if ours:
        from functools import partial

        from service.trainable import run_trial

        fixed = {**TRAINER, "artifact_dir": str(data_dir)}
        run = partial(run_trial, fixed=fixed, cpus_per_trial=1, checkpoint_dir=str(data_dir / "ckpt"))
        # A trial's number names its checkpoint file: a random one, unique enough for n trials.
        space = {
            "params": {"method": "smooth", "t0": tune.uniform(0.0, 1.0)},
            "run": {"number": tune.randint(0, 2**31)},
        }

    def fit(samples: int) -> tuple[float, list[float]]:
        tuner = tune.Tuner(
            tune.with_resources(run, {"cpu": 1}),
            param_space=space,
            tune_config=tune.TuneConfig(
                num_samples=samples,
                max_concurrent_trials=CONCURRENT,
                reuse_actors=True,
                search_alg=searcher(),
            ),
            run_config=tune.RunConfig(storage_path=str(data_dir / "bare_tune"), verbose=0),
        )
        t = time.perf_counter()
        grid = tuner.fit()
        return time.perf_counter() - t, [r.metrics["finished_at"] for r in grid]

    try:
        fit(CONCURRENT)  # warm: its actors' imports are not the steady state
        with CpuSampler(os.getpid()) as cpu:
            span, ends = fit(n)
        return {"span": span, "driver_cpu": steady_cpu_per_trial(cpu, ends, skip), "ends": ends}
    finally:
        ray.shutdown()


def reference(first: dict[str, Any], last: dict[str, Any], skip: int = SKIP) -> dict[str, Any]:
    """Bare Tune's figures as the reference: the mean of its two runs, the first and the last of the bare
    runs (one run alone moved by up to a quarter with its place in the order)."""
    return {
        "span": (first["span"] + last["span"]) / 2,
        "driver_cpu": (first["driver_cpu"] + last["driver_cpu"]) / 2,
        "steady": (steady_per_trial(first["ends"], skip) + steady_per_trial(last["ends"], skip)) / 2,
        "runs": [first, last],
    }


def steady_per_trial(ends: list[float], skip: int = SKIP) -> float:
    """Seconds per trial between the trial endings after the first `skip`: (last - first) / intervals."""
    kept = sorted(ends)[skip:]
    if len(kept) < 2:
        raise ValueError(f"{len(ends)} trial endings: too few to leave {skip} out")
    return (kept[-1] - kept[0]) / (len(kept) - 1)


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


class CpuSampler:
    """CPU seconds (user + system) of one process (`match` a pid), or of the processes `match(pid,
    cmdline)` picks, sampled from /proc every 0.1 s while open, with the time of each sample. A pid is
    read alone: scanning /proc from a thread of a busy process waits on its GIL at every file."""

    def __init__(self, match: int | Callable[[int, bytes], bool]) -> None:
        self._match, self._skip = match, set()
        self.samples: dict[int, list[tuple[float, float]]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _pids(self) -> list[int]:
        if isinstance(self._match, int):
            return [self._match]
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or (pid := int(proc.name)) in self._skip:
                continue
            try:
                if pid in self.samples or self._match(pid, (proc / "cmdline").read_bytes()):
                    pids.append(pid)
                else:
                    self._skip.add(pid)
            except OSError:  # gone
                continue
        return pids

    def _watch(self) -> None:
        from bench.api_store import cpu_s

        while not self._done.wait(0.1):
            for pid in self._pids():
                try:
                    self.samples.setdefault(pid, []).append((time.time(), cpu_s(pid)))
                except OSError:  # gone
                    continue

    def between(self, t0: float, t1: float) -> float:
        """CPU seconds the processes used from t0 to t1 (the samples nearest before each)."""

        def at(series: list[tuple[float, float]], t: float) -> float:
            return max((cpu for when, cpu in series if when <= t), default=0.0)

        return sum(at(series, t1) - at(series, t0) for series in self.samples.values())

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def steady_cpu_per_trial(cpu: CpuSampler, ends: list[float], skip: int = SKIP) -> float:
    """A driver's CPU seconds per trial over the same window as `steady_per_trial`."""
    kept = sorted(ends)[skip:]
    return cpu.between(kept[0], kept[-1]) / (len(kept) - 1)


def service_figures(api: str, n: int, data_dir: Path, skip: int = SKIP) -> dict[str, Any]:
    """The service's span for `n` trials (POST to the study's end), each trial's end, and the phases of
    its start, in seconds after its POST."""
    import optuna

    run_study(api, _study(CONCURRENT, "b2-warm-up"))  # a warm cluster: workers up, trainer imported
    with CpuSampler(lambda pid, cmdline: b"service.driver" in cmdline) as driver_cpu:
        run = run_study(api, _study(n, "b2"))
    storage = f"sqlite:///{data_dir / 'transched.db'}"
    trials = optuna.load_study(study_name=run["study"]["optuna_study_name"], storage=storage).trials
    # `started_at` / `finished_at`: the trainable's start and last report (service.trainable.run_trial)
    starts = sorted(t.user_attrs["started_at"] for t in trials if t.user_attrs.get("started_at"))
    ends = sorted(t.user_attrs["finished_at"] for t in trials if t.user_attrs.get("finished_at"))
    asked = min(t.datetime_start.timestamp() for t in trials)  # naive local time, as Optuna hands it back
    driver = datetime.fromisoformat(run["study"]["started_at"])
    driver = driver.replace(tzinfo=driver.tzinfo or UTC).timestamp()
    return {
        "span": run["ended"] - run["posted"],
        "driver_cpu": steady_cpu_per_trial(driver_cpu, ends, skip),
        "ends": ends,
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

    n = 16 if quick else N_TRIALS
    skip = 4 if quick else SKIP
    with tempfile.TemporaryDirectory(prefix="transched-b2-") as tmp:
        data_dir = Path(tmp)
        loop = loop_per_trial(n, data_dir)
        proc, api, _env = _serve(data_dir)
        try:
            service = service_figures(api, n, data_dir, skip)
            head = json.loads((data_dir / "ray" / "head.json").read_text())
            use_token_auth(data_dir / "ray")
            time.sleep(SETTLE_S)  # the study's job ends its workers; the bare runs start on a quiet cluster
            first = bare_tune_run(n, head["gcs_address"], data_dir, skip)
            bare_tpe = bare_tune_run(n, head["gcs_address"], data_dir, skip, tpe=True)
            bare_ours = bare_tune_run(n, head["gcs_address"], data_dir, skip, ours=True)
            last = bare_tune_run(n, head["gcs_address"], data_dir, skip)
            bare = reference(first, last, skip)
        finally:
            proc.terminate()
            proc.wait(60)
            stop_local_head(Settings(data_dir=data_dir))
        cold = cold_processes(data_dir)
    steady = {
        "service": steady_per_trial(service["ends"], skip),
        "bare": bare["steady"],
        "bare_tpe": steady_per_trial(bare_tpe["ends"], skip),
        "bare_ours": steady_per_trial(bare_ours["ends"], skip),
    }
    whole = {k: v["span"] / n for k, v in {"service": service, "bare": bare, "bare_tpe": bare_tpe,
                                            "bare_ours": bare_ours}.items()}  # fmt: skip
    start = service["start"]
    phases = cold["trial_phases"]
    runs_cpu = " and ".join(f"{1e3 * r['driver_cpu']:.0f}" for r in bare["runs"])
    cpu_met = service["driver_cpu"] <= 1.2 * bare["driver_cpu"]
    per_trial_met = steady["service"] <= steady["bare"] and cpu_met
    lines = [
        f"{n} near-zero trials (digits, small CNN, 1 step), {CONCURRENT} concurrent, one run each side; "
        f"seconds. Steady: between the trial endings after the first {skip}, over their number.",
        "",
        f"| what | s per trial, whole span of {n} | vs bare Tune | steady s per trial | vs bare Tune |",
        "|---|---:|---:|---:|---:|",
        f"| trainer called in a loop (in process) | {loop:.3f} | {loop / whole['bare']:.2f} | {loop:.3f} "
        f"| {loop / steady['bare']:.2f} |",
        f"| bare Ray Tune, reuse_actors, `fit()` only (mean of its runs first and last) "
        f"| {whole['bare']:.3f} | 1.00 | {steady['bare']:.3f} | 1.00 |",
        f"| bare Ray Tune + OptunaSearch (the service's TPE, in memory) | {whole['bare_tpe']:.3f} "
        f"| {whole['bare_tpe'] / whole['bare']:.2f} | {steady['bare_tpe']:.3f} "
        f"| {steady['bare_tpe'] / steady['bare']:.2f} |",
        f"| bare Ray Tune running the service's trainable (epoch checkpoint, metrics, reports) "
        f"| {whole['bare_ours']:.3f} | {whole['bare_ours'] / whole['bare']:.2f} | {steady['bare_ours']:.3f} "
        f"| {steady['bare_ours'] / steady['bare']:.2f} |",
        f"| the service: POST to study completed | {whole['service']:.3f} "
        f"| {whole['service'] / whole['bare']:.2f} | {steady['service']:.3f} "
        f"| {steady['service'] / steady['bare']:.2f} |",
        "",
        f"The driver's CPU per trial over the same steady window: the service's driver process "
        f"{1e3 * service['driver_cpu']:.0f} ms ({service['driver_cpu'] / bare['driver_cpu']:.2f}x), bare "
        f"Tune's (the fitting process) {1e3 * bare['driver_cpu']:.0f} ms (its two runs "
        f"{runs_cpu}), bare Tune's with OptunaSearch "
        f"{1e3 * bare_tpe['driver_cpu']:.0f} ms ({bare_tpe['driver_cpu'] / bare['driver_cpu']:.2f}x), "
        f"bare Tune's running the service's trainable {1e3 * bare_ours['driver_cpu']:.0f} ms "
        f"({bare_ours['driver_cpu'] / bare['driver_cpu']:.2f}x). "
        "Either driver hands a trial's results on one at a time: Tune's function trainable waits in each "
        "`report` until its driver has taken the result, so a driver's time per result is time its trials "
        "wait, and on these 2 cores it is also CPU the two trials do not get.",
        "",
        f"Per trial: steady {steady['service'] / steady['bare']:.2f}x bare Tune's (target <= 1), the "
        f"driver's CPU {service['driver_cpu'] / bare['driver_cpu']:.2f}x (target <= 1.2): "
        f"**{'met' if per_trial_met else 'missed'}**.",
        "",
        f"Study start (POST to the first trial training, warm cluster): **{start:.2f} s** "
        f"(target < {TARGET_START_S:.0f} s). Its profile, seconds after the POST of the {n}-trial study:",
        "",
        "| phase | at (s) | took (s) |",
        "|---|---:|---:|",
        f"| Ray job submitted, driver process started and imported, study marked running "
        f"| {service['driver_running']:.2f} | {service['driver_running']:.2f} |",
        f"| driver: Ray connected, Optuna study and Tune set up, first trial asked "
        f"| {service['first_asked']:.2f} | {service['first_asked'] - service['driver_running']:.2f} |",
        f"| Tune: trial actor's worker process started and imported, the trainable entered "
        f"| {start:.2f} | {start - service['first_asked']:.2f} |",
        f"| the first trial ended (its one step, validation and test) | {service['first_finished']:.2f} "
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
    met = per_trial_met and start < TARGET_START_S
    return {
        "id": "B2",
        "title": "Orchestration: seconds per trial and study start",
        "lines": lines,
        "target": (
            "steady cost per trial at or below bare Ray Tune's, the driver's CPU per trial at most 1.2x bare "
            "Tune's; study start < 3 s on a warm cluster"
        ),
        "met": met,
        "figures": {
            "loop": loop,
            "whole": whole,
            "steady": steady,
            "start": start,
            "cold": cold,
            "driver_cpu": {
                "service": service["driver_cpu"],
                "bare": bare["driver_cpu"],
                "bare_tpe": bare_tpe["driver_cpu"],
                "bare_ours": bare_ours["driver_cpu"],
            },
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    print("\n".join(run(quick=p.parse_args().quick)["lines"]))


if __name__ == "__main__":
    main()

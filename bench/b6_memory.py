"""B6 memory: the API server's resident memory idle and with 10,000 trials stored (after serving its read
endpoints), and a trial's peak: the trainer's process training the digits demo trial (small CNN).

    python -m bench.b6_memory [--quick]

Resident memory is the kernel's VmRSS of the server process; a trial's peak is VmHWM of a fresh
interpreter that imports the trainer and trains one trial (what a Tune trial actor adds to its Ray worker).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.api_store import api_server, database, populate, rss_mb, temp_dir, timed_gets

TRIAL = """
import json
from pathlib import Path


def mb(key):
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1]) / 1024


start = mb("VmRSS")
import trainers

config = trainers.TrainConfig(
    method="smooth", t0=0.2, tau=0.1, source="digits", target="digits", source_classes=[0, 1, 2, 3, 4],
    target_classes=[5, 6, 7, 8, 9], n_target=40, backbone="small_cnn", epochs=EPOCHS, batch_size=32,
    lr=0.05, num_threads=1,
)
trainers.train(config)
print(json.dumps({"start_mb": start, "peak_mb": mb("VmHWM")}))
"""


def server_rss(n_trials: int) -> tuple[float, float]:
    """(RSS MB of the API server once started, RSS MB after serving the read endpoints 20 times each)."""
    with temp_dir() as tmp, database("sqlite", Path(tmp)) as url:
        study_id = populate(url, n_trials=n_trials) if n_trials else None
        with api_server(url, Path(tmp)) as (client, pid):
            idle = rss_mb(pid)
            paths = ["/studies?limit=20"]
            if study_id:
                paths += [
                    f"/studies/{study_id}",
                    f"/studies/{study_id}/trials?limit=100",
                    f"/studies/{study_id}/best",
                ]
            for path in paths:
                timed_gets(client, path, 20)
            return idle, rss_mb(pid)


def trial_peak(epochs: int) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", TRIAL.replace("EPOCHS", str(epochs))],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(*, quick: bool = False) -> dict:
    empty, empty_served = server_rss(0)
    _, big_served = server_rss(10_000)
    trial = trial_peak(2 if quick else 12)
    lines = [
        "| process | resident memory (MB) |",
        "|---|---:|",
        f"| API server, empty store, started | {empty:.0f} |",
        f"| API server, empty store, after requests | {empty_served:.0f} |",
        f"| API server, 10,000 trials stored, after 80 requests over them | {big_served:.0f} |",
        f"| a trial (digits demo, small CNN): before importing the trainer | {trial['start_mb']:.0f} |",
        f"| a trial: peak, trainer imported and trained | {trial['peak_mb']:.0f} |",
    ]
    return {
        "id": "B6",
        "title": "Memory: API server and a trial",
        "lines": lines,
        "target": "API memory flat in the trial count: under 100 MB more with 10,000 trials than empty",
        "met": big_served - empty_served < 100,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    print("\n".join(run(quick=p.parse_args().quick)["lines"]))


if __name__ == "__main__":
    main()

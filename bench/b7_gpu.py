"""B7 (GPU machine): ResNet-20 on CIFAR-size data at 1, 2 and 4 trials per GPU, and paper 002's study.

    PYTHONPATH=$PWD .venv/bin/python bench/b7_gpu.py            # one command on a GPU machine
    PYTHONPATH=$PWD .venv/bin/python bench/run_all.py --only B7  # the same, and BENCHMARKS.md updated

Each trial is a separate process (as Ray's trial actors are) that claims its GPU share the way the
service does (`service.trainable.claim_device(1 / c)`: a memory cap of 1/c) and trains the `smooth`
method, ResNet-20, generated 3x32x32 data (the trainer's `synthetic` set, no download), sub-batches of
128 target + 128 source images (paper 002's appendix), with the trainer's CUDA defaults (bf16 autocast,
channels_last, cuDNN benchmark). The c trials start together; each reports its step rate over its
epochs after the first (warm-up, cuDNN autotuning).

Projection of paper 002's CIFAR study: 99 trials (11 workers x 9 rounds) of 380 epochs of the source
(CIFAR-100, 50,000 images: 391 steps of 128 an epoch), i.e. 380 x 391 = 148,580 steps a trial. An
"epoch" below is such a 391-step epoch. Trials per GPU-hour = 3600 x (total steps/s of the c trials) /
148,580; the study's GPU time = 99 / (trials per GPU-hour) hours on one GPU at the best c.

On a machine without CUDA it says so and exits cleanly (status 0; `run()` returns met None).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from typing import Any

PAPER_TRIALS = 99
PAPER_EPOCHS = 380
STEPS_PER_EPOCH = 391  # CIFAR-100 (50,000 source images) in sub-batches of 128
SUB_BATCH = 128
TARGET_HOURS = 2.0  # issue 9: the full study in under two hours on one H100
TARGET = f"paper 002's CIFAR study (99 trials x 380 epochs) in under {TARGET_HOURS:g} h on one GPU"


def _trial(share: float, steps: int, epochs: int, overrides: dict[str, Any], start: Any, out: Any) -> None:
    """One trial process: claim the GPU share, wait for the others, train, put its step rate in `out`."""
    import torch

    from service.trainable import claim_device
    from trainers import train

    claim_device(share)
    stamps: list[float] = []

    def report(_: dict[str, Any]) -> None:
        torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as artifacts:
        config = dict(
            method="smooth", t0=0.0, tau=0.1, backbone="resnet20", source="synthetic", target="synthetic",
            image_size=32, n_target=None, batch_size=SUB_BATCH, epochs=epochs, steps_per_epoch=steps,
            device="cuda", artifact_dir=artifacts, seed=0, **overrides,
        )  # fmt: skip
        start.wait()
        result = train(config, report=report)
    out.put(
        {
            "steps_s": steps * (len(stamps) - 1) / (stamps[-1] - stamps[0]),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "best_val_acc": result.best_val_acc,
        }
    )


def measure(concurrent: int, *, steps: int, epochs: int, overrides: dict[str, Any]) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(concurrent), ctx.Queue()
    procs = [
        ctx.Process(target=_trial, args=(1.0 / concurrent, steps, epochs, overrides, start, out))
        for _ in range(concurrent)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    per_trial = [r["steps_s"] for r in results]
    total = sum(per_trial)
    return {
        "concurrent": concurrent,
        "steps_s_per_trial": statistics.mean(per_trial),
        "steps_s_total": total,
        "samples_s_total": total * 2 * SUB_BATCH,
        "epoch_s": STEPS_PER_EPOCH / statistics.mean(per_trial),
        "trials_per_gpu_hour": 3600 * total / (PAPER_EPOCHS * STEPS_PER_EPOCH),
        "peak_gib": max(r["peak_gib"] for r in results),
    }


def _row(label: str, m: dict[str, Any]) -> str:
    hours = PAPER_TRIALS / m["trials_per_gpu_hour"]
    return (
        f"| {label} | {m['concurrent']} | {m['epoch_s']:.1f} | {m['samples_s_total']:,.0f} | "
        f"{m['trials_per_gpu_hour']:.2f} | {hours:.1f} | {m['peak_gib']:.2f} |"
    )


def run(*, quick: bool = False) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {
            "id": "B7",
            "title": "GPU: trials per GPU and paper 002's study",
            "lines": ["Needs CUDA: not run on this machine (run `bench/b7_gpu.py` on a GPU machine)."],
            "target": TARGET,
            "met": None,
        }
    steps, epochs = (20, 2) if quick else (100, 4)
    started = time.monotonic()
    rows, best = [], None
    for c in (1, 2, 4):
        m = measure(c, steps=steps, epochs=epochs, overrides={})
        rows.append(_row("bf16, channels_last (defaults)", m))
        best = m if best is None or m["trials_per_gpu_hour"] > best["trials_per_gpu_hour"] else best
    fp32 = measure(1, steps=steps, epochs=epochs, overrides=dict(precision="fp32", channels_last=False))
    rows.append(_row("fp32, contiguous", fp32))
    assert best is not None
    hours = PAPER_TRIALS / best["trials_per_gpu_hour"]
    lines = [
        f"{torch.cuda.get_device_name(0)}; ResNet-20, sub-batches 128 + 128, {epochs - 1} timed epochs of "
        f"{steps} steps per trial after a warm-up epoch; epoch = {STEPS_PER_EPOCH} steps (CIFAR-100 source); "
        f"{time.monotonic() - started:.0f} s.",
        "",
        "| precision, layout | trials per GPU | epoch (s) per trial | samples/s (all trials) | trials per "
        "GPU-hour | paper 002 study (h) | peak GiB per trial |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"Paper 002's study ({PAPER_TRIALS} trials x {PAPER_EPOCHS} epochs) projected at "
        f"{best['concurrent']} trials per GPU: **{hours:.1f} GPU-hours**.",
    ]
    return {
        "id": "B7",
        "title": "GPU: trials per GPU and paper 002's study",
        "lines": lines,
        "target": TARGET,
        "met": None if quick else hours < TARGET_HOURS,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    print("\n".join(run(quick=p.parse_args().quick)["lines"]))

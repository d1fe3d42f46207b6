"""Training throughput of the trainer, per backbone and method, on the CPU (or CUDA when present).

    .venv/bin/python bench/train_speed.py [--threads 2] [--steps 20]

Prints training steps per second over the second of two epochs of `--steps` steps (the first warms up;
the second includes one validation pass). Each step draws a target sub-batch of `--batch`, plus a source
sub-batch where the method uses the source. Figures go in BENCHMARKS.md, never in tests.
"""

from __future__ import annotations

import argparse
import time

import torch

from trainers import TrainConfig, train

CASES = [
    # (backbone, dataset, image size, method)
    ("small_cnn", "digits", None, "smooth"),
    ("small_cnn", "digits", None, "target"),
    ("small_cnn", "digits", None, "mixup"),
    ("small_cnn", "digits", None, "ict"),
    ("small_cnn", "digits", None, "automix"),
    ("resnet20", "synthetic", 32, "smooth"),
    ("wrn10_2", "synthetic", 32, "smooth"),
    ("resnet18", "synthetic", 32, "smooth"),
]


def seconds_per_step(config: TrainConfig, steps: int) -> float:
    stamps: list[float] = []
    train(config, report=lambda m: stamps.append(time.perf_counter()))
    return (stamps[1] - stamps[0]) / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}, torch {torch.__version__}, {args.threads} threads, batch {args.batch}")
    print(f"{'backbone':<10} {'method':<8} {'data':<10} {'steps/s':>8} {'ms/step':>8}")
    for backbone, data, size, method in CASES:
        config = TrainConfig(
            method=method, backbone=backbone, source=data, target=data, image_size=size, n_target=40,
            epochs=2, steps_per_epoch=args.steps, batch_size=args.batch, num_threads=args.threads,
            device=device, pretrain_epochs=1, artifact_dir="/tmp/transched-bench-artifacts",
        )  # fmt: skip
        per_step = seconds_per_step(config, args.steps)
        print(f"{backbone:<10} {method:<8} {data:<10} {1 / per_step:>8.1f} {1000 * per_step:>8.1f}")


if __name__ == "__main__":
    main()

"""The trend of paper 002 (Table 1, Figure 2), measured on data available here.

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python bench/trend.py            # the full run (~10-25 min)
    PYTHONPATH=$PWD nice -n 10 .venv/bin/python bench/trend.py --quick    # a smoke run (seconds)

Paper 002 finds that the TPE-optimised lambda(t) approaches pre-train-then-fine-tune when the target
size N is much smaller than the source, and fixed-weight multi-task learning when N is close to it. This
benchmark runs the schedule family (target, finetune, multitask, smooth) with TPE (Optuna in-process, no
Ray: a benchmark, not the service) for several N and seeds and reports, per N, each method's best
validation accuracy and the shape of the best smooth lambda(t).

The transfer task (no download possible here, so it is generated from scikit-learn's digits):

* every digit image goes to exactly one side (seeded, per class: 40% source, 60% target by default,
  `--source-fraction`), so no target image is a source image in disguise;
* **source**: the clean part, all 10 classes (~720 images);
* **target**: the other part (~1,080 images; after the 30% test and 20% validation splits ~600 are left
  for training, so the largest N reaches ~0.85 |D^S|, the paper's "N close to the source size"),
  *shifted*: contrast lowered to 60% on a grey background (0.2 + 0.6 x) plus Gaussian pixel noise
  (sigma 0.15 of the range). A related but different domain (like
  MNIST -> SVHN: same classes, different appearance), hard enough that target-only training on a few
  samples is far from 100%, and the clean source measurably helps (the small-N rows show by how much).
  Variants tried first and rejected: inverted contrast + noise 0.1 (the source helped by ~1 point of
  test accuracy at N=25: too little to study), and noise 0.3 or a one-pixel translation (target
  accuracy 20-50% even at N=400, the source did not help: 8x8 images cannot take it).

Both sides are written once as ImageFolder trees (8x8 RGB PNGs) and read by the trainer's own
`imagefolder` loader, so every run is a plain `trainers.train(TrainConfig)` call. All methods of one
(N, seed) get the same T (epochs x steps_per_epoch) and the same target split; only the public API is
used: `trainers.train`, `TrainConfig` fields, `trainers.schedule.loss_weight`, and the product's own
search space (`search_spaces.method_space` / `build_space`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("target", "finetune", "multitask", "smooth")
LAMBDA_AT = (0.0, 0.25, 0.5, 0.75, 1.0)  # fractions of T where the best lambda(t) is printed
TASK_SEED = 20240601  # the generated task is fixed, like a real dataset; run seeds only split it
TASK_VERSION = "digits-shift-v2"


@dataclass
class Budget:
    """One benchmark's size. TPE trials per method; `target` has nothing to search (one trial)."""

    sizes: tuple[int, ...] = (25, 100, 600)
    seeds: tuple[int, ...] = (0, 1, 2)
    trials: dict[str, int] = field(default_factory=lambda: {"finetune": 8, "multitask": 8, "smooth": 20})
    epochs: int = 12
    steps_per_epoch: int = 20
    batch_size: int = 32
    source_fraction: float = 0.4  # share of each digit class that goes to the (clean) source


QUICK = Budget(
    sizes=(25, 200),
    seeds=(0,),
    trials={"finetune": 2, "multitask": 2, "smooth": 3},
    epochs=2,
    steps_per_epoch=5,
)


# --- the generated transfer task ----------------------------------------------------------------------


def make_task(root: Path, source_fraction: float = 0.4) -> tuple[Path, Path]:
    """Write the source (clean digits) and target (shifted digits) ImageFolders; idempotent."""
    from PIL import Image
    from sklearn.datasets import load_digits

    task = root / f"{TASK_VERSION}-source{round(100 * source_fraction)}"
    source, target, done = task / "source", task / "target", task / ".complete"
    if done.exists():
        return source, target
    digits = load_digits()
    x, y = digits.images.astype(np.float64) / 16.0, digits.target
    rng = np.random.default_rng(TASK_SEED)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        cut = int(source_fraction * len(idx))  # floor: 0.5 is the earlier len // 2 split
        for side, part in ((source, idx[:cut]), (target, idx[cut:])):
            (side / str(c)).mkdir(parents=True, exist_ok=True)
            for i in part:
                img = x[i] if side == source else _shift(x[i], rng)
                grey = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
                Image.fromarray(grey, mode="L").convert("RGB").save(side / str(c) / f"{i:04d}.png")
    done.write_text("ok\n")
    return source, target


def _shift(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The target domain: contrast lowered to 60% on a grey background, plus Gaussian pixel noise."""
    return 0.2 + 0.6 * img + rng.normal(0.0, 0.15, size=img.shape)


def base_config(source: Path, target: Path, n: int, seed: int, budget: Budget) -> dict[str, Any]:
    return {
        "source": "imagefolder",
        "source_path": str(source),
        "target": "imagefolder",
        "target_path": str(target),
        "image_size": 8,
        "backbone": "small_cnn",
        "n_target": n,
        "epochs": budget.epochs,
        # Fixed steps per epoch: every method gets the same T, whatever N is (target-only would
        # otherwise get T ~ N / batch and lose by having fewer updates, not by lacking the source).
        "steps_per_epoch": budget.steps_per_epoch,
        "batch_size": budget.batch_size,
        "seed": seed,
        "num_threads": 1,
        "device": "cpu",
    }


# --- one (N, seed): TPE per method ---------------------------------------------------------------------


def run_cell(args: tuple[int, int, str, str, Budget]) -> dict[str, Any]:
    """Best trial of each method of the schedule family for one target size N and one seed."""
    import optuna

    from search_spaces import build_space, method_space
    from trainers import train

    n, seed, source, target, budget = args
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("trainers").setLevel(logging.WARNING)
    base = base_config(Path(source), Path(target), n, seed, budget)
    cell: dict[str, Any] = {"n": n, "seed": seed, "methods": {}}
    started = time.monotonic()
    for method in METHODS:
        space = build_space({method: method_space(method)})
        n_trials = budget.trials.get(method, 1) if method != "target" else 1
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(10, n_trials // 3)))
        study = optuna.create_study(direction="maximize", sampler=sampler)

        def objective(trial: optuna.Trial, space=space) -> float:
            params = space(trial)
            result = train({**base, **params})
            trial.set_user_attr("config", params)
            trial.set_user_attr("test_acc", result.test_acc)
            trial.set_user_attr("total_steps", result.total_steps)
            trial.set_user_attr("n_source", result.data_sizes.get("n_source"))
            return result.best_val_acc

        study.optimize(objective, n_trials=n_trials)
        best = study.best_trial
        cell["methods"][method] = {
            "val_acc": best.value,
            "test_acc": best.user_attrs["test_acc"],
            "params": best.user_attrs["config"],
            "total_steps": best.user_attrs["total_steps"],
            "n_trials": n_trials,
            # Trials tying the best value: the reported shape is the first of them (Optuna's best).
            "ties": sum(1 for t in study.trials if t.value == best.value),
        }
        cell["n_source"] = best.user_attrs["n_source"] or cell.get("n_source")
    cell["wall_s"] = time.monotonic() - started
    done = ", ".join(f"{m} {v['val_acc']:.3f}" for m, v in cell["methods"].items())
    print(f"N={n} seed={seed}: {done} ({cell['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    cell["smooth_shape"] = lambda_shape(
        cell["methods"]["smooth"]["params"], cell["methods"]["smooth"]["total_steps"]
    )
    return cell


def lambda_shape(params: dict[str, Any], total: int) -> dict[str, Any]:
    """lambda(t) of the best smooth trial at a few fractions of T, and which special case it is close to."""
    from trainers.schedule import loss_weight

    def lam(t: int) -> float:
        return loss_weight("smooth", t, total, t0=params["t0"], tau=params["tau"], alpha=params["alpha"])

    curve = [lam(t) for t in range(1, total + 1)]
    lo, hi = min(curve), max(curve)
    at = {f"{f:g}": round(lam(max(1, round(f * total))), 3) for f in LAMBDA_AT}
    if hi - lo < 0.2:
        kind = f"~multi-task (constant lambda~{statistics.fmean(curve):.2f})"
    else:
        # Width of the rise from 10% to 90% of its range, in units of T.
        t10 = next(t for t, v in enumerate(curve, 1) if v >= lo + 0.1 * (hi - lo))
        t90 = next(t for t, v in enumerate(curve, 1) if v >= lo + 0.9 * (hi - lo))
        width = (t90 - t10) / total
        mid = (t10 + t90) / 2 / total
        kind = (
            f"~fine-tune (step at t/T~{mid:.2f})"
            if width < 0.1
            else f"gradual ({lo:.2f}->{hi:.2f} over {width:.2f} T around t/T~{mid:.2f})"
        )
    return {
        "t0": params["t0"],
        "tau": params["tau"],
        "alpha": params["alpha"],
        "lambda_at": at,
        "kind": kind,
    }


# --- the whole benchmark -----------------------------------------------------------------------------


def run_trend(budget: Budget, data_dir: Path, workers: int = 1) -> dict[str, Any]:
    """Every (N, seed) cell, `workers` processes at a time; returns cells and the per-N summary."""
    source, target = make_task(data_dir, budget.source_fraction)
    jobs = [(n, s, str(source), str(target), budget) for n in budget.sizes for s in budget.seeds]
    started = time.monotonic()
    if workers <= 1:
        cells = [run_cell(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            cells = list(pool.map(run_cell, jobs))
    return {
        "task": TASK_VERSION,
        "budget": asdict(budget),
        "cells": cells,
        "summary": summarise(cells),
        "wall_s": time.monotonic() - started,
    }


def summarise(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for n in sorted({c["n"] for c in cells}):
        group = [c for c in cells if c["n"] == n]
        row: dict[str, Any] = {"n": n, "n_source": group[0].get("n_source"), "seeds": len(group)}
        row["seed_list"] = [c["seed"] for c in group]
        for m in METHODS:
            vals = [c["methods"][m]["val_acc"] for c in group]
            tests = [c["methods"][m]["test_acc"] for c in group]
            row[m] = {
                "val_mean": statistics.fmean(vals),
                "val_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "test_mean": statistics.fmean(tests),
            }
        row["best_method"] = max(METHODS, key=lambda m: row[m]["val_mean"])
        row["shapes"] = [c["smooth_shape"] for c in group]
        row["finetune_t0"] = [c["methods"]["finetune"]["params"]["t0"] for c in group]
        row["multitask_lambda"] = [
            round(1.0 / (1.0 + math.exp(c["methods"]["multitask"]["params"]["alpha"])), 3) for c in group
        ]
        rows.append(row)
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| N | N / source | target | fine-tune | multi-task | smooth | best |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["summary"]:
        ratio = f"{r['n'] / r['n_source']:.2f}" if r.get("n_source") else "-"
        accs = " | ".join(
            f"{100 * r[m]['val_mean']:.1f} ± {100 * r[m]['val_std']:.1f} ({100 * r[m]['test_mean']:.1f})"
            for m in METHODS
        )
        lines.append(f"| {r['n']} | {ratio} | {accs} | {r['best_method']} |")
    lines += [
        "",
        "| N | seed | t0 | tau | alpha | "
        + " | ".join(f"lambda({f:g}T)" for f in LAMBDA_AT)
        + " | shape | fine-tune t0 | multi-task lambda |",
        "| ---: | ---: | ---: | ---: | ---: | "
        + " | ".join("---:" for _ in LAMBDA_AT)
        + " | --- | ---: | ---: |",
    ]
    for r in report["summary"]:
        for seed, shape, ft, mt in zip(
            r["seed_list"], r["shapes"], r["finetune_t0"], r["multitask_lambda"], strict=True
        ):
            lam = " | ".join(f"{shape['lambda_at'][f'{f:g}']:.2f}" for f in LAMBDA_AT)
            omega = f"{shape['t0']:+.3f} | {shape['tau']:.3g} | {shape['alpha']:+.2f}"
            lines.append(f"| {r['n']} | {seed} | {omega} | {lam} | {shape['kind']} | {ft:+.3f} | {mt:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 sizes, 1 seed, a few tiny trials")
    p.add_argument("--workers", type=int, default=2, help="(N, seed) cells run in parallel (1 thread each)")
    p.add_argument("--sizes", type=int, nargs="+", help="target sizes N (default 25 100 600)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    p.add_argument("--source-fraction", type=float, help="share of digits that is source (default 0.4)")
    p.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "transched-trend")
    p.add_argument("--json", type=Path, help="also write the full report (every cell) here")
    args = p.parse_args(argv)
    budget = QUICK if args.quick else Budget()
    if args.sizes:
        budget.sizes = tuple(args.sizes)
    if args.seeds:
        budget.seeds = tuple(args.seeds)
    if args.source_fraction:
        budget.source_fraction = args.source_fraction
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    report = run_trend(budget, args.data_dir, workers=args.workers)
    report["machine"] = (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    )
    report["command"] = " ".join(["python", "bench/trend.py", *(argv if argv is not None else sys.argv[1:])])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(
        f"\n{report['machine']}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{time.monotonic() - started:.0f} s wall; `{report['command']}`"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

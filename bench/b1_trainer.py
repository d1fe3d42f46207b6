"""B1 trainer throughput against a minimal hand-written PyTorch loop: same model, batch and data.

    PYTHONPATH=$PWD .venv/bin/python bench/b1_trainer.py [--quick]

Each case trains the `target` method (one target sub-batch per step, no source branch) with
`trainers.train` and, side by side in the same process, a hand-written loop: the same network
(`trainers.models.build_model`, same init seed), the same device-resident training tensors, the same
batch size, momentum SGD with a per-step learning rate, forward, cross-entropy, backward, step, and the
same per-epoch validation pass. What the trainer adds on top is what is measured: sampling, schedules,
the method's step, per-epoch bookkeeping and best-weight keeping. The ratio is hand-written time over
trainer time for the same number of steps (1.0: as fast), repeated and alternated so that machine load
hits both alike; the median ratio over repeats is the figure and the minimum is shown with it.

The trainer's setup (data load, model init) and its final test and diagnostics are outside the timed
span: the time between its first and last epoch reports covers the same epochs as the loop's timer.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch
from torch.nn import functional as F

CASES = [
    # (label, TrainConfig overrides, (steps per epoch, epochs, repeats), the same in quick mode)
    (
        "small CNN, digits 8x8",
        dict(backbone="small_cnn", source="digits", target="digits", n_target=None),
        (150, 4, 5),
        (10, 2, 1),
    ),
    (
        "ResNet-20, generated 3x32x32",
        dict(backbone="resnet20", source="synthetic", target="synthetic", image_size=32, n_target=None),
        (15, 3, 3),
        (2, 2, 1),
    ),
]
TARGET = 0.95


def _config(overrides: dict[str, Any], steps: int, epochs: int, artifacts: str, device: str) -> Any:
    from trainers import TrainConfig

    return TrainConfig(
        method="target", batch_size=64, epochs=epochs, steps_per_epoch=steps, num_threads=1, device=device,
        artifact_dir=artifacts, seed=0, **overrides,
    )  # fmt: skip


def trainer_seconds(config: Any) -> float:
    """Seconds of the trainer from the end of epoch 1 to the end of its last epoch."""
    from trainers import train

    stamps: list[float] = []

    def report(_: dict[str, Any]) -> None:
        _sync(config.device)
        stamps.append(time.perf_counter())

    train(config, report=report)
    return stamps[-1] - stamps[0]


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def handwritten_seconds(config: Any) -> float:
    """The minimal loop on the trainer's own data and network: same epochs as `trainer_seconds` times."""
    from trainers import hardware
    from trainers.data import load_transfer_data
    from trainers.loop import evaluate, resolve_device
    from trainers.models import build_model

    device = resolve_device(config.device)
    torch.set_num_threads(config.num_threads or torch.get_num_threads())
    data = load_transfer_data(config, load_source=False).to(device)
    torch.manual_seed(0)
    model = build_model(config, data.in_channels, 0, data.n_target_classes).to(device)
    hardware.prepare_model(model, config, device).train()
    dtype = hardware.autocast_dtype(config, device)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=5e-4)
    x, y, n, bs = data.target_train_x, data.target_train_y, len(data.target_train_y), config.batch_size
    gen = torch.Generator().manual_seed(0)
    stamps = []
    for _epoch in range(config.epochs):
        for _ in range(config.steps_per_epoch):
            idx = torch.randint(0, n, (bs,), generator=gen).to(device)
            for group in opt.param_groups:
                group["lr"] = config.lr
            with hardware.autocast(device, dtype):
                loss = F.cross_entropy(model(x[idx], "target"), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        evaluate(model, data.val_x, data.val_y, autocast_dtype=dtype)
        _sync(config.device)
        stamps.append(time.perf_counter())
    return stamps[-1] - stamps[0]


def measure(
    overrides: dict[str, Any], *, steps: int, epochs: int, repeats: int, device: str
) -> dict[str, Any]:
    ratios, t_trainer, t_loop = [], [], []
    with tempfile.TemporaryDirectory() as artifacts:
        config = _config(overrides, steps, epochs, artifacts, device)
        for i in range(repeats):
            # Alternate which goes first, so a load spike or warm cache does not favour one side.
            if i % 2 == 0:
                a, b = trainer_seconds(config), handwritten_seconds(config)
            else:
                b, a = handwritten_seconds(config), trainer_seconds(config)
            t_trainer.append(a)
            t_loop.append(b)
            ratios.append(b / a)
    timed_steps = steps * (epochs - 1)
    return {
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratios": ratios,
        "trainer_steps_s": timed_steps / statistics.median(t_trainer),
        "loop_steps_s": timed_steps / statistics.median(t_loop),
    }


def run(*, quick: bool = False) -> dict[str, Any]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.monotonic()
    rows, met = [], True
    for label, overrides, full, smoke in CASES:
        steps, epochs, repeats = smoke if quick else full
        m = measure(overrides, steps=steps, epochs=epochs, repeats=repeats, device=device)
        met = met and m["ratio"] >= TARGET
        rows.append(
            f"| {label} | {epochs - 1} x {steps} | {repeats} | {m['trainer_steps_s']:.1f} | "
            f"{m['loop_steps_s']:.1f} | **{m['ratio']:.3f}** | {m['ratio_min']:.3f} | "
            f"{', '.join(f'{r:.3f}' for r in m['ratios'])} |"
        )
    lines = [
        f"`target` method, batch 64, {device}, 1 thread, repeats alternating which side runs first; "
        f"the timed "
        f"span is epochs 2.. (epochs x steps, each epoch with its validation pass); "
        f"{time.monotonic() - started:.0f} s.",
        "",
        "| model, data | timed epochs x steps | repeats | trainer steps/s | hand-written steps/s "
        "| ratio (median) | min | all |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        *rows,
    ]
    return {
        "id": "B1",
        "title": "Trainer throughput vs a hand-written loop",
        "lines": lines,
        "target": f"ratio >= {TARGET} (median over repeats) for both models",
        "met": None if quick else met,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    print("\n".join(run(quick=p.parse_args().quick)["lines"]))

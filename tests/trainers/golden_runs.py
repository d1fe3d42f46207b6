"""Short training runs covering every method, and their exact results (the bit-identical check of issue 7).

`python -m tests.trainers.golden_runs [NAME ...]` trains every config of `CONFIGS` (or the named ones)
and writes, per config, the full per-epoch history, the test accuracy and a sha256 of the final
state_dict to `golden_runs.json`, under this machine's key (`machine_key()`); the test
(test_golden_runs.py) re-trains them with the current code and compares exactly. Regenerate only on
purpose (a change that is meant to change results), never to make the test pass.

Why per machine: float results are bit-identical run to run on one kind of CPU, not across kinds. The CPU
kernels PyTorch picks (its CPU capability, AVX2 or AVX512, and MKL's path per vendor) round differently in
the last bit (about 1e-7 relative), and two epochs can grow that into a different validation accuracy. So
each kind of machine keeps its own golden runs; recording them for a new kind, with the code at a commit
whose results are trusted, is `python -m tests.trainers.golden_runs --machine`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).with_name("golden_runs.json")

_BASE: dict[str, Any] = dict(
    source="digits",
    target="digits",
    n_target=60,
    batch_size=16,
    epochs=2,
    steps_per_epoch=3,
    pretrain_epochs=1,
    num_threads=1,
    device="cpu",
    seed=3,
)

# name -> config overrides (artifact_dir is added per run: a fresh temporary directory)
CONFIGS: dict[str, dict[str, Any]] = {
    "target": dict(method="target"),
    "finetune": dict(method="finetune", t0=-0.1),
    "multitask": dict(method="multitask", alpha=0.5),
    "smooth": dict(method="smooth", t0=0.05, tau=0.2, alpha=-0.3),
    "smooth_per_domain_bn": dict(method="smooth", tau=0.1, bn="per_domain"),
    "finetune_augment": dict(method="finetune", augment=True),
    "source_finetune": dict(method="source_finetune"),
    "source_finetune_augment_schedule": dict(method="source_finetune", augment=True, schedule=True, tau=0.3),
    "mixup": dict(method="mixup"),
    "mixup_schedule": dict(method="mixup", schedule=True, t0=-0.1, tau=0.2, alpha=0.5),
    "kmixup": dict(method="kmixup", k_points=3, mixup_alpha=0.7),
    "cutmix_augment": dict(method="cutmix", augment=True),
    # "ict" was recorded when the source images were ICT's default pool (issue 11 made it the target's
    # unlabeled remainder, recorded as "ict_target_pool").
    "ict": dict(method="ict", ict_rampup=0.5, unlabeled="source"),
    "ict_target_pool": dict(method="ict", ict_rampup=0.5),
    "ict_unlabeled_augment": dict(method="ict", unlabeled="digits", augment=True),
    "xmixup": dict(method="xmixup"),
    "xmixup_schedule_per_domain_bn": dict(method="xmixup", schedule=True, bn="per_domain"),
    "smile": dict(method="smile"),
    "automix": dict(method="automix", automix_stage=2),
}


def state_sha256(state: dict[str, Any]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in key order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# CPU extensions beyond torch's capability level with kernels of their own in oneDNN/MKL, and so last bits
# of their own. The first CI machine's runs (AVX512, its extensions not recorded) and a plain-AVX512 Intel
# machine's differ in 4 of 19 configs (ICT, XMixup) under one capability key: the key also names these.
KERNEL_FLAGS = ("avx512_vnni", "avx512_bf16", "amx_tile")


def machine_key() -> str:
    """The kind of machine the exact results belong to: torch's version, its CPU capability (and the
    extensions of KERNEL_FLAGS it has), the vendor."""
    import platform

    import torch

    vendor, flags = "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        vendor = next((line.split(":", 1)[1].strip() for line in lines if "vendor_id" in line), vendor)
        flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    capability = torch.backends.cpu.get_cpu_capability()
    capability += "".join(f"+{f}" for f in KERNEL_FLAGS if f in flags)
    return f"torch-{torch.__version__.split('+')[0]}/{platform.machine()}/{capability}/{vendor}"


def load() -> dict[str, dict[str, Any]]:
    """Golden runs by machine key (see `machine_key`)."""
    return json.loads(GOLDEN.read_text())["machines"] if GOLDEN.exists() else {}


def run(name: str) -> dict[str, Any]:
    from trainers import train

    with tempfile.TemporaryDirectory() as tmp:
        result = train({**_BASE, **CONFIGS[name], "artifact_dir": tmp})
        return {
            "history": result.history,
            "test_acc": result.test_acc,
            "best_val_acc": result.best_val_acc,
            "best_epoch": result.best_epoch,
            "steps_run": result.steps_run,
            "total_steps": result.total_steps,
            "data_sizes": result.data_sizes,
            "method_info": result.method_info,
            "state_sha256": state_sha256(result.model.state_dict()),
        }


def main() -> None:
    """This machine's runs of all configs, or only of the names given (merged into the existing ones,
    e.g. a new method's). `--machine`: all configs, for a kind of machine with no golden runs yet."""
    names = [a for a in sys.argv[1:] if a != "--machine"] or list(CONFIGS)
    machines, key = load(), machine_key()
    golden = machines.get(key, {}) if names != list(CONFIGS) else {}
    machines[key] = golden | {name: run(name) for name in names}
    text = json.dumps({"machines": machines}, indent=1, sort_keys=True, allow_nan=False)
    GOLDEN.write_text(text + "\n")
    print(f"wrote {len(machines[key])} runs for {key} to {GOLDEN}")


if __name__ == "__main__":
    main()

"""The trainer's one config: every knob of a training run, by the name the whole product uses.

A study's fixed fields and the params TPE samples are merged into one `TrainConfig`; the same field
names appear in the search spaces, the stored trials, the REST API and `best.json`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

Method = Literal["target", "finetune", "multitask", "smooth"]
Dataset = Literal["digits", "synthetic", "cifar10", "cifar100", "svhn", "mnist", "imagefolder"]
Backbone = Literal["small_cnn", "resnet20", "wrn10_2", "resnet18", "resnet50"]
METHODS: tuple[str, ...] = get_args(Method)
DATASETS: tuple[str, ...] = get_args(Dataset)
BACKBONES: tuple[str, ...] = get_args(Backbone)


@dataclass
class TrainConfig:
    # Read by pydantic when the service validates a study spec (a plain dict: no pydantic import here).
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}

    # --- method and its schedule (Smooth Transfer Learning, eq. 4) -------------------------------
    # target: lambda = 1 (no source); finetune: step at T/2 + t0 (eq. 5);
    # multitask: constant (1 + e^alpha)^-1 (eq. 6); smooth: the sigmoid of eq. 4.
    method: Method = "smooth"
    # t0 and tau are in units of the total number of iterations T (t0 = 0.1 means 0.1 * T
    # iterations), so one search range fits every dataset size and epoch budget.
    t0: float = 0.0
    tau: float = 0.05
    alpha: float = 0.0

    # --- data ------------------------------------------------------------------------------------
    source: Dataset = "digits"
    target: Dataset = "digits"
    source_path: str | None = None  # ImageFolder root when source == "imagefolder"
    target_path: str | None = None  # ImageFolder root when target == "imagefolder"
    data_dir: str = "data"  # where the torchvision datasets are looked for (never downloaded)
    # Class subsets (labels are re-indexed 0..k-1). For digits the defaults split 0-4 / 5-9.
    source_classes: list[int] | None = None
    target_classes: list[int] | None = None
    n_target: int | None = 100  # size N of the target training subset (stratified); None = all
    val_size: float = 0.2  # held out of the target training data: a fraction (<1) or a count (>=1)
    test_fraction: float = 0.3  # datasets without a test split (digits, synthetic, imagefolder)
    image_size: int | None = None  # None = the target's native size; the source is resized to it
    augment: bool = False  # random translation (+ flips where the dataset allows)

    # --- model -----------------------------------------------------------------------------------
    backbone: Backbone = "small_cnn"
    pretrained: bool = False  # torchvision ImageNet weights (resnet18/50), must be on disk
    dropout: float = 0.0
    bn: Literal["shared", "per_domain"] = "shared"  # batch-norm statistics across domains

    # --- optimisation (appendix A) ---------------------------------------------------------------
    epochs: int = 10
    batch_size: int = 32  # per sub-batch: each step draws this many target and source samples
    steps_per_epoch: int | None = None  # None: one pass over the larger dataset the method uses
    lr: float = 0.05  # peak learning rate
    final_lr: float = 1e-4
    warmup: float = 0.025  # fraction of T with linear warm-up
    momentum: float = 0.9
    weight_decay: float = 5e-4
    patience: int | None = None  # stop after this many epochs without a better val accuracy

    # --- execution -------------------------------------------------------------------------------
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_threads: int | None = None  # torch intra-op threads; fixed for reproducible CPU results

    def __post_init__(self) -> None:
        problems = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        choices = {
            "method": METHODS,
            "source": DATASETS,
            "target": DATASETS,
            "backbone": BACKBONES,
            "bn": ("shared", "per_domain"),
        }
        for name, allowed in choices.items():
            need(getattr(self, name) in allowed, f"{name} must be one of {', '.join(allowed)}")
        need(self.tau > 0, "tau must be > 0")
        need(self.epochs >= 1, "epochs must be >= 1")
        need(self.batch_size >= 1, "batch_size must be >= 1")
        need(self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch must be >= 1")
        need(self.n_target is None or self.n_target >= 1, "n_target must be >= 1")
        need(self.val_size > 0, "val_size must be > 0 (a fraction < 1 or a count)")
        need(0 < self.test_fraction < 1, "test_fraction must be in (0, 1)")
        need(self.image_size is None or self.image_size >= 4, "image_size must be >= 4")
        need(0 <= self.dropout < 1, "dropout must be in [0, 1)")
        need(self.lr > 0, "lr must be > 0")
        need(0 <= self.final_lr <= self.lr, "final_lr must be in [0, lr]")
        need(0 <= self.warmup < 1, "warmup must be in [0, 1)")
        need(0 <= self.momentum < 1, "momentum must be in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay must be >= 0")
        need(self.patience is None or self.patience >= 1, "patience must be >= 1")
        need(self.num_threads is None or self.num_threads >= 1, "num_threads must be >= 1")
        need(
            self.source != "imagefolder" or bool(self.source_path), "source_path is required for imagefolder"
        )
        need(
            self.target != "imagefolder" or bool(self.target_path), "target_path is required for imagefolder"
        )
        need(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "device must be auto, cpu, cuda or cuda:N",
        )
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = set(data) - set(config_fields())
        if unknown:
            raise ValueError(f"unknown trainer config field(s): {', '.join(sorted(unknown))}")
        return cls(**data)


def config_fields() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TrainConfig))


# The parameters each method's schedule reads; the others are ignored by that method.
METHOD_PARAMS: dict[str, tuple[str, ...]] = {
    "target": (),
    "finetune": ("t0",),
    "multitask": ("alpha",),
    "smooth": ("t0", "tau", "alpha"),
}

__all__ = ["TrainConfig", "METHODS", "METHOD_PARAMS", "DATASETS", "BACKBONES", "config_fields"]

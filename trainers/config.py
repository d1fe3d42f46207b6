"""The trainer's one config: every knob of a training run, by the name the whole product uses.

A study's fixed fields and the params TPE samples are merged into one `TrainConfig`; the same field
names appear in the search spaces, the stored trials, the REST API and `best.json`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin, get_type_hints

from annotated_types import Interval, Len

from .methods import SCHEDULE_PARAMS, method_class, method_names

Init = Literal["auto", "scratch", "source_pretrained", "checkpoint", "imagenet"]
Dataset = Literal["digits", "synthetic", "cifar10", "cifar100", "svhn", "mnist", "imagefolder"]
Backbone = Literal["small_cnn", "resnet20", "wrn10_2", "resnet18", "resnet50"]
INITS: tuple[str, ...] = get_args(Init)
DATASETS: tuple[str, ...] = get_args(Dataset)
BACKBONES: tuple[str, ...] = get_args(Backbone)
# Bounds of the fields, as `Annotated` metadata of annotated-types (plain typing metadata, no
# validation library): `TrainConfig` checks them itself, and the service's schema reads them too (pydantic
# turns them into the JSON schema's minimum/maximum/maxItems), so a client sees every bound it is held to.
Path_ = Annotated[str, Len(1, 4096)]
Classes = Annotated[list[Annotated[int, Interval(ge=0, le=999_999)]], Len(0, 10_000)]


@dataclass
class TrainConfig:
    # Read by pydantic when the service validates a study spec (a plain dict: no pydantic import here).
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid", "allow_inf_nan": False}

    # --- method and its schedule (Smooth Transfer Learning, eq. 4) -------------------------------
    # target: lambda = 1 (no source); finetune: step at T/2 + t0 (eq. 5);
    # multitask: constant (1 + e^alpha)^-1 (eq. 6); smooth: the sigmoid of eq. 4. Any name of the
    # method registry (trainers.methods.REGISTRY) is valid.
    method: Annotated[str, Len(0, 64)] = "smooth"
    # t0 and tau are in units of the total number of iterations T (t0 = 0.1 means 0.1 * T
    # iterations), so one search range fits every dataset size and epoch budget.
    t0: Annotated[float, Interval(ge=-100, le=100)] = 0.0
    tau: Annotated[float, Interval(gt=0, le=1e6)] = 0.05
    alpha: Annotated[float, Interval(ge=-1e3, le=1e3)] = 0.0

    # Compose a mixup-family method with the source loss under the sigmoid schedule above:
    # loss = lambda(t) L_method + (1 - lambda(t)) CE(h^S(g(B^S))) with lambda(t) of eq. 4 (t0, tau, alpha).
    # False: lambda = 1, no source loss. Ignored (must be False) for the schedule family itself.
    schedule: bool = False

    # --- mixup family (issue 3; trainers/methods/) -------------------------------------------------
    # Beta/Dirichlet concentration of every mixup method: mixup/cutmix/smile/automix Beta(a, a),
    # kmixup/ict Dirichlet(a * 1_K), xmixup Beta(a, 1). None: the method's paper default
    # (its class's `mixup_alpha`).
    mixup_alpha: Annotated[float, Interval(gt=0, le=1e4)] | None = None
    k_points: Annotated[int, Interval(ge=2, le=64)] = (
        2  # K of K-point mixup (kmixup) and of ICT's unsupervised mix (paper 003); K >= 2
    )
    # Mean-teacher EMA momentum: ICT and SMILE teachers (theta_T <- d theta_T + (1 - d) theta_S); AutoMix's
    # momentum encoder starts at this value and rises to 1 on a cosine (paper 004: 0.999).
    ema_decay: Annotated[float, Interval(ge=0, lt=1)] = 0.999
    ict_w_max: Annotated[float, Interval(ge=0, le=1e6)] = (
        100.0  # ICT: maximum weight w_max of the consistency loss (paper 003: 100)
    )
    ict_rampup: Annotated[float, Interval(ge=0, le=1)] = (
        0.4  # ICT: w(t) rises linearly from 0 to w_max over this fraction of T (003: 0.4)
    )
    # ICT's unlabeled pool (labels never used). "target" (paper 003: unlabeled data of the same task): the
    # target's own training images beyond the N labeled ones, never its validation or test samples;
    # "source": the source images (None means the same: configs written before "target" was the default);
    # a dataset name: its training images, all classes (never the target's train/val/test samples when it
    # is the target dataset); "imagefolder": a folder of the user's (`unlabeled_path`, one subfolder a class).
    unlabeled: Annotated[str, Len(0, 64)] | None = "target"
    unlabeled_path: Path_ | None = None
    smile_feature_weight: Annotated[float, Interval(ge=0, le=1e6)] = (
        0.01  # SMILE: weight of the feature (sample-to-feature) regularizer
    )
    smile_source_weight: Annotated[float, Interval(ge=0, le=1e6)] = (
        0.1  # SMILE: weight of the source-label-head regularizer
    )
    # AutoMix: backbone stage l whose momentum-encoder features feed the Mix Block (1-based; 3 stages for
    # small_cnn/resnet20/wrn10_2, 4 for the torchvision resnets; paper 004: l = 3).
    automix_stage: Annotated[int, Interval(ge=1, le=4)] = 3
    automix_margin: Annotated[float, Interval(ge=0, lt=1)] = 0.1  # AutoMix: epsilon of the mask loss (eq. 7)
    automix_mask_weight: Annotated[float, Interval(ge=0, le=1e6)] = (
        0.1  # AutoMix: initial gamma of eq. 7, decreased linearly to 0 (paper)
    )
    # ICT's consistency distance D of paper 003 eq. 2 (trainers/methods/ict.py): "softmax_mse" = squared L2
    # of softmax outputs / n_classes (public ICT code); "logit_l2" = L2 distance of the logits (the paper).
    ict_distance: Literal["softmax_mse", "logit_l2"] = "softmax_mse"
    # XMixup sec. 4.2: repeat the one-to-one class pairing over unused source classes until the auxiliary
    # set holds this many source samples (paper 001: 200,000; 100,000 for Stanford Dogs). 0: one round.
    xmixup_aux_size: Annotated[int, Interval(ge=0, le=100_000_000)] = 200_000
    # SMILE options of the public code (PaddlePaddle/Research CV/SMILE finetune.py; defaults: the paper's
    # mean teacher, see trainers/methods/smile.py): update the teacher every this many steps (public: 10),
    # EMA the teacher's heads too (public: False, its classifier stays the pretrained one), and end with
    # plain fine-tuning over this fraction of T (public: the last 1000 of 9000 iterations = 1/9).
    smile_teacher_interval: Annotated[int, Interval(ge=1, le=1_000_000)] = 1
    smile_ema_heads: bool = True
    smile_finetune_fraction: Annotated[float, Interval(ge=0, lt=1)] = 0.0

    # --- initialisation --------------------------------------------------------------------------
    # auto: the method's class's `init` (source_pretrained for source_finetune/xmixup/smile/automix,
    # scratch otherwise);
    # source_pretrained: backbone + source head pretrained on the source (cached in artifact_dir);
    # checkpoint: init_checkpoint; imagenet: torchvision ImageNet weights on disk (resnet18/50).
    init: Init = "auto"
    init_checkpoint: Path_ | None = None  # a pretrained-source checkpoint or a saved model.pt
    pretrain_epochs: Annotated[int, Interval(ge=1, le=100_000)] = (
        5  # source pretraining recipe (part of the cache key)
    )
    pretrain_lr: Annotated[float, Interval(gt=0, le=1e9)] = 0.05
    artifact_dir: Path_ = "artifacts"  # where pretrained-source checkpoints are cached, one dir per key

    # --- data ------------------------------------------------------------------------------------
    source: Dataset = "digits"
    target: Dataset = "digits"
    source_path: Path_ | None = None  # ImageFolder root when source == "imagefolder"
    target_path: Path_ | None = None  # ImageFolder root when target == "imagefolder"
    data_dir: Path_ = "data"  # where the torchvision datasets are looked for (never downloaded)
    # Class subsets (labels are re-indexed 0..k-1). For digits the defaults split 0-4 / 5-9.
    source_classes: Classes | None = None
    target_classes: Classes | None = None
    n_target: Annotated[int, Interval(ge=1, le=100_000_000)] | None = (
        100  # size N of the target training subset (stratified); None = all
    )
    val_size: Annotated[float, Interval(gt=0, le=100_000_000)] = (
        0.2  # held out of the target training data: a fraction (<1) or a count (>=1)
    )
    test_fraction: Annotated[float, Interval(gt=0, lt=1)] = (
        0.3  # datasets without a test split (digits, synthetic, imagefolder)
    )
    image_size: Annotated[int, Interval(ge=4, le=2048)] | None = (
        None  # None = the target's native size; the source is resized to it
    )
    augment: bool = False  # random translation (+ flips where the dataset allows)

    # --- model -----------------------------------------------------------------------------------
    backbone: Backbone = "small_cnn"
    pretrained: bool = False  # torchvision ImageNet weights (resnet18/50), must be on disk
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.0
    bn: Literal["shared", "per_domain"] = "shared"  # batch-norm statistics across domains

    # --- optimisation (appendix A) ---------------------------------------------------------------
    epochs: Annotated[int, Interval(ge=1, le=100_000)] = 10
    batch_size: Annotated[int, Interval(ge=1, le=65_536)] = (
        32  # per sub-batch: each step draws this many target and source samples
    )
    steps_per_epoch: Annotated[int, Interval(ge=1, le=100_000_000)] | None = (
        None  # None: one pass over the larger dataset the method uses
    )
    lr: Annotated[float, Interval(gt=0, le=1e9)] = 0.05  # peak learning rate
    final_lr: Annotated[float, Interval(ge=0, le=1e9)] = 1e-4
    warmup: Annotated[float, Interval(ge=0, lt=1)] = 0.025  # fraction of T with linear warm-up
    momentum: Annotated[float, Interval(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Interval(ge=0, le=1e3)] = 5e-4
    patience: Annotated[int, Interval(ge=1, le=100_000)] | None = (
        None  # stop after this many epochs without a better val accuracy
    )

    # --- execution -------------------------------------------------------------------------------
    seed: Annotated[int, Interval(ge=0, le=2**32 - 1)] = 0
    device: Annotated[str, Len(0, 32)] = "auto"  # auto | cpu | cuda | cuda:N
    num_threads: Annotated[int, Interval(ge=1, le=1024)] | None = (
        None  # torch intra-op threads; fixed for reproducible CPU results
    )
    # How the run uses its device (trainers/hardware.py). precision "auto": bf16 autocast on CUDA, fp32 on
    # CPU (bit-identical results); "bf16" autocasts on the CPU too. channels_last None: on CUDA only.
    # compile_model: torch.compile the backbone (pays only on long runs: compiling takes tens of seconds).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool | None = None
    compile_model: bool = False

    def __post_init__(self) -> None:
        checks = (*self._bound_checks(), *self._method_checks(), *self._run_checks())
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError("; ".join(problems))

    def _bound_checks(self) -> list[tuple[bool, str]]:
        """(holds, what to fix) for each field's bound (its `Annotated` metadata, see `field_bounds`)."""
        checks: list[tuple[bool, str]] = []
        for name, (bound, what) in field_bounds().items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(bound, Interval):
                ok = isinstance(value, (int, float)) and value == value and within(value, bound)
            else:  # a length
                ok = len(value) <= (bound.max_length or len(value)) and len(value) >= bound.min_length
            checks.append((ok, f"{name} must be {what}"))
        return checks

    def _method_checks(self) -> list[tuple[bool, str]]:
        """(holds, what to fix) for the method, its schedule and the mixup family's fields."""
        checks: list[tuple[bool, str]] = []

        def need(ok: bool, message: str) -> None:
            checks.append((ok, message))

        choices = {
            "method": method_names(),
            "source": DATASETS,
            "target": DATASETS,
            "backbone": BACKBONES,
            "bn": ("shared", "per_domain"),
            "init": INITS,
        }
        for name, allowed in choices.items():
            need(getattr(self, name) in allowed, f"{name} must be one of {', '.join(allowed)}")
        need(
            self.unlabeled in (None, "target", "source", *DATASETS),
            f"unlabeled must be target, source or a dataset name ({', '.join(DATASETS)})",
        )
        need(
            self.unlabeled != "imagefolder" or bool(self.unlabeled_path),
            "unlabeled=imagefolder needs unlabeled_path",
        )
        need(self.tau > 0, "tau must be > 0")
        if self.schedule and self.method in method_names() and not method_class(self.method).composable:
            family = ", ".join(m for m in method_names() if not method_class(m).composable)
            need(
                False,
                "schedule=True composes a mixup-family method with the schedule; the schedule family "
                f"({family}) is the schedule already",
            )
        need(self.mixup_alpha is None or self.mixup_alpha > 0, "mixup_alpha must be > 0 (or None)")
        need(self.k_points >= 2, "k_points must be >= 2")
        need(0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)")
        need(self.ict_w_max >= 0, "ict_w_max must be >= 0")
        need(0 <= self.ict_rampup <= 1, "ict_rampup must be in [0, 1]")
        need(self.smile_feature_weight >= 0, "smile_feature_weight must be >= 0")
        need(self.smile_source_weight >= 0, "smile_source_weight must be >= 0")
        need(1 <= self.automix_stage <= 4, "automix_stage must be in 1..4")
        need(0 <= self.automix_margin < 1, "automix_margin must be in [0, 1)")
        need(self.automix_mask_weight >= 0, "automix_mask_weight must be >= 0")
        need(self.ict_distance in ("softmax_mse", "logit_l2"), "ict_distance must be softmax_mse or logit_l2")
        need(self.xmixup_aux_size >= 0, "xmixup_aux_size must be >= 0")
        need(self.smile_teacher_interval >= 1, "smile_teacher_interval must be >= 1")
        need(0 <= self.smile_finetune_fraction < 1, "smile_finetune_fraction must be in [0, 1)")
        return checks

    def _run_checks(self) -> list[tuple[bool, str]]:
        """(holds, what to fix) for the init, data, model, optimisation and execution fields."""
        checks: list[tuple[bool, str]] = []

        def need(ok: bool, message: str) -> None:
            checks.append((ok, message))

        need(self.init != "checkpoint" or bool(self.init_checkpoint), "init=checkpoint needs init_checkpoint")
        need(
            self.init != "imagenet" or self.backbone in ("resnet18", "resnet50"),
            "init=imagenet needs backbone resnet18 or resnet50",
        )
        need(self.pretrain_epochs >= 1, "pretrain_epochs must be >= 1")
        need(self.pretrain_lr > 0, "pretrain_lr must be > 0")
        need(bool(self.artifact_dir), "artifact_dir must not be empty")
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
        need(self.precision in ("auto", "fp32", "bf16"), "precision must be auto, fp32 or bf16")
        return checks

    @property
    def resolved_init(self) -> str:
        """The init actually used: `init`, with "auto" resolved by method (and `pretrained`)."""
        if self.init != "auto":
            return self.init
        if self.pretrained:
            return "imagenet"
        return method_class(self.method).init

    @property
    def resolved_mixup_alpha(self) -> float:
        if self.mixup_alpha is not None:
            return float(self.mixup_alpha)
        return float(method_class(self.method).mixup_alpha)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = set(data) - set(config_fields())
        if unknown:
            raise ValueError(f"unknown trainer config field(s): {', '.join(sorted(unknown))}")
        return cls(**data)


# The fields that name files or folders. A service confines them (paths under its data dir or
# directories its operator allows): a new path-valued field must be listed here.
PATH_FIELDS: tuple[str, ...] = (
    "data_dir",
    "artifact_dir",
    "source_path",
    "target_path",
    "init_checkpoint",
    "unlabeled_path",
)


def within(value: float, b: Interval) -> bool:
    return (
        (b.ge is None or value >= b.ge)
        and (b.gt is None or value > b.gt)
        and (b.le is None or value <= b.le)
        and (b.lt is None or value < b.lt)
    )


def _describe(b: Interval | Len) -> str:
    if isinstance(b, Len):
        return f"{b.min_length}..{b.max_length} long" if b.min_length else f"at most {b.max_length} long"
    low = f"{'>' if b.gt is not None else '>='} {b.gt if b.gt is not None else b.ge}"
    high = f"{'<' if b.lt is not None else '<='} {b.lt if b.lt is not None else b.le}"
    return f"{low} and {high}"


@cache
def field_bounds() -> dict[str, tuple[Interval | Len, str]]:
    """Each bounded field's bound (an `Interval` or a `Len`) and its wording, from the annotations."""
    bounds = {}
    for name, hint in get_type_hints(TrainConfig, include_extras=True).items():
        for arg in (hint, *get_args(hint)):  # `Annotated[...]` or `Annotated[...] | None`
            if get_origin(arg) is Annotated:
                found = [m for m in arg.__metadata__ if isinstance(m, (Interval, Len))]
                if found:
                    bounds[name] = (found[0], _describe(found[0]))
    return bounds


def config_fields() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TrainConfig))


def schedule_params(method: str, schedule: bool = False) -> tuple[str, ...]:
    """The schedule parameters (TrainConfig fields) a run of `method` reads, composed or not: a
    composable method reads none unless `schedule=True`, when it reads SCHEDULE_PARAMS."""
    return method_class(method).schedule_params(schedule)


__all__ = [
    "TrainConfig",
    "INITS",
    "PATH_FIELDS",
    "SCHEDULE_PARAMS",
    "DATASETS",
    "BACKBONES",
    "config_fields",
    "schedule_params",
]

"""Study presets: the papers' recipes as named, versioned data a study spec can start from.

A spec names one with ``"preset": "stl-cifar"`` (the newest version) or ``"stl-cifar@1"`` (that
version) and may override any field: explicit spec fields win over the preset's, and the ``trainer``
fields merge key by key. `StudySpec` expands the preset before it validates anything, so the stored
spec is the expanded one and keeps the exact ``name@version`` it came from (provenance).

Every value cites the line of the paper it comes from (`Preset.cites`); what a paper does not state is
left at the project's default, and where the trainer cannot do what the paper did (Adam, a step
learning-rate decay, a backbone the project does not have) the preset says so in `Preset.notes`.

Paper 002 trains the baselines for a different number of epochs than the schedule: "single dataset
training and the source dataset training [...] for 200 epochs", "multi-task learning and Smooth
Transfer Learning [...] 380 epochs" (A.1; 160 / 336 in A.2). One study has one trainer config, so
each appendix is three presets: the TPE study of the schedule (``stl-cifar``), its fine-tune and
multi-task baselines at the joint-training length (``stl-cifar-baselines``) and target-only training
at the single-dataset length (``stl-cifar-target``).

Only data here; nothing imports torch. The small digits defaults of `TrainConfig` stay the default of a
spec that names no preset (the demo).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Preset(BaseModel):
    """One paper recipe: fixed trainer fields and the study's shape, each value with its source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int = Field(ge=1)
    title: str
    paper: str = Field(description="the paper (file in shared/papers) and section the recipe is from")
    trainer: dict[str, Any] = Field(description="trainers.TrainConfig fields")
    study: dict[str, Any] = Field(description="StudySpec fields other than trainer (methods, n_trials, ...)")
    cites: dict[str, str] = Field(
        description="'trainer.lr', 'study.n_trials', ...: where the value comes from"
    )
    notes: list[str] = Field(default_factory=list, description="choices and deviations from the paper")
    requires: list[str] = Field(
        default_factory=list, description="fields a spec must add (e.g. ImageFolder paths)"
    )
    paper_n: list[int] = Field(
        default_factory=list, description="the target sizes N the paper reports (set trainer.n_target)"
    )

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"


# --- paper 002, appendix A.1: CIFAR-100 -> CIFAR-10 ---------------------------------------------------

_A1 = "paper 002 (Smooth Transfer Learning) appendix A.1"
_A2 = "paper 002 appendix A.2"
_A3 = "paper 002 appendix A.3"

_STL_CIFAR_TRAINER: dict[str, Any] = {
    "source": "cifar100",
    "target": "cifar10",
    "backbone": "resnet20",
    "dropout": 0.0,
    "bn": "shared",
    "batch_size": 128,
    "lr": 0.1,
    "final_lr": 1e-3,
    "warmup": 0.025,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "val_size": 5000,
    "n_target": 45000,
}
_STL_CIFAR_CITES = {
    "trainer.source": "sec. 3 / A.1: source CIFAR-100",
    "trainer.target": "sec. 3 / A.1: target CIFAR-10",
    "trainer.backbone": (
        f"{_A1}: 'We use ResNet20 [...] in all experiments of the object classification task'"
    ),
    "trainer.dropout": f"{_A1}: 'We do not use dropout in the ResNet20'",
    "trainer.bn": f"{_A1}: 'batch statistics are shared between the source and target datasets'",
    "trainer.batch_size": f"{_A1}: 'the same sub-batch size 128 for the source and target'",
    "trainer.lr": f"{_A1}: 'The peak and final learning rates are 0.1 and 1e-3' (cosine annealing)",
    "trainer.final_lr": f"{_A1}: final learning rate 1e-3",
    "trainer.warmup": f"{_A3}: 'Linear warmup [...] for a period of 2.5% of total duration'",
    "trainer.momentum": f"{_A3}: 'momentum SGD with momentum rate of 0.9'",
    "trainer.weight_decay": f"{_A1}: 'Weight decay rate is 1e-4'",
    "trainer.val_size": f"{_A1}: 50,000 training samples split into 45,000 training and 5,000 validation",
    "trainer.n_target": "Table 1, top row N = 45,000 (N ~ |D^S|); the other rows: paper_n",
}
_CIFAR_N = [45000, 14230, 4500, 1420, 450, 140]

# --- paper 002, appendix A.2: MNIST -> SVHN ------------------------------------------------------------

_STL_SVHN_TRAINER: dict[str, Any] = {
    "source": "mnist",
    "target": "svhn",
    "backbone": "wrn10_2",
    "dropout": 0.4,
    "bn": "per_domain",
    "batch_size": 128,
    "lr": 1e-2,
    "final_lr": 1e-4,
    "warmup": 0.025,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "val_size": 0.1,
    "n_target": 65931,
}
_STL_SVHN_CITES = {
    "trainer.source": "sec. 3 / A.2: source MNIST (resized to 32x32 RGB by the loader)",
    "trainer.target": "sec. 3 / A.2: target SVHN",
    "trainer.backbone": (
        f"{_A2}: 'We use WideResNet-10-2 [...] in all experiments of the digit classification task'"
    ),
    "trainer.dropout": f"{_A2}: 'Dropout ratio used in the WideResNet-10-2 is 0.4'",
    "trainer.bn": f"{_A2}: 'dataset-specific batch statistics are used'",
    "trainer.batch_size": f"{_A2}: 'the same sub-batch size 128 for the source and target'",
    "trainer.lr": f"{_A2}: 'The peak and final learning rates are 1e-2 and 1e-4' (cosine annealing)",
    "trainer.final_lr": f"{_A2}: final learning rate 1e-4",
    "trainer.warmup": f"{_A3}: 'Linear warmup [...] for a period of 2.5% of total duration'",
    "trainer.momentum": f"{_A3}: 'momentum SGD with momentum rate of 0.9'",
    "trainer.weight_decay": f"{_A2}: 'Weight decay rate is 5e-4'",
    "trainer.val_size": f"{_A2}: 73,257 training samples split into 65,931 (90%) and 7,326 validation (10%)",
    "trainer.n_target": "Table 1, top row N = 65,931 (N ~ |D^S|); the other rows: paper_n",
}
_SVHN_N = [65931, 20849, 6593, 2085, 659, 208]

_BASELINE_NOTE = (
    "The paper does not say how the fine-tune switch point or the multi-task weight were chosen; this "
    "preset searches them (t0, alpha) with TPE on the same budget as the schedule study."
)
_FINETUNE_NOTE = (
    "Fine-tune here is eq. 5 inside one run of T iterations (source until T/2 + t0, then target), at the "
    "joint-training length; the paper pre-trains for the single-dataset length ({single} epochs) and "
    "does not state the fine-tuning length. t0 = {t0:.4f} puts the switch after exactly {single} of "
    "{joint} epochs."
)
_TARGET_NOTE = (
    "Target-only epochs are passes over the N target samples (steps_per_epoch unset), as in the paper's "
    "single-dataset training."
)
_ALL_N_NOTE = (
    "Set trainer.n_target to one of paper_n (Table 1) to reproduce another row. The appendix states no "
    "data augmentation, so augment stays off (the project default)."
)


def _stl(
    name: str, appendix: str, trainer: dict[str, Any], cites: dict[str, str], n: list[int], **shape: Any
) -> list[Preset]:
    """The three presets of one appendix of paper 002 (schedule study, baselines, target only)."""
    single, joint = shape["single"], shape["joint"]
    workers, rounds = shape["workers"], shape["rounds"]
    study_cites = {
        "study.n_trials": (
            f"{appendix}: {shape['tpe_text']} ({workers} x {rounds} = {workers * rounds} trials)"
        ),
        "study.max_concurrent_trials": f"{appendix}: {workers} TPE workers in parallel",
    }
    joint_cite = {
        "trainer.epochs": f"{appendix}: 'Duration of the multi-task learning and that of Smooth Transfer "
        f"Learning is {joint} epochs with respect to the source dataset'"
    }
    tpe = {"n_trials": workers * rounds, "max_concurrent_trials": workers}
    schedule = Preset(
        name=name,
        version=1,
        title=f"Smooth Transfer Learning, {trainer['source']} -> {trainer['target']}: the TPE study of "
        f"lambda(t) (t0, tau log, alpha)",
        paper=appendix,
        trainer={**trainer, "method": "smooth", "epochs": joint},
        study={"methods": ["smooth"], **tpe},
        cites={
            **cites,
            **joint_cite,
            **study_cites,
            "study.methods": "sec. 2: TPE over omega = {t0, tau, alpha}",
        },
        notes=[_ALL_N_NOTE, *shape.get("joint_notes", [])],
        paper_n=n,
    )
    t0 = single / joint - 0.5
    baselines = Preset(
        name=f"{name}-baselines",
        version=1,
        title=(
            f"The fine-tune and multi-task baselines of Table 1, {trainer['source']} -> {trainer['target']}"
        ),
        paper=appendix,
        trainer={**trainer, "method": "finetune", "epochs": joint},
        study={"methods": ["finetune", "multitask"], **tpe},
        cites={**cites, **joint_cite, **study_cites, "study.methods": "Table 1: 'Fine-tune', 'Multi-task'"},
        notes=[
            _BASELINE_NOTE,
            _FINETUNE_NOTE.format(single=single, joint=joint, t0=t0),
            _ALL_N_NOTE,
            *shape.get("joint_notes", []),
        ],
        paper_n=n,
    )
    target = Preset(
        name=f"{name}-target",
        version=1,
        title=f"Target-only training (Table 1, 'Target'), {trainer['target']}",
        paper=appendix,
        trainer={**trainer, "method": "target", "epochs": single},
        study={"methods": ["target"], "n_trials": 1, "max_concurrent_trials": 1},
        cites={
            **cites,
            "trainer.epochs": f"{appendix}: 'We run the single dataset training [...] for {single} epochs'",
            "study.methods": "Table 1: 'Target' (nothing to search: one trial)",
            "study.n_trials": "one run: target-only training has no schedule parameter",
        },
        notes=[_TARGET_NOTE, _ALL_N_NOTE, *shape.get("target_notes", [])],
        paper_n=n,
    )
    return [schedule, baselines, target]


_STL = [
    *_stl(
        "stl-cifar",
        _A1,
        _STL_CIFAR_TRAINER,
        _STL_CIFAR_CITES,
        _CIFAR_N,
        single=200,
        joint=380,
        workers=11,
        rounds=9,
        tpe_text="'We use 11 workers that run in parallel [...] We repeat the parallel training 9 times'",
        target_notes=[
            f"{_A1}: the single-dataset run and fine-tuning with N = 140 use mini-batch 16: set "
            "trainer.batch_size to 16 for that row."
        ],
    ),
    *_stl(
        "stl-svhn",
        _A2,
        _STL_SVHN_TRAINER,
        _STL_SVHN_CITES,
        _SVHN_N,
        single=160,
        joint=336,
        workers=9,
        rounds=11,
        tpe_text="'we used 9 workers which sequentially train models 11 times'",
        joint_notes=[
            "An epoch of the joint run is a pass over the larger dataset: over MNIST (60,000) as in the "
            "paper for every N but the top row, where SVHN's N = 65,931 makes T 10% longer than the "
            "paper's 'epochs with respect to the source dataset' (set steps_per_epoch to 469 to match)."
        ],
    ),
]

# --- the mixup family ----------------------------------------------------------------------------------

_IMAGEFOLDER_NOTE = (
    "The paper's datasets are not torchvision datasets: give target_path (and source_path where the "
    "method uses the source) as ImageFolder trees, and ImageNet weights on disk for pretrained=true."
)

_XMIXUP = Preset(
    name="xmixup",
    version=1,
    title="XMixup: fine-tune an ImageNet ResNet-50 with cross-domain mixup (CUB, Cars, Aircraft, ...)",
    paper="paper 001 (XMixup) sec. 4.2 'Training details', sec. 5.3",
    trainer={
        "method": "xmixup",
        "source": "imagefolder",
        "target": "imagefolder",
        "backbone": "resnet50",
        "pretrained": True,
        "image_size": 224,
        "augment": True,
        "batch_size": 48,
        "epochs": 90,
        "steps_per_epoch": 100,
        "lr": 0.01,
        "final_lr": 0.001,
        "warmup": 0.0,
        "momentum": 0.9,
        "n_target": None,
    },
    study={"methods": ["xmixup"]},
    cites={
        "trainer.backbone": (
            "sec. 4.2: 'modern deep neural architecture ResNet-50 [...] pre-trained with ImageNet'"
        ),
        "trainer.pretrained": "sec. 4.2: pre-trained with ImageNet",
        "trainer.source": "sec. 4.2: auxiliary samples are selected from the source (ImageNet) dataset",
        "trainer.target": (
            "sec. 4.1: CUB-200-2011, Stanford Cars, FGVC-Aircraft, ... (ImageFolder trees here)"
        ),
        "trainer.image_size": "sec. 4.2: 'random cropped to 224 x 224'",
        "trainer.augment": (
            "sec. 4.2: 'standard data augmentation composed of random flip and random cropped'"
        ),
        "trainer.batch_size": "sec. 4.2: 'batch size of 48'",
        "trainer.epochs": "sec. 4.2: 'We train 9,000 iterations' (90 epochs x 100 steps = T 9,000)",
        "trainer.steps_per_epoch": "sec. 4.2: 9,000 iterations (100 per epoch, so validation runs 90 times)",
        "trainer.lr": (
            "sec. 4.2: 'initial learning rate is set to 0.001 for Stanford Dogs and 0.01 for remaining'"
        ),
        "trainer.final_lr": "sec. 4.2: 'divided by 10 after 6,000 iterations' (see notes)",
        "trainer.warmup": "sec. 4.2 states no warm-up",
        "trainer.momentum": "sec. 4.2: 'SGD with the momentum of 0.9'",
        "trainer.n_target": "sec. 4.1: the full training sets (use a subset via n_target for sec. 4.4)",
        "study.methods": (
            "sec. 5.3: alpha searched over 2^-3 .. 2^6 with beta = 1 (the method's default range)"
        ),
    },
    notes=[
        "The trainer anneals the learning rate on a cosine from 0.01 to 0.001 instead of the paper's step "
        "decay (x0.1 at iteration 6,000): same end points, a different path.",
        "The paper states no weight decay and no validation split; both stay at the project's defaults.",
        "For Stanford Dogs the paper uses lr 0.001: set trainer.lr and trainer.final_lr (0.0001).",
        _IMAGEFOLDER_NOTE,
    ],
    requires=["trainer.target_path", "trainer.source_path"],
)

_ICT = Preset(
    name="ict-cifar10",
    version=1,
    title="ICT / K-point mixup on CIFAR-10 with few labels (paper 003)",
    paper="paper 003 (mixup and local linearity) sec. 3 'Setup'",
    trainer={
        "method": "ict",
        "target": "cifar10",
        "backbone": "wrn10_2",
        "batch_size": 128,
        "ict_w_max": 100.0,
        "ict_rampup": 0.4,
        "mixup_alpha": 0.5,
        "n_target": 250,
    },
    study={
        "methods": [
            {
                "method": "ict",
                "ict_w_max": {"value": 100.0},
                "ict_rampup": {"value": 0.4},
                "mixup_alpha": {"value": 0.5},
            },
            {"method": "kmixup", "mixup_alpha": {"value": 0.5}},
            {"method": "mixup", "mixup_alpha": {"value": 0.5}},
            "target",
        ],
        "n_trials": 8,
    },
    cites={
        "trainer.target": "sec. 3: CIFAR-10 (also CIFAR-100 and SVHN)",
        "trainer.backbone": (
            "sec. 3: 'Wide ResNet-28' (not in this project: the closest is wrn10_2, see notes)"
        ),
        "trainer.batch_size": "sec. 3: 'The batch size is set to 128'",
        "trainer.ict_w_max": "sec. 3: w(t) rises 'from 0 to a maximum of 100'",
        "trainer.ict_rampup": "sec. 3: 'in 40% of training iterations'",
        "trainer.mixup_alpha": (
            "sec. 3: 'The alpha for the Dirichlet distribution is set to 0.5 for CIFAR-10'"
        ),
        "trainer.n_target": "sec. 3: labeled sizes {250, 1000, 2000, 40000}",
        "study.methods": (
            "sec. 3 'Baselines': ERM (target), mixup, ICT[K] (and K-point mixup), K in {2, 3, 4}"
        ),
        "study.n_trials": (
            "ours: 8 trials cover the 4 arms with K in 2..4 (the paper runs each setting 5 times)"
        ),
    },
    notes=[
        "The paper trains with Adam (lr 0.002, betas 0.9/0.999); the trainer uses SGD, so lr stays at the "
        "project's default.",
        "Wide ResNet-28 is not a backbone of this project; wrn10_2 is the closest.",
        "For SVHN the paper uses Dirichlet alpha 0.1: set trainer.target and the mixup_alpha values.",
        "The paper states no epoch count.",
        "Paper 003's unlabeled data are the target's own training images beyond the labeled ones; the "
        "preset leaves `unlabeled` to the trainer's default, which issue 11 part 2 makes exactly that. "
        "Do not set unlabeled='cifar10' here: a named pool of the target's own dataset is drawn with a "
        "different split and overlaps the run's labeled, validation and test samples (measured on the "
        "synthetic set: 232 of 300 pool images).",
    ],
)

_AUTOMIX = Preset(
    name="automix-finegrained",
    version=1,
    title="AutoMix fine-grained transfer (CUB-200, FGVC-Aircraft) from ImageNet weights",
    paper="paper 004 (AutoMix) sec. 4.2 'Small-scale datasets', sec. 4 (common hyper-parameters)",
    trainer={
        "method": "automix",
        "target": "imagefolder",
        "backbone": "resnet18",
        "pretrained": True,
        "image_size": 224,
        "augment": True,
        "epochs": 200,
        "batch_size": 16,
        "lr": 0.001,
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "mixup_alpha": 2.0,
        "automix_stage": 3,
        "ema_decay": 0.999,
        "n_target": None,
    },
    study={
        "methods": [
            {"method": "automix", "mixup_alpha": {"value": 2.0}, "automix_stage": {"value": 3}},
            "mixup",
            "cutmix",
            "source_finetune",
        ],
    },
    cites={
        "trainer.target": "sec. 4.2: CUB-200 and FGVC-Aircraft (an ImageFolder tree here)",
        "trainer.backbone": "sec. 4.2 Table 5: R-18 (RX-50 is not in this project)",
        "trainer.pretrained": (
            "sec. 4.2: 'the official PyTorch pre-trained models on ImageNet-1k are adopted'"
        ),
        "trainer.image_size": (
            "sec. 4.2: standard augmentations as in sec. 4.1 (RandomResizedCrop 224 on ImageNet)"
        ),
        "trainer.augment": "sec. 4.2: 'using the standard augmentations as in Sec. 4.1' (flip, crop)",
        "trainer.epochs": "sec. 4.2: 'training 200 epochs'",
        "trainer.batch_size": "sec. 4.2: 'the batch size of 16'",
        "trainer.lr": "sec. 4.2: 'the initial learning rate of 0.001'",
        "trainer.weight_decay": "sec. 4.2: 'the weight decay of 0.0005'",
        "trainer.momentum": "sec. 4.1: SGD momentum 0.9",
        "trainer.mixup_alpha": (
            "sec. 4: 'AutoMix uses the same set of hyper-parameters in all experiments: alpha = 2'"
        ),
        "trainer.automix_stage": "sec. 4: 'the feature layer l = 3'",
        "trainer.ema_decay": "sec. 4: 'the momentum coefficient in MP starts from m = 0.999'",
        "trainer.n_target": "sec. 4.2: the full training sets",
        "study.methods": "sec. 4.2 Table 5: Vanilla (source_finetune), MixUp, CutMix, AutoMix; the mixup "
        "methods 'use the optimal alpha among {0.2, 0.5, 1, 2, 4}' (their default range 0.2 .. 4)",
    },
    notes=[
        "Sec. 4.2 does not name the learning-rate schedule; the trainer's cosine (sec. 4.1's) is used, with "
        "the project's final_lr and warm-up.",
        "AutoMix needs no source data; 'Vanilla' is plain fine-tuning of the ImageNet weights "
        "(source_finetune with pretrained=true).",
        _IMAGEFOLDER_NOTE,
    ],
    requires=["trainer.target_path"],
)

PRESETS: dict[str, Preset] = {p.key: p for p in [*_STL, _XMIXUP, _ICT, _AUTOMIX]}


class UnknownPreset(ValueError):
    """No preset of that name (or version)."""


def latest() -> dict[str, Preset]:
    """The newest version of every preset, by name."""
    out: dict[str, Preset] = {}
    for p in sorted(PRESETS.values(), key=lambda p: (p.name, p.version)):
        out[p.name] = p
    return out


def get_preset(name: str) -> Preset:
    """``"stl-cifar"`` (its newest version) or ``"stl-cifar@1"``."""
    if "@" in name:
        if name not in PRESETS:
            raise UnknownPreset(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
        return PRESETS[name]
    newest = latest()
    if name not in newest:
        raise UnknownPreset(f"unknown preset {name!r}; presets: {', '.join(sorted(newest))}")
    return newest[name]


def expand(data: dict[str, Any]) -> dict[str, Any]:
    """A raw spec naming a preset -> the spec with the preset's fields under the explicit ones.

    Top-level fields of the spec replace the preset's; ``trainer`` merges key by key. ``preset`` becomes
    the exact ``name@version`` and ``name`` defaults to the preset's name.
    """
    preset = get_preset(str(data["preset"]))
    explicit_trainer = data.get("trainer") or {}
    if not isinstance(explicit_trainer, dict):  # a TrainConfig instance: every field is explicit
        return {**data, "preset": preset.key}
    return {
        "name": preset.name,
        **preset.study,
        **data,
        "trainer": {**preset.trainer, **explicit_trainer},
        "preset": preset.key,
    }


__all__ = ["PRESETS", "Preset", "UnknownPreset", "expand", "get_preset", "latest"]

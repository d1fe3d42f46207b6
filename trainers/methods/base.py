"""What every method shares: the `Method` interface and its facts, the per-step context, mixing draws, EMA.

A method is one class (one module per method) registered in `trainers.methods.REGISTRY`; the class
carries the method's facts (class attributes: name, paper, doc, default mixing alpha, default init,
what data it needs, its report keys, its schedule params and its search-space defaults), from which
the config's validation, lambda(t), the search spaces and the REST schema are derived.

The loop (trainers/loop.py) calls, per step t,

    loss_t, loss_s, metrics = method.step_losses(ctx, lam, t, T)

whose default computes ``loss_t, metrics = method.loss(ctx, t, T)`` when lambda(t) > 0 and the source
cross-entropy on a source sub-batch when the schedule is composed (lambda(t) < 1), then, after the
optimiser step, ``method.after_step(ctx, t, T)`` (EMA teachers). Evaluation uses
``method.eval_model(model)`` (AutoMix: the momentum encoder).

Random draws: lambdas come from ``ctx.rng`` (a seeded numpy Generator), permutations and sample
indices from ``ctx.gen`` (a seeded CPU torch Generator), so a run is reproducible and independent of
the global RNG. Beta(a, b) is drawn as the first coordinate of a Dirichlet(a, b) draw (two Gammas), so
K = 2 Dirichlet weights and Beta mixup consume the same draws and give identical results.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from trainers._lazy import F, nn, torch

if TYPE_CHECKING:  # annotations only: methods depend on no other trainers module at run time
    from ..config import TrainConfig
    from ..models import TransferNet

# The parameters of the sigmoid schedule lambda(t) of paper 002 eq. 4 (trainers/schedule.py), which a
# composable method reads when `schedule=True`.
SCHEDULE_PARAMS: tuple[str, ...] = ("t0", "tau", "alpha")


# ---------------------------------------------------------------------------------------------------
# search-space defaults as plain data (search_spaces turns them into its pydantic `Param`)


@dataclass(frozen=True)
class Range:
    """A searched number: [low, high], on a log scale if `log`; `integer` makes it suggest_int."""

    low: float
    high: float
    log: bool = False
    integer: bool = False


@dataclass(frozen=True)
class Fixed:
    """A parameter held at `value` by default (a study may override it with a range to search it)."""

    value: float
    integer: bool = False


@dataclass
class StepContext:
    """What a method may use in a step. `target()`/`source()`/`unlabeled()` draw the next sub-batch."""

    config: TrainConfig
    model: TransferNet
    data: Any  # TransferData on the device
    device: torch.device
    rng: np.random.Generator  # lambda / Dirichlet draws
    gen: torch.Generator  # permutations and indices (CPU)
    target: Any  # () -> (x, y)
    source: Any  # () -> (x, y) or None when no source is loaded
    unlabeled: Any = None  # () -> x, set for ICT
    extra: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base: the target cross-entropy (plain fine-tuning); subclasses override `loss` and friends.

    The class attributes are the method's facts; `trainers.methods.register` checks them.
    """

    name: ClassVar[str] = ""  # the method's name everywhere: config, search space, store, REST
    paper: ClassVar[str] = ""  # where the method comes from (papers/README numbers)
    doc: ClassVar[str] = ""  # one line, shown in the REST schema
    mixup_alpha: ClassVar[float] = 1.0  # mixing concentration when config.mixup_alpha is None (paper's)
    init: ClassVar[str] = "scratch"  # what init="auto" resolves to: "scratch" or "source_pretrained"
    # Can be composed with the sigmoid schedule (schedule=True: t0, tau, alpha join its search space).
    composable: ClassVar[bool] = True
    # The method draws source sub-batches/samples itself (not only through the schedule's source loss).
    uses_source_data: ClassVar[bool] = False
    # The model needs a source head (h^S) even without the schedule.
    needs_source_head: ClassVar[bool] = False
    # The method reads unlabeled batches (`ctx.unlabeled()`) from the pool `config.unlabeled` names.
    unlabeled_pool: ClassVar[bool] = False
    # Extra per-epoch report keys this method adds (means over the epoch's steps).
    report_keys: ClassVar[tuple[str, ...]] = ()
    # Its own search-space defaults: TrainConfig field -> Range | Fixed.
    search_space: ClassVar[Mapping[str, Range | Fixed]] = MappingProxyType({})

    def __init__(self, config: TrainConfig):
        self.config = config

    @classmethod
    def space_for(cls, trainer: Mapping[str, Any]) -> Mapping[str, Range | Fixed]:
        """Its search-space defaults in a study whose fixed trainer fields are `trainer` (a method whose
        ranges depend on a fixed option overrides this; ICT's paper-form distance fixes w_max)."""
        return cls.search_space

    # --- facts that depend on whether the method is composed with the schedule -------------------
    @classmethod
    def schedule_name(cls, composed: bool) -> str:
        """The lambda(t) form of `schedule.loss_weight`: the sigmoid when composed, else lambda = 1."""
        return "smooth" if composed else "target"

    @classmethod
    def schedule_params(cls, composed: bool) -> tuple[str, ...]:
        """The TrainConfig fields its lambda(t) reads."""
        return SCHEDULE_PARAMS if composed else ()

    def source_batches(self) -> bool:
        """Whether each step draws a source sub-batch for the source loss (1 - lambda) CE(h^S(..))."""
        return bool(self.config.schedule)

    def loads_source(self) -> bool:
        """Whether the run loads the source set (for batches, pairing, pretraining or the source head)."""
        return (
            self.source_batches()
            or self.uses_source_data
            or self.needs_source_head
            or self.config.resolved_init == "source_pretrained"
            or (self.unlabeled_pool and self.config.unlabeled in (None, "source"))
        )

    def source_head(self) -> bool:
        """Whether the model gets a source head (when the source is loaded)."""
        return (
            self.source_batches()
            or self.needs_source_head
            or self.config.resolved_init == "source_pretrained"
        )

    # ---------------------------------------------------------------------------------------------
    def setup(self, ctx: StepContext) -> None:
        """Called once, after the model is built and initialised, before the first step."""

    def parameters(self) -> list[nn.Parameter]:
        """Parameters the method owns and the optimiser must train (AutoMix's Mix Block)."""
        return []

    def loss(self, ctx: StepContext, step: int, total: int) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = ctx.target()
        return F.cross_entropy(ctx.model(x, "target"), y), {}

    def step_losses(
        self, ctx: StepContext, lam: float, step: int, total: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, Any]]:
        loss_t = loss_s = None
        metrics: dict[str, Any] = {}
        if lam > 0.0:
            loss_t, metrics = self.loss(ctx, step, total)
        if lam < 1.0 and ctx.source is not None:
            xs, ys = ctx.source()
            loss_s = F.cross_entropy(ctx.model(xs, "source"), ys)
        return loss_t, loss_s, metrics

    def after_step(self, ctx: StepContext, step: int, total: int) -> None:
        """After the optimiser step (EMA updates)."""

    def state_dict(self) -> dict[str, Any]:
        """What the method changes while training, for an epoch checkpoint: the state of every module
        it holds (teachers, the Mix Block). A method with other changing state extends this."""
        return {k: v.state_dict() for k, v in vars(self).items() if isinstance(v, nn.Module)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` into a method that has been set up."""
        for key, value in vars(self).items():
            if isinstance(value, nn.Module):
                value.load_state_dict(state[key])

    def eval_model(self, model: TransferNet) -> TransferNet:
        """The network evaluated and kept (AutoMix: the momentum encoder)."""
        return model

    def result_info(self) -> dict[str, Any]:
        """JSON-able facts for the TrainResult (XMixup: the class pairing)."""
        return {}


# ---------------------------------------------------------------------------------------------------
# draws


def sample_dirichlet(rng: np.random.Generator, concentration: list[float] | np.ndarray) -> np.ndarray:
    """w ~ Dirichlet(concentration) as normalised Gamma draws (one Gamma per coordinate, in order)."""
    g = rng.standard_gamma(np.asarray(concentration, dtype=np.float64))
    s = g.sum()
    if not s > 0:  # every Gamma underflowed (tiny concentrations): all weight on the largest log-draw
        w = np.zeros_like(g)
        w[0] = 1.0
        return w
    w = g / s
    w[-1] = 1.0 - w[:-1].sum()  # K = 2: (lambda, 1 - lambda) exactly, as Beta mixup writes it
    return w


def sample_beta(rng: np.random.Generator, a: float, b: float) -> float:
    """lambda ~ Beta(a, b) = first coordinate of Dirichlet(a, b): the same draws as K = 2 Dirichlet."""
    return float(sample_dirichlet(rng, [a, b])[0])


def permutations(n: int, k: int, gen: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """K index tensors: the identity, then K - 1 seeded random permutations of range(n)."""
    from ..hardware import to_device  # imported here: this module stays importable without the loop's

    perms = [torch.arange(n)]
    perms += [torch.randperm(n, generator=gen) for _ in range(k - 1)]
    return [to_device(p, device) for p in perms]  # queued behind the GPU's work, no host wait


def mix(x: torch.Tensor, weights: list[float] | np.ndarray, perms: list[torch.Tensor]) -> torch.Tensor:
    """Mix_w(x_{pi_1}, ..., x_{pi_K}) = sum_k w_k x[pi_k] (paper 003 eq. 1), any trailing shape."""
    out = float(weights[0]) * x[perms[0]]
    for w, p in zip(weights[1:], perms[1:], strict=True):
        out = out + float(w) * x[p]
    return out


def mixed_targets(
    y: torch.Tensor, n_classes: int, weights: list[float] | np.ndarray, perms: list[torch.Tensor]
) -> torch.Tensor:
    """Soft labels (N, n_classes): sum_k w_k onehot(y[pi_k]) - a convex combination, rows sum to 1."""
    return mix(F.one_hot(y, n_classes).float(), weights, perms)


def mixed_cross_entropy(
    logits: torch.Tensor, y: torch.Tensor, weights: list[float] | np.ndarray, perms: list[torch.Tensor]
) -> torch.Tensor:
    """sum_k w_k CE(logits, y[pi_k]) = CE against the mixed soft labels (mixup's hard-label form)."""
    loss = float(weights[0]) * F.cross_entropy(logits, y[perms[0]])
    for w, p in zip(weights[1:], perms[1:], strict=True):
        loss = loss + float(w) * F.cross_entropy(logits, y[p])
    return loss


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over the batch of sum_c -target_c log softmax(logits)_c."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


# ---------------------------------------------------------------------------------------------------
# mean teacher / momentum encoder


def make_teacher(model: nn.Module) -> nn.Module:
    """A frozen copy: no parameter of it ever receives a gradient (requires_grad False), eval mode."""
    teacher = copy.deepcopy(model)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """theta_T <- decay * theta_T + (1 - decay) * theta_S for every parameter; buffers (BN running
    statistics) are copied from the student, so the teacher evaluates with current statistics."""
    with torch.no_grad():  # not a decorator: that would import torch with this module (trainers._lazy)
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
            t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
        for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
            t.copy_(s)

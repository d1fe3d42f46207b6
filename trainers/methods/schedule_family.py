"""The schedule family of paper 002 (target, finetune, multitask, smooth) and plain fine-tuning of the
source-pretrained backbone (source_finetune).

``ScheduleFamily`` is the loss of eq. 3,

    loss(t) = lambda(t) CE(h^T(g(B^T)), y^T) + (1 - lambda(t)) CE(h^S(g(B^S)), y^S),

with both sub-batches through the backbone as one batch when batch norm is shared (`forward_joint`)
and a branch of weight exactly 0 not computed. Its members differ only in lambda(t)
(trainers/schedule.py): ``target`` lambda = 1 (no source), ``finetune`` the step at T/2 + t0 (eq. 5),
``multitask`` the constant (1 + e^alpha)^-1 (eq. 6), ``smooth`` the sigmoid of eq. 4; each searches
the params its lambda(t) reads. ``SourceFinetune`` is CE(h^T(g(B^T)), y^T) from the source-pretrained
g (init "auto" resolves to source_pretrained), optionally composed with the source loss by
``schedule=True``. Shapes: B^T, B^S (batch_size, C, H, W); labels (batch_size,).
"""

from __future__ import annotations

from typing import Any, ClassVar

from trainers._lazy import F, torch

from .base import SCHEDULE_PARAMS, Fixed, Method, Range, StepContext

# Paper 002 searches "the gain tau in log domain, and the other two offsets [t0, alpha] in linear domain
# so that parameter setting close to the two extreme cases can be sufficiently searched". t0 and tau are
# in units of T (see TrainConfig), so these ranges reach both extremes for any T:
# - t0 in [-0.5, 0.5]: the switch point T/2 + t0*T can sit anywhere in training;
# - tau in [1e-4, 10] (log): at 1e-4 * T the sigmoid is a step within one or two iterations for T up to
#   ~10^4 (fine-tuning, eq. 5); at 10 * T it moves by less than 0.03 over the whole run (eq. 6);
# - alpha in [-6, 6]: the fixed weight (1 + e^alpha)^-1 spans 0.0025 .. 0.9975.
# A composable method with schedule=True searches these too.
SCHEDULE_SPACE: dict[str, Range | Fixed] = {
    "t0": Range(-0.5, 0.5),
    "tau": Range(1e-4, 10.0, log=True),
    "alpha": Range(-6.0, 6.0),
}
assert tuple(SCHEDULE_SPACE) == SCHEDULE_PARAMS


class ScheduleFamily(Method):
    """A member of the schedule family: lambda(t) is its own (`lambda_params`), never composed."""

    paper = "002"
    composable = False
    lambda_params: ClassVar[tuple[str, ...]] = ()  # the TrainConfig fields its lambda(t) reads
    with_source: ClassVar[bool] = True  # False only for target (lambda = 1: the source is never used)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # It searches exactly the params its lambda(t) reads, with the schedule's default ranges.
        cls.search_space = {p: SCHEDULE_SPACE[p] for p in cls.lambda_params}

    @classmethod
    def schedule_name(cls, composed: bool) -> str:
        return cls.name

    @classmethod
    def schedule_params(cls, composed: bool) -> tuple[str, ...]:
        return cls.lambda_params

    def source_batches(self) -> bool:
        return self.with_source

    def loads_source(self) -> bool:
        return self.with_source

    def step_losses(
        self, ctx: StepContext, lam: float, step: int, total: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, Any]]:
        run_t = lam > 0.0
        run_s = ctx.source is not None and lam < 1.0
        loss_t = loss_s = None
        if run_t and run_s and ctx.config.bn == "shared":
            xt, yt = ctx.target()
            xs, ys = ctx.source()
            logits_t, logits_s = ctx.model.forward_joint(xt, xs)
            loss_t, loss_s = F.cross_entropy(logits_t, yt), F.cross_entropy(logits_s, ys)
        else:
            if run_t:
                xt, yt = ctx.target()
                loss_t = F.cross_entropy(ctx.model(xt, "target"), yt)
            if run_s:
                xs, ys = ctx.source()
                loss_s = F.cross_entropy(ctx.model(xs, "source"), ys)
        return loss_t, loss_s, {}


class Target(ScheduleFamily):
    name = "target"
    doc = "Train on the target only (lambda = 1). Nothing to search."
    with_source = False


class Finetune(ScheduleFamily):
    name = "finetune"
    doc = "Pre-train on the source, then fine-tune from T/2 + t0 on (paper 002, eq. 5)."
    lambda_params = ("t0",)


class Multitask(ScheduleFamily):
    name = "multitask"
    doc = "Fixed-weight multi-task learning, lambda = (1 + e^alpha)^-1 (paper 002, eq. 6)."
    lambda_params = ("alpha",)


class Smooth(ScheduleFamily):
    name = "smooth"
    doc = "Smooth Transfer Learning, the sigmoid schedule of paper 002, eq. 4."
    lambda_params = SCHEDULE_PARAMS


class SourceFinetune(Method):
    name = "source_finetune"
    paper = "fine-tuning from the source-pretrained backbone"
    doc = "Plain fine-tuning of the (cached) source-pretrained backbone."
    init = "source_pretrained"

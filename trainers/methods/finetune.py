"""The schedule family of paper 002 and plain fine-tuning of the source-pretrained backbone.

``ScheduleFamily`` (target / finetune / multitask / smooth) is the loss of eq. 3,

    loss(t) = lambda(t) CE(h^T(g(B^T)), y^T) + (1 - lambda(t)) CE(h^S(g(B^S)), y^S),

with both sub-batches through the backbone as one batch when batch norm is shared (`forward_joint`)
and a branch of weight exactly 0 not computed. ``SourceFinetune`` is CE(h^T(g(B^T)), y^T) from the
source-pretrained g (init "auto" resolves to source_pretrained), optionally composed with the source
loss by ``schedule=True``. Shapes: B^T, B^S (batch_size, C, H, W); labels (batch_size,).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import Method, StepContext


class ScheduleFamily(Method):
    name = "schedule"

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


class SourceFinetune(Method):
    name = "source_finetune"

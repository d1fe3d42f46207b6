"""CutMix (Yun et al. 2019), the baseline of the AutoMix paper (004).

lambda ~ Beta(alpha, alpha) per batch, pi a random permutation. A box of side ratio sqrt(1 - lambda)
with a uniformly drawn centre (clipped to the image) is pasted from x[pi] into x:

    x~ = M * x + (1 - M) * x[pi],   M in {0, 1}^(H x W), 0 inside the box

and lambda is corrected to the kept area, lambda' = 1 - box_area / (H W); the loss is
lambda' CE(h^T(g(x~)), y) + (1 - lambda') CE(.., y[pi]).

Shapes: x (N, C, H, W), mask (1, 1, H, W), y (N,).
"""

from __future__ import annotations

import math
from typing import Any

from trainers._lazy import torch

from .base import Method, StepContext, mixed_cross_entropy, permutations, sample_beta
from .mixup import MIXUP_ALPHA


def cutmix_box(h: int, w: int, lam: float, gen: torch.Generator) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the pasted box for mixing ratio `lam` (centre uniform, clipped)."""
    cut = math.sqrt(max(0.0, 1.0 - lam))
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(0, h, (1,), generator=gen))
    cx = int(torch.randint(0, w, (1,), generator=gen))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    return y0, y1, x0, x1


def cutmix(
    x: torch.Tensor, lam: float, perm: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(mixed x, corrected lambda, mask M of x's share (1, 1, H, W))."""
    h, w = x.shape[-2:]
    y0, y1, x0, x1 = cutmix_box(h, w, lam, gen)
    mask = torch.ones((1, 1, h, w), device=x.device, dtype=x.dtype)
    mask[..., y0:y1, x0:x1] = 0.0
    lam_kept = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    return mask * x + (1.0 - mask) * x[perm], lam_kept, mask


class CutMix(Method):
    name = "cutmix"
    paper = "Yun et al. 2019 (the baseline of 004)"
    doc = "CutMix (AutoMix paper's baseline)."
    mixup_alpha = 1.0  # AutoMix paper (004) A.1: CutMix alpha = 1 on the fine-grained (transfer) sets
    report_keys = ("mix_lambda",)
    search_space = {"mixup_alpha": MIXUP_ALPHA}  # 004 sec. 4.1, the same protocol as mixup

    def loss(self, ctx: StepContext, step: int, total: int) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = ctx.target()
        a = self.config.resolved_mixup_alpha
        lam = sample_beta(ctx.rng, a, a)
        perms = permutations(len(y), 2, ctx.gen, ctx.device)
        x_mix, lam, _ = cutmix(x, lam, perms[1], ctx.gen)
        logits = ctx.model(x_mix, "target")
        return mixed_cross_entropy(logits, y, [lam, 1.0 - lam], perms), {"mix_lambda": lam}

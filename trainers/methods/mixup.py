"""Input mixup (Zhang et al. 2018) and K-point mixup with Dirichlet weights (paper 003, eq. 1).

mixup: lambda ~ Beta(alpha, alpha), one per batch; pi a random permutation of the target batch,

    x~ = lambda x + (1 - lambda) x[pi],   loss = lambda CE(h^T(g(x~)), y) + (1 - lambda) CE(.., y[pi])

which equals the cross-entropy against the mixed soft label lambda onehot(y) + (1 - lambda) onehot(y[pi]).

kmixup (paper 003 sec. 2): w ~ Dirichlet(alpha 1_K), K >= 2, one draw per batch; pi_1 = identity and
pi_2..pi_K independent random permutations,

    x~ = sum_k w_k x[pi_k],   y~ = sum_k w_k onehot(y[pi_k]),   loss = sum_k w_k CE(h^T(g(x~)), y[pi_k]).

For K = 2, Dirichlet(alpha, alpha) = Beta(alpha, alpha): with the same draws (`base.sample_beta` is the
first coordinate of `base.sample_dirichlet`) kmixup with K = 2 is exactly mixup. The weights are drawn
once per batch, as in facebookresearch/mixup-cifar10 and ICT (timm's 'elem' mode draws per sample).

Shapes: x (N, C, H, W), y (N,) int64, weights (K,), perms K x (N,), logits (N, n_target).
"""

from __future__ import annotations

from typing import Any

from trainers._lazy import torch

from .base import (
    Method,
    Range,
    StepContext,
    mix,
    mixed_cross_entropy,
    permutations,
    sample_beta,
    sample_dirichlet,
)

# Search ranges. Dirichlet alpha: paper 003 sec. 3 uses 0.1 (SVHN) and 0.5 (CIFAR); K: ICT[K], K in {2, 3, 4}.
# Beta alpha of mixup: the AutoMix paper (004) sec. 4.1 takes the best of {0.2, 0.5, 1, 2, 4}.
DIRICHLET_ALPHA = Range(0.1, 1.0, log=True)
K_POINTS = Range(2, 4, integer=True)
MIXUP_ALPHA = Range(0.2, 4.0, log=True)


class KPointMixup(Method):
    name = "kmixup"
    paper = "003"
    doc = "K-point mixup with Dirichlet weights (paper 003)."
    mixup_alpha = 0.5  # paper 003 sec. 3: Dirichlet alpha 0.5 (CIFAR), 0.1 (SVHN)
    report_keys = ("mix_lambda",)
    search_space = {"mixup_alpha": DIRICHLET_ALPHA, "k_points": K_POINTS}

    def k(self) -> int:
        return int(self.config.k_points)

    def draw(self, ctx: StepContext, n: int) -> tuple[list[float], list[torch.Tensor]]:
        a = self.config.resolved_mixup_alpha
        weights = list(sample_dirichlet(ctx.rng, [a] * self.k()))
        return weights, permutations(n, self.k(), ctx.gen, ctx.device)

    def loss(self, ctx: StepContext, step: int, total: int) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = ctx.target()
        weights, perms = self.draw(ctx, len(y))
        logits = ctx.model(mix(x, weights, perms), "target")
        return mixed_cross_entropy(logits, y, weights, perms), {"mix_lambda": float(weights[0])}


class Mixup(KPointMixup):
    name = "mixup"
    paper = "Zhang et al. 2018"
    doc = "Input mixup, lambda ~ Beta(alpha, alpha)."
    mixup_alpha = 1.0  # AutoMix paper (004) A.1: Mixup alpha = 1 on CIFAR and the fine-grained sets
    search_space = {"mixup_alpha": MIXUP_ALPHA}

    def k(self) -> int:
        return 2

    def draw(self, ctx: StepContext, n: int) -> tuple[list[float], list[torch.Tensor]]:
        a = self.config.resolved_mixup_alpha
        lam = sample_beta(ctx.rng, a, a)
        return [lam, 1.0 - lam], permutations(n, 2, ctx.gen, ctx.device)

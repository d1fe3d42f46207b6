"""ICT, interpolation consistency training, with K-point mixing (paper 003 sec. 2, eq. 2; Verma et al.).

    loss = CE(h^T(g(x)), y)  +  w(t) * l_us,                      (paper 003: l = l_s + w_t l_us)
    l_us = D( f(Mix_w(u_1..u_K)),  Mix_w(f_T(u_1), .., f_T(u_K)) ),  w ~ Dirichlet(alpha 1_K)

- supervised part: plain cross-entropy on the labeled target batch ("The supervised loss with the ICT
  does not use mixup", paper 003 fig. 1);
- u: an unlabeled batch (the source images by default, `unlabeled` names another pool); u_k = u[pi_k]
  with pi_1 the identity and pi_2..pi_K random permutations; one w per batch;
- f = softmax(h^T(g(.))): the network output in the label space Y = R^C of sec. 2 (where the mixed
  labels Mix_w(y) live); f_T the mean teacher's, computed without gradient on the clean u_k, and the
  target Mix_w(f_T(u_1), .., f_T(u_K)) mixes these outputs with the same w, as eq. 2 writes it. (Sec.
  3.1 calls the ICT loss "applied on the network logits"; on raw logits w_max = 100 diverges under our
  SGD recipe at once, and ICT [17], which paper 003 runs, uses softmax outputs. The public ICT code
  mixes teacher LOGITS and then takes the softmax; eq. 2 mixes the outputs, which we follow.)
- D: squared L2 distance (paper 003: "L_2 distance"), averaged over the batch and divided by the
  number of classes (the normalisation of the public ICT code, so w_max keeps its published scale);
- w(t) = w_max * min(1, t / (rampup * T)): a LINEAR ramp from 0 to w_max over `ict_rampup` of the
  iterations (paper 003 sec. 3: "linearly increases from 0 to a maximum of 100 in 40% of training
  iterations"). The public ICT code uses the sigmoid ramp exp(-5 (1 - s)^2); we follow the paper.
- mean teacher: theta_T <- d_t theta_T + (1 - d_t) theta_S after every step with
  d_t = min(1 - 1/(t + 1), ema_decay) (mean-teacher / ICT code: the teacher tracks the student early
  on, then averages with `ema_decay`); BN buffers are copied; the teacher never receives a gradient.

Shapes: x (B, C, H, W), u (B, C, H, W), w (K,), f (B, n_target).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Method, Range, StepContext, ema_update, make_teacher, mix, permutations, sample_dirichlet
from .mixup import DIRICHLET_ALPHA, K_POINTS


def ict_weight(step: int, total: int, w_max: float, rampup: float) -> float:
    """w(t) of paper 003: linear from 0 at t = 0 to w_max at t = rampup * T, then constant."""
    ramp = rampup * total
    if ramp <= 0:
        return float(w_max)
    return float(w_max) * min(1.0, step / ramp)


def ema_decay_at(step: int, ema_decay: float) -> float:
    """min(1 - 1/(t + 1), ema_decay), t = 1..T (the mean-teacher warm-up of the public code)."""
    return min(1.0 - 1.0 / (step + 1), ema_decay)


def consistency_distance(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance per sample, averaged over the batch and divided by the number of classes."""
    return ((student - target) ** 2).sum(dim=1).mean() / student.shape[1]


class ICT(Method):
    name = "ict"
    paper = "003"
    doc = "Interpolation consistency training with a mean teacher (paper 003)."
    mixup_alpha = 0.5  # paper 003 sec. 3
    unlabeled_pool = True
    report_keys = ("ict_weight", "ict_consistency", "mix_lambda")
    search_space = {
        "ict_w_max": Range(1.0, 100.0, log=True),  # 003: w_max = 100 (we also search below it)
        "ict_rampup": Range(0.1, 0.6),  # 003: 40% of training
        "mixup_alpha": DIRICHLET_ALPHA,  # 003 sec. 3
        "k_points": K_POINTS,  # 003
    }

    def setup(self, ctx: StepContext) -> None:
        self.teacher = make_teacher(ctx.model)

    def loss(self, ctx: StepContext, step: int, total: int) -> tuple[torch.Tensor, dict[str, Any]]:
        model = ctx.model
        x, y = ctx.target()
        sup = torch.nn.functional.cross_entropy(model(x, "target"), y)
        w_t = ict_weight(step, total, self.config.ict_w_max, self.config.ict_rampup)
        u = ctx.unlabeled()
        k = int(self.config.k_points)
        weights = list(sample_dirichlet(ctx.rng, [self.config.resolved_mixup_alpha] * k))
        perms = permutations(len(u), k, ctx.gen, ctx.device)
        with torch.no_grad():
            t_out = torch.softmax(self.teacher(u, "target"), dim=1)
        target = mix(t_out, weights, perms)
        cons = consistency_distance(torch.softmax(model(mix(u, weights, perms), "target"), dim=1), target)
        metrics = {"ict_weight": w_t, "ict_consistency": cons.detach(), "mix_lambda": float(weights[0])}
        return sup + w_t * cons, metrics

    def after_step(self, ctx: StepContext, step: int, total: int) -> None:
        ema_update(self.teacher, ctx.model, ema_decay_at(step, self.config.ema_decay))

"""AutoMix: a learned mixup policy with a Mix Block and a momentum pipeline (paper 004, sec. 3).

Networks: the student f_q (= the run's model, trained by SGD), the momentum encoder f_k (an EMA copy,
no gradients, eq. 12) and the Mix Block M_phi (trained by SGD). Per step on a target batch (x, y):

1. z = g_k^l(x): momentum-encoder feature map at stage l (`automix_stage`; paper: l = 3), no gradient.
2. Two mixing draws lambda_q, lambda_k ~ Beta(alpha, alpha) (paper: alpha = 2) and two permutations.
3. Mix Block (eq. 4-6): lambda embedding by concatenation, z_{i,lam} = concat(z_i, lam),
   z_{j,1-lam} = concat(z_j, 1 - lam) (constant channels); cross-attention
       P = softmax_rows( (W_P z_{i,lam})^T (W_P z_{j,1-lam}) / sqrt(C') )        (HW x HW, eq. 6)
   with one shared 1x1 conv W_P (C + 1 -> C' = C/2), value W_Z z_{i,lam} (1x1 conv -> 1 channel),
       s_i = U( sigmoid( P W_Z z_{i,lam} ) )                                     (eq. 5)
   U: nearest upsampling to the input's H x W. s_i in [0, 1] is x_i's share of each pixel:
       x_mix = s_i * x_i + (1 - s_i) * x_j                                        (eq. 4)
4. Losses (eq. 8), decoupled by stop-gradient as the paper describes (fig. 5, Alg. 1):
   classification (trains f_q only; the mask s_q is DETACHED):
       l_CE + l_MCE^cls = CE(f_q(x), y)
                          + lambda_q CE(f_q(x_mix_q), y) + (1 - lambda_q) CE(f_q(x_mix_q), y[pi_q])
   generation (trains M_phi only: f_k has no trainable parameter, the gradient reaches phi through s_k):
       l_MCE^gen + l_lambda = MCE(f_k(x_mix_k), lambda_k)
                              + gamma(t) mean_i max(|lambda_k - mean_hw s_i| - eps, 0)
   with eps = `automix_margin` (0.1) and gamma(t) = `automix_mask_weight` (0.1) decreased linearly to 0
   over training (eq. 7: "a loss weight linearly decreased to 0"; the public CIFAR configs keep 0.1).
5. Momentum pipeline: after each step theta_k <- m theta_k + (1 - m) theta_q with m rising from
   m0 = `ema_decay` (paper: 0.999) to 1 on a cosine, m(t) = 1 - (1 - m0) (cos(pi t / T) + 1) / 2
   (paper: "starts from m = 0.999 and is increased to 1 in a cosine curve"; the public hook ends at
   0.999999 and holds m0 for the first 10%). BN buffers are copied from f_q.
6. Evaluation (and the kept model) is f_k, the momentum encoder (paper A.3).

Heads: the paper uses one classifier per encoder; we use the target head h^T for CE and MCE (the public
code has separate one-hot/mix heads). Shapes: x (B, C, H, W); z (B, C_l, H_l, W_l);
P (B, H_l W_l, H_l W_l); s (B, 1, H, W).
"""

from __future__ import annotations

import math
from typing import Any

from trainers._lazy import F, nn, torch

from .base import (
    Fixed,
    Method,
    Range,
    StepContext,
    ema_update,
    make_teacher,
    mixed_cross_entropy,
    permutations,
    sample_beta,
)


def __getattr__(name: str) -> Any:
    # MixBlock subclasses nn.Module, so it lives where torch is imported (mix_block.py), loaded on use.
    if name == "MixBlock":
        from .mix_block import MixBlock

        return MixBlock
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def mask_loss(mask: torch.Tensor, lam: float, margin: float) -> torch.Tensor:
    """Eq. 7 without gamma: mean over the batch of max(|lambda - mean_hw s_i| - margin, 0)."""
    mean = mask.flatten(1).mean(dim=1)
    return torch.clamp((mean - lam).abs() - margin, min=0.0).mean()


def momentum_at(step: int, total: int, m0: float) -> float:
    """m(t) = 1 - (1 - m0) (cos(pi t / T) + 1) / 2: m0 at t = 0, 1 at t = T."""
    return 1.0 - (1.0 - m0) * (math.cos(math.pi * min(step, total) / max(1, total)) + 1.0) / 2.0


def apply_mask(x: torch.Tensor, mask: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    return mask * x + (1.0 - mask) * x[perm]


class AutoMix(Method):
    name = "automix"
    paper = "004"
    doc = "AutoMix: a learned Mix Block generates the mixing mask (paper 004)."
    mixup_alpha = 2.0  # paper 004 sec. 4.5: alpha = 2 for all experiments
    init = "source_pretrained"
    report_keys = ("automix_mask_loss", "automix_gen_loss", "automix_momentum", "automix_mask_mean")
    search_space = {
        "mixup_alpha": Range(1.0, 4.0, log=True),  # 004 sec. 4.5, fig. 9: alpha = 2 best
        # 004 table 11: layer l; 3 stages here (resnet18/50 have 4: a study overrides high)
        "automix_stage": Range(1, 3, integer=True),
        "ema_decay": Fixed(0.999),  # 004: m starts at 0.999 (a study overrides it to search it)
    }

    def setup(self, ctx: StepContext) -> None:
        model = ctx.model
        stage = int(self.config.automix_stage)
        if not 1 <= stage <= model.n_stages:
            raise ValueError(
                f"automix_stage={stage} but backbone {self.config.backbone} has stages 1..{model.n_stages}"
            )
        self.encoder_k = make_teacher(model)
        with torch.no_grad():
            z = self.encoder_k.stage_features(ctx.data.target_train_x[:2], stage)
        from .mix_block import MixBlock

        self.mix_block = MixBlock(int(z.shape[1])).to(ctx.device)
        self.momentum = float(self.config.ema_decay)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.mix_block.parameters())

    def loss(self, ctx: StepContext, step: int, total: int) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg, model = self.config, ctx.model
        x, y = ctx.target()
        size = (x.shape[-2], x.shape[-1])
        a = cfg.resolved_mixup_alpha
        lam_q, lam_k = sample_beta(ctx.rng, a, a), sample_beta(ctx.rng, a, a)
        perms_q = permutations(len(y), 2, ctx.gen, ctx.device)
        perms_k = permutations(len(y), 2, ctx.gen, ctx.device)
        with torch.no_grad():
            z = self.encoder_k.stage_features(x, int(cfg.automix_stage))
        mask_q = self.mix_block(z, lam_q, perms_q[1], size).detach()
        mask_k = self.mix_block(z, lam_k, perms_k[1], size)
        # classification: f_q on clean and on mixed (detached mask) images
        l_cls = F.cross_entropy(model(x, "target"), y) + mixed_cross_entropy(
            model(apply_mask(x, mask_q, perms_q[1]), "target"), y, [lam_q, 1.0 - lam_q], perms_q
        )
        # generation: frozen f_k on the mixed images; only the Mix Block gets this gradient
        logits_k = self.encoder_k(apply_mask(x, mask_k, perms_k[1]), "target")
        l_gen = mixed_cross_entropy(logits_k, y, [lam_k, 1.0 - lam_k], perms_k)
        gamma = cfg.automix_mask_weight * max(0.0, 1.0 - (step - 1) / max(1, total))
        l_mask = mask_loss(mask_k, lam_k, cfg.automix_margin)
        loss = l_cls + l_gen + gamma * l_mask
        return loss, {
            "automix_mask_loss": l_mask.detach(),
            "automix_gen_loss": l_gen.detach(),
            "automix_momentum": self.momentum,
            "automix_mask_mean": mask_k.detach().mean(),
        }

    def after_step(self, ctx: StepContext, step: int, total: int) -> None:
        self.momentum = momentum_at(step, total, self.config.ema_decay)
        ema_update(self.encoder_k, ctx.model, self.momentum)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "momentum": self.momentum}  # the next step's EMA reads it

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.momentum = float(state["momentum"])

    def eval_model(self, model: Any) -> Any:
        return self.encoder_k

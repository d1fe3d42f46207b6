"""SMILE: sample-to-feature mixup for efficient transfer learning (paper 000).

From the source-pretrained student (g, h^T, h^S) and its mean teacher (g_T, h^T_T, h^S_T: an EMA of
the student, no gradients), per step on a target batch (x, y):

    lambda ~ Beta(alpha, alpha), lambda <- max(lambda, 1 - lambda);  pi a random permutation
    x~ = lambda x + (1 - lambda) x[pi]
    L_mix  = lambda CE(h^T(g(x~)), y) + (1 - lambda) CE(h^T(g(x~)), y[pi])              (mixed labels)
    L_feat = mean_i || g(x~)_i - (lambda g_T(x)_i + (1 - lambda) g_T(x[pi])_i) ||_2       (feature reg.)
    L_src  = SCE(h^S(g(x~)), lambda p_T(x) + (1 - lambda) p_T(x[pi])),  p_T = softmax(h^S_T(g_T(.)))
    loss   = L_mix + smile_feature_weight * L_feat + smile_source_weight * L_src

"the Euclidean distance between the output of target model's CNN feature extractor and a mixed-up
feature vector" (paper 000 sec. 1): we use the pooled backbone output (our backbones end in global
pooling) and the plain (not squared) Euclidean distance, averaged over the batch. The public code
(PaddlePaddle/Research CV/SMILE) uses the Frobenius norm of the whole layer-4 map / (H W).
The extra head h^S is the source head in the source label space, initialised from the pretrained
source classifier. The paper gives no weights or alpha: defaults are the public code's (alpha 0.2,
feature 0.01, source 0.1, EMA 0.999); lambda folding to >= 0.5 is also the public code's (the paper is
silent).

Mean teacher and schedule: the public code's choices are options (TrainConfig), the defaults follow the
paper and are unchanged from earlier releases:

    option                    default  public code (CV/SMILE/finetune.py)
    smile_teacher_interval    1        10: theta_T <- 0.999 theta_T + 0.001 theta_S when iter % 10 == 0
    smile_ema_heads           True     False: parameters named fc.* are skipped, so the teacher's source
                                       classifier stays the pretrained one (here: both teacher heads
                                       keep their initial weights; the target head is unused anyway)
    smile_finetune_fraction   0.0      1/9: the last 1000 of 9000 iterations are plain fine-tuning
                                       (CE on clean images; no mixup, teacher or source head)

Why the defaults: paper 000 says only that SMILE "incorporates a mean teacher"; the standard mean
teacher (Tarvainen & Valpola 2017; the paper cites no variant) is the EMA of the whole student after
every step, and the paper describes no final phase. The public code's interval and frozen classifier are
implementation choices the paper does not state, and its final phase is a schedule the paper does not
describe. Keeping the paper's form as the default also keeps earlier results reproducible bit for bit.
Set all three to the public values to run the official recipe. One more difference stays: our teacher
copies the student's BN buffers at each update (ema_update); the public teacher keeps its pretrained BN
statistics.

Shapes: x (B, C, H, W); g(.) (B, D); p_T (B, n_source); logits (B, n_target).
"""

from __future__ import annotations

from typing import Any

from trainers._lazy import torch

from .base import (
    Method,
    Range,
    StepContext,
    ema_update,
    make_teacher,
    mix,
    mixed_cross_entropy,
    permutations,
    sample_beta,
    soft_cross_entropy,
)


class SMILE(Method):
    name = "smile"
    paper = "000"
    doc = "SMILE: mixup with feature and source-head regularizers from a mean teacher (paper 000)."
    mixup_alpha = 0.2  # paper 000 gives none; the official code's default (PaddlePaddle/Research CV/SMILE)
    init = "source_pretrained"
    needs_source_head = True
    report_keys = ("smile_feature_loss", "smile_source_loss", "mix_lambda")
    # The paper gives no ranges; centred on the public code's values (alpha 0.2, feature 0.01,
    # source 0.1, teacher momentum 0.999).
    search_space = {
        "mixup_alpha": Range(0.1, 1.0, log=True),
        "smile_feature_weight": Range(1e-3, 1.0, log=True),
        "smile_source_weight": Range(1e-2, 1.0, log=True),
        "ema_decay": Range(0.99, 0.9999),
    }

    def setup(self, ctx: StepContext) -> None:
        if ctx.model.source_head is None:
            raise ValueError("smile needs a source head (the source label space); load the source")
        self.teacher = make_teacher(ctx.model)

    def in_finetune_phase(self, step: int, total: int) -> bool:
        """Whether step t (1..T) lies in the final plain fine-tuning phase (the last fraction of T)."""
        return step > total - round(self.config.smile_finetune_fraction * total)

    def loss(self, ctx: StepContext, step: int, total: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.in_finetune_phase(step, total):
            return super().loss(ctx, step, total)  # plain CE on clean target images
        model, cfg = ctx.model, self.config
        x, y = ctx.target()
        a = cfg.resolved_mixup_alpha
        lam = sample_beta(ctx.rng, a, a)
        lam = max(lam, 1.0 - lam)
        weights = [lam, 1.0 - lam]
        perms = permutations(len(y), 2, ctx.gen, ctx.device)
        with torch.no_grad():
            feat_t = self.teacher.features(x, "target")
            prob_t = torch.softmax(self.teacher.head("source")(feat_t), dim=1)
        feats = model.features(mix(x, weights, perms), "target")
        l_mix = mixed_cross_entropy(model.head("target")(feats), y, weights, perms)
        l_feat = (feats - mix(feat_t, weights, perms)).norm(dim=1).mean()
        l_src = soft_cross_entropy(model.head("source")(feats), mix(prob_t, weights, perms))
        loss = l_mix + cfg.smile_feature_weight * l_feat + cfg.smile_source_weight * l_src
        return loss, {
            "smile_feature_loss": l_feat.detach(),
            "smile_source_loss": l_src.detach(),
            "mix_lambda": lam,
        }

    def after_step(self, ctx: StepContext, step: int, total: int) -> None:
        cfg = self.config
        if step % cfg.smile_teacher_interval or self.in_finetune_phase(step, total):
            return  # not an update step, or the teacher is no longer used
        if cfg.smile_ema_heads:
            ema_update(self.teacher, ctx.model, cfg.ema_decay)
        else:  # the backbone only: the teacher's heads keep their (pretrained) initial weights
            ema_update(self.teacher.backbone, ctx.model.backbone, cfg.ema_decay)

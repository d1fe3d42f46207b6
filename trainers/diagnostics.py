"""Linearity diagnostics: the interpolation (IL) losses of SMILE (paper 000, eq. 1).

    IL(f) = E_lambda [ || f(lambda x_1 + (1 - lambda) x_2) - (lambda f(x_1) + (1 - lambda) f(x_2)) ||_2^2 ]

measured at the end of a trial on pairs of target samples (x_1 = x_i, x_2 = x_{pi(i)}, pi a seeded
random permutation; one lambda ~ Uniform(0, 1) per pair - the paper does not say how lambda is drawn):

- label-IL: f = the classifier output, softmax(h^T(g(x))) (a probability vector per sample);
- feature-IL: f = g(x), the last hidden layer (the pooled backbone output).

Both on the validation pairs ("val") and on the training subset ("train"), as Table 4 of the paper
compares train and test. The network is in eval mode (running BN statistics), no gradients.
Shapes: x (N, C, H, W); lambda (N, 1); g(x) (N, D); softmax (N, n_target).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

CHUNK = 512


@torch.no_grad()
def interpolation_losses(
    model: Any, x: torch.Tensor, gen: torch.Generator, domain: str = "target"
) -> dict[str, float | int | None]:
    """{"label_il", "feature_il", "n_pairs"} of eq. 1 on the pairs (x_i, x_{pi(i)})."""
    n = len(x)
    if n < 2:
        return {"label_il": None, "feature_il": None, "n_pairs": 0}
    perm = torch.randperm(n, generator=gen).to(x.device)
    lam = torch.rand(n, generator=gen).to(device=x.device, dtype=x.dtype)
    was_training = model.training
    model.eval()
    head = model.head(domain)
    label_sum = feature_sum = 0.0
    for start in range(0, n, CHUNK):
        i = slice(start, start + CHUNK)
        x1, x2, lm = x[i], x[perm[i]], lam[i]
        l4 = lm.view(-1, 1, 1, 1)
        l2 = lm.view(-1, 1)
        f1, f2 = model.features(x1, domain), model.features(x2, domain)
        fm = model.features(l4 * x1 + (1 - l4) * x2, domain)
        feature_sum += float(((fm - (l2 * f1 + (1 - l2) * f2)) ** 2).sum())
        p1, p2, pm = (torch.softmax(head(f), dim=1) for f in (f1, f2, fm))
        label_sum += float(((pm - (l2 * p1 + (1 - l2) * p2)) ** 2).sum())
    model.train(was_training)
    # JSON has no NaN/inf: a diverged network reports None.
    return {"label_il": _finite(label_sum / n), "feature_il": _finite(feature_sum / n), "n_pairs": n}


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def linearity_diagnostics(model: Any, data: Any, seed: int = 0) -> dict[str, Any]:
    """JSON-able {"val": {...}, "train": {...}, "lambda": "uniform(0,1)", "eq": "paper 000 eq. 1"}."""
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 0x11]).generate_state(1)[0]))
    out: dict[str, Any] = {"eq": "paper 000 eq. 1", "lambda": "uniform(0,1)"}
    out["val"] = interpolation_losses(model, data.val_x, gen)
    out["train"] = interpolation_losses(model, data.target_train_x, gen)
    return out

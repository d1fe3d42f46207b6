"""Linearity diagnostics: the interpolation (IL) losses of SMILE (paper 000, eq. 1) and the per-layer
non-linearity of paper 003 (eq. 3).

    IL(f) = E_lambda [ || f(lambda x_1 + (1 - lambda) x_2) - (lambda f(x_1) + (1 - lambda) f(x_2)) ||_2^2 ]

measured at the end of a trial on pairs of target samples (x_1 = x_i, x_2 = x_{pi(i)}, pi a seeded
random permutation; one lambda ~ Uniform(0, 1) per pair - the paper does not say how lambda is drawn):

- label-IL: f = the classifier output, softmax(h^T(g(x))) (a probability vector per sample);
- feature-IL: f = g(x), the last hidden layer (the pooled backbone output).

Both on the validation pairs ("val") and on the training subset ("train"), as Table 4 of the paper
compares train and test. The network is in eval mode (running BN statistics), no gradients.
Shapes: x (N, C, H, W); lambda (N, 1); g(x) (N, D); softmax (N, n_target).

Paper 003 eq. 3, per layer l of the network (stored under "nonlinearity"):

    NonLin(l) = sum_{(x_1, x_2) ~ D_te} || f^l(Mix_lam(x_1, x_2)) - Mix_lam(f^l(x_1), f^l(x_2)) ||_2
    with f^l = f_l / ||f_l|| the output of layer l (flattened per sample) scaled to unit norm

"the normalized output of layer l" for the (mixed) network input, D the L2 distance, D_te "a held out
test set": the test split, pairs (x_{pi(i)}, x_{pi(i-1)}) of distinct samples along a seeded random
permutation pi (at most NONLIN_PAIRS pairs), lam ~ Uniform(0, 1) per pair (the paper does not say how
lam is drawn). We store the mean over the pairs (the sum divided by n_pairs, so runs with different test
sizes compare). Layers as the paper numbers them on its WRN: its layers 1-3 (block outputs) are our
stages 1..n_stages ("stage1".."stageS"), layer 4 the pooled output g(x) ("pool"), layer 5 the logits
h^T(g(x)) ("logits"); its layer 0 (the stem conv) is not measured (not every backbone exposes it). Lower
is more linear; values lie in [0, 2].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

CHUNK = 512
NONLIN_PAIRS = 1000  # pairs of eq. 3 (a bound on its cost: one forward per stage and sample)


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


def _unit(f: torch.Tensor) -> torch.Tensor:
    """Each sample's output flattened and scaled to unit L2 norm (an all-zero output stays zero)."""
    f = f.flatten(1)
    return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


def layer_outputs(model: Any, x: torch.Tensor, domain: str = "target") -> dict[str, torch.Tensor]:
    """{"stage1".."stageS", "pool", "logits"}: the outputs of the layers eq. 3 measures, for input x."""
    out = {f"stage{s}": model.stage_features(x, s, domain) for s in range(1, model.n_stages + 1)}
    out["pool"] = model.features(x, domain)
    out["logits"] = model.head(domain)(out["pool"])
    return out


@torch.no_grad()
def layer_nonlinearity(
    model: Any, x: torch.Tensor, gen: torch.Generator, domain: str = "target"
) -> dict[str, Any]:
    """{"layers": {name: mean over pairs of eq. 3's term}, "n_pairs"} on pairs (x_pi(i), x_pi(i-1))."""
    n = min(len(x), NONLIN_PAIRS)
    if n < 2:
        return {"layers": {}, "n_pairs": 0}
    perm = torch.randperm(len(x), generator=gen)[:n].to(x.device)
    partner = perm.roll(1)  # pairs (x_perm[i], x_perm[i-1]): distinct samples, each used twice
    lam = torch.rand(n, generator=gen).to(device=x.device, dtype=x.dtype)
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    for start in range(0, n, CHUNK):
        i = slice(start, start + CHUNK)
        x1, x2, lm = x[perm[i]], x[partner[i]], lam[i].view(-1, 1)
        outs = [
            layer_outputs(model, v, domain)
            for v in (x1, x2, lm.view(-1, 1, 1, 1) * x1 + (1 - lm.view(-1, 1, 1, 1)) * x2)
        ]
        for name in outs[0]:
            f1, f2, fm = (_unit(o[name]) for o in outs)
            sums[name] = sums.get(name, 0.0) + float((fm - (lm * f1 + (1 - lm) * f2)).norm(dim=1).sum())
    model.train(was_training)
    return {"layers": {k: _finite(v / n) for k, v in sums.items()}, "n_pairs": n}


def linearity_diagnostics(model: Any, data: Any, seed: int = 0) -> dict[str, Any]:
    """JSON-able {"val": {...}, "train": {...}, "lambda": "uniform(0,1)", "eq": "paper 000 eq. 1",
    "nonlinearity": {"layers": {...}, "n_pairs", "split": "test", "eq": "paper 003 eq. 3", ...}}."""
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 0x11]).generate_state(1)[0]))
    out: dict[str, Any] = {"eq": "paper 000 eq. 1", "lambda": "uniform(0,1)"}
    out["val"] = interpolation_losses(model, data.val_x, gen)
    out["train"] = interpolation_losses(model, data.target_train_x, gen)
    # Its own generator: adding eq. 3 leaves the draws (and values) of eq. 1 above unchanged.
    gen3 = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 0x03]).generate_state(1)[0]))
    out["nonlinearity"] = {
        "eq": "paper 003 eq. 3",
        "split": "test",
        "lambda": "uniform(0,1)",
        "reduction": "mean over pairs",
        **layer_nonlinearity(model, data.test_x, gen3),
    }
    return out

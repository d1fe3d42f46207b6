"""XMixup: cross-domain mixup with auxiliary samples (paper 001, sec. 3).

1. Auxiliary sample selection. With the source-pretrained backbone Phi (the run's initial g), the class
   centroids centroid(c) = mean_{x in c} Phi(x) (eq. 1) of every target class (target training set)
   and every source class (source set) are compared by cosine similarity. Eq. 2 asks for a one-to-one
   map P: T -> S; the paper solves it "using a simple Greedy search": we take the globally most similar
   remaining (target, source) pair, assign it, remove both classes, and repeat until every target class
   is paired (needs n_source >= n_target classes; an error otherwise).
   Sec. 4.2: "we repeat the one-to-one pairing procedure until the size of the selected subset reaches
   a specific threshold. The value is 100,000 for Stanford Dogs and 200,000 for other datasets"
   (`xmixup_aux_size`, default 200,000; Figure 3: accuracy depends on that size, "XMixup performs well
   enough when the number of auxiliary examples is more than 100,000"). Each further round is the same
   greedy one-to-one pairing over the source classes no earlier round used (a round pairs fewer target
   classes only when fewer unused source classes remain); the threshold is checked after each complete
   round, so every target class gets the same number of source classes until the source runs out. The
   auxiliary set is every source sample of a selected class; its size is counted in the run's source
   set. With a source smaller than the threshold all source classes end up selected (as the paper's
   "whole source dataset" point of Figure 3); `xmixup_aux_size = 0` keeps the single round.
2. Cross-domain mixup. For each target sample (x_t, y_t) of the batch, a source sample x_s is drawn
   uniformly from the paired class P(y_t) (eq. 3; after several rounds: uniformly from the samples of
   all source classes paired with y_t), and (eq. 4)

       x = lambda x_t + (1 - lambda) x_s,   lambda ~ Beta(alpha, beta = 1)   i.i.d. per sample

   (beta fixed to 1 as in sec. 5.3). The labels live in two label spaces, mixed through the two heads
   on the shared backbone:
       loss = mean_i [lambda_i CE(h^T(g(x_i)), y_t,i) + (1 - lambda_i) CE(h^S(g(x_i)), P(y_t,i))],
   h^S starting from the pretrained source classifier. (Public code: none exists; the two-head reading
   of "y = lambda y_t + (1 - lambda) y_s" is ours, see notes/methods-reference.md sec. 2.)

Shapes: x_t, x_s (B, C, H, W); lambda (B,); centroids (n_t, D), (n_s, D); similarity (n_t, n_s).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainers._lazy import F, torch

from .base import Method, Range, StepContext

CENTROID_BATCH = 512


def class_centroids(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(n_classes, D) mean feature per class (eq. 1); a class without samples is an error."""
    counts = torch.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"no samples of class(es) {missing} to compute their centroid")
    sums = torch.zeros((n_classes, features.shape[1]), dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    return sums / counts.unsqueeze(1).to(features.dtype)


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n_a, n_b) cosine similarities of the rows of a and b."""
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def greedy_pairing(similarity: torch.Tensor | np.ndarray) -> dict[int, int]:
    """Greedy one-to-one target -> source map: repeatedly the most similar remaining pair.

    `similarity` is (n_target, n_source); ties are broken by the lowest (target, source) index.
    """
    sim = np.array(similarity.detach().cpu() if isinstance(similarity, torch.Tensor) else similarity, float)
    n_t, n_s = sim.shape
    if n_s < n_t:
        raise ValueError(
            f"xmixup pairs every target class with a distinct source class, but the source has "
            f"{n_s} classes and the target {n_t}; use a source with at least as many classes"
        )
    return _greedy_round(sim, set())


def _greedy_round(sim: np.ndarray, used: set[int]) -> dict[int, int]:
    """One greedy one-to-one round over the source classes not in `used` (as many pairs as possible)."""
    n_t, n_s = sim.shape
    sim = sim.copy()
    free = np.ones(n_s, dtype=bool)
    free[list(used)] = False
    sim[:, ~free] = -np.inf
    pairs: dict[int, int] = {}
    for _ in range(min(n_t, int(free.sum()))):
        t, s = np.unravel_index(int(np.argmax(sim)), sim.shape)
        pairs[int(t)] = int(s)
        sim[t, :] = -np.inf
        sim[:, s] = -np.inf
    return dict(sorted(pairs.items()))


def repeated_pairing(
    similarity: torch.Tensor | np.ndarray, class_sizes: list[int] | np.ndarray, threshold: int
) -> list[dict[int, int]]:
    """Sec. 4.2: greedy one-to-one rounds over the unused source classes until the selected classes
    hold >= `threshold` samples (`class_sizes[s]` samples in source class s) or none is left.

    The first round is `greedy_pairing` (every target class paired); returns the rounds in order.
    """
    sim = np.array(similarity.detach().cpu() if isinstance(similarity, torch.Tensor) else similarity, float)
    rounds = [greedy_pairing(sim)]
    used = set(rounds[0].values())
    size = sum(int(class_sizes[s]) for s in used)
    while size < threshold and len(used) < sim.shape[1]:
        pairs = _greedy_round(sim, used)
        rounds.append(pairs)
        used |= set(pairs.values())
        size += sum(int(class_sizes[s]) for s in pairs.values())
    return rounds


def _features(model: Any, x: torch.Tensor, domain: str) -> torch.Tensor:
    with torch.no_grad():  # not a decorator: that would import torch with this module (trainers._lazy)
        return torch.cat(
            [model.features(x[i : i + CENTROID_BATCH], domain) for i in range(0, len(x), CENTROID_BATCH)]
        )


class XMixup(Method):
    name = "xmixup"
    paper = "001"
    doc = "Cross-domain mixup with paired source classes (paper 001)."
    mixup_alpha = 1.0  # paper 001 sec. 5.3: alpha in 2^0 .. 2^6 "generally safe"; beta fixed to 1
    init = "source_pretrained"
    uses_source_data = True
    needs_source_head = True
    report_keys = ("mix_lambda",)
    search_space = {"mixup_alpha": Range(2.0**-3, 2.0**6, log=True)}  # 001 sec. 5.3 (beta fixed to 1)

    def setup(self, ctx: StepContext) -> None:
        data, model = ctx.data, ctx.model
        if model.source_head is None or len(data.source_y) == 0:
            raise ValueError("xmixup needs the source set and a source head")
        was_training = model.training
        model.eval()
        f_t = _features(model, data.target_train_x, "target")
        f_s = _features(model, data.source_x, "source")
        model.train(was_training)
        c_t = class_centroids(f_t, data.target_train_y, data.n_target_classes)
        c_s = class_centroids(f_s, data.source_y, data.n_source_classes)
        self.similarity = cosine_similarity_matrix(c_t, c_s).cpu()
        src_y = data.source_y.cpu()
        sizes = torch.bincount(src_y, minlength=data.n_source_classes).tolist()
        self.rounds = repeated_pairing(self.similarity, sizes, self.config.xmixup_aux_size)
        self.pairing = self.rounds[0]
        self.aux_size = sum(sizes[s] for r in self.rounds for s in r.values())
        self.class_ids = (getattr(data, "target_class_ids", []), getattr(data, "source_class_ids", []))
        # Per target class, the source sample indices of all its paired classes (round order), for the
        # per-sample draws of eq. 3.
        self.pools = {
            t: torch.cat([torch.nonzero(src_y == r[t]).flatten() for r in self.rounds if t in r])
            for t in self.pairing
        }

    def draw_auxiliary(self, y_t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Indices into the source set: one uniform sample of the paired classes per target label."""
        out = torch.empty(len(y_t), dtype=torch.long)
        for i, t in enumerate(y_t.tolist()):
            pool = self.pools[t]
            out[i] = pool[int(torch.randint(0, len(pool), (1,), generator=gen))]
        return out

    def loss(self, ctx: StepContext, step: int, total: int) -> tuple[torch.Tensor, dict[str, Any]]:
        from ..hardware import to_device

        x_t, y_t = ctx.target()
        # The one host sync left in a step loop: the class-paired draw reads the target labels on the host
        # (their per-class pools and the seeded sequential draws keep XMixup's results bit-identical).
        idx = to_device(self.draw_auxiliary(y_t.cpu(), ctx.gen), ctx.device)
        x_s, y_s = ctx.data.source_x[idx], ctx.data.source_y[idx]
        a = self.config.resolved_mixup_alpha
        lam_np = ctx.rng.beta(a, 1.0, size=len(y_t))
        lam = to_device(torch.as_tensor(lam_np, dtype=x_t.dtype), ctx.device)
        x = lam.view(-1, 1, 1, 1) * x_t + (1.0 - lam.view(-1, 1, 1, 1)) * x_s
        feats = ctx.model.features(x, "target")
        ce_t = F.cross_entropy(ctx.model.head("target")(feats), y_t, reduction="none")
        ce_s = F.cross_entropy(ctx.model.head("source")(feats), y_s, reduction="none")
        loss = (lam * ce_t + (1.0 - lam) * ce_s).mean()
        return loss, {"mix_lambda": float(lam_np.mean())}

    def result_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "target_to_source": {str(t): s for t, s in self.pairing.items()},  # the first round
            "similarity": {str(t): float(self.similarity[t, s]) for t, s in self.pairing.items()},
            # Sec. 4.2: every round (one-to-one each), and the auxiliary set they select.
            "rounds": [{str(t): s for t, s in r.items()} for r in self.rounds],
            "auxiliary_size": int(self.aux_size),
            "aux_size_threshold": int(self.config.xmixup_aux_size),
        }
        t_ids, s_ids = self.class_ids
        if len(t_ids) == len(self.pairing) and s_ids:
            # The same pairing in the datasets' own class labels (the above is in re-indexed labels).
            info["target_class_to_source_class"] = {str(t_ids[t]): s_ids[s] for t, s in self.pairing.items()}
            info["rounds_in_class_labels"] = [
                {str(t_ids[t]): s_ids[s] for t, s in r.items()} for r in self.rounds
            ]
        return {"xmixup_pairing": info}

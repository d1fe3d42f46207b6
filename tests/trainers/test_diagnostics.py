"""Paper 003's per-layer non-linearity (eq. 3) against a hand computation, and its place in the trial."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from trainers.diagnostics import interpolation_losses, layer_nonlinearity, linearity_diagnostics
from trainers.models import TransferNet


class TwoLayer(nn.Module):
    """x -> relu(W1 x + b1): one stage; the pooled output is that stage; the head W2 is the second layer."""

    n_stages = 1
    out_features = 3

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 3)

    def stage_features(self, x, stage):
        return torch.relu(self.lin(x.flatten(1)))

    def forward(self, x):
        return self.stage_features(x, 1)


def two_layer_net():
    net = TransferNet(TwoLayer(), 0, 2).double()  # float64, so the weights are exactly the decimals below
    with torch.no_grad():
        net.backbone.lin.weight.copy_(
            torch.tensor([[1.0, -2.0], [0.5, 1.0], [-1.0, 0.3]], dtype=torch.float64)
        )
        net.backbone.lin.bias.copy_(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64))
        net.target_head.weight.copy_(torch.tensor([[1.0, 2.0, -1.0], [-0.5, 0.0, 1.5]], dtype=torch.float64))
        net.target_head.bias.copy_(torch.tensor([0.2, -0.1], dtype=torch.float64))
    return net.eval()


def by_hand(x, lam, pairs):
    """Eq. 3 in plain Python: per layer, the mean over pairs of
    ||unit(f(mix)) - mix(unit(f(x1)), unit(f(x2)))||."""
    w1 = [[1.0, -2.0], [0.5, 1.0], [-1.0, 0.3]]
    b1 = [0.1, -0.2, 0.3]
    w2 = [[1.0, 2.0, -1.0], [-0.5, 0.0, 1.5]]
    b2 = [0.2, -0.1]

    def hidden(v):
        return [
            max(0.0, sum(w * a for w, a in zip(row, v, strict=True)) + b)
            for row, b in zip(w1, b1, strict=True)
        ]

    def logits(v):
        h = hidden(v)
        return [sum(w * a for w, a in zip(row, h, strict=True)) + b for row, b in zip(w2, b2, strict=True)]

    def unit(v):
        n = math.sqrt(sum(a * a for a in v))
        return [a / n for a in v]

    out = {}
    for name, f in (("stage1", hidden), ("pool", hidden), ("logits", logits)):
        total = 0.0
        for (i, j), lm in zip(pairs, lam, strict=True):
            mixed = [lm * a + (1 - lm) * b for a, b in zip(x[i], x[j], strict=True)]
            fm, f1, f2 = unit(f(mixed)), unit(f(x[i])), unit(f(x[j]))
            total += math.sqrt(
                sum((m - (lm * a + (1 - lm) * b)) ** 2 for m, a, b in zip(fm, f1, f2, strict=True))
            )
        out[name] = total / len(pairs)
    return out


def test_nonlinearity_equals_a_hand_computation_on_a_two_layer_network():
    x_list = [[0.5, 1.0], [-1.0, 0.2], [2.0, -0.5], [0.3, 0.3], [-0.7, -1.2]]
    x = torch.tensor(x_list, dtype=torch.float64).view(5, 1, 1, 2)
    net = two_layer_net()
    got = layer_nonlinearity(net, x, torch.Generator().manual_seed(3))
    # The draws of the documented protocol: a seeded permutation, each sample paired with the previous
    # one in it, one lambda ~ U(0, 1) per pair.
    gen = torch.Generator().manual_seed(3)
    perm = torch.randperm(5, generator=gen)
    lam = torch.rand(5, generator=gen).tolist()
    pairs = list(zip(perm.tolist(), perm.roll(1).tolist(), strict=True))
    expect = by_hand(x_list, lam, pairs)
    assert got["n_pairs"] == 5 and set(got["layers"]) == set(expect)
    for name, value in expect.items():
        assert got["layers"][name] == pytest.approx(value, rel=1e-9)
    assert expect["logits"] > 0  # the hand computation is not trivially zero


def test_a_linear_map_is_linear_up_to_the_normalisation():
    # With a linear layer and inputs on a ray (x2 = 2 x1) the normalised outputs coincide: NonLin = 0.
    net = two_layer_net()
    with torch.no_grad():
        net.backbone.lin.bias.zero_()
    x = torch.tensor([[1.0, -1.0], [2.0, -2.0]], dtype=torch.float64).view(2, 1, 1, 2)
    got = layer_nonlinearity(net, x, torch.Generator().manual_seed(0))
    assert got["layers"]["stage1"] == pytest.approx(0.0, abs=1e-12)


def test_linearity_diagnostics_adds_eq3_on_the_test_split_without_changing_eq1():
    torch.manual_seed(0)
    from trainers.models import SmallCNN

    net = TransferNet(SmallCNN(1, width=4), 0, 3).eval()
    g = torch.Generator().manual_seed(1)
    data = SimpleNamespace(
        val_x=torch.randn(7, 1, 8, 8, generator=g),
        target_train_x=torch.randn(6, 1, 8, 8, generator=g),
        test_x=torch.randn(9, 1, 8, 8, generator=g),
    )
    out = linearity_diagnostics(net, data, seed=4)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([4, 0x11]).generate_state(1)[0]))
    assert out["val"] == interpolation_losses(net, data.val_x, gen)  # eq. 1 draws are unchanged
    nonlin = out["nonlinearity"]
    assert nonlin["eq"] == "paper 003 eq. 3" and nonlin["split"] == "test" and nonlin["n_pairs"] == 9
    assert list(nonlin["layers"]) == ["stage1", "stage2", "stage3", "pool", "logits"]
    assert all(0.0 <= v <= 2.0 for v in nonlin["layers"].values())

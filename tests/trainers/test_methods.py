"""What defines each mixup-family method, on small generated tensors (issue 3 acceptance)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trainers import train
from trainers.config import TrainConfig
from trainers.data import load_transfer_data
from trainers.methods import build_method
from trainers.methods.automix import AutoMix, MixBlock, apply_mask, mask_loss, momentum_at
from trainers.methods.base import (
    StepContext,
    mix,
    mixed_cross_entropy,
    mixed_targets,
    permutations,
    sample_beta,
    sample_dirichlet,
)
from trainers.methods.cutmix import cutmix
from trainers.methods.ict import ICT, ema_decay_at, ict_weight, logit_l2_distance
from trainers.methods.smile import SMILE
from trainers.methods.xmixup import (
    class_centroids,
    cosine_similarity_matrix,
    greedy_pairing,
    repeated_pairing,
)
from trainers.models import SmallCNN, TransferNet

N_TGT, N_SRC, B, SIZE = 3, 4, 6, 8


def tiny_net(seed=0, n_source=N_SRC):
    torch.manual_seed(seed)
    return TransferNet(SmallCNN(1, width=4), n_source, N_TGT)


def ctx_for(config, model, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    x_t = torch.randn(B, 1, SIZE, SIZE, generator=g)
    y_t = torch.arange(B) % N_TGT
    x_s = torch.randn(4 * N_SRC, 1, SIZE, SIZE, generator=g)
    y_s = torch.arange(4 * N_SRC) % N_SRC
    u = torch.randn(B, 1, SIZE, SIZE, generator=g)
    data = SimpleNamespace(
        target_train_x=x_t,
        target_train_y=y_t,
        source_x=x_s,
        source_y=y_s,
        n_target_classes=N_TGT,
        n_source_classes=N_SRC,
    )
    return StepContext(
        config=config,
        model=model,
        data=data,
        device=torch.device("cpu"),
        rng=np.random.default_rng(seed),
        gen=torch.Generator().manual_seed(seed),
        target=lambda: (x_t, y_t),
        source=None,
        unlabeled=lambda: u,
    )


# --------------------------------------------------------------------------------------------------
# mixup, K-point mixup, CutMix


@pytest.mark.parametrize("k", [2, 3, 4])
def test_mixed_labels_are_convex_combinations_summing_to_one(k):
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2, 0])
    for _ in range(20):
        w = sample_dirichlet(rng, [0.3] * k)
        assert np.all(w >= 0) and math.isclose(float(w.sum()), 1.0, abs_tol=1e-12)
        perms = permutations(len(y), k, gen, torch.device("cpu"))
        soft = mixed_targets(y, 3, w, perms)
        assert torch.all(soft >= 0) and torch.all(soft <= 1 + 1e-6)
        assert torch.allclose(soft.sum(dim=1), torch.ones(len(y)), atol=1e-6)
        # each row is exactly sum_k w_k onehot(y[pi_k])
        for i in range(len(y)):
            expect = torch.zeros(3)
            for wk, p in zip(w, perms, strict=True):
                expect[y[p[i]]] += float(wk)
            assert torch.allclose(soft[i], expect, atol=1e-6)
    # the hard-label loss equals the soft-label cross-entropy
    logits = torch.randn(len(y), 3)
    hard = mixed_cross_entropy(logits, y, w, perms)
    soft_ce = -(mixed_targets(y, 3, w, perms) * torch.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(hard, soft_ce, atol=1e-5)


def test_k2_dirichlet_mixup_equals_beta_mixup_for_the_same_draws():
    a = 0.4
    r1, r2 = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(50):
        lam = sample_beta(r1, a, a)
        w = sample_dirichlet(r2, [a, a])
        assert list(w) == [lam, 1.0 - lam]  # bit-identical
    # the two methods give the same loss (same draws, same permutation, same model)
    losses = []
    for method in ("mixup", "kmixup"):
        cfg = TrainConfig(method=method, k_points=2, mixup_alpha=a)
        model = tiny_net()
        loss, metrics = build_method(cfg).loss(ctx_for(cfg, model), 1, 10)
        losses.append((float(loss.detach()), metrics["mix_lambda"]))
    assert losses[0] == losses[1]


def test_k2_kmixup_and_mixup_train_identically():
    from trainers import train

    base = dict(n_target=30, epochs=1, steps_per_epoch=2, num_threads=1, device="cpu", mixup_alpha=0.7)
    h1 = train(dict(base, method="mixup")).history
    h2 = train(dict(base, method="kmixup", k_points=2)).history
    assert h1 == h2


def test_mix_is_the_weighted_sum_of_permuted_inputs():
    x = torch.randn(5, 2, 3, 3)
    perms = [torch.arange(5), torch.tensor([4, 3, 2, 1, 0]), torch.tensor([1, 2, 3, 4, 0])]
    w = [0.5, 0.3, 0.2]
    assert torch.allclose(mix(x, w, perms), 0.5 * x + 0.3 * x.flip(0) + 0.2 * x.roll(-1, 0))


def test_cutmix_pastes_a_box_and_corrects_lambda_to_the_kept_area():
    gen = torch.Generator().manual_seed(3)
    x = torch.zeros(4, 1, 16, 16)
    x2 = torch.ones(4, 1, 16, 16)
    both = torch.cat([x, x2])
    perm = torch.cat([torch.arange(4, 8), torch.arange(0, 4)])
    for lam in (0.1, 0.5, 0.9):
        mixed, lam_kept, mask = cutmix(both, lam, perm, gen)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        # the first four (zeros) got ones pasted in: the pasted area is 1 - lam_kept
        assert math.isclose(float(mixed[:4].mean()), 1 - lam_kept, abs_tol=1e-6)
        assert 0 <= lam_kept <= 1


# --------------------------------------------------------------------------------------------------
# XMixup


def test_xmixup_greedy_pairing_is_one_to_one_and_picks_the_expected_pairs():
    # Source centroids are 5 orthogonal directions; target class t sits next to source class perm[t].
    expected = {0: 3, 1: 0, 2: 4}
    source_dirs = torch.eye(5)
    feats_s = torch.cat([source_dirs[c] + 0.01 * torch.randn(10, 5) for c in range(5)])
    labels_s = torch.arange(5).repeat_interleave(10)
    feats_t = torch.cat([2.0 * source_dirs[expected[t]] + 0.01 * torch.randn(8, 5) for t in range(3)])
    labels_t = torch.arange(3).repeat_interleave(8)
    sim = cosine_similarity_matrix(
        class_centroids(feats_t, labels_t, 3), class_centroids(feats_s, labels_s, 5)
    )
    pairing = greedy_pairing(sim)
    assert pairing == expected
    assert len(set(pairing.values())) == len(pairing)  # one-to-one


def test_xmixup_greedy_takes_the_global_best_pair_first():
    # target 0 prefers source 0 (0.9), target 1 prefers source 0 more (0.95): 1 -> 0, then 0 -> 1.
    sim = np.array([[0.9, 0.8, 0.1], [0.95, 0.2, 0.1]])
    assert greedy_pairing(sim) == {0: 1, 1: 0}


def test_xmixup_needs_as_many_source_classes_as_target_classes():
    with pytest.raises(ValueError, match="at least as many classes"):
        greedy_pairing(np.ones((4, 3)))


def test_xmixup_mixes_each_target_sample_with_its_paired_source_class():
    cfg = TrainConfig(method="xmixup", mixup_alpha=1.0, xmixup_aux_size=0)  # one pairing round
    model = tiny_net()
    ctx = ctx_for(cfg, model)
    method = build_method(cfg)
    method.setup(ctx)
    assert sorted(method.pairing) == list(range(N_TGT)) and len(set(method.pairing.values())) == N_TGT
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    idx = method.draw_auxiliary(y, torch.Generator().manual_seed(0))
    assert [int(ctx.data.source_y[i]) for i in idx] == [method.pairing[int(t)] for t in y]
    loss, metrics = method.loss(ctx, 1, 10)
    loss.backward()
    assert model.source_head.weight.grad is not None and model.target_head.weight.grad is not None
    info = method.result_info()["xmixup_pairing"]
    assert info["target_to_source"] == {str(t): s for t, s in method.pairing.items()}


def _check_rounds(rounds, n_target):
    used = [s for r in rounds for s in r.values()]
    assert len(used) == len(set(used))  # no source class is selected twice, across all rounds
    for r in rounds:
        assert set(r) <= set(range(n_target))
        assert len(set(r.values())) == len(r)  # one-to-one within the round


def test_xmixup_repeated_pairing_reaches_the_threshold_one_to_one_per_round():
    # Sec. 4.2 on a constructed case: 2 target classes, 7 source classes; target t's similarity to
    # source s falls with s, and target 1 always comes second, so round r pairs 0 -> 2r, 1 -> 2r + 1.
    sim = np.array([[0.9 - 0.1 * s for s in range(7)], [0.85 - 0.1 * s for s in range(7)]])
    sizes = [10, 10, 10, 10, 10, 10, 5]
    rounds = repeated_pairing(sim, sizes, threshold=45)
    assert rounds == [{0: 0, 1: 1}, {0: 2, 1: 3}, {0: 4, 1: 5}]
    _check_rounds(rounds, 2)
    size = lambda rs: sum(sizes[s] for r in rs for s in r.values())  # noqa: E731
    assert size(rounds) >= 45 > size(rounds[:-1])  # stops at the first round that reaches it
    # Every target class is paired in every round the source allows; the last round is partial when
    # fewer unused source classes remain than target classes; the source runs out before 1000.
    everything = repeated_pairing(sim, sizes, threshold=1000)
    _check_rounds(everything, 2)
    assert everything[:3] == rounds and everything[3] == {0: 6} and size(everything) == sum(sizes)
    # Threshold 0 (or one already reached by the first round): the single greedy round.
    assert repeated_pairing(sim, sizes, threshold=0) == [greedy_pairing(sim)]
    assert repeated_pairing(sim, sizes, threshold=20) == [{0: 0, 1: 1}]


def test_xmixup_draws_from_all_classes_of_its_rounds_and_reports_them():
    cfg = TrainConfig(method="xmixup", mixup_alpha=1.0)  # default threshold 200,000 > the 16 samples
    model = tiny_net()
    ctx = ctx_for(cfg, model)
    method = build_method(cfg)
    method.setup(ctx)
    assert len(method.rounds) == 2 and len(method.rounds[0]) == N_TGT and len(method.rounds[1]) == 1
    _check_rounds(method.rounds, N_TGT)
    ((t2, s2),) = method.rounds[1].items()
    y = torch.full((200,), t2)
    drawn = {int(ctx.data.source_y[i]) for i in method.draw_auxiliary(y, torch.Generator().manual_seed(0))}
    assert drawn == {method.rounds[0][t2], s2}  # both paired classes of t2 are drawn from
    info = method.result_info()["xmixup_pairing"]
    assert info["rounds"] == [{str(t): s for t, s in r.items()} for r in method.rounds]
    assert info["auxiliary_size"] == len(ctx.data.source_y) and info["aux_size_threshold"] == 200_000


# --------------------------------------------------------------------------------------------------
# mean teachers: SMILE and ICT


@pytest.mark.parametrize("method_cls, method", [(SMILE, "smile"), (ICT, "ict")])
def test_teacher_gets_no_gradient_and_moves_by_exactly_the_ema_rule(method_cls, method):
    cfg = TrainConfig(method=method, ema_decay=0.9, k_points=3)
    model = tiny_net()
    ctx = ctx_for(cfg, model)
    m = method_cls(cfg)
    m.setup(ctx)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in (1, 2, 3):
        before = [p.detach().clone() for p in m.teacher.parameters()]
        loss, _ = m.loss(ctx, step, 10)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None and not p.requires_grad for p in m.teacher.parameters())
        assert model.target_head.weight.grad is not None
        opt.step()
        m.after_step(ctx, step, 10)
        d = cfg.ema_decay if method == "smile" else ema_decay_at(step, cfg.ema_decay)
        for t, b, s in zip(m.teacher.parameters(), before, model.parameters(), strict=True):
            assert torch.allclose(t, d * b + (1 - d) * s.detach(), atol=1e-6, rtol=0)  # float rounding only


def test_ict_ema_decay_warms_up_then_holds():
    assert ema_decay_at(1, 0.999) == 0.5
    assert ema_decay_at(9, 0.999) == pytest.approx(0.9)
    assert ema_decay_at(10_000, 0.999) == 0.999


def test_ict_weight_follows_the_linear_ramp_of_paper_003():
    T = 1000
    assert ict_weight(0, T, 100.0, 0.4) == 0.0
    assert ict_weight(200, T, 100.0, 0.4) == pytest.approx(50.0)
    assert ict_weight(400, T, 100.0, 0.4) == pytest.approx(100.0)
    assert ict_weight(900, T, 100.0, 0.4) == 100.0
    steps = range(1, T + 1)
    ws = [ict_weight(t, T, 10.0, 0.25) for t in steps]
    assert all(b >= a for a, b in zip(ws, ws[1:], strict=False))  # non-decreasing
    assert ict_weight(1, T, 7.0, 0.0) == 7.0  # no ramp


def test_ict_reports_its_ramped_weight_per_epoch():
    from trainers import train

    cfg = dict(
        method="ict", n_target=30, epochs=2, steps_per_epoch=2, num_threads=1, device="cpu", ict_w_max=4.0
    )
    cfg["ict_rampup"] = 1.0
    result = train(cfg)
    T = result.total_steps
    for m in result.history:
        steps = range(m["step"] - 1, m["step"] + 1)
        expect = sum(ict_weight(t, T, 4.0, 1.0) for t in steps) / 2
        assert m["ict_weight"] == pytest.approx(expect)


def test_smile_regularizers_reach_the_student_only():
    cfg = TrainConfig(method="smile", smile_feature_weight=1.0, smile_source_weight=1.0)
    model = tiny_net()
    ctx = ctx_for(cfg, model)
    m = SMILE(cfg)
    m.setup(ctx)
    loss, metrics = m.loss(ctx, 1, 10)
    assert metrics["smile_feature_loss"] >= 0 and metrics["smile_source_loss"] >= 0
    assert 0.5 <= metrics["mix_lambda"] <= 1.0  # folded
    loss.backward()
    assert model.source_head.weight.grad is not None  # the source-label head is trained


# --------------------------------------------------------------------------------------------------
# AutoMix


def test_automix_mask_is_in_unit_interval_with_the_input_shape():
    torch.manual_seed(0)
    block = MixBlock(8)
    z = torch.randn(5, 8, 4, 4)
    perm = torch.tensor([1, 2, 3, 4, 0])
    for lam in (0.0, 0.3, 1.0):
        s = block(z, lam, perm, (16, 16))
        assert s.shape == (5, 1, 16, 16)
        assert torch.all(s >= 0) and torch.all(s <= 1)
    x = torch.randn(5, 3, 16, 16)
    x_mix = apply_mask(x, s, perm)
    assert x_mix.shape == x.shape


def test_automix_mask_loss_is_zero_within_the_margin_and_linear_outside():
    lam = 0.4
    inside = torch.full((3, 1, 8, 8), lam + 0.09)
    assert float(mask_loss(inside, lam, 0.1)) == 0.0
    assert float(mask_loss(torch.full((3, 1, 8, 8), lam - 0.099), lam, 0.1)) == 0.0
    outside = torch.full((3, 1, 8, 8), lam + 0.3)
    assert float(mask_loss(outside, lam, 0.1)) == pytest.approx(0.2)


def test_automix_momentum_rises_from_m0_to_one_on_a_cosine():
    T = 100
    assert momentum_at(0, T, 0.999) == pytest.approx(0.999)
    assert momentum_at(T // 2, T, 0.999) == pytest.approx(0.9995)
    assert momentum_at(T, T, 0.999) == pytest.approx(1.0)
    ms = [momentum_at(t, T, 0.999) for t in range(T + 1)]
    assert all(b >= a for a, b in zip(ms, ms[1:], strict=False))


def test_automix_losses_are_decoupled_and_the_momentum_encoder_is_evaluated():
    cfg = TrainConfig(method="automix", automix_stage=2)
    model = tiny_net()
    ctx = ctx_for(cfg, model)
    m = AutoMix(cfg)
    m.setup(ctx)
    loss, metrics = m.loss(ctx, 1, 10)
    loss.backward()
    # the momentum encoder receives no gradient; the Mix Block (generation) and f_q (classification) do
    assert all(p.grad is None and not p.requires_grad for p in m.encoder_k.parameters())
    assert all(p.grad is not None for p in m.mix_block.parameters())
    assert model.target_head.weight.grad is not None
    assert 0.0 <= float(metrics["automix_mask_mean"]) <= 1.0
    assert m.eval_model(model) is m.encoder_k


def test_automix_classification_loss_sends_no_gradient_to_the_mix_block():
    cfg = TrainConfig(method="automix", automix_stage=1, automix_mask_weight=0.0)
    model = tiny_net()
    ctx = ctx_for(cfg, model)
    m = AutoMix(cfg)
    m.setup(ctx)
    # Freeze the generation path: with f_k's output detached only l_cls could reach the Mix Block.
    original = m.encoder_k.forward
    m.encoder_k.forward = lambda x, d="target": original(x, d).detach()
    loss, _ = m.loss(ctx, 1, 10)
    loss.backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in m.mix_block.parameters())


def test_every_small_backbone_gives_stage_features():
    from trainers.models import build_backbone

    x = torch.randn(2, 3, 16, 16)
    for name in ("small_cnn", "resnet20", "wrn10_2"):
        bb = build_backbone(name, 3)
        shapes = [tuple(bb.stage_features(x, s).shape) for s in range(1, bb.n_stages + 1)]
        assert len(shapes) == 3 and all(len(s) == 4 and s[0] == 2 for s in shapes)
        with pytest.raises(ValueError):
            bb.stage_features(x, bb.n_stages + 1)


# --------------------------------------------------------------------------------------------------
# ICT's consistency distance (issue 11, part 3)


@pytest.mark.parametrize("distance", ["logit_l2", "softmax_mse"])
def test_ict_consistency_is_the_distance_computed_by_hand(distance):
    k = 3
    cfg = TrainConfig(method="ict", k_points=k, ict_distance=distance)
    model = tiny_net()
    ctx = ctx_for(cfg, model, seed=5)
    m = ICT(cfg)
    m.setup(ctx)
    with torch.no_grad():  # make the student differ from its teacher
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    _, metrics = m.loss(ctx, 3, 10)
    # The same draws, by hand: Dirichlet weights from ctx.rng, then K - 1 permutations from ctx.gen.
    u = ctx.unlabeled()
    w = sample_dirichlet(np.random.default_rng(5), [cfg.resolved_mixup_alpha] * k)
    perms = permutations(len(u), k, torch.Generator().manual_seed(5), torch.device("cpu"))
    with torch.no_grad():
        z_t = m.teacher(u, "target").double()
        z_s = model(sum(float(wk) * u[p] for wk, p in zip(w, perms, strict=True)), "target").double()
    target = sum(float(wk) * z_t[p] for wk, p in zip(w, perms, strict=True))
    per_sample = []
    for i in range(len(u)):
        if distance == "logit_l2":  # the paper: L2 distance of the logits
            per_sample.append(
                math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(z_s[i], target[i], strict=True)))
            )
        else:  # softmax outputs, teacher outputs mixed after the softmax, squared, / n_classes
            p_t = sum(float(wk) * torch.softmax(z_t, 1)[p] for wk, p in zip(w, perms, strict=True))
            p_s = torch.softmax(z_s, 1)
            per_sample.append(
                sum((float(a) - float(b)) ** 2 for a, b in zip(p_s[i], p_t[i], strict=True)) / N_TGT
            )
    assert float(metrics["ict_consistency"]) == pytest.approx(sum(per_sample) / len(u), rel=1e-5)


def test_logit_l2_distance_is_not_squared():
    a = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 4.0], [0.0, 1.0]])
    assert float(logit_l2_distance(a, b)) == pytest.approx((5.0 + 1.0) / 2)


# --------------------------------------------------------------------------------------------------
# SMILE options of the public code (issue 11, part 6)


def _smile_steps(cfg, steps, total=10):
    """Run SMILE for `steps` optimiser steps; the teacher's parameters after each step."""
    model = tiny_net()
    ctx = ctx_for(cfg, model)
    m = SMILE(cfg)
    m.setup(ctx)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshots, losses = [[p.detach().clone() for p in m.teacher.parameters()]], []
    for step in range(1, steps + 1):
        student_before = [p.detach().clone() for p in model.parameters()]
        loss, metrics = m.loss(ctx, step, total)
        losses.append((loss.detach(), metrics, student_before))
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step(ctx, step, total)
        snapshots.append([p.detach().clone() for p in m.teacher.parameters()])
    return m, model, ctx, snapshots, losses


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_smile_teacher_moves_only_every_interval_steps():
    cfg = TrainConfig(method="smile", ema_decay=0.9, smile_teacher_interval=3)
    m, model, _, snaps, _ = _smile_steps(cfg, 6)
    moved = [not _same(snaps[t], snaps[t - 1]) for t in range(1, 7)]
    assert moved == [False, False, True, False, False, True]
    # The default (interval 1) moves every step.
    _, _, _, snaps1, _ = _smile_steps(TrainConfig(method="smile", ema_decay=0.9), 3)
    assert all(not _same(snaps1[t], snaps1[t - 1]) for t in range(1, 4))


def test_smile_teacher_heads_are_not_averaged_when_excluded():
    cfg = TrainConfig(method="smile", ema_decay=0.9, smile_ema_heads=False)
    m, model, _, snaps, _ = _smile_steps(cfg, 3)
    names = [n for n, _ in m.teacher.named_parameters()]
    heads = [i for i, n in enumerate(names) if n.startswith(("target_head.", "source_head."))]
    assert heads and len(heads) < len(names)
    for i in heads:  # the teacher's classifiers keep their initial (pretrained) weights
        assert torch.equal(snaps[-1][i], snaps[0][i])
    student = dict(model.named_parameters())
    for i, n in enumerate(names):  # the backbone follows the EMA rule at the last step
        if i not in heads:
            assert torch.allclose(snaps[-1][i], 0.9 * snaps[-2][i] + 0.1 * student[n].detach(), atol=1e-6)
    # with the default, the heads move as well
    _, _, _, snaps_d, _ = _smile_steps(TrainConfig(method="smile", ema_decay=0.9), 1)
    assert not torch.equal(snaps_d[1][heads[0]], snaps_d[0][heads[0]])


def test_smile_last_phase_is_plain_fine_tuning():
    cfg = TrainConfig(method="smile", ema_decay=0.9, smile_finetune_fraction=0.4)
    m, model, ctx, snaps, losses = _smile_steps(cfg, 10, total=10)
    assert [m.in_finetune_phase(t, 10) for t in range(1, 11)] == [False] * 6 + [True] * 4
    for t, (loss, metrics, student_before) in enumerate(losses, start=1):
        x, y = ctx.target()
        net = tiny_net()  # the student as it was at step t (train mode: batch statistics)
        with torch.no_grad():
            for p, b in zip(net.parameters(), student_before, strict=True):
                p.copy_(b)
        if t <= 6:
            assert "smile_feature_loss" in metrics
        else:  # CE on the clean target batch: no mixup, teacher or source head; teacher frozen
            assert metrics == {}
            with torch.no_grad():
                plain = float(torch.nn.functional.cross_entropy(net(x), y))
            assert float(loss) == pytest.approx(plain, rel=1e-6)
            assert _same(snaps[t], snaps[t - 1])


# --- ICT's unlabeled pool (issue 11, part 2) ---------------------------------------------------------


def test_icts_default_pool_is_the_targets_unlabeled_remainder_and_never_a_labeled_val_or_test_sample():
    config = TrainConfig(method="ict", n_target=40)
    assert config.unlabeled == "target"
    data = load_transfer_data(config, load_source=False, load_target_rest=True)
    idx = data.indices
    rest = set(idx["target_rest"].tolist())
    assert len(rest) == len(data.target_rest_x) > 0
    assert not rest & set(idx["target_train"].tolist())
    assert not rest & set(idx["val"].tolist())
    assert not rest & set(idx["test"].tolist())  # digits: the test set is carved from the training split
    # Labeled N + remainder = the whole training pool left after validation and test.
    pool = load_transfer_data(TrainConfig(method="ict", n_target=None), load_source=False)
    assert rest | set(idx["target_train"].tolist()) == set(pool.indices["target_train"].tolist())
    # The remainder is normalised as the training subset is (same channel statistics applied).
    assert torch.isfinite(data.target_rest_x).all() and data.target_rest_x.shape[1:] == data.val_x.shape[1:]


def test_an_ict_trial_says_which_pool_it_used_and_how_large_it_was():
    base = dict(method="ict", n_target=40, epochs=1, steps_per_epoch=2, num_threads=1, device="cpu")
    default = train(base)
    assert default.method_info["unlabeled_pool"] == "target"
    rest = load_transfer_data(TrainConfig(**base), load_source=False, load_target_rest=True).target_rest_x
    assert default.data_sizes["n_unlabeled"] == len(rest)
    source = train(dict(base, unlabeled="source"))
    assert source.method_info["unlabeled_pool"] == "source"
    assert source.data_sizes["n_unlabeled"] == source.data_sizes["n_source"]
    assert default.history != source.history


def test_icts_default_pool_with_every_target_sample_labeled_is_a_clear_error():
    with pytest.raises(ValueError, match="beyond the N labeled ones.*unlabeled to 'source'"):
        train(dict(method="ict", n_target=None, epochs=1, steps_per_epoch=1, num_threads=1, device="cpu"))


def test_with_the_papers_distance_ict_holds_w_max_at_100_unless_the_study_searches_it():
    from search_spaces import Param, method_space

    assert not method_space("ict")["ict_w_max"].fixed
    paper = method_space("ict", trainer={"ict_distance": "logit_l2"})
    assert paper["ict_w_max"] == Param(value=100.0)
    asked = method_space("ict", {"ict_w_max": Param(low=1, high=100)}, trainer={"ict_distance": "logit_l2"})
    assert (asked["ict_w_max"].low, asked["ict_w_max"].high) == (1, 100)


@pytest.mark.parametrize("dataset, target_classes", [("digits", [3, 4, 5]), ("synthetic", [0, 1, 2])])
def test_a_named_pool_of_the_targets_own_dataset_never_holds_a_labeled_val_or_test_image(
    dataset, target_classes
):
    from trainers.loop import _unlabeled_pool

    config = TrainConfig(
        method="ict",
        source=dataset,
        target=dataset,
        unlabeled=dataset,
        n_target=40,
        target_classes=target_classes,
        source_classes=[6, 7, 8] if dataset == "digits" else [3, 4, 5],
    )
    data = load_transfer_data(config, load_source=False)
    pool = _unlabeled_pool(config, data, torch.device("cpu"))
    # Compare images, not positions: no pool image equals a labeled, validation or test image.
    # (Both sides are normalised differently, so undo it by matching on the rank of pixel values.)
    assert len(pool) > 0

    def key(x: torch.Tensor) -> set[bytes]:
        return {row.argsort(stable=True).numpy().tobytes() for row in x.flatten(1)}

    used = key(torch.cat([data.target_train_x, data.val_x, data.test_x]))
    assert not key(pool) & used

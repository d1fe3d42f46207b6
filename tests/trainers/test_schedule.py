"""lambda(t) of eq. 4 and its limits (eq. 5, eq. 6), and the learning-rate schedule."""

import math

import pytest

from trainers.schedule import constant_weight, learning_rate, loss_weight, sigmoid_weight, step_weight

T = 1000


def eq4(t, T, t0, tau, alpha):
    """Eq. 4 written out literally (t0, tau in iterations); fine for moderate arguments."""
    return 1.0 / (1.0 + math.exp(-(t - T / 2 - t0) / tau + alpha))


@pytest.mark.parametrize(
    "t, t0, tau, alpha",
    [
        (1, 0.0, 50.0, 0.0),
        (500, 0.0, 50.0, 0.0),  # the midpoint: exactly 1/2
        (620, 100.0, 30.0, 0.5),
        (250, -200.0, 80.0, -1.5),
        (999, 300.0, 400.0, 2.0),
        (10, 0.0, 1000.0, 3.0),
    ],
)
def test_sigmoid_matches_eq4_by_hand(t, t0, tau, alpha):
    assert sigmoid_weight(t, T, t0, tau, alpha) == pytest.approx(eq4(t, T, t0, tau, alpha), rel=1e-12)
    # loss_weight takes t0 and tau as fractions of T.
    got = loss_weight("smooth", t, T, t0=t0 / T, tau=tau / T, alpha=alpha)
    assert got == pytest.approx(eq4(t, T, t0, tau, alpha), rel=1e-12)


def test_midpoint_and_alpha_sign():
    assert loss_weight("smooth", 500, T, t0=0.0, tau=0.05, alpha=0.0) == 0.5
    # "+alpha" inside exp(...): a larger alpha lowers the target weight.
    low = loss_weight("smooth", 500, T, t0=0.0, tau=0.05, alpha=2.0)
    high = loss_weight("smooth", 500, T, t0=0.0, tau=0.05, alpha=-2.0)
    assert low == pytest.approx(1 / (1 + math.e**2)) and high == pytest.approx(1 / (1 + math.e**-2))


@pytest.mark.parametrize("t0", [-0.3, 0.0, 0.2])
@pytest.mark.parametrize("alpha", [-3.0, 0.0, 4.0])
def test_tau_to_zero_is_the_step_of_eq5(t0, alpha):
    switch = T / 2 + t0 * T
    for t in range(1, T + 1):
        if abs(t - switch) < 1:  # eq. 5 leaves the switch point itself open
            continue
        assert loss_weight("smooth", t, T, t0=t0, tau=1e-9, alpha=alpha) == step_weight(t, T, t0 * T)
        assert loss_weight("finetune", t, T, t0=t0) == (1.0 if t > switch else 0.0)


@pytest.mark.parametrize("alpha", [-5.0, -0.7, 0.0, 1.3, 6.0])
def test_tau_to_infinity_is_the_constant_of_eq6(alpha):
    const = 1.0 / (1.0 + math.exp(alpha))
    assert constant_weight(alpha) == pytest.approx(const, rel=1e-15)
    for t in (1, 250, 500, 751, T):
        assert loss_weight("smooth", t, T, t0=0.3, tau=1e12, alpha=alpha) == pytest.approx(const, rel=1e-9)
        assert loss_weight("multitask", t, T, alpha=alpha) == pytest.approx(const, rel=1e-15)


@pytest.mark.parametrize("tau", [1e-300, 5e-324, 1e-30, 1.0, 1e30, 1e300, math.inf])
@pytest.mark.parametrize("t0", [-1e12, -0.5, 0.0, 0.5, 1e12])
@pytest.mark.parametrize("alpha", [-700.0, -50.0, 0.0, 50.0, 700.0, 1e6, -1e6])
def test_no_overflow_or_nan_at_extreme_arguments(tau, t0, alpha):
    for t in (1, T // 2, T):
        lam = loss_weight("smooth", t, T, t0=t0, tau=tau, alpha=alpha)
        assert math.isfinite(lam) and 0.0 <= lam <= 1.0


def test_extreme_limits_have_the_right_values():
    # tiny tau: 0 before the switch, 1 after, regardless of alpha
    assert loss_weight("smooth", 1, T, t0=0.0, tau=1e-300, alpha=700.0) == 0.0
    assert loss_weight("smooth", T, T, t0=0.0, tau=1e-300, alpha=-700.0) == 1.0
    # switch pushed out of the run by t0
    assert loss_weight("smooth", T, T, t0=1e12, tau=0.05) == 0.0
    assert loss_weight("smooth", 1, T, t0=-1e12, tau=0.05) == 1.0
    # huge tau: the multitask constant
    assert loss_weight("smooth", 1, T, t0=0.0, tau=1e300, alpha=700.0) == pytest.approx(0.0, abs=1e-300)
    assert loss_weight("smooth", 1, T, t0=0.0, tau=1e300, alpha=-700.0) == 1.0


def test_tau_must_be_positive():
    with pytest.raises(ValueError):
        loss_weight("smooth", 1, T, tau=0.0)
    with pytest.raises(ValueError):
        loss_weight("smooth", 1, T, tau=-1.0)


def test_named_methods():
    for t in (1, 499, 500, 501, T):
        assert loss_weight("target", t, T, t0=0.3, tau=0.01, alpha=5.0) == 1.0
        assert loss_weight("multitask", t, T, t0=0.3, tau=0.01, alpha=0.0) == 0.5
    # finetune with t0 = 0: exactly T/2 source steps, then T/2 target steps
    weights = [loss_weight("finetune", t, T) for t in range(1, T + 1)]
    assert weights[: T // 2] == [0.0] * (T // 2) and weights[T // 2 :] == [1.0] * (T // 2)
    # t0 moves the switch: 0.1 * T later
    assert loss_weight("finetune", 600, T, t0=0.1) == 0.0 and loss_weight("finetune", 601, T, t0=0.1) == 1.0
    # smooth is monotone increasing in t
    smooth = [loss_weight("smooth", t, T, t0=0.1, tau=0.05, alpha=0.5) for t in range(1, T + 1)]
    assert all(a <= b for a, b in zip(smooth, smooth[1:], strict=False))
    with pytest.raises(ValueError):
        loss_weight("mixup", 1, T)


def test_learning_rate_warmup_and_cosine_endpoints():
    peak, final = 0.1, 1e-3
    n_warm = math.ceil(0.025 * T)  # 25 steps
    lr = [learning_rate(t, T, peak=peak, final=final, warmup=0.025) for t in range(1, T + 1)]
    assert lr[0] == pytest.approx(peak / n_warm)
    assert lr[n_warm - 1] == pytest.approx(peak)  # end of the linear warm-up
    assert all(b > a for a, b in zip(lr[: n_warm - 1], lr[1:n_warm], strict=True))
    assert lr[-1] == pytest.approx(final)  # cosine reaches the final rate at t = T
    assert all(b <= a for a, b in zip(lr[n_warm:], lr[n_warm + 1 :], strict=False))
    # halfway through the cosine part: the mean of peak and final
    mid = n_warm + (T - n_warm) // 2
    assert learning_rate(mid, T, peak=peak, final=final, warmup=0.025) == pytest.approx(
        (peak + final) / 2, rel=1e-2
    )
    # no warm-up: starts (almost) at the peak
    assert learning_rate(1, T, peak=peak, final=final, warmup=0.0) == pytest.approx(peak, rel=1e-4)
    assert learning_rate(T, T, peak=peak, final=final, warmup=0.0) == pytest.approx(final)

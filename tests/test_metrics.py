import math

import pytest
import torch

import probcomp as pc
from probcomp import metrics


def test_w2_hand_computed_case():
    # optimal matching pairs (0,0)->(0,1) and (3,0)->(3,2): squared distances 1 and 4
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    y = torch.tensor([[3.0, 2.0], [0.0, 1.0]])
    assert metrics.w2(x, y) == pytest.approx(math.sqrt((1 + 4) / 2))
    assert metrics.w2(x, x) == 0.0
    with pytest.raises(pc.ShapeError, match="equal sample sizes"):
        metrics.w2(x, y[:1])


def test_w2_between_shifted_gaussians(gen):
    x = torch.randn(1500, 2, generator=gen, dtype=torch.float64)
    shift = torch.tensor([0.6, -0.8], dtype=torch.float64)
    # W2 of a translation is the translation length (exact for the empirical pair x, x + shift)
    assert metrics.w2(x, x + shift) == pytest.approx(1.0, abs=1e-9)


def test_sliced_w2_known_answers(gen):
    x = torch.randn(4000, 3, generator=gen, dtype=torch.float64)
    assert metrics.sliced_w2(x, x) == 0.0
    # translation by v: each direction moves by theta.v, E[(theta.v)^2] = |v|^2 / d
    v = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    assert metrics.sliced_w2(x, x + v, num_projections=4000) == pytest.approx(3.0 / math.sqrt(3), rel=0.03)
    # unequal sizes are fine
    assert metrics.sliced_w2(x, x[:1000]) < 0.1


def test_mmd_hand_computed_and_analytic(gen):
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[0.0], [2.0]])
    k = lambda d: math.exp(-(d**2) / 2)  # noqa: E731  (h = 1)
    expect = k(1) + k(2) - 2 * (k(0) + k(2) + k(1) + k(1)) / 4
    assert metrics.mmd(x, y, bandwidth=1.0) == pytest.approx(expect)
    # two 1-D Gaussians N(0, s^2), N(m, s^2): MMD^2 = 2 sqrt(h^2/(h^2+2s^2)) (1 - exp(-m^2/(2(h^2+2s^2))))
    h, s, m = 1.0, 0.5, 1.0
    a = torch.randn(4000, 1, generator=gen, dtype=torch.float64) * s
    b = torch.randn(4000, 1, generator=gen, dtype=torch.float64) * s + m
    truth = 2 * math.sqrt(h**2 / (h**2 + 2 * s**2)) * (1 - math.exp(-(m**2) / (2 * (h**2 + 2 * s**2))))
    assert metrics.mmd(a, b, bandwidth=h) == pytest.approx(truth, abs=0.025)  # ~2 std. errors
    assert abs(metrics.mmd(a, a.flip(0) * -1, bandwidth=h)) < 0.005


def test_kl_and_js_known_answers(gen):
    # KL(N(0, I) || N(m, I)) = |m|^2 / 2 in 2-D
    s = 0.25
    p = pc.factors.Gaussian([0.0, 0.0], s)
    q = pc.factors.Gaussian([0.3, 0.0], s)
    xs = p.sample(200_000, gen)
    rng = ((-1.5, 1.5), (-1.5, 1.5))
    truth = 0.3**2 / (2 * s**2)
    assert metrics.kl_hist(xs, q.log_prob, bins=60, range=rng) == pytest.approx(truth, rel=0.05)
    assert metrics.kl_hist(p.log_prob, q.log_prob, bins=60, range=rng) == pytest.approx(truth, rel=0.02)
    assert metrics.js_hist(xs, xs) == 0.0
    far = pc.factors.Gaussian([1.0, 1.0], 0.05).sample(5000, gen)
    near0 = pc.factors.Gaussian([-1.0, -1.0], 0.05).sample(5000, gen)
    assert metrics.js_hist(far, near0) == pytest.approx(math.log(2), abs=0.01)


def test_mean_log_likelihood():
    g = pc.factors.Gaussian([0.0], 1.0)
    x = torch.tensor([[0.0], [1.0]])
    assert metrics.mean_log_likelihood(x, g) == pytest.approx(-0.5 * math.log(2 * math.pi) - 0.25)


def test_mode_weights_and_coverage():
    means = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    xs = torch.tensor([[0.1, 0.0], [0.9, 0.1], [1.1, 0.0], [0.05, 0.02], [0.1, 5.0]])
    w = metrics.mode_weights(xs, means)
    torch.testing.assert_close(w, torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64))
    w_r = metrics.mode_weights(xs, means, radius=0.5)
    torch.testing.assert_close(w_r, torch.tensor([0.4, 0.4, 0.0], dtype=torch.float64))
    assert metrics.mode_coverage(xs, means, radius=0.5) == pytest.approx(2 / 3)
    assert metrics.mode_coverage(xs, means, weights=[0.5, 0.5, 0.0]) == 1.0


def test_metrics_reject_bad_input():
    with pytest.raises(pc.ShapeError, match="NaN"):
        metrics.w2(torch.tensor([[float("nan")]]), torch.tensor([[0.0]]))
    with pytest.raises(pc.ShapeError, match="dimension"):
        metrics.mmd(torch.zeros(3, 2), torch.zeros(3, 3))

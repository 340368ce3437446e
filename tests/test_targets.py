import json
import math

import pytest
import torch
from scipy import stats

from probcomp import datasets, metrics
from probcomp import targets as T
from probcomp.errors import DataError

# A cell-centred grid on [-1.2, 1.2]^2 whose cell edges fall on every box edge used here
# (+-0.2, 0.3, 0.6, 0.7, 1, 1.1): the midpoint rule is then exact for the uniform sets
# and, at 1/6 of the ring's std, accurate to far below 1e-6 for the Gaussian parts.
_H = 0.005


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the grids and the W2 assignments are small: one thread keeps them fast on a busy machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_grid(h):
    c = torch.arange(-1.2 + h / 2, 1.2, h, dtype=torch.float64)
    return torch.stack(torch.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)


GRID = make_grid(_H)


def grid_mass(log_prob, mask=None, h=_H):
    p = log_prob(GRID if h == _H else make_grid(h)).to(torch.float64).exp()
    if mask is not None:
        p = p[mask]
    return float(p.sum() * h * h)


def bruteforce_ring_bar(n, spread, gen):
    """Exact product samples by rejection: ring draws kept with probability bar_s(x) / max bar_s."""
    ring, bar = datasets.ring(), T.spread_bar(spread)
    top = (1 - spread) / 0.8 + spread / 4.84
    out, have = [], 0
    while have < n:
        x = ring.sample(4 * n, gen).to(torch.float64)
        keep = torch.rand(x.shape[0], generator=gen, dtype=torch.float64) < bar.log_prob(x).exp() / top
        out.append(x[keep])
        have += int(keep.sum())
    return torch.cat(out)[:n]


def test_ring_and_bar_match_the_zoo_data_sets(gen):
    x = 1.3 * (2 * torch.rand(3000, 2, generator=gen, dtype=torch.float64) - 1)
    ring = datasets.ring()
    r_factor, _, _ = T.analytic_ring_bar()
    # (the zoo ring's std is 0.03 rounded to float32, hence 1e-6 rather than 1e-12)
    torch.testing.assert_close(r_factor.log_prob(x), ring.log_prob(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(T.spread_bar(0.0).log_prob(x), datasets.bar().log_prob(x))
    # the product's log-density is ring + bar - log Z, with Z from the CDFs
    t = T.ring_bar_product(0.01)
    lp = ring.log_prob(x) + T.spread_bar(0.01).log_prob(x) - t.log_z
    torch.testing.assert_close(t.log_prob(x), lp, rtol=1e-6, atol=1e-6)
    assert t.mode_means.shape == (8, 2)


@pytest.mark.parametrize("spread", [0.01, 0.0])
def test_normaliser_and_mode_masses_match_quadrature(spread):
    t = T.ring_bar_product(spread)
    ring, bar = datasets.ring(), T.spread_bar(spread)
    unnorm = ring.log_prob(GRID) + bar.log_prob(GRID)  # an independent path to ring * bar
    z_quad = float(unnorm.exp().sum() * _H * _H)
    assert t.z == pytest.approx(z_quad, rel=1e-5)
    # mass of the product near each ring centre, by quadrature
    cell = t.mode_of(GRID)
    p = (unnorm - t.log_z).exp() * _H * _H
    quad = torch.zeros(8, dtype=torch.float64).index_add_(0, cell, p)
    torch.testing.assert_close(t.mode_weights, quad, rtol=1e-4, atol=1e-7)
    assert float(t.mode_weights.sum()) == pytest.approx(1.0, abs=1e-12)


def test_exact_numbers_of_the_published_protocol():
    t = T.ring_bar_product(0.01)
    c_bar, c_sq = 0.99 / 0.8, 0.01 / 4.84
    # by hand: two modes sit inside the bar, every mode sits inside the square
    assert t.z == pytest.approx((2 * c_bar + 8 * c_sq) / 8, rel=1e-6)
    w = t.mode_weights
    assert float(w[2]) == pytest.approx(float(w[6]), rel=1e-12)
    assert float(w[2] + w[6]) == pytest.approx(0.995024, abs=1e-6)
    # modes at angles 0 and pi: only the spread reaches them
    assert float(w[0]) == pytest.approx(c_sq / 8 / t.z, rel=1e-9)
    assert float(w[0]) == pytest.approx(8.29256e-4, rel=1e-5)
    # diagonal modes also get the bar's Gaussian tail (~7.7e-8)
    assert float(w[1] - w[0]) == pytest.approx(7.65e-8, rel=0.01)
    hard = T.ring_bar_product(0.0)
    assert hard.z == pytest.approx(0.3125, rel=1e-6)
    assert float(hard.mode_weights[[1, 3, 5, 7]].sum()) == pytest.approx(4 * 7.70157e-8, rel=1e-5)
    assert 0 < float(hard.mode_weights[0]) < 1e-22
    d = t.describe()
    json.dumps(d)
    assert d["Z"] == pytest.approx(0.311441, abs=1e-6) and len(d["mode_weights"]) == 8


def test_truncated_normal_is_exact_far_in_the_tails(gen):
    for a, b in [(-23.3, -10.0), (10.0, 23.3), (40.0, 41.0), (-0.5, 2.0), (3.0, 3.001)]:
        n = 4000
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        z = T.truncated_normal(torch.full((n,), a), torch.full((n,), b), u)
        assert bool(((z >= a) & (z <= b)).all())
        assert stats.kstest(z.numpy(), stats.truncnorm(a, b).cdf).pvalue > 1e-3


@pytest.mark.parametrize("spread", [0.01, 0.0])
def test_log_prob_integrates_to_one(spread):
    assert grid_mass(T.ring_bar_product(spread).log_prob) == pytest.approx(1.0, abs=1e-5)


def test_exact_sampler_agrees_with_bruteforce_rejection(gen):
    t = T.ring_bar_product(0.01)
    n = 40_000
    x = t.sample(n, torch.Generator().manual_seed(1)).to(torch.float64)
    ref = bruteforce_ring_bar(n, 0.01, gen)
    assert torch.isfinite(t.log_prob(x)).all()
    # means: both near 0 (symmetric target), within 5 standard errors of each other
    se = (x.var(0) / n + ref.var(0) / n).sqrt()
    assert bool(((x.mean(0) - ref.mean(0)).abs() < 5 * se).all())
    # minor-mode mass (the 1% spread reaches the six minor modes): ~0.5% on both sides
    minor = lambda s: float((~torch.isin(t.mode_of(s), torch.tensor([2, 6]))).double().mean())  # noqa: E731
    p_minor = 1 - float(t.mode_weights[[2, 6]].sum())
    tol = 5 * math.sqrt(2 * p_minor * (1 - p_minor) / n)
    assert abs(minor(x) - minor(ref)) < tol
    # shape within the dominant modes: two-sample KS on each coordinate
    upper = lambda s: s[t.mode_of(s) == 2]  # noqa: E731
    for i in range(2):
        assert stats.ks_2samp(upper(x)[:, i].numpy(), upper(ref)[:, i].numpy()).pvalue > 1e-3
    # W2 within the upper mode against the floor of two independent reference draws (over
    # the whole target W2 is dominated by how many points each mode happens to get)
    m = 1000
    up = upper(ref)
    floor = metrics.w2(up[:m], up[m : 2 * m])
    assert metrics.w2(upper(x)[:m], up[:m]) < 1.5 * floor
    wider = upper(datasets.ring(std=0.036).sample(16 * m, gen))  # a 20% too wide mode fails
    assert metrics.w2(wider[:m], up[:m]) > 1.5 * floor


@pytest.mark.parametrize("spread", [0.01, 0.0])
def test_mode_weights_match_sampler_frequencies(spread):
    t = T.ring_bar_product(spread)
    n = 400_000
    freq = metrics.mode_weights(t.sample(n, torch.Generator().manual_seed(2)), t.mode_means)
    w = t.mode_weights
    tol = 5 * (w * (1 - w) / n).sqrt() + 2 / n
    assert bool(((freq - w).abs() <= tol).all()), (freq, w)
    dominant = float(w[[2, 6]].sum())
    others = w[[0, 1, 3, 4, 5, 7]]
    if spread > 0:
        assert 0.99 < dominant < 0.999
        assert bool((others > 5e-4).all() and (others < 1.2e-3).all())
        assert bool((freq[[0, 4]] > 0).all())  # the modes at angles 0 and pi are visited
    else:
        assert dominant > 1 - 1e-6
        assert bool((others < 1e-6).all())


def test_analytic_ring_bar_product(gen):
    ring, bar, product = T.analytic_ring_bar()
    assert ring.num_components == 8 and bar.num_components == 9
    assert product.num_components == 72
    assert grid_mass(product.log_prob, h=0.01) == pytest.approx(1.0, abs=1e-5)  # smooth: a coarse grid
    # exact product: log p = log ring + log bar - const
    x = 0.8 * (2 * torch.rand(500, 2, generator=gen, dtype=torch.float64) - 1)
    diff = product.log_prob(x) - ring.log_prob(x) - bar.log_prob(x)
    assert float(diff.max() - diff.min()) < 1e-9
    s = product.sample(20_000, gen).to(torch.float64)
    in_bar = s[:, 0].abs() <= 0.2
    on_ring = (s.norm(dim=1) - 0.5).abs() <= 0.1
    assert float((in_bar & on_ring).double().mean()) > 0.97
    w = product.weights.reshape(8, 9).sum(1)  # ring index major
    assert float(w[[2, 6]].sum()) > 0.98
    # no spread: no wide component
    _, bar0, prod0 = T.analytic_ring_bar(4, spread=0.0)
    assert bar0.num_components == 4 and prod0.num_components == 32


def test_bar_mixture(gen):
    t = T.bar_mixture()
    assert grid_mass(t.log_prob) == pytest.approx(1.0, abs=1e-9)
    x = t.sample(20_000, gen).to(torch.float64)
    assert torch.isfinite(t.log_prob(x)).all()
    torch.testing.assert_close(t.log_prob(x), torch.full((x.shape[0],), math.log(0.5 / 0.8), dtype=x.dtype))
    left = float((x[:, 0] < 0).double().mean())
    assert left == pytest.approx(0.5, abs=5 * math.sqrt(0.25 / x.shape[0]))
    assert float(t.log_prob(torch.tensor([[0.0, 0.0]]))) == -math.inf
    json.dumps(t.describe())


def test_box_negation_is_the_frame(gen):
    t = T.box_negation()
    assert grid_mass(t.log_prob) == pytest.approx(1.0, abs=1e-9)
    inner = GRID.abs().amax(1) < 0.3
    assert grid_mass(t.log_prob, inner) == 0.0
    x = t.sample(20_000, gen)
    r = x.to(torch.float64).abs().amax(1)
    assert bool((r >= 0.3).all() and (r <= 0.7).all())
    assert torch.isfinite(t.log_prob(x)).all()
    assert float(t.log_prob(x[:1])) == pytest.approx(-math.log(1.6))
    # uniform on the frame: P(max|x| < 0.5) = (1 - 0.36) / 1.6
    assert float((r < 0.5).double().mean()) == pytest.approx(0.64 / 1.6, abs=0.02)
    assert float(t.log_prob(torch.tensor([[0.1, -0.2]]))) == -math.inf
    assert metrics.mean_log_likelihood(torch.tensor([[0.1, 0.1], [0.5, 0.5]]), t) == -math.inf
    json.dumps(t.describe())


@pytest.mark.parametrize(
    "make",
    [T.ring_bar_product, lambda: T.ring_bar_product(0.0), T.bar_mixture, T.box_negation, T.spread_bar],
)
def test_same_seed_same_samples(make):
    t = make()
    a = t.sample(500, torch.Generator().manual_seed(7))
    b = t.sample(500, torch.Generator().manual_seed(7))
    c = t.sample(500, torch.Generator().manual_seed(8))
    assert a.shape == (500, 2) and a.dtype == torch.get_default_dtype()
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_invalid_arguments_raise_data_error():
    with pytest.raises(DataError):
        T.ring_bar_product(-0.1)
    with pytest.raises(DataError):
        T.box_negation(0.3, 0.7)
    with pytest.raises(DataError):
        T.analytic_ring_bar(0)
    with pytest.raises(DataError):
        T.mixture([datasets.bar()], [0.0])

import math

import pyro.distributions as dist
import pytest
import torch

import probcomp as pc
from probcomp import schedules as sched
from probcomp.factors import ExplicitFactor, Gaussian, GaussianMixture, exact_product, explicit
from probcomp.models import ModelFactor

torch.set_default_dtype(torch.float32)


def _full_cov(d, k, gen):
    a = torch.randn(k, d, d, generator=gen, dtype=torch.float64)
    return a @ a.transpose(-1, -2) + 0.2 * torch.eye(d, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["iso", "diag", "full"])
@pytest.mark.parametrize("t", [0.0, 0.05, 0.5, 0.95])
def test_mixture_score_is_gradient_of_exact_log_density(kind, t, gen):
    k, d = 3, 4
    means = torch.randn(k, d, generator=gen, dtype=torch.float64)
    scales = {
        "iso": torch.rand(k, generator=gen, dtype=torch.float64) + 0.3,
        "diag": torch.rand(k, d, generator=gen, dtype=torch.float64) + 0.3,
        "full": _full_cov(d, k, gen),
    }[kind]
    gm = GaussianMixture(means, scales, [0.2, 0.3, 0.5])
    y = torch.randn(7, d, generator=gen, dtype=torch.float64).requires_grad_(True)
    (g,) = torch.autograd.grad(gm.log_prob_t(y, t).sum(), y)
    s, e = gm.score_and_energy(y.detach(), t)
    torch.testing.assert_close(s, g, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(e, -gm.log_prob_t(y.detach(), t))
    # eps convention: eps = -sigma(t) score
    if t > 0:
        torch.testing.assert_close(gm.eps(y.detach(), t), -float(gm.schedule.sigma(t)) * s)


def test_noised_gaussian_is_the_closed_form(gen):
    cov = _full_cov(3, 1, gen)[0]
    mean = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    g = Gaussian(mean, cov)
    for t in (0.0, 0.2, 0.7):
        abar = float(g.schedule.abar(t))
        ref = torch.distributions.MultivariateNormal(
            abar**0.5 * mean, abar * cov + (1 - abar) * torch.eye(3, dtype=torch.float64)
        )
        y = torch.randn(5, 3, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(g.log_prob_t(y, t), ref.log_prob(y))


def test_noised_mixture_matches_forward_noising_of_samples(gen):
    """Monte Carlo check of p_t: noise exact clean samples and compare the moments."""
    gm = GaussianMixture([[1.0, 0.0], [-1.0, 0.5]], [[0.2, 0.1], [0.3, 0.4]], [0.3, 0.7])
    t = 0.3
    a, s = float(gm.schedule.alpha(t)), float(gm.schedule.sigma(t))
    x0 = gm.sample(200_000, gen, dtype=torch.float64)
    xt = a * x0 + s * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    # mean of the score under p_t is zero; E[x s(x)^T] = -I (integration by parts)
    sc = gm.score(xt, t)
    assert sc.mean(0).abs().max() < 0.02
    torch.testing.assert_close(xt.T @ sc / xt.shape[0], -torch.eye(2, dtype=torch.float64), atol=0.03, rtol=0)


def test_density_is_normalised_at_every_t():
    gm = GaussianMixture([[0.5, 0.0], [-0.4, 0.3]], [0.1, 0.2], [1.0, 3.0])
    g = torch.linspace(-4, 4, 401, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    for t in (0.0, 0.3, 0.9):
        mass = gm.log_prob_t(grid, t).exp().sum() * (g[1] - g[0]) ** 2
        assert float(mass) == pytest.approx(1.0, abs=2e-3)


def test_iso_diag_full_agree(gen):
    means = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    std = torch.tensor([0.5, 0.8], dtype=torch.float64)
    iso = GaussianMixture(means, std)
    diag = GaussianMixture(means, std[:, None].expand(2, 3))
    full = GaussianMixture(means, torch.diag_embed(std[:, None].expand(2, 3) ** 2))
    y = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    for f in (diag, full):
        torch.testing.assert_close(f.score(y, 0.4), iso.score(y, 0.4))
        torch.testing.assert_close(f.energy(y, 0.4), iso.energy(y, 0.4))


def test_exact_samples_have_the_right_moments(gen):
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    g = Gaussian([1.0, -2.0], cov)
    x = g.sample(100_000, gen, dtype=torch.float64)
    torch.testing.assert_close(x.mean(0), g.mean, atol=0.015, rtol=0)
    torch.testing.assert_close(x.T.cov(), cov, atol=0.02, rtol=0)
    gm = GaussianMixture([[0.0], [5.0]], [0.1, 0.1], [0.25, 0.75])
    xs = gm.sample(40_000, gen)
    assert float((xs > 2.5).float().mean()) == pytest.approx(0.75, abs=0.01)


def test_image_event_shape():
    g = Gaussian(torch.zeros(2, 3, 3), 0.5)
    assert g.event_shape == (2, 3, 3)
    y = torch.randn(4, 2, 3, 3)
    assert g.score(y, 0.5).shape == y.shape
    assert g.sample(3).shape == (3, 2, 3, 3)
    with pytest.raises(pc.ShapeError, match="expects a batch of shape"):
        g.score(torch.randn(4, 18), 0.5)


def test_bad_parameters_raise_factor_errors():
    with pytest.raises(pc.FactorError, match="positive definite"):
        GaussianMixture([[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(pc.FactorError, match="standard deviations must be positive"):
        GaussianMixture([[0.0, 0.0]], [-1.0])
    with pytest.raises(pc.FactorError, match="scales must be"):
        GaussianMixture([[0.0, 0.0]], [[1.0, 1.0, 1.0]])
    with pytest.raises(pc.FactorError, match="weights"):
        GaussianMixture([[0.0], [1.0]], [1.0, 1.0], [1.0, -1.0])
    with pytest.raises(pc.FactorError, match="symmetric"):
        Gaussian([0.0, 0.0], [[1.0, 0.5], [0.0, 1.0]])


def test_score_factor_needs_score_or_eps():
    class Half(pc.factors.ScoreFactor):
        def eps(self, y, t):
            return 0.5 * y

    f = Half((2,))
    y = torch.ones(3, 2)
    torch.testing.assert_close(f.score(y, 0.5), -0.5 * y / float(f.schedule.sigma(0.5)))
    assert not f.has_energy
    with pytest.raises(pc.FactorError, match="override score"):
        pc.factors.ScoreFactor((2,)).score(y, 0.5)
    with pytest.raises(pc.FactorError, match="no energy"):
        f.energy(y, 0.5)


def test_explicit_gaussians_become_exact_factors():
    f = explicit(dist.Normal(torch.tensor([0.0, 1.0]), 2.0))
    assert isinstance(f, Gaussian)
    torch.testing.assert_close(f.covariance, torch.diag(torch.tensor([4.0, 4.0], dtype=torch.float64)))
    m = explicit(dist.MultivariateNormal(torch.zeros(2), torch.tensor([[1.0, 0.3], [0.3, 2.0]])))
    assert isinstance(m, Gaussian)
    f2 = explicit(dist.Normal(0.0, 1.0), event_shape=(3,))
    assert isinstance(f2, Gaussian) and f2.event_shape == (3,)


def test_explicit_factor_tempered_path():
    lap = explicit(dist.Laplace(torch.zeros(2), 1.0).to_event(1))
    assert isinstance(lap, ExplicitFactor)
    y = torch.tensor([[0.5, -2.0], [1.0, 0.3]], dtype=torch.float64)
    # exact at t = 0
    torch.testing.assert_close(lap.score(y, 0.0), -torch.sign(y))
    torch.testing.assert_close(lap.energy(y, 0.0), -lap.log_prob(y))
    # tempered rescaling at t: s = alpha * grad log p(y / alpha), and s = -grad E
    t = 0.5
    a = float(lap.schedule.alpha(t))
    torch.testing.assert_close(lap.score(y, t), -a * torch.sign(y))
    yy = y.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(lap.energy(yy, t).sum(), yy)
    torch.testing.assert_close(lap.score(y, t), -g)


def test_explicit_factor_from_callable_and_errors():
    f = ExplicitFactor(lambda y: -(y**4).sum(-1), event_shape=(2,), name="quartic")
    y = torch.tensor([[1.0, 2.0]])
    torch.testing.assert_close(f.score(y, 0.0), -4 * y**3)
    with pytest.raises(pc.FactorError, match="needs event_shape"):
        ExplicitFactor(lambda y: y.sum(-1))
    bad = ExplicitFactor(lambda y: y, event_shape=(2,), name="bad")
    with pytest.raises(pc.ShapeError, match="'bad'"):
        bad.log_prob(y)


def test_exact_product_of_two_gaussians():
    c1 = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    c2 = torch.tensor([[0.4, 0.0], [0.0, 2.0]], dtype=torch.float64)
    m1, m2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64)
    p = exact_product([Gaussian(m1, c1), Gaussian(m2, c2)])
    prec = torch.linalg.inv(c1) + torch.linalg.inv(c2)
    cov = torch.linalg.inv(prec)
    torch.testing.assert_close(p.covariances[0], cov)
    torch.testing.assert_close(p.means[0], cov @ (torch.linalg.solve(c1, m1) + torch.linalg.solve(c2, m2)))


def test_exact_product_of_mixtures_matches_brute_force():
    a = GaussianMixture([[0.5, 0.0], [-0.5, 0.0]], [0.2, 0.3], [0.3, 0.7])
    b = GaussianMixture([[0.0, 0.2], [0.4, -0.2], [-0.6, 0.1]], [0.3, 0.25, 0.4])
    p = exact_product([a, b])
    g = torch.linspace(-3, 3, 301, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    lp = a.log_prob(grid) + b.log_prob(grid)
    logz = torch.logsumexp(lp, 0) + 2 * torch.log(g[1] - g[0])
    torch.testing.assert_close(p.log_prob(grid), lp - logz, atol=1e-6, rtol=0)


def test_exact_product_with_powers_and_errors():
    g = Gaussian([1.0], 1.0)
    p = exact_product([g], [3.0])  # N(1, 1)^3 = N(1, 1/3)
    assert float(p.covariances[0, 0, 0]) == pytest.approx(1 / 3)
    with pytest.raises(pc.FactorError, match="not normalisable"):
        exact_product([g], [-1.0])
    with pytest.raises(pc.FactorError, match="mixture raised to power"):
        exact_product([GaussianMixture([[0.0], [1.0]], [1.0, 1.0])], [2.0])


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
@pytest.mark.parametrize("schedule", [sched.cosine(), sched.linear_discrete(1000)], ids=repr)
def test_model_factor_conversions_on_an_analytic_gaussian(prediction, schedule, gen):
    """A network predicting eps / x0 / v / score of a Gaussian gives that Gaussian's score."""
    truth = Gaussian([0.5, -0.3], [0.4, 0.9], schedule=schedule)
    seen = {}

    def model(y, model_time):
        seen["time"] = model_time
        # invert the model time to the continuous time of the schedule
        t = (
            model_time.to(torch.float64) / (schedule.num_steps - 1)
            if isinstance(schedule, sched.DiscreteSchedule)
            else model_time.to(torch.float64)
        )
        s = truth.score(y, t)
        a = schedule.alpha(t).reshape(-1, 1).to(y.dtype)
        sg = schedule.sigma(t).reshape(-1, 1).to(y.dtype)
        eps = -sg * s
        x0 = (y - sg * eps) / a
        return {"eps": eps, "x0": x0, "v": a * eps - sg * x0, "score": s}[prediction]

    f = ModelFactor(model, (2,), schedule, prediction)
    y = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(f.score(y, 0.3), truth.score(y, 0.3), atol=1e-9, rtol=1e-7)
    expect_time = 0.3 * 999 if isinstance(schedule, sched.DiscreteSchedule) else 0.3
    assert float(seen["time"][0]) == pytest.approx(expect_time)


def test_model_factor_bad_output_shape():
    f = ModelFactor(lambda y, t: y[:, :1], (2,), sched.linear(), name="net")
    with pytest.raises(pc.ShapeError, match="'net'"):
        f.eps(torch.zeros(3, 2), 0.5)
    with pytest.raises(pc.FactorError, match="unknown prediction"):
        ModelFactor(lambda y, t: y, (2,), sched.linear(), "flow")


def test_log_density_value_against_torch():
    g = Gaussian([0.0, 0.0], 2.0)
    y = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    assert float(g.log_prob(y)) == pytest.approx(-math.log(2 * math.pi * 4) - 2 / 8)


class _Shifted(pc.factors.ScoreFactor):
    """An exact factor whose energy carries an arbitrary offset c(t), as a learned one does."""

    def __init__(self, inner, shift):
        super().__init__(inner.event_shape, inner.schedule, f"{inner.name}+c")
        self.inner, self.shift = inner, shift

    def score(self, y, t):
        return self.inner.score(y, t)

    def energy(self, y, t):
        tt = pc.factors.as_time(t, y)
        return self.inner.energy(y, t) + self.shift(tt).reshape(-1).to(y.dtype)


def test_normalised_energy_removes_a_level_dependent_offset_and_fixes_mixture_weights():
    from probcomp import compose

    a = GaussianMixture(torch.tensor([[-0.5, 0.0]]), torch.tensor([0.1]), torch.tensor([1.0]))
    b = GaussianMixture(torch.tensor([[0.5, 0.0]]), torch.tensor([0.2]), torch.tensor([1.0]))
    sa, sb = _Shifted(a, lambda t: 3.0 * torch.sin(3 * t)), _Shifted(b, lambda t: -2.0 + t)
    na, nb = pc.factors.NormalisedEnergy(sa, 1.5), pc.factors.NormalisedEnergy(sb, 1.5)
    y = torch.randn(64, 2) * 0.4
    for t in (0.0, 0.013, 0.3, 0.77, 1.0):
        torch.testing.assert_close(na.energy(y, t), a.energy(y, t), atol=2e-3, rtol=0)
        torch.testing.assert_close(nb.energy(y, t), b.energy(y, t), atol=2e-3, rtol=0)
    # mixture weights: the softmax of log pi - E at a point between the components
    mid = torch.tensor([[0.0, 0.0]])
    exact = compose.mixture([a, b], [0.3, 0.7]).score(mid, 0.3)
    fixed = compose.mixture([na, nb], [0.3, 0.7]).score(mid, 0.3)
    raw = compose.mixture([sa, sb], [0.3, 0.7]).score(mid, 0.3)
    torch.testing.assert_close(fixed, exact, atol=1e-2, rtol=0)
    assert float((raw - exact).abs().max()) > 0.1
    with pytest.raises(pc.FactorError, match="at most 3"):
        pc.factors.NormalisedEnergy(_Shifted(Gaussian(torch.zeros(4), torch.eye(4)), lambda t: t), 1.0)

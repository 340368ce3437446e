"""Reverse diffusion against ground truth (issue 2, tests 1-4)."""

import math

import pytest
import torch

import probcomp as pc
from probcomp.factors import Gaussian, GaussianMixture, exact_product
from probcomp.inference import ReverseDiffusion


def _scene(factor, d):
    sc = pc.Scene()
    sc.observe("y", sc.control("x", (d,)), factor=factor)
    return sc


# ---------------------------------------------------------------------------------------
# 1. Product of two Gaussians: summed scores are biased at t > 0.
# ---------------------------------------------------------------------------------------
C1 = torch.tensor([[1.0, 0.4], [0.4, 0.6]], dtype=torch.float64)
C2 = torch.tensor([[0.3, 0.0], [0.0, 1.5]], dtype=torch.float64)
M1 = torch.tensor([1.0, -0.5], dtype=torch.float64)
M2 = torch.tensor([-0.5, 1.0], dtype=torch.float64)


def _noised_precision(cov, abar):
    return torch.linalg.inv(abar * cov + (1 - abar) * torch.eye(2, dtype=torch.float64))


def test_summed_score_differs_from_noised_product_score():
    """Closed forms: the product of noised factors is not the noised product, except at t=0."""
    g1, g2 = Gaussian(M1, C1), Gaussian(M2, C2)
    prod = exact_product([g1, g2])
    y = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gaps = {}
    for t in (0.0, 0.1, 0.3, 0.6):
        summed = g1.score(y, t) + g2.score(y, t)
        exact = prod.score(y, t)
        gaps[t] = float((summed - exact).norm(dim=1).mean())
        # the summed score is itself exact for the product of the noised factors
        abar = float(g1.schedule.abar(t))
        p_sum = _noised_precision(C1, abar) + _noised_precision(C2, abar)
        p_prod = _noised_precision(prod.covariances[0], abar)
        assert (float(torch.linalg.matrix_norm(p_sum - p_prod)) < 1e-9) == (t == 0.0)
    assert gaps[0.0] < 1e-9
    assert all(gaps[t] > 0.1 for t in (0.1, 0.3, 0.6))


def _propagate(ts, schedule, precision_and_shift, eta=1.0):
    """Exact mean and covariance of the DDPM/DDIM chain for a linear score g = -P x + h."""
    m = torch.zeros(2, dtype=torch.float64)
    s = torch.eye(2, dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    for i in range(len(ts) - 1):
        t, u = float(ts[i]), float(ts[i + 1])
        a_t, s_t = float(schedule.alpha(t)), float(schedule.sigma(t))
        a_s, s_s = float(schedule.alpha(u)), float(schedule.sigma(u))
        p, h = precision_and_shift(t)
        c = 0.0
        if eta > 0 and s_s > 0:
            c = eta * math.sqrt(s_s**2 / s_t**2 * (1 - a_t**2 / a_s**2))
        keep = math.sqrt(max(s_s**2 - c**2, 0.0))
        # x_s = (a_s/a_t)(x + s_t^2 g) - keep s_t g + c z, g = -P x + h
        k = a_s / a_t * s_t**2 - keep * s_t
        mat = a_s / a_t * eye - k * p
        m = mat @ m + k * h
        s = mat @ s @ mat.T + c**2 * eye
    return m, s


def _linear_score(factors):
    def f(t):  # engine time = factor time: every factor here uses the default schedule
        p = torch.zeros(2, 2, dtype=torch.float64)
        h = torch.zeros(2, dtype=torch.float64)
        for g in factors:
            abar = float(g.schedule.abar(t))
            pi = _noised_precision(g.covariances[0], abar)
            p += pi
            h += pi @ (abar**0.5 * g.means[0])
        return p, h

    return f


def test_reverse_diffusion_on_summed_scores_is_biased_against_the_exact_product():
    g1, g2 = Gaussian(M1, C1), Gaussian(M2, C2)
    prod = exact_product([g1, g2])
    sc = pc.Scene()
    x = sc.control("x", (2,))
    sc.observe("a", x, factor=g1)
    sc.observe("b", x, factor=g2)
    eng = ReverseDiffusion(steps=100, dtype=torch.float64)
    res = eng.run(sc, 40_000, seed=1)
    # (a) the engine implements the chain exactly: sample moments = propagated moments
    m_sum, s_sum = _propagate(eng.ts, eng.schedule, _linear_score([g1, g2]))
    xs = res["x"]
    torch.testing.assert_close(xs.mean(0), m_sum, atol=0.01, rtol=0)
    torch.testing.assert_close(xs.T.cov(), s_sum, atol=0.01, rtol=0)
    # (b) that chain misses the exact product, and the miss does not shrink with more steps,
    # (c) while the same sampler on the exact noised product's score converges to the product.
    cov_err = lambda s: float(torch.linalg.matrix_norm(s - prod.covariances[0]))  # noqa: E731
    for steps in (100, 1000):
        fine = ReverseDiffusion(steps=steps)
        _, s_summed = _propagate(fine.ts, fine.schedule, _linear_score([g1, g2]))
        m_oracle, s_oracle = _propagate(fine.ts, fine.schedule, _linear_score([prod]))
        assert cov_err(s_summed) > 0.1
        assert cov_err(s_oracle) < 0.35 * cov_err(s_summed)
    assert cov_err(s_oracle) < 0.01 and float((m_oracle - prod.means[0]).norm()) < 0.01
    oracle = eng.run(_scene(prod, 2), 40_000, seed=1)["x"]
    assert cov_err(oracle.T.cov()) < 0.35 * cov_err(xs.T.cov())


def test_ddim_chain_matches_its_closed_form():
    g = Gaussian(M1, C1)
    eng = ReverseDiffusion(steps=40, sampler="ddim", eta=0.5, dtype=torch.float64)
    xs = eng.run(_scene(g, 2), 40_000, seed=3)["x"]
    m, s = _propagate(eng.ts, eng.schedule, _linear_score([g]), eta=0.5)
    torch.testing.assert_close(xs.mean(0), m, atol=0.01, rtol=0)
    torch.testing.assert_close(xs.T.cov(), s, atol=0.015, rtol=0)


# ---------------------------------------------------------------------------------------
# 2. Projective composition, Bradley et al. Eq. 16 (exact scores).
# ---------------------------------------------------------------------------------------
def _one_hot_factors(tau=0.05, n=7):
    eye = torch.eye(n, dtype=torch.float64)
    return [Gaussian(eye[i], tau, name=f"p{i}") for i in range(n)], eye


def test_projective_with_empty_background_length_generalises():
    fs, _ = _one_hot_factors()
    pb = Gaussian(torch.zeros(7), 0.05, name="empty")
    comp = pc.compose.projective(fs[0], fs[2], fs[4], fs[6], background=pb)
    xs = ReverseDiffusion(steps=100).run(_scene(comp, 7), 2000, seed=0)["x"]
    target = torch.tensor([1, 0, 1, 0, 1, 0, 1.0])
    assert (xs.mean(0) - target).abs().max() < 0.05
    assert (xs - target).abs().median(0).values.max() < 0.05


def test_projective_with_bayes_background_collapses_to_one_over_n():
    fs, eye = _one_hot_factors()
    pu = GaussianMixture(eye, torch.full((7,), 0.05), name="unconditional")
    comp = pc.compose.projective(fs[0], fs[2], fs[4], fs[6], background=pu)
    xs = ReverseDiffusion(steps=100).run(_scene(comp, 7), 2000, seed=0)["x"]
    active = xs[:, [0, 2, 4, 6]].mean(0)
    assert torch.all((active - 0.25).abs() < 0.05), active  # 1/n with n = 4 composed
    assert torch.all(xs[:, [1, 3, 5]].mean(0).abs() < 0.05)


def test_masked_projective_removes_leaks_that_eq6_adds_up():
    """Conditionals that break Def. 5.2: each ``p_i`` also shifts every other coordinate by 0.2.

    Eq. 6 adds the four leaks (means 1.6 on the composed coordinates, 0.8 elsewhere).  With
    the masks ``M_i = {i}`` each coordinate follows one factor; for these diagonal Gaussians
    that is, at every noise level, the noised score of the projective composition
    ``N(target, 0.05^2 I)`` itself, so the chain is the exact target's chain.
    """
    eye = torch.eye(7, dtype=torch.float64)
    leaky = [Gaussian(eye[i] + 0.2 * (1 - eye[i]), 0.05, name=f"p{i}") for i in (0, 2, 4, 6)]
    pb = Gaussian(torch.zeros(7), 0.05, name="empty")
    target = torch.tensor([1, 0, 1, 0, 1, 0, 1.0])
    exact = Gaussian(target, 0.05, name="exact")
    eng = ReverseDiffusion(steps=100)
    plain = eng.run(_scene(pc.compose.projective(*leaky, background=pb), 7), 2000, seed=0)["x"]
    leak = torch.tensor([0.6, 0.8, 0.6, 0.8, 0.6, 0.8, 0.6])
    torch.testing.assert_close(plain.mean(0), target + leak, atol=0.02, rtol=0)
    comp = pc.compose.projective(*leaky, background=pb, masks=[eye[i] for i in (0, 2, 4, 6)])
    y = torch.randn(32, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # each p_i's coordinates are independent (diagonal), so filled inputs change nothing either
    filled = pc.compose.projective(
        *leaky, background=pb, masks=[eye[i] for i in (0, 2, 4, 6)], fill=torch.zeros(7)
    )
    for t in (0.02, 0.3, 0.8):
        torch.testing.assert_close(comp.score(y, t), exact.score(y, t), atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(filled.score(y, t), exact.score(y, t), atol=1e-9, rtol=1e-9)
    xs = eng.run(_scene(comp, 7), 2000, seed=0)["x"]
    torch.testing.assert_close(xs, eng.run(_scene(exact, 7), 2000, seed=0)["x"], atol=1e-5, rtol=0)
    torch.testing.assert_close(xs.mean(0), target, atol=0.01, rtol=0)


# ---------------------------------------------------------------------------------------
# 3. Theorem 5.3 / Lemma 7.1 / Lemma 7.2 (four-mode construction of App. J).
# ---------------------------------------------------------------------------------------
def _lemma72(a, q=None, tau=0.02):
    A = torch.tensor([[1, -a, 0, 0], [0, 1, 0, 0], [0, 0, 1, -a], [0, 0, 0, 1.0]], dtype=torch.float64)
    cov = tau**2 * torch.linalg.inv(A.T @ A)
    e = torch.eye(4, dtype=torch.float64)
    m0 = torch.stack([e[0], e[2]])
    m1 = torch.stack([a * e[0] + e[1], a * e[2] + e[3]])
    modes = torch.stack(
        [(1 + a) * e[0] + e[1], e[0] + a * e[2] + e[3], a * e[0] + e[2] + e[1], (1 + a) * e[2] + e[3]]
    )
    if q is not None:
        m0, m1, modes, cov = m0 @ q.T, m1 @ q.T, modes @ q.T, q @ cov @ q.T
    p0 = GaussianMixture(m0, cov.expand(2, 4, 4), name="p0")
    p1 = GaussianMixture(m1, cov.expand(2, 4, 4), name="p1")
    pb = Gaussian(torch.zeros(4), cov, name="pb")
    return p0, p1, pb, modes


def _four_mode_weights(a, q=None):
    p0, p1, pb, modes = _lemma72(a, q)
    # the composition at t = 0 has equal weight on all four modes (Lemma 6.1)
    exact = exact_product([pb, p0, p1], [-1.0, 1.0, 1.0])
    torch.testing.assert_close(exact.weights, torch.full((4,), 0.25, dtype=torch.float64))
    comp = pc.compose.projective(p0, p1, background=pb)
    xs = ReverseDiffusion(steps=200).run(_scene(comp, 4), 2400, seed=0)["x"]
    return pc.metrics.mode_weights(xs, modes)


def test_factorised_conditionals_recover_all_four_modes():
    w = _four_mode_weights(0.0)
    assert torch.all((w - 0.25).abs() < 0.03), w


def test_orthogonal_rotation_keeps_reverse_diffusion_exact():
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7)))
    w = _four_mode_weights(0.0, q)
    assert torch.all((w - 0.25).abs() < 0.03), w


def test_non_orthogonal_map_biases_reverse_diffusion():
    """Lemma 7.2 with a = 1: the 'hard' modes are nearly lost (seed: about [.47, .01, .01, .5])."""
    w = _four_mode_weights(1.0)
    assert w[1] < 0.05 and w[2] < 0.05, w
    assert w[0] > 0.4 and w[3] > 0.4, w


# ---------------------------------------------------------------------------------------
# 4. Seeds and engine arguments.
# ---------------------------------------------------------------------------------------
def test_same_seed_same_samples_bit_for_bit():
    sc = _scene(GaussianMixture([[0.0, 1.0], [1.0, 0.0]], [0.1, 0.2]), 2)
    for sampler in ("ddpm", "ddim"):
        eng = ReverseDiffusion(steps=30, sampler=sampler)
        a, b = eng.run(sc, 256, seed=5)["x"], eng.run(sc, 256, seed=5)["x"]
        assert torch.equal(a, b)
        compiled = eng.compile(sc)
        assert torch.equal(eng.run(compiled, 256, seed=5)["x"], a)
    eng = ReverseDiffusion(steps=30)
    assert not torch.equal(eng.run(sc, 256, seed=5)["x"], eng.run(sc, 256, seed=6)["x"])


def test_stats_and_bad_arguments():
    sc = _scene(Gaussian([0.0, 0.0], 1.0), 2)
    res = ReverseDiffusion(steps=25).run(sc, 10, seed=0)
    assert res.stats["nfe"] == {"y": 25} and res.stats["nfe_total"] == 25
    assert res.stats["t"].shape == (25,) and res.particle_stats["grad_norm"].shape == (10, 25)
    assert res.stats["wall_time"] > 0
    with pytest.raises(pc.ScheduleError, match="sampler"):
        ReverseDiffusion(sampler="euler")
    with pytest.raises(pc.ScheduleError, match="eta"):
        ReverseDiffusion(sampler="ddim", eta=2.0)
    with pytest.raises(pc.SceneError, match="num_samples"):
        ReverseDiffusion(steps=2).run(sc, 0)


def test_priors_are_sampled_exactly_along_the_noise_path():
    """A Gaussian prior is an exact analytic factor: reverse diffusion on it alone recovers it."""
    import pyro.distributions as dist

    sc = pc.Scene()
    sc.control("z", (3,), prior=dist.Normal(torch.tensor([1.0, -1.0, 0.0]), 0.5))
    xs = ReverseDiffusion(steps=200).run(sc, 20_000, seed=0)["z"]
    torch.testing.assert_close(xs.mean(0), torch.tensor([1.0, -1.0, 0.0]), atol=0.02, rtol=0)
    torch.testing.assert_close(xs.std(0), torch.full((3,), 0.5), atol=0.02, rtol=0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_clip_x0_keeps_samples_in_range_and_is_inert_when_wide(sampler):
    """``clip_x0`` clamps every denoised estimate: a range the data never leaves changes
    nothing; a narrow one holds the final samples inside it (the last step returns x0_hat)."""
    scene = pc.Scene()
    scene.observe("g", scene.control("x", (3,)), factor=Gaussian(torch.zeros(3), 1.0))
    plain = ReverseDiffusion(50, sampler).run(scene, 500, seed=3)["x"]
    wide = ReverseDiffusion(50, sampler, clip_x0=(-1e6, 1e6)).run(scene, 500, seed=3)["x"]
    assert torch.allclose(plain, wide, atol=1e-5)
    narrow = ReverseDiffusion(50, sampler, clip_x0=(-0.5, 0.5)).run(scene, 500, seed=3)["x"]
    assert narrow.abs().max() <= 0.5 + 1e-6 and narrow.std() > 0.2  # in range, not collapsed
    for bad in [(1.0, -1.0), (0.0, 0.0), 3.0]:
        with pytest.raises(pc.ScheduleError, match="clip_x0"):
            ReverseDiffusion(10, clip_x0=bad)


def test_tweedie_last_step_is_exact_for_a_gaussian_at_any_stopping_level():
    """Stopping at ``t_min = 0.5``: the plain last step returns the posterior mean (too narrow);
    the Tweedie step draws from ``N(E[x0|x_t], Cov[x0|x_t])``, exact for a Gaussian target."""
    sc = _scene(Gaussian(M1, C1), 2)
    exact = {"mean": M1.float(), "cov": C1.float()}
    for last, ok in (("tweedie", True), ("mean", False)):
        res = ReverseDiffusion(steps=100, t_min=0.5, last_step=last).run(sc, 20_000, seed=0)
        x = res["x"]
        cov = torch.cov(x.T)
        assert res.stats["last_step"] == last
        torch.testing.assert_close(x.mean(0), exact["mean"], atol=0.03, rtol=0)
        close = torch.allclose(cov, exact["cov"], atol=0.03)
        assert close == ok, (last, cov)
    # the Jacobian costs 2 D score evaluations per particle at the last level
    assert res.stats["nfe_total"] == 100
    tw = ReverseDiffusion(steps=100, t_min=0.5, last_step="tweedie").run(sc, 10, seed=0)
    assert tw.stats["nfe_total"] == 100 + 2 * 2


def test_tweedie_last_step_rejects_bad_arguments_and_large_controls():
    with pytest.raises(pc.ScheduleError, match="last_step"):
        ReverseDiffusion(last_step="mode")
    big = _scene(Gaussian(torch.zeros(300), 1.0), 300)
    with pytest.raises(pc.ScheduleError, match=r"D = 300 elements \('x': 300\)"):
        ReverseDiffusion(steps=5, last_step="tweedie").run(big, 2)

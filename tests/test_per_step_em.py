"""PerStepEM against closed forms: Gaussian factors, identity and window observations."""

import pytest
import torch

import probcomp as pc
from probcomp import ops
from probcomp.factors import Gaussian
from probcomp.inference import PerStepEM, ReverseDiffusion

M1, C1 = torch.tensor([1.0, 0.0]), torch.tensor([[0.3, 0.1], [0.1, 0.2]])
M2, C2 = torch.tensor([-0.5, 0.5]), torch.tensor([[0.2, 0.0], [0.0, 0.5]])


def _two_gaussians(psi1=1.0, psi2=1.0, w=(1.0, 1.0)):
    sc = pc.Scene()
    x = sc.control("x", (2,))
    sc.observe("a", x, factor=Gaussian(M1, C1), psi=psi1, weight=w[0])
    sc.observe("b", x, factor=Gaussian(M2, C2), psi=psi2, weight=w[1])
    return sc


def _exact_solve(psi1, psi2, **kw):
    """One SGD step of size 1 / sum psi^-2 from any start is the exact argmin of Eq. 29
    for identity observations (the objective is isotropic quadratic with that curvature)."""
    return PerStepEM(40, 1, optimizer="sgd", lr=1.0 / (psi1**-2 + psi2**-2), **kw)


def _closed_form(psi1, psi2, engine):
    """Push the affine map of Eqs. 15 + 29 through every level, in float64: for Gaussian
    factors each observable's DDIM step is affine in X and the argmin is their
    psi-weighted mean, so X^0 = A X^T + b exactly."""
    sched = engine.schedule
    lam = sched.log_snr(engine.ts)
    alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    w1, w2 = psi1**-2 / (psi1**-2 + psi2**-2), psi2**-2 / (psi1**-2 + psi2**-2)
    a_map, b_map = torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for i in range(engine.steps):
        a_t, s_t, a_s, s_s = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
        step_a, step_b = torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
        for w, m, c in ((w1, M1, C1), (w2, M2, C2)):
            prec = torch.linalg.inv(a_t**2 * c.double() + s_t**2 * torch.eye(2, dtype=torch.float64))
            # score g = -prec (y - a_t m); DDIM: y_s = a_s (y + s_t^2 g) / a_t - s_s s_t g
            g_a, g_b = -prec, prec @ (a_t * m.double())
            coef = a_s * s_t**2 / a_t - s_s * s_t
            step_a += w * ((a_s / a_t) * torch.eye(2, dtype=torch.float64) + coef * g_a)
            step_b += w * coef * g_b
        a_map, b_map = step_a @ a_map, step_a @ b_map + step_b
    return a_map, b_map


@pytest.mark.parametrize("psi", [(1.0, 1.0), (0.5, 1.0)])
def test_identity_observations_follow_the_closed_form_affine_map(psi):
    eng = _exact_solve(*psi)
    res = eng.run(_two_gaussians(*psi), 400, seed=0)
    x_t = torch.randn((400, 2), generator=torch.Generator().manual_seed(0))  # the engine's first draw
    a_map, b_map = _closed_form(*psi, eng)
    expected = x_t.double() @ a_map.T + b_map
    torch.testing.assert_close(res["x"].double(), expected, atol=2e-4, rtol=0)


def test_identity_observations_equal_ddim_on_the_psi_weighted_mean_score():
    """With identity observations the argmin of Eq. 29 is the psi^-2-weighted mean of the
    observables' DDIM steps, i.e. one DDIM step on the weighted mean of their scores: the
    engine is DDIM on a tempered product (MultiDiffusion's fusion rule), not a mode finder."""
    psi1, psi2 = 0.5, 1.0
    em = _exact_solve(psi1, psi2).run(_two_gaussians(psi1, psi2), 300, seed=1)
    w1 = psi1**-2 / (psi1**-2 + psi2**-2)
    ddim = ReverseDiffusion(40, "ddim").run(_two_gaussians(w=(w1, 1 - w1)), 300, seed=1)
    torch.testing.assert_close(em["x"], ddim["x"], atol=2e-4, rtol=0)
    assert float(em["x"].std(0).min()) > 0.1  # a spread, not a point


def test_gauss_newton_solves_in_one_step_and_adam_approaches_it():
    sc = _two_gaussians(0.5, 1.0)
    exact = _exact_solve(0.5, 1.0).run(sc, 200, seed=2)["x"]
    gn = PerStepEM(40, 1).run(sc, 200, seed=2)["x"]  # default optimiser: Gauss-Newton
    torch.testing.assert_close(gn, exact, atol=1e-5, rtol=0)
    errs = []
    for inner in (2, 30):
        res = PerStepEM(40, inner, optimizer="adam", lr=0.05).run(sc, 200, seed=2)
        errs.append(float((res["x"] - exact).abs().max()))
    assert errs[1] < errs[0] / 3, errs
    st = PerStepEM(40, 3).run(sc, 200, seed=2).stats
    assert (
        st["objective_before"].shape == (40,)
        and (st["objective_after"] <= st["objective_before"] + 1e-6).all()
    )
    assert int(st["nfe_per_level"].sum()) == st["nfe_total"] == 2 * 40
    assert res.particle_stats["objective"].shape == (200,)


def test_window_observations_fuse_overlaps_like_a_least_squares_panorama():
    """Two overlapping windows of a 1-D signal, each scored by the same Gaussian patch factor:
    after every level the overlap is the average of the two windows' DDIM targets, so the
    seam is continuous.  Gauss-Newton divides by the number of windows reading each entry,
    so one step is the exact least-squares fusion; SGD needs many."""
    d, w = 6, 4
    cov = torch.exp(-((torch.arange(w)[:, None] - torch.arange(w)[None]) ** 2) / 4.0) + 1e-3 * torch.eye(w)
    patch = Gaussian(torch.zeros(w), cov)
    sc = pc.Scene()
    x = sc.control("x", (d,))
    sc.observe("left", x, factor=patch, fn=ops.window(0, w))
    sc.observe("right", x, factor=patch, fn=ops.window(d - w, w))
    res = PerStepEM(30, 1).run(sc, 200, seed=0)
    slow = PerStepEM(30, 300, optimizer="sgd", lr=0.5).run(sc, 200, seed=0)
    torch.testing.assert_close(res["x"], slow["x"], atol=1e-3, rtol=0)
    assert res.stats["calls"] == 30  # the two windows share one batched call per level
    xs = res["x"]
    jumps = (xs[:, 1:] - xs[:, :-1]).abs().mean(0)
    assert float(jumps.max()) < 2 * float(jumps.min()) + 0.05, jumps


def test_lambdas_are_optimised_with_their_l1_prior_and_eta_adds_noise():
    sc = _two_gaussians()
    plain = PerStepEM(20, 10).run(sc, 100, seed=0)
    free = PerStepEM(20, 10, lambdas=True, lambda_l1=0.0).run(sc, 100, seed=0)
    tied = PerStepEM(20, 10, lambdas=True, lambda_l1=1e3).run(sc, 100, seed=0)
    assert float(free.stats["lambda_std"].max()) > 1e-3
    # a strong prior keeps lambda at exactly 1 (the soft threshold), reproducing Eq. 29
    assert torch.equal(tied.particle_stats["lambda"], torch.ones(100, 2))
    torch.testing.assert_close(tied["x"], plain["x"], atol=1e-5, rtol=0)
    # exact alternating minimisation: no level ends above where it started
    assert (free.stats["objective_after"] <= free.stats["objective_before"] + 1e-6).all()
    a = PerStepEM(20, 5, eta=1.0).run(sc, 100, seed=0)["x"]
    b = PerStepEM(20, 5, eta=1.0).run(sc, 100, seed=0)["x"]
    c = PerStepEM(20, 5).run(sc, 100, seed=0)["x"]
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_priors_enter_the_objective():
    """A strong Gaussian prior on x pulls the result toward its mean."""
    sc = pc.Scene()
    x = sc.control("x", (2,), prior=pc.factors.Gaussian(torch.tensor([3.0, 3.0]), 0.01 * torch.eye(2)))
    sc.observe("a", x, factor=Gaussian(M1, C1))
    res = PerStepEM(20, 20, lr=0.1).run(sc, 50, seed=0)
    assert float((res["x"].mean(0) - 3.0).abs().max()) < 0.5


def test_bad_configurations_and_scenes_are_refused():
    with pytest.raises(pc.ScheduleError, match="optimizer"):
        PerStepEM(optimizer="newton")
    with pytest.raises(pc.ScheduleError, match="eta"):
        PerStepEM(eta=2.0)
    sc = pc.Scene()
    x = sc.control("x", (2,), prior=pc.factors.Gaussian(torch.zeros(2), torch.eye(2)))
    sc.observe("e", x, factor=pc.factors.explicit(lambda y: -y.square().sum(1), (2,)))
    with pytest.raises(pc.SceneError, match="only priors and explicit"):
        PerStepEM(5, 1).run(sc, 4)


def test_gp_panorama_has_continuous_seams_unlike_stitched_windows():
    """Five 32-sample windows at stride 8 over a 64-sample signal, each scored by the exact
    Gaussian law of the training signals' windows: the fused panorama's jumps at window
    edges stay near those of real signals, while independent windows side by side jump.
    (At stride 16 the middle edge, where one window ends as another starts, jumps about
    twice the typical amount: benchmarks/panorama.py.)"""
    from probcomp import datasets

    cov = datasets.smooth_signal_covariance(32).float() + 1e-4 * torch.eye(32)
    patch = Gaussian(torch.zeros(32), cov)
    sc = pc.Scene()
    x = sc.control("x", (64,))
    for j in range(5):
        sc.observe(f"w{j}", x, factor=patch, fn=ops.window(8 * j, 32))
    pano = PerStepEM(50, 1).run(sc, 256, seed=0)["x"]
    single = pc.Scene()
    single.observe("w", single.control("x", (32,)), factor=patch)
    stitched = ReverseDiffusion(50).run(single, 512, seed=0)["x"].reshape(256, 64)
    real = datasets.smooth_signals(256, torch.Generator().manual_seed(0))[:, :64]

    def jump(v, b):
        return float((v[:, b] - v[:, b - 1]).abs().mean())

    typical = sum(jump(real, b) for b in range(1, 64)) / 63
    edges = (8, 16, 24, 32, 40, 48, 56)
    assert max(jump(pano, b) for b in edges) < 1.5 * typical
    assert jump(stitched, 32) > 2.5 * typical
    assert abs(float(pano.std()) - float(real.std())) < 0.1


def test_clip_x0_is_inert_when_wide_and_holds_the_range():
    scene = pc.Scene()
    x = scene.control("x", (4,))
    scene.observe("a", x, factor=Gaussian(torch.full((4,), 0.3), 0.5))
    scene.observe("b", x, factor=Gaussian(torch.full((4,), -0.2), 0.5), fn=ops.identity)
    plain = PerStepEM(40, 1).run(scene, 200, seed=1)["x"]
    wide = PerStepEM(40, 1, clip_x0=(-1e6, 1e6)).run(scene, 200, seed=1)["x"]
    assert torch.allclose(plain, wide, atol=1e-4)
    narrow = PerStepEM(40, 1, clip_x0=(-0.05, 0.05)).run(scene, 200, seed=1)["x"]
    assert narrow.abs().max() <= 0.05 + 1e-5
    with pytest.raises(pc.ScheduleError, match="clip_x0"):
        PerStepEM(10, 1, clip_x0=(0.2, 0.1))

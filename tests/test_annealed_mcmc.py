"""Annealed MCMC against ground truth: kernels, Metropolis tests, adaptation, diagnostics."""

import copy
import math

import pytest
import torch

import probcomp as pc
from probcomp import metrics, targets
from probcomp.factors import Gaussian, GaussianMixture
from probcomp.inference import AnnealedMCMC
from probcomp.inference.annealed_mcmc import KERNELS
from probcomp.inference.kernels import HMC, EnergyTest


def _scene(*factors, d=2):
    sc = pc.Scene()
    x = sc.control("x", (d,))
    for k, f in enumerate(factors):
        sc.observe(f"y{k}", x, factor=f)
    return sc


def _level_states(engine, scene, n, seed=0):
    """States after the transitions of every level (callback), and the result."""
    seen = []
    engine.callback = lambda info: seen.append(info["x"]["x"].clone())
    return seen, engine.run(scene, n, seed=seed)


class _NoKinetic(HMC):
    """A broken HMC that leaves the kinetic energy out of its test (must fail the variance check)."""

    def log_accept(self, d_logp, start, end):
        return d_logp


@pytest.mark.parametrize("kernel, ok", [("hmc", True), (_NoKinetic(EnergyTest(), damping=1.0), False)])
def test_hmc_with_a_large_step_keeps_the_exact_variance(kernel, ok):
    """Standard normal target (its noised version is standard normal at every t): the start is
    stationary, so 30 HMC transitions with a large leapfrog step must keep variance 1."""
    f = Gaussian(torch.zeros(4), torch.eye(4))
    test = {"metropolis": "energy", "damping": 1.0} if kernel == "hmc" else {}
    eng = AnnealedMCMC(
        kernel, 30, 1, step_size=lambda t: 0.5 * 1.4**2, t_max=0.5, leapfrog_steps=3, resample=None, **test
    )
    seen, res = _level_states(eng, _scene(f, d=4), 4000)
    var = float(seen[0].var(0).mean())
    assert 0.2 < res.stats["accept_mean"] < 0.95
    assert (abs(var - 1.0) < 0.06) == ok, var


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_adjusted_kernels_sample_an_anisotropic_gaussian_exactly(kernel):
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
    f = Gaussian(torch.zeros(2), cov)
    eng = AnnealedMCMC(kernel, 40, 1, step_size=lambda t: 0.4, t_max=1e-3, damping=1.0)
    seen, _ = _level_states(eng, _scene(f), 4000)
    emp = torch.cov(seen[0].T.double())
    target = cov.double() * float(f.schedule.abar(1e-3)) + float(1 - f.schedule.abar(1e-3)) * torch.eye(2)
    torch.testing.assert_close(emp, target, atol=0.08, rtol=0)


@pytest.mark.filterwarnings("ignore:metropolis='effective'")
@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_score_tests_equal_energy_tests_on_gaussians(kernel):
    """The score is linear for a Gaussian, so the trapezoid line integral is exact: the score-based
    and leapfrog-path tests accept exactly the moves the energy test accepts (the leapfrog-path
    test, degenerate in general, is exact for quadratic energies; the engine still warns)."""
    f1 = Gaussian(torch.tensor([0.5, 0.0]), 0.3 * torch.eye(2))
    f2 = Gaussian(torch.tensor([0.0, -0.2]), torch.tensor([[0.5, 0.1], [0.1, 0.2]]))
    sc = _scene(f1, f2)
    tests = ["energy", "score"] + (["effective"] if kernel == "hmc" else [])
    out = {m: AnnealedMCMC(kernel, 3, 10, metropolis=m).run(sc, 500, seed=3)["x"] for m in tests}
    for m in tests[1:]:
        torch.testing.assert_close(out[m], out["energy"], atol=1e-4, rtol=0)


def test_score_test_is_approximate_on_a_mixture_and_more_points_help():
    ring, _, _ = targets.analytic_ring_bar()
    eng = AnnealedMCMC("mala", 1, 1)
    comp = eng.compile(_scene(ring))
    from probcomp.inference.kernels import FlatTarget, KernelState, ScoreLineTest
    from probcomp.inference.steps import Packer

    tg = FlatTarget(comp, Packer(comp.shapes), energy=True)
    x = ring.sample(256, torch.Generator().manual_seed(0))
    x1 = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    t = 0.02
    (g, lp), (g1, lp1) = tg(x, t), tg(x1, t)
    exact = lp1 - lp
    errs = []
    start, end = KernelState(x, g, lp, x), KernelState(x1, g1, lp1, x1)
    for n in (2, 4, 8):
        errs.append(float((ScoreLineTest(n).log_ratio(tg, t, start, end) - exact).abs().mean()))
    assert errs[0] > 1e-3 and errs[2] < errs[1] < errs[0]


def test_annealed_hmc_samples_the_analytic_ring_bar_product():
    """Ground truth: exact scores and energies; W2 within 2x of the two-draw floor."""
    ring, bar, prod = targets.analytic_ring_bar()
    sc = _scene(ring, bar)
    g = torch.Generator().manual_seed(1)
    ref, ref2 = prod.sample(1000, g), prod.sample(1000, g)
    floor = metrics.w2(ref, ref2)
    du = dict(leapfrog_steps=3, resample=None, reverse_step=True, spacing="uniform", t_max=1.0, t_min=1e-3)
    res = AnnealedMCMC("hmc", 5, 50, **du).run(sc, 1000, seed=0)  # Du et al. (2023)'s scheme
    rd = pc.inference.ReverseDiffusion(50).run(sc, 1000, seed=0)
    w_hmc, w_rd = metrics.w2(res["x"], ref), metrics.w2(rd["x"], ref)
    assert w_hmc < 2.0 * floor and w_hmc < 0.7 * w_rd, (w_hmc, w_rd, floor)
    assert res.stats["metropolis"] == "energy"
    assert abs(res.stats["accept_mean"] - 0.65) < 0.05  # adapted toward the target


def test_acceptance_is_per_particle_and_diagnostics_are_recorded():
    gm = GaussianMixture(
        torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), torch.tensor([0.1, 0.1]), torch.tensor([0.5, 0.5])
    )
    res = AnnealedMCMC("mala", 4, 8, resample=None, reverse_step=True).run(
        _scene(gm), 400, seed=0, num_chains=4
    )
    acc = res.particle_stats["accept"]
    assert acc.shape == (400, 8) and float(acc.std(0).max()) > 0.01  # differs between particles
    for key in ("accept", "step_size", "ess", "nfe_per_level"):
        assert res.stats[key].shape == (8,)
    assert res.stats["nfe_total"] == int(res.stats["nfe_per_level"].sum()) + 1
    idata = res.to_arviz()
    assert idata.posterior["x"].shape[:2] == (4, 100) and "level" in idata.sample_stats["accept"].dims


def test_unadjusted_kernels_cost_what_they_say():
    f = Gaussian(torch.zeros(2), torch.eye(2))
    for kernel, per in (("ula", 1), ("uhmc", 3)):
        res = AnnealedMCMC(kernel, 2, 5, leapfrog_steps=3, resample=None, reverse_step=True).run(
            _scene(f), 10, seed=0
        )
        # one score per transition step, one per new level, one at the start (last level needs none)
        assert res.stats["nfe_total"] == 5 * 2 * per + 4 + 1
        assert math.isnan(res.stats["accept_mean"])


def test_same_seed_same_samples_and_every_kernel_runs():
    f = Gaussian(torch.zeros(2), torch.eye(2))
    for kernel in KERNELS:
        a = AnnealedMCMC(kernel, 2, 5).run(_scene(f), 50, seed=7)["x"]
        b = AnnealedMCMC(kernel, 2, 5).run(_scene(f), 50, seed=7)["x"]
        assert torch.equal(a, b) and torch.isfinite(a).all()


def test_resampling_runs_and_reports_ess():
    gm = GaussianMixture(
        torch.tensor([[-0.5, 0.0], [0.5, 0.0]]), torch.tensor([0.1, 0.1]), torch.tensor([0.5, 0.5])
    )
    res = AnnealedMCMC("hmc", 2, 10, resample="always").run(_scene(gm), 200, seed=0)
    assert float(res.stats["resampled"][:-1].min()) == 1.0
    assert ((res.stats["ess"] > 0) & (res.stats["ess"] <= 1.0 + 1e-9)).all()
    assert res.particle_stats["log_weight"].shape == (200,)


def test_final_resampling_returns_equally_weighted_particles():
    """Weighted SMC particles are resampled after the last level unless asked not to; the kept
    weights and the resampled particles describe the same mode balance."""
    ring, bar, _ = targets.analytic_ring_bar()
    kw = dict(resample="ess", ess_threshold=0.0, reverse_step=False)
    weighted = AnnealedMCMC("hmc", 3, 30, final_resample=False, **kw).run(_scene(ring, bar), 2000, seed=0)
    resampled = AnnealedMCMC("hmc", 3, 30, **kw).run(_scene(ring, bar), 2000, seed=0)
    assert weighted.stats["ess_final"] < 0.9 and resampled.stats["ess_final"] == weighted.stats["ess_final"]
    assert float(weighted.particle_stats["log_weight"].std()) > 0.1
    assert torch.count_nonzero(resampled.particle_stats["log_weight"]) == 0
    upper = weighted["x"][:, 1] > 0
    w = torch.softmax(weighted.particle_stats["log_weight"], 0)
    frac_w, frac_r = float(w[upper].sum()), float((resampled["x"][:, 1] > 0).double().mean())
    assert abs(frac_w - frac_r) < 0.04, (frac_w, frac_r)
    assert resampled["x"].unique(dim=0).shape[0] < 2000  # duplicates: it did resample


@pytest.mark.parametrize(
    "kw",
    [dict(kernel="hmc", metropolis="effective"), dict(kernel="mala", metropolis="score", trapezoid_points=2)],
)
def test_degenerate_score_tests_warn(kw):
    """Two-point trapezoid tests cancel the proposal terms identically (module docstring): warn."""
    gm = GaussianMixture(torch.tensor([[0.0, 0.0]]), torch.tensor([0.3]), torch.tensor([1.0]))
    with pytest.warns(UserWarning, match="reduces algebraically"):
        AnnealedMCMC(steps_per_level=1, levels=2, **kw).run(_scene(gm), 8)


def test_importance_weights_move_mass_out_of_modes_the_product_leaves():
    """Ring x bar (analytic): annealed HMC leaves mass in the diagonal ring modes, which the
    product all but empties; the annealed importance weights (no resampling) take it out."""
    ring, bar, prod = targets.analytic_ring_bar()
    eng = AnnealedMCMC(
        "hmc", 5, 50, resample="ess", ess_threshold=0.0, final_resample=False, reverse_step=False
    )
    res = eng.run(_scene(ring, bar), 1000, seed=0)
    means = targets.ring_means(0.5, 8)
    label = (res["x"][:, None, :] - means[None]).norm(dim=-1).argmin(1)
    w = torch.softmax(res.particle_stats["log_weight"], 0)
    minor = [0, 1, 3, 4, 5, 7]
    plain = float(torch.isin(label, torch.tensor(minor)).double().mean())
    weighted = float(w[torch.isin(label, torch.tensor(minor))].sum())
    exact = float(prod.weights.reshape(8, -1).sum(1)[minor].sum())
    assert plain > 3 * exact and abs(weighted - exact) < abs(plain - exact) / 2, (plain, weighted, exact)


def test_bad_configurations_are_refused_with_clear_errors():
    with pytest.raises(pc.ScheduleError, match="kernel must be one of"):
        AnnealedMCMC("nuts")
    with pytest.raises(pc.ScheduleError, match="needs kernel='hmc'"):
        AnnealedMCMC("mala", metropolis="effective")
    with pytest.raises(pc.ScheduleError, match="no Metropolis test"):
        AnnealedMCMC("ula", metropolis="energy")
    with pytest.raises(pc.ScheduleError, match="trapezoid_points"):
        AnnealedMCMC("hmc", trapezoid_points=1)
    score_only = pc.models.load("ring8")
    with pytest.raises(pc.FactorError, match="ring8"):
        AnnealedMCMC("hmc", 1, 2, metropolis="energy").run(_scene(score_only), 4)


class _ScoreOnly(pc.factors.ScoreFactor):
    """An analytic factor with its energy hidden: the engine sees scores only."""

    def __init__(self, inner):
        super().__init__(inner.event_shape, inner.schedule, f"{inner.name}-score-only")
        self.inner = inner

    def score(self, y, t):
        return self.inner.score(y, t)


@pytest.mark.parametrize("reverse_step", [False, True])
def test_score_only_smc_weights_match_the_energy_weights(reverse_step):
    """Fokker-Planck (noise level) plus line-integral (space) increments, from scores alone,
    reproduce the exact energy-ratio weights up to a constant."""
    ring, bar, _ = targets.analytic_ring_bar()
    # an unadjusted kernel moves both runs identically, so only the weights differ.  The
    # log-SNR trapezoid needs small steps in log-SNR: t_min = 0 keeps the 20-level grid uniform
    # (with the default t_min = 1e-3 its last interval spans 4 units of log-SNR)
    kw = dict(
        resample="ess",
        ess_threshold=0.0,
        final_resample=False,
        reverse_step=reverse_step,
        trapezoid_points=4,
        t_max=1.0,
        t_min=0.0,
        leapfrog_steps=3,
    )
    exact = AnnealedMCMC("uhmc", 2, 20, **kw).run(_scene(ring, bar), 300, seed=0)
    approx = AnnealedMCMC("uhmc", 2, 20, **kw).run(_scene(_ScoreOnly(ring), _ScoreOnly(bar)), 300, seed=0)
    a = exact.particle_stats["log_weight"]
    b = approx.particle_stats["log_weight"]
    assert torch.equal(exact["x"], approx["x"])
    d = (a - a.mean()) - (b - b.mean())
    assert float(d.abs().median()) < 0.06 * float((a - a.mean()).abs().median())
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.995
    # the weights vary between particles, so agreeing on them is informative
    assert float((a - a.mean()).abs().median()) > 0.5


def test_a_small_last_level_keeps_the_width_of_narrow_modes():
    """With levels uniform on [0, 1] the last MCMC level (t = 0.02 here) is noisier than the
    ring's std 0.03, and Tweedie's final denoising step narrows every mode; t_min = 1e-3 keeps
    the width (exact in-mode std: 0.03)."""
    ring, _, _ = targets.analytic_ring_bar()
    means = targets.ring_means(0.5, 8)

    def in_mode_std(t_min):
        xs = AnnealedMCMC("hmc", 3, 50, t_min=t_min).run(_scene(ring), 1000, seed=0)["x"]
        label = (xs[:, None, :] - means[None]).norm(dim=-1).argmin(1)
        return float((xs - means[label]).std(0).mean())

    narrow, kept = in_mode_std(0.0), in_mode_std(1e-3)
    assert narrow < 0.026 and abs(kept - 0.03) < 0.003 and kept > narrow + 0.003, (narrow, kept)
    with pytest.raises(pc.ScheduleError, match="t_min"):
        AnnealedMCMC(t_min=1.5)


class _Broken(pc.factors.ScoreFactor):
    """A factor whose score turns NaN below t = 0.5."""

    def __init__(self):
        super().__init__((2,), pc.schedules.linear(), "broken")

    def score(self, y, t):
        s = -y.clone()
        return s * float("nan") if float(torch.as_tensor(t).max()) < 0.5 else s


@pytest.mark.parametrize("kernel", ["ula", "hmc"])
def test_a_nan_score_stops_the_run_and_names_the_factor(kernel):
    with pytest.raises(pc.NumericalError, match="broken"):
        AnnealedMCMC(kernel, 2, 10, metropolis="score" if kernel == "hmc" else None).run(
            _scene(_Broken()), 20
        )


def test_the_first_smc_weight_turns_standard_normal_draws_into_the_first_level_target():
    """Particles start from N(0, I); ``initial_log_weight`` reweights them to pi_{t_0}: with
    energies exactly, from scores alone by the line integral from the origin (exact for a
    Gaussian, whose score is linear), and the self-normalised variance is the target's."""
    from probcomp.inference import smc

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    var = torch.tensor([0.5, 0.25, 0.8], dtype=torch.float64)  # pi = N(0, diag(var))
    score = lambda v: -v / var  # noqa: E731
    log_p = -(x.square() / (2 * var)).sum(1)
    exact = smc.initial_log_weight(score, x, score(x), log_p, 3)
    lines = smc.initial_log_weight(score, x, score(x), None, 2)
    assert torch.allclose(exact - exact.mean(), lines - lines.mean(), atol=1e-9)
    w = torch.softmax(exact, 0)
    assert torch.allclose((w[:, None] * x.square()).sum(0), var, rtol=0.03)


def test_annealed_smc_weights_its_first_draws():
    """The engine draws its first particles from the Gaussian of :func:`smc.matched_precision`
    and weights them by ``log pi_{t_0}(x) + x^T P x / 2``: with no move and ``ess_threshold = 0``
    a one-level run returns exactly those weights (the last denoising step adds nothing)."""
    from probcomp.inference import smc

    fa, fb = Gaussian([0.5, 0.0], [0.3, 0.3], name="a"), Gaussian([-0.5, 0.0], [0.3, 0.3], name="b")
    eng = AnnealedMCMC("ula", 0, 1, resample="ess", ess_threshold=0.0, final_resample=False)
    res = eng.run(_scene(fa, fb), 64, seed=3)
    t0 = float(eng.ts[0])
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    precision = smc.matched_precision(z, fa.score(z, t0) + fb.score(z, t0))
    assert bool(((precision > 1.4) & (precision < 2.6)).all()), precision  # two factors: about 2
    x0 = z / precision.sqrt().float()
    log_p = fa.log_prob_t(x0, t0) + fb.log_prob_t(x0, t0)
    want = smc.initial_log_weight(lambda v: v, x0, x0, log_p, 2, precision)
    got = res.particle_stats["log_weight"]
    assert torch.allclose(got - got.mean(), want - want.mean(), atol=1e-5)
    assert float(want.std()) > 0.01  # the weights differ between particles


def test_the_default_configuration_samples_the_analytic_ring_bar_product():
    """``AnnealedMCMC()`` (AIS-weighted HMC on a log-SNR grid, about 225 evaluations per
    factor and particle) against exact draws: W2 within 1.5x the floor of two exact draws, every
    mode weight within 0.04 and the modes' width kept (mean log-density within 0.1 nats)."""
    ring, bar, prod = targets.analytic_ring_bar()
    g = torch.Generator().manual_seed(1)
    ref, ref2 = prod.sample(2000, g), prod.sample(2000, g)
    floor = metrics.w2(ref, ref2)
    res = AnnealedMCMC().run(_scene(ring, bar), 2000, seed=0)
    x = res["x"]
    assert metrics.w2(x, ref) < 1.5 * max(floor, 0.07), (metrics.w2(x, ref), floor)
    mass = prod.weights.reshape(8, -1).sum(1)
    assert float((metrics.mode_weights(x, targets.ring_means()) - mass).abs().max()) < 0.04
    gap = float(prod.log_prob(x.double()).mean() - prod.log_prob(ref.double()).mean())
    assert abs(gap) < 0.1, gap
    assert res.stats["nfe_total"] <= 2 * 230 and res.stats["metropolis"] == "energy"
    assert res.stats["resample"] == "ess"


def test_the_defaults_follow_the_factors_and_keep_what_is_given():
    """``AnnealedMCMC()`` runs ENERGY_SETTINGS where every factor has an energy and
    SCORE_ONLY_SETTINGS where one has only a score; settings passed explicitly are kept, and a
    fully specified engine is used as it is."""
    from probcomp.inference.annealed_mcmc import ENERGY_SETTINGS, SCORE_ONLY_SETTINGS

    ring, bar, _ = targets.analytic_ring_bar()
    energy, scores = _scene(ring, bar), _scene(_ScoreOnly(ring), bar)
    engine = AnnealedMCMC()
    for scene, want, label in (
        (energy, ENERGY_SETTINGS, "energy"),
        (scores, SCORE_ONLY_SETTINGS, "score-only"),
    ):
        res = engine.run(scene, 64, seed=0)
        assert res.stats["settings"] == label
        assert (res.stats["levels"], res.stats["steps_per_level"]) == (
            want["levels"],
            want["steps_per_level"],
        )
        assert float(res.stats["t"][0]) == pytest.approx(want["t_max"])
    again = engine.run(scores, 64, seed=0)
    assert torch.equal(again["x"], engine.run(scores, 64, seed=0)["x"])
    ten = AnnealedMCMC(levels=10, leapfrog_steps=4).run(scores, 64, seed=0)
    assert ten.stats["levels"] == 10 and ten.stats["settings"] == "score-only"
    spelled = AnnealedMCMC("hmc", 1, 10, leapfrog_steps=4, t_max=1.0, t_min=1e-3).run(scores, 64, seed=0)
    assert torch.equal(ten["x"], spelled["x"]) and ten.stats["nfe_total"] == spelled.stats["nfe_total"]
    given = AnnealedMCMC("hmc", 3, 12, leapfrog_steps=2, t_max=0.9, t_min=1e-3).run(scores, 64, seed=0)
    assert (given.stats["settings"], given.stats["levels"], given.stats["steps_per_level"]) == (
        "given",
        12,
        3,
    )


class _Learned(GaussianMixture):
    """An analytic mixture that says its energy was learned."""

    learned = True


def test_learned_energies_are_weighted_by_their_scores():
    """weights='auto' takes a learned factor's change between levels from its scores (the
    weights of a score-only copy of the factor) and the others' from their energies; with exact
    scores all three rules estimate the same weights.  AnnealedMCMC() gives such a scene the
    score-only settings."""
    ring, bar, _ = targets.analytic_ring_bar()
    learned = copy.copy(ring)  # the same mixture, marked learned
    learned.__class__ = _Learned
    kw = dict(final_resample=False, ess_threshold=0.0, metropolis="score", leapfrog_steps=3)
    kw.update(t_max=1.0, t_min=1e-3)

    def log_w(factor, **extra):
        res = AnnealedMCMC("hmc", 1, 40, **kw, **extra).run(_scene(factor, bar), 200, seed=0)
        return res.particle_stats["log_weight"]

    auto = log_w(learned)
    torch.testing.assert_close(auto, log_w(_ScoreOnly(learned)))
    energy, score = log_w(learned, weights="energy"), log_w(learned, weights="score")
    assert not torch.equal(auto, energy) and not torch.equal(auto, score)
    for other in (energy, score):
        assert float(torch.corrcoef(torch.stack([auto, other]))[0, 1]) > 0.99
    compiled = AnnealedMCMC().compile(_scene(learned, bar))
    assert AnnealedMCMC().for_factors(compiled).settings == "score-only"
    assert AnnealedMCMC(weights="energy").for_factors(compiled).settings == "energy"
    with pytest.raises(pc.ScheduleError, match="weights must be one of"):
        AnnealedMCMC(weights="energies")

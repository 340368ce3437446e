"""Bad input at the engines' boundary: one-line probcomp errors naming the culprit, never a raw
torch traceback or a silently wrong answer; concept inversion reports its own convergence."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import probcomp as pc
from probcomp.errors import ConvergenceWarning
from probcomp.factors import ConditionalGaussian, Gaussian
from probcomp.inference import AnnealedMCMC, ConceptInversion, PerStepEM, ReverseDiffusion


def _scene(factor=None, fn=None):
    s = pc.Scene()
    x = s.control("x", (2,))
    kw = {"fn": fn} if fn is not None else {}
    s.observe("y", x, factor=factor or Gaussian(torch.zeros(2), 1.0), **kw)
    return s


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


CONSTRUCTION = [
    (lambda: AnnealedMCMC("mala", 2, 3, step_size=float("nan")), "step_size"),
    (lambda: AnnealedMCMC("mala", 2, 3, step_size=-1.0), "step_size"),
    (lambda: AnnealedMCMC("hmc", 2.5, 3), "steps_per_level"),
    (lambda: AnnealedMCMC("hmc", 2, 3, mass=float("nan")), "mass"),
    (lambda: AnnealedMCMC("hmc", 2, 3, target_accept=1.5), "target_accept"),
    (lambda: AnnealedMCMC("hmc", 2, 3, ess_threshold=2.0), "ess_threshold"),
    (lambda: AnnealedMCMC("hmc", 2, 3, leapfrog_steps=0), "leapfrog_steps"),
    (lambda: AnnealedMCMC("hmc", 2, 3, resampling="residual"), "resampling"),
    (lambda: ReverseDiffusion(steps=2.5), "steps"),
    (lambda: ReverseDiffusion(steps="10"), "steps"),
    (lambda: ReverseDiffusion(10, dtype=torch.int64), "dtype"),
    (lambda: ReverseDiffusion(10, device="banana"), "banana"),
    (lambda: ReverseDiffusion(10, "ddim", eta="x"), "eta"),
    (lambda: ReverseDiffusion(10, max_abs=0.0), "max_abs"),
    (lambda: ReverseDiffusion(10, callback=3), "callback"),
    (lambda: PerStepEM(10, lr=float("inf")), "lr"),
    (lambda: PerStepEM(10, inner_steps=1.5), "inner_steps"),
    (lambda: ConceptInversion(steps=2.5), "steps"),
    (lambda: ConceptInversion(restarts=0), "restarts"),
    (lambda: ConceptInversion(lr=float("nan")), "lr"),
    (lambda: ConceptInversion(t_range=3), "t_range"),
]
if not torch.cuda.is_available():
    CONSTRUCTION.append((lambda: ReverseDiffusion(10, device="cuda"), "not available"))


@pytest.mark.parametrize("make, culprit", CONSTRUCTION)
def test_engine_arguments_are_checked_at_construction(make, culprit):
    with pytest.raises(pc.ProbcompError) as err:
        make()
    assert culprit in _one_line(err)


@pytest.mark.parametrize("n", [0, -3, 2.5, "10", True, 10**10])
def test_num_samples_is_a_positive_integer_the_engine_can_allocate(n):
    with pytest.raises(pc.SceneError, match="num_samples") as err:
        ReverseDiffusion(3).run(_scene(), n)
    _one_line(err)


class _Raises(pc.factors.ScoreFactor):
    def __init__(self):
        super().__init__((2,), name="fragile")

    def score(self, y, t):
        raise ZeroDivisionError("the user's bug")


class _WrongShape(pc.factors.ScoreFactor):
    def __init__(self):
        super().__init__((2,), name="narrow")

    def score(self, y, t):
        return -y[:, :1]  # (N, 1) for (N, 2): would broadcast silently


@pytest.mark.parametrize("engine", [ReverseDiffusion(3), AnnealedMCMC("ula", 1, 3), PerStepEM(3, 1)])
def test_a_factor_that_raises_is_named_with_the_level_and_the_cause_chained(engine):
    with pytest.raises(pc.FactorError, match="'fragile'.*raised ZeroDivisionError at noise level") as err:
        engine.run(_scene(_Raises()), 4)
    assert isinstance(err.value.__cause__, ZeroDivisionError)
    _one_line(err)


@pytest.mark.parametrize("engine", [ReverseDiffusion(3), AnnealedMCMC("ula", 1, 3), PerStepEM(3, 1)])
def test_a_score_of_the_wrong_shape_is_refused_on_the_first_call(engine):
    with pytest.raises(pc.ShapeError, match=r"'narrow'.*shape \(4, 1\) for input \(4, 2\)") as err:
        engine.run(_scene(_WrongShape()), 4)
    _one_line(err)


def test_an_observation_function_that_raises_or_detaches_is_named():
    def broken(x):
        raise KeyError("oops")

    with pytest.raises(pc.SceneError, match="observable 'y'.*KeyError"):
        ReverseDiffusion(3).run(_scene(fn=broken), 4)
    with pytest.raises(pc.SceneError, match="'y' does not depend differentiably") as err:
        ReverseDiffusion(3).run(_scene(fn=lambda x: x.detach() * 2), 4)
    _one_line(err)


class _ScoreOnly(pc.factors.ScoreFactor):
    """An analytic factor with its energy and type hidden: to the checks, a learned model."""

    def __init__(self, inner):
        super().__init__(inner.event_shape, inner.schedule, inner.name)
        self.inner = inner

    def score(self, y, t):
        return self.inner.score(y, t)


def _two_gaussians(wrap=lambda f: f):
    a, b = Gaussian(torch.zeros(2), 1.0, name="a"), Gaussian(torch.ones(2), 1.0, name="b")
    s = pc.Scene()
    x = s.control("x", (2,))
    s.observe("ya", x, factor=wrap(a))
    s.observe("yb", x, factor=wrap(b), weight=-3.0)
    return s


def test_a_scene_whose_target_is_not_normalisable_is_refused_at_compile_time():
    """``p^1 q^-3`` of two Gaussians with the same covariance has precision -2: refused up front."""
    with pytest.raises(pc.FactorError, match="control 'x'") as err:
        AnnealedMCMC("ula", 5, 50).run(_two_gaussians(), 64, seed=0)
    _one_line(err)


def test_a_non_normalisable_target_is_stopped_by_the_runaway_guard_naming_the_factor():
    """The same target through factors whose tails the checks cannot see (learned models): a
    warning at compile time, then the chain runs to 1e8-1e10 and the guard stops it, naming the
    level and the dominant factor."""
    s = _two_gaussians(_ScoreOnly)
    with pytest.warns(UserWarning, match="sum to -2"):
        compiled = AnnealedMCMC("ula", 5, 50).compile(s)
    du = dict(resample=None, reverse_step=True, spacing="uniform", t_max=1.0, t_min=1e-3)  # reverse steps
    with pytest.raises(pc.NumericalError, match=r"ran away.*max_abs.*factor '(a|b)'") as err:
        AnnealedMCMC("ula", 5, 50, **du).run(compiled, 64, seed=0)
    _one_line(err)
    assert AnnealedMCMC("ula", 5, 50, max_abs=None, **du).run(compiled, 64, seed=0)["x"].abs().max() > 1e6


def test_the_runaway_guard_leaves_valid_runs_alone():
    s = _scene(Gaussian(torch.tensor([3.0, -2.0]), 0.5))
    a = ReverseDiffusion(20).run(s, 64, seed=0)["x"]
    b = ReverseDiffusion(20, max_abs=None).run(s, 64, seed=0)["x"]
    assert torch.equal(a, b)


def _conditional_gaussian_scene():
    x = torch.tensor([0.7, -1.2])
    s = pc.Scene()
    s.observe("x", value=x, factor=ConditionalGaussian((2,), std=0.1), condition=s.control("c", (2,)))
    return s, x


def test_concept_inversion_warns_when_it_stopped_early_or_its_restarts_disagree():
    """The catalogue's case: 50 steps and 2 restarts end far from the truth (thousands of times its
    loss); the engine can tell, on its shared draws, that a line search still lowers the loss and
    that the two restarts ended at different losses."""
    s, x = _conditional_gaussian_scene()
    eng = ConceptInversion(steps=50, restarts=2)
    with pytest.warns(ConvergenceWarning, match="line search.*restarts' losses spread"):
        res = eng.run(s, seed=0)
    assert res.loss > 20 * eng.loss(s, {"c": x}, seed=0)
    c = res.stats["convergence"]
    assert not res.stats["converged"] and c["still_falling"] and c["restarts_disagree"]


def test_concept_inversion_that_converged_does_not_warn():
    s, x = _conditional_gaussian_scene()
    eng = ConceptInversion(steps=1000, restarts=4, lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        res = eng.run(s, seed=0)
    assert res.stats["converged"]
    assert res.loss < 1.2 * eng.loss(s, {"c": x}, seed=0)
    assert float((res["c"] - x).abs().max()) < 0.02
    assert math.isfinite(res.stats["convergence"]["relative_drop"])


def test_a_generator_is_a_seed():
    sc = _scene()
    a = ReverseDiffusion(3).run(sc, 4, seed=torch.Generator().manual_seed(5))
    b = ReverseDiffusion(3).run(sc, 4, seed=5)
    assert torch.equal(a["x"], b["x"]) and a.stats["seed"] is None and b.stats["seed"] == 5
    s, _ = _conditional_gaussian_scene()
    eng = ConceptInversion(steps=5, restarts=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        r1, r2 = eng.run(s, seed=torch.Generator().manual_seed(3)), eng.run(s, seed=3)
    assert torch.equal(r1["c"], r2["c"])


def test_smc_weights_of_score_only_and_explicit_factors_match_the_exact_ones():
    """With one factor score-only, the explicit density's change in level comes from its energy,
    not from the Fokker-Planck equation (which holds for diffusion factors only)."""
    import pyro.distributions as dist

    g = Gaussian(torch.tensor([0.3, -0.2]), 0.6)
    lap = pc.factors.ExplicitFactor(dist.Laplace(torch.zeros(2), 0.5).to_event(1))

    def scene(first):
        s = pc.Scene()
        x = s.control("x", (2,))
        s.observe("g", x, factor=first)
        s.observe("lap", x, factor=lap)
        return s

    kw = dict(resample="ess", ess_threshold=0.0, final_resample=False, reverse_step=False, t_min=0.0)
    kw.update(leapfrog_steps=3, t_max=1.0)  # the same settings for both scenes (not by their factors)
    exact = AnnealedMCMC("uhmc", 2, 20, **kw).run(scene(g), 300, seed=0)
    mixed = AnnealedMCMC("uhmc", 2, 20, **kw).run(scene(_ScoreOnly(g)), 300, seed=0)
    assert torch.equal(exact["x"], mixed["x"])
    a, b = exact.particle_stats["log_weight"], mixed.particle_stats["log_weight"]
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.99


def test_nan_smc_weights_stop_the_run():
    """A hard constraint applied at every level: particles outside it have weight -inf - -inf."""
    s = pc.Scene()
    x = s.control("x", (2,))
    s.observe("g", x, factor=Gaussian(torch.zeros(2), 1.0))
    wall = pc.factors.ExplicitFactor(
        lambda y: torch.where(y[:, 0] > 0, 0.0 * y.sum(1), -math.inf), (2,), name="wall"
    )
    s.observe("wall", x, factor=wall)
    with pytest.raises(pc.NumericalError, match="SMC weights") as err:
        AnnealedMCMC("ula", 1, 10, resample="ess").run(s, 64, seed=0)
    _one_line(err)


def test_a_scene_compiled_by_another_engine_gets_this_engines_checks():
    import pyro.distributions as dist

    s = pc.Scene()
    s.observe(
        "p",
        s.control("x", (2,)),
        factor=pc.factors.ExplicitFactor(dist.Laplace(torch.zeros(2), 1.0).to_event(1)),
    )
    compiled = ReverseDiffusion(5).compile(s)
    with pytest.raises(pc.SceneError, match="only priors and explicit"):
        PerStepEM(5).run(compiled, 4)


def test_adjusted_user_kernels_need_a_target_acceptance_and_step_size_functions_are_checked():
    from probcomp.inference.kernels import EnergyTest, Kernel

    class NoTarget(Kernel):
        def __init__(self):
            super().__init__(metropolis=EnergyTest())

    with pytest.raises(pc.ScheduleError, match="target_accept"):
        AnnealedMCMC(NoTarget(), 2, 3)
    AnnealedMCMC(NoTarget(), 2, 3, target_accept=0.4)  # or given explicitly
    with pytest.raises(pc.ScheduleError, match="step_size") as err:
        AnnealedMCMC("hmc", 2, 3, step_size=lambda t: -0.1).run(_scene(), 4)
    _one_line(err)

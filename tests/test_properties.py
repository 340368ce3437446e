"""Property-based tests (hypothesis): for random valid input the engines run and give finite samples
of the right shape; for random invalid input the only exceptions that escape are probcomp errors."""

from __future__ import annotations

import contextlib
import math
import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import probcomp as pc
from probcomp import compose, ops
from probcomp.factors import Gaussian, GaussianMixture
from probcomp.inference import AnnealedMCMC, PerStepEM, ReverseDiffusion

FAST = settings(
    max_examples=int(os.environ.get("PROBCOMP_HYPOTHESIS_EXAMPLES", "30")),
    deadline=None,
    derandomize=not os.environ.get("PROBCOMP_HYPOTHESIS_EXAMPLES"),  # CI: the same examples every run
    suppress_health_check=[HealthCheck.too_slow],
)

finite = st.floats(-3.0, 3.0, allow_nan=False, width=32)
shapes = st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple)
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-5, 5),
    st.lists(st.floats(-2, 2), max_size=3),
    st.just(float("nan")),
    st.just(()),
    st.just({"a": 1}),
)


def _engines(steps: int) -> list:
    return [
        ReverseDiffusion(steps),
        ReverseDiffusion(steps, "ddim"),
        AnnealedMCMC("hmc", 1, steps),
        AnnealedMCMC("mala", 1, steps, resample="ess"),
        PerStepEM(steps, 1),
    ]


@st.composite
def scenes(draw):
    """A random valid scene: controls of random shapes, each seen whole or through a window by a
    Gaussian (or a mixture), with random positive or small negative-free weights."""
    s = pc.Scene()
    n_controls = draw(st.integers(1, 2))
    for j in range(n_controls):
        shape = draw(shapes)
        x = s.control(f"x{j}", shape)
        d = math.prod(shape)
        mean = torch.tensor(draw(st.lists(finite, min_size=d, max_size=d))).reshape(shape)
        std = draw(st.floats(0.2, 2.0))
        factor = Gaussian(mean, std) if draw(st.booleans()) else GaussianMixture(
            torch.stack([mean.reshape(-1), -mean.reshape(-1)]), torch.tensor([std, std]), event_shape=shape
        )  # fmt: skip
        weight = draw(st.floats(0.25, 2.0))
        s.observe(f"y{j}", x, factor=factor, weight=weight)
        if len(shape) == 1 and shape[0] >= 2 and draw(st.booleans()):
            s.observe(f"w{j}", x, fn=ops.window(0, 1), factor=Gaussian(torch.zeros(1), 1.0), psi=0.1)
    return s


@FAST
@given(scene=scenes(), n=st.integers(1, 9), seed=st.integers(0, 2**31), steps=st.integers(1, 4))
def test_engines_run_on_random_valid_scenes_and_give_finite_samples_of_the_right_shape(scene, n, seed, steps):
    for eng in _engines(steps):
        res = eng.run(scene, n, seed=seed)
        for name in scene.controls:
            v = res[name]
            assert v.shape == (n, *scene[name]["shape"]), (eng, name)
            assert bool(torch.isfinite(v).all()), (eng, name)


@FAST
@given(shape=junk)
def test_random_invalid_shapes_raise_only_probcomp_errors(shape):
    s = pc.Scene()
    try:
        s.control("x", shape)
    except pc.ProbcompError:
        return
    # accepted: then it must be a real shape of non-negative ints
    got = s["x"]["shape"]
    assert isinstance(got, torch.Size) and all(isinstance(d, int) and d >= 0 for d in got)


@FAST
@given(weight=junk, psi=junk, value=junk)
def test_random_invalid_observations_raise_only_probcomp_errors(weight, psi, value):
    s = pc.Scene()
    x = s.control("x", (2,))
    f = Gaussian(torch.zeros(2), 1.0)
    for kw in ({"weight": weight}, {"psi": psi}):
        with contextlib.suppress(pc.ProbcompError):
            s.observe(f"y{len(s.observables)}", x, factor=f, **kw)
    with contextlib.suppress(pc.ProbcompError):
        s.observe("data", value=value, factor=pc.factors.ConditionalGaussian((2,), std=0.1), condition=x)


ENGINE_ARGS = {
    "steps": junk,
    "sampler": st.one_of(junk, st.sampled_from(["ddpm", "ddim"])),
    "eta": junk,
    "t_max": junk,
    "t_min": junk,
    "clip_x0": junk,
    "max_abs": junk,
}
MCMC_ARGS = {
    "kernel": st.one_of(junk, st.sampled_from(["ula", "mala", "uhmc", "hmc"])),
    "steps_per_level": junk,
    "levels": junk,
    "step_size": junk,
    "leapfrog_steps": junk,
    "damping": junk,
    "mass": junk,
    "metropolis": st.one_of(junk, st.sampled_from(["energy", "score", "effective"])),
    "trapezoid_points": junk,
    "target_accept": junk,
    "resample": st.one_of(junk, st.sampled_from(["ess", "always"])),
    "ess_threshold": junk,
}


def _run_or_probcomp_error(make, scene):
    try:
        eng = make()
    except pc.ProbcompError:
        return
    try:
        res = eng.run(scene, 4, seed=0)
    except pc.ProbcompError:
        return
    assert bool(torch.isfinite(res["x"]).all())


def _small_scene():
    s = pc.Scene()
    s.observe("y", s.control("x", (2,)), factor=Gaussian(torch.tensor([0.5, -0.5]), 0.7))
    return s


@FAST
@given(kwargs=st.fixed_dictionaries({}, optional=ENGINE_ARGS))
def test_random_reverse_diffusion_arguments_run_or_raise_probcomp_errors(kwargs):
    kwargs.setdefault("steps", 3)
    if isinstance(kwargs["steps"], int) and not isinstance(kwargs["steps"], bool):
        kwargs["steps"] = min(max(kwargs["steps"], -1), 4)
    _run_or_probcomp_error(lambda: ReverseDiffusion(**kwargs), _small_scene())


@FAST
@given(kwargs=st.fixed_dictionaries({}, optional=MCMC_ARGS))
def test_random_annealed_mcmc_arguments_run_or_raise_probcomp_errors(kwargs):
    for k, default in (("levels", 3), ("steps_per_level", 1), ("leapfrog_steps", 2), ("trapezoid_points", 3)):
        v = kwargs.setdefault(k, default)
        if isinstance(v, int) and not isinstance(v, bool):
            kwargs[k] = min(v, 4)
    _run_or_probcomp_error(lambda: AnnealedMCMC(**kwargs), _small_scene())


@FAST
@given(seed=junk)
def test_random_seeds_run_or_raise_probcomp_errors(seed):
    with contextlib.suppress(pc.ProbcompError):
        ReverseDiffusion(2).run(_small_scene(), 4, seed=seed)


@FAST
@given(
    weights=st.lists(st.floats(-3.0, 3.0, allow_nan=False), min_size=2, max_size=3),
    stds=st.lists(st.floats(0.3, 2.0), min_size=3, max_size=3),
)
def test_random_weighted_compositions_are_refused_or_sampled_finitely(weights, stds):
    """A weighted product of isotropic Gaussians is normalisable iff its combined precision
    ``sum_i w_i / s_i^2`` is positive: exactly those compositions are refused up front, and the
    others sample finitely."""
    factors = [Gaussian(torch.full((2,), 0.3 * k), s) for k, s in enumerate(stds[: len(weights)])]
    precision = sum(w / s**2 for w, s in zip(weights, stds, strict=False))
    if abs(precision) < 1e-6:
        return  # on the boundary: either answer is defensible in floating point
    try:
        f = compose.weighted(factors, weights)
    except pc.ProbcompError:
        assert precision < 0, (weights, stds)
        return
    assert precision > 0, (weights, stds)
    s = pc.Scene()
    s.observe("y", s.control("x", (2,)), factor=f)
    try:
        res = ReverseDiffusion(5).run(s, 8, seed=0)
    except pc.ProbcompError:
        return
    assert bool(torch.isfinite(res["x"]).all())

"""The compiled fast path of annealed MCMC (``AnnealedMCMC(compile=...)``) against the eager path.

Compiling takes seconds per kernel on a CPU, so the scene is built once per module and every
test reuses one compiled engine per configuration (:func:`engines`).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import probcomp as pc
from probcomp import ops
from probcomp.errors import ScheduleError
from probcomp.factors import Gaussian, GaussianMixture
from probcomp.inference import AnnealedMCMC
from probcomp.inference.compiled_loop import check_compile, compile_mode
from probcomp.inference.kernels import ULA

N, LEVELS, STEPS = 64, 6, 2


def _scene(bar: pc.factors.ScoreFactor | None = None, fn=None) -> pc.Scene:
    """A smooth 2-D product (wide modes: the dynamics do not amplify float rounding)."""
    ring = GaussianMixture(torch.tensor([[0.8, 0.0], [-0.8, 0.0], [0.0, 0.8]]), torch.full((3,), 0.35))
    s = pc.Scene()
    x = s.control("x", (2,))
    s.observe("ring", x, factor=ring)
    if fn is None:
        s.observe("bar", x, factor=bar or Gaussian([0.0, 0.0], [0.5, 1.0]))
    else:
        s.observe("bar", x, factor=bar or Gaussian([0.0, 0.0], [0.5, 1.0]), fn=fn)
    return s


class _Untraceable(pc.factors.ScoreFactor):
    """A factor whose score reads a tensor's value in Python (a graph break: not compilable)."""

    def __init__(self) -> None:
        self.inner = Gaussian([0.0, 0.0], [0.5, 1.0])
        super().__init__(self.inner.event_shape, self.inner.schedule, "untraceable")

    def score(self, y, t):
        scale = 1.0 if float(y.abs().max()) < 1e9 else 0.5
        return scale * self.inner.score(y, t)


@pytest.fixture(scope="module")
def scene():
    return AnnealedMCMC("hmc", STEPS, LEVELS).compile(_scene())


_ENGINES: dict[tuple, AnnealedMCMC] = {}


def engines(
    kernel: str, resample: str | None, compile: bool | str, reverse_step: bool = False
) -> AnnealedMCMC:
    """One engine per configuration for the whole module (its compiled graphs are reused)."""
    key = (kernel, resample, compile, reverse_step)
    if key not in _ENGINES:
        _ENGINES[key] = AnnealedMCMC(
            kernel, STEPS, LEVELS, resample=resample, compile=compile, reverse_step=reverse_step
        )
    return _ENGINES[key]


def _agree(fast: pc.Result, eager: pc.Result) -> None:
    """Samples to float tolerance (a different accept decision would move a particle by a step)."""
    torch.testing.assert_close(fast["x"], eager["x"], atol=1e-4, rtol=1e-4)
    for key in ("nfe_total", "calls"):
        assert fast.stats[key] == eager.stats[key], key
    torch.testing.assert_close(fast.stats["step_size"], eager.stats["step_size"], atol=0, rtol=1e-5)
    if "accept" in eager.particle_stats:
        accept = fast.particle_stats["accept"], eager.particle_stats["accept"]
        torch.testing.assert_close(*accept, atol=1e-4, rtol=0)
    if "log_weight" in eager.particle_stats:
        torch.testing.assert_close(
            fast.particle_stats["log_weight"], eager.particle_stats["log_weight"], atol=1e-3, rtol=1e-4
        )
    if "resampled" in eager.stats:
        assert torch.equal(fast.stats["resampled"], eager.stats["resampled"])


@pytest.mark.parametrize(
    "kernel,resample",
    [
        ("ula", None),
        ("mala", None),
        ("uhmc", None),
        ("hmc", None),
        ("hmc", "ess"),
        pytest.param("ula", "ess", marks=pytest.mark.slow),
        pytest.param("mala", "ess", marks=pytest.mark.slow),
        pytest.param("uhmc", "ess", marks=pytest.mark.slow),
    ],
)
def test_compiled_samples_agree_with_eager(scene, kernel, resample):
    eager = AnnealedMCMC(kernel, STEPS, LEVELS, resample=resample).run(scene, N, seed=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "AnnealedMCMC.compile")  # no fallback: this scene compiles
        fast = engines(kernel, resample, True).run(scene, N, seed=3)
    _agree(fast, eager)
    again = engines(kernel, resample, True).run(scene, N, seed=3)  # the graphs are reused
    assert torch.equal(again["x"], fast["x"])


@pytest.mark.parametrize("kernel", ["mala", "hmc"])
def test_one_transition_per_graph_agrees_with_eager(scene, kernel, monkeypatch):
    """Larger states run a level as ``k`` calls of a one-transition graph (``"auto"``)."""
    from probcomp.inference import compiled_loop

    monkeypatch.setattr(compiled_loop, "WHOLE_LEVEL_WORK", 0)
    eager = AnnealedMCMC(kernel, STEPS, LEVELS, resample="ess").run(scene, N, seed=5)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "AnnealedMCMC.compile")
        fast = AnnealedMCMC(kernel, STEPS, LEVELS, resample="ess", compile=True).run(scene, N, seed=5)
    _agree(fast, eager)


@pytest.mark.parametrize("kernel,resample", [("ula", None), ("hmc", "ess")])
def test_the_compiled_reverse_step_agrees_with_eager(scene, kernel, resample):
    """With ``reverse_step`` the compiled target takes the DDPM step between levels and
    evaluates its end in one graph (the weights then use both ends)."""
    eager = AnnealedMCMC(kernel, STEPS, LEVELS, resample=resample, reverse_step=True).run(scene, N, seed=4)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "AnnealedMCMC.compile")
        fast = engines(kernel, resample, True, reverse_step=True).run(scene, N, seed=4)
    _agree(fast, eager)


def test_a_factor_that_cannot_be_compiled_warns_once_and_runs_eagerly():
    s = _scene(_Untraceable())
    eager = AnnealedMCMC("mala", STEPS, LEVELS).run(s, N, seed=1)
    engine = AnnealedMCMC("mala", STEPS, LEVELS, compile=True)
    with pytest.warns(UserWarning, match="could not be compiled") as caught:
        fast = engine.run(s, N, seed=1)
    assert len([w for w in caught if "could not be compiled" in str(w.message)]) == 1
    assert torch.equal(fast["x"], eager["x"])  # the generator is restored: the eager run exactly
    assert fast.stats["nfe_total"] == eager.stats["nfe_total"]
    assert torch.equal(fast.stats["step_size"], eager.stats["step_size"])


@pytest.mark.parametrize("case", ["observation function", "user kernel"])
def test_unsupported_scenes_and_kernels_fall_back_with_a_warning(case):
    if case == "user kernel":

        class MyULA(ULA):
            name = "my-ula"

            def step_with(self, *args, **kwargs):  # (a user kernel: not compiled)
                raise AssertionError("not called")

        s, kernel = _scene(), MyULA()
    else:
        s, kernel = _scene(fn=ops.linear(torch.eye(2))), "ula"
    eager = AnnealedMCMC(kernel, STEPS, LEVELS).run(s, N, seed=2)
    with pytest.warns(UserWarning, match="could not be compiled"):
        fast = AnnealedMCMC(kernel, STEPS, LEVELS, compile=True).run(s, N, seed=2)
    assert torch.equal(fast["x"], eager["x"])


def test_auto_falls_back_quietly():
    s = _scene(_Untraceable())
    eager = AnnealedMCMC("ula", STEPS, LEVELS).run(s, N, seed=4)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "AnnealedMCMC.compile")
        fast = AnnealedMCMC("ula", STEPS, LEVELS, compile="auto").run(s, N, seed=4)
    assert torch.equal(fast["x"], eager["x"])


@pytest.mark.parametrize("bad", ["fast", 1, "Default", 0.5, ["default"]])
def test_bad_compile_options_are_schedule_errors(bad):
    with pytest.raises(ScheduleError, match="compile must be"):
        AnnealedMCMC("hmc", compile=bad)


def test_compile_options_and_modes():
    assert check_compile(None) is False and check_compile(False) is False
    assert check_compile(True) is True and check_compile("auto") == "auto"
    assert compile_mode(True, "cpu") == "default"
    assert compile_mode("auto", "cuda") == "reduce-overhead"
    assert compile_mode("max-autotune", "cpu") == "max-autotune"


class _WrongShape(pc.factors.ScoreFactor):
    """A factor whose score has the wrong shape (one number per particle)."""

    def __init__(self) -> None:
        self.inner = Gaussian([0.0, 0.0], [0.5, 1.0])
        super().__init__(self.inner.event_shape, self.inner.schedule, "wrong-shape")

    def score(self, y, t):
        return self.inner.score(y, t).sum(-1)


def test_the_compiled_path_keeps_the_scenes_first_call_checks():
    """The compiled target's first call is preceded by one eager evaluation, so a bad factor is
    named as on the eager path (not a shape error from inside a graph)."""
    from probcomp.errors import ShapeError

    with pytest.raises(ShapeError, match="factor 'wrong-shape'.*a score has the shape of its input"):
        AnnealedMCMC("ula", STEPS, LEVELS, compile="auto").run(_scene(_WrongShape()), N, seed=0)


class _NanLate(pc.factors.ScoreFactor):
    """A factor whose score is NaN below t = 0.3 (traceable: a ``where`` on the time)."""

    def __init__(self) -> None:
        self.inner = Gaussian([0.0, 0.0], [0.5, 1.0])
        super().__init__(self.inner.event_shape, self.inner.schedule, "nan-late")

    def score(self, y, t):
        late = torch.as_tensor(t, dtype=torch.float64) < 0.3
        return torch.where(late, torch.full_like(y, float("nan")), self.inner.score(y, t))


@pytest.mark.parametrize("reverse_step", [False, True])
def test_the_compiled_path_detects_nans_and_names_the_factor_as_eager(reverse_step):
    """The level checks read the maxima the compiled graphs compute: the same error, same factor."""
    from probcomp.errors import NumericalError

    s = _scene(_NanLate())
    messages = []
    for compile in (False, True):
        engine = AnnealedMCMC("ula", STEPS, LEVELS, compile=compile, reverse_step=reverse_step)
        with warnings.catch_warnings(), pytest.raises(NumericalError, match="nan-late") as err:
            warnings.filterwarnings("error", "AnnealedMCMC.compile")  # (no fallback to eager)
            engine.run(s, N, seed=0)
        messages.append(str(err.value))
    assert messages[0] == messages[1]

"""MCMC kernels for annealed samplers: a state, ``init`` / ``step -> (state, info)``, Metropolis tests.

Built in: :class:`ULA`, :class:`MALA` (Langevin), :class:`UHMC`, :class:`HMC` (Hamiltonian),
with the tests :class:`EnergyTest`, :class:`ScoreLineTest` and :class:`LeapfrogPathTest`.
A user kernel subclasses :class:`Kernel` and runs inside
:class:`~probcomp.inference.AnnealedMCMC` with step-size adaptation, resampling and stats.
"""

from __future__ import annotations

from probcomp.errors import ScheduleError

from .base import (
    FlatTarget,
    Kernel,
    KernelState,
    MetropolisTest,
    StepInfo,
    Target,
    metropolis_select,
    metropolis_select_with,
)
from .hamiltonian import HMC, UHMC
from .langevin import MALA, ULA
from .metropolis import EnergyTest, LeapfrogPathTest, ScoreLineTest

__all__ = [
    "HMC",
    "KERNELS",
    "MALA",
    "UHMC",
    "ULA",
    "EnergyTest",
    "FlatTarget",
    "Kernel",
    "KernelState",
    "LeapfrogPathTest",
    "MetropolisTest",
    "ScoreLineTest",
    "StepInfo",
    "Target",
    "make_kernel",
    "metropolis_select",
    "metropolis_select_with",
]

KERNELS = ("ula", "mala", "uhmc", "hmc")
ADJUSTED = ("mala", "hmc")
TESTS = ("energy", "score", "effective")


def make_test(name: str, trapezoid_points: int = 3) -> MetropolisTest:
    """The Metropolis test called ``name`` (``"energy"``, ``"score"`` or ``"effective"``)."""
    if name == "energy":
        return EnergyTest()
    if name == "score":
        return ScoreLineTest(trapezoid_points)
    if name == "effective":
        return LeapfrogPathTest()
    raise ScheduleError(f"metropolis must be one of {TESTS}, got {name!r}")


def _adjusted_test(name: str, metropolis: MetropolisTest | None) -> MetropolisTest:
    """The test an adjusted kernel ``name`` is built with (a :class:`ScheduleError` if none is given)."""
    if metropolis is None:
        raise ScheduleError(f"kernel {name!r} is Metropolis-adjusted: it needs a test (make_test), got None")
    return metropolis


def make_kernel(
    name: str,
    metropolis: MetropolisTest | None = None,
    *,
    leapfrog_steps: int = 3,
    damping: float = 0.5,
    mass: float = 1.0,
) -> Kernel:
    """The built-in kernel called ``name`` (adjusted ones need ``metropolis``)."""
    if name == "ula":
        return ULA()
    if name == "mala":
        return MALA(_adjusted_test(name, metropolis))
    if name == "uhmc":
        return UHMC(leapfrog_steps, damping, mass)
    if name == "hmc":
        return HMC(_adjusted_test(name, metropolis), leapfrog_steps, damping, mass)
    raise ScheduleError(f"kernel must be one of {KERNELS} or a Kernel, got {name!r}")

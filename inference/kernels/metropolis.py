r"""Metropolis tests: three ways to estimate ``log pi(x') - log pi(x)``.

* :class:`EnergyTest` -- from the factors' energies, exact.
* :class:`ScoreLineTest` -- for score-only factors, the MCMC-correction construction of
  Sjöberg et al. (2023): ``int_0^1 g(x + u (x' - x)) . (x' - x) du`` by the trapezoid rule
  on ``points`` points (the end points' scores are known, so ``points - 2`` extra calls).
* :class:`LeapfrogPathTest` -- the same integral along a leapfrog path, segment by segment,
  from the scores the leapfrog already computed (no extra calls).  Per leapfrog step this
  estimate cancels the kinetic-energy change algebraically, leaving
  ``log a = -(h^2/8) sum (|g_{l+1}|^2 - |g_l|^2)``, which ignores the true energy error (so
  does MALA's 2-point score test, and HMC with one leapfrog step).  It is exact only for
  quadratic energies; prefer energies or ``ScoreLineTest(points >= 3)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch

from probcomp.errors import FactorError, ScheduleError

from ..smc import line_integral
from .base import KernelState, MetropolisTest, Target

__all__ = ["EnergyTest", "LeapfrogPathTest", "ScoreLineTest"]


class EnergyTest(MetropolisTest):
    """``log pi(x') - log pi(x)`` from exact log-densities (every factor needs an energy)."""

    name = "energy"
    needs_energy = True

    def log_ratio(self, target, t, current, proposal, path=None):
        if proposal.log_p is None or current.log_p is None:  # a target built with energy=False
            raise FactorError("the energy test needs log-densities, but the target returned none")
        return (proposal.log_p - current.log_p).to(current.x.dtype)


class ScoreLineTest(MetropolisTest):
    """The score's line integral from ``x`` to ``x'`` by the trapezoid rule on ``points`` points."""

    name = "score"

    def __init__(self, points: int = 3) -> None:
        if isinstance(points, bool) or not isinstance(points, int) or points < 2:
            raise ScheduleError(f"trapezoid_points must be an integer >= 2, got {points!r}")
        self.points = points

    def log_ratio(
        self,
        target: Target,
        t: float,
        current: KernelState,
        proposal: KernelState,
        path: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        return line_integral(
            lambda v: target(v, t)[0], current.x, proposal.x, current.grad, proposal.grad, self.points
        )

    def __repr__(self) -> str:
        return f"ScoreLineTest(points={self.points})"


class LeapfrogPathTest(MetropolisTest):
    """The score's line integral along the leapfrog path (needs the path; see the module docstring)."""

    name = "effective"

    def log_ratio(self, target, t, current, proposal, path=None):
        if path is None:
            raise ScheduleError("the leapfrog-path test needs a leapfrog path (an HMC kernel)")
        return sum(((b - a) * (ga + gb)).sum(1) / 2 for (a, ga), (b, gb) in pairwise(path))

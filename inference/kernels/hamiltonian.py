r"""Hamiltonian kernels: underdamped Langevin (U-HMC) and generalised HMC with a Metropolis test.

Each transition refreshes the momentum partially, ``p <- sqrt(1 - gamma) p + sqrt(gamma m) z``
(``gamma`` the damping; ``gamma = 1`` is a full refresh), then runs ``L`` leapfrog steps of
size ``h = sqrt(2 eps)`` on ``H(x, p) = -log pi(x) + |p|^2 / (2 m)`` (Neal 2011).  HMC accepts
with ``log a = log pi(x') - log pi(x) - (|p'|^2 - |p|^2) / (2 m)`` and negates the momentum
on rejection (Horowitz 1991), so that with partial refresh the chain keeps its target invariant
(it is not reversible); U-HMC
keeps every trajectory (Du et al. 2023 use both at every noise level).
"""

from __future__ import annotations

import math

import torch

from probcomp.errors import ScheduleError

from .base import (
    Kernel,
    KernelState,
    MetropolisTest,
    StepInfo,
    Target,
    metropolis_select,
    metropolis_select_with,
    root,
)

__all__ = ["HMC", "UHMC"]


class UHMC(Kernel):
    """Underdamped Langevin by partial momentum refresh and ``leapfrog_steps`` leapfrog steps; no test."""

    name = "uhmc"

    def __init__(
        self,
        leapfrog_steps: int = 3,
        damping: float = 0.5,
        mass: float = 1.0,
        *,
        metropolis: MetropolisTest | None = None,
    ) -> None:
        if isinstance(leapfrog_steps, bool) or not isinstance(leapfrog_steps, int) or leapfrog_steps < 1:
            raise ScheduleError(f"leapfrog_steps must be an integer >= 1, got {leapfrog_steps!r}")
        if not (0.0 < damping <= 1.0) or not mass > 0:
            raise ScheduleError(f"need 0 < damping <= 1 and mass > 0, got {damping}, {mass}")
        super().__init__(metropolis=metropolis, mass=mass)
        self.leapfrog_steps, self.damping = int(leapfrog_steps), float(damping)

    def trajectory(
        self, state: KernelState, target: Target, t: float, eps: float, generator: torch.Generator
    ) -> tuple[KernelState, KernelState, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Refresh the momentum, then leapfrog: ``(refreshed start, end, path of (x, score))``."""
        x = state.x
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return self.trajectory_with(state, target, t, eps, z)

    def trajectory_with(
        self,
        state: KernelState,
        target: Target,
        t: float | torch.Tensor,
        eps: float | torch.Tensor,
        z: torch.Tensor,
    ) -> tuple[KernelState, KernelState, list[tuple[torch.Tensor, torch.Tensor]]]:
        """:meth:`trajectory` with the refresh's standard-normal ``z`` given."""
        gamma, m = self.damping, self.mass
        x, g = state.x, state.grad
        p = math.sqrt(1 - gamma) * state.momentum + math.sqrt(gamma * m) * z
        h = root(2 * eps)
        path = [(x, g)]
        x1, g1, p1 = x, g, p
        logp1 = None
        for _ in range(self.leapfrog_steps):
            p1 = p1 + 0.5 * h * g1
            x1 = x1 + h * p1 / m
            g1, logp1 = target(x1, t)  # type: ignore[arg-type]  # a 0-d tensor in the compiled loop
            p1 = p1 + 0.5 * h * g1
            path.append((x1, g1))
        start = KernelState(x, g, state.log_p, p)
        return start, KernelState(x1, g1, logp1, p1), path

    def step(self, state, target, t, step_size, generator):
        return self.trajectory(state, target, t, step_size, generator)[1], StepInfo()

    def step_with(self, state, target, t, step_size, z, u):
        return self.trajectory_with(state, target, t, step_size, z)[1], StepInfo()


class HMC(UHMC):
    """Generalised HMC: :class:`UHMC` with a Metropolis test on the Hamiltonian."""

    name = "hmc"
    target_accept = 0.65
    metropolis: MetropolisTest  # an adjusted kernel always has a test (set in __init__)

    def __init__(
        self, metropolis: MetropolisTest, leapfrog_steps: int = 3, damping: float = 0.5, mass: float = 1.0
    ) -> None:
        super().__init__(leapfrog_steps, damping, mass, metropolis=metropolis)

    def log_accept(self, d_logp: torch.Tensor, start: KernelState, end: KernelState) -> torch.Tensor:
        """``log a`` from ``log pi(x') - log pi(x)`` and the kinetic-energy change."""
        return d_logp - (end.momentum.square().sum(1) - start.momentum.square().sum(1)) / (2 * self.mass)

    def step(self, state, target, t, step_size, generator):
        start, end, path = self.trajectory(state, target, t, step_size, generator)
        d_logp = self.metropolis.log_ratio(target, t, start, end, path)
        return metropolis_select(self.log_accept(d_logp, start, end), start, end, generator, flip=True)

    def step_with(self, state, target, t, step_size, z, u):
        start, end, path = self.trajectory_with(state, target, t, step_size, z)
        d_logp = self.metropolis.log_ratio(target, t, start, end, path)  # type: ignore[arg-type]
        assert u is not None  # an adjusted kernel draws its uniforms (Kernel.draw)
        return metropolis_select_with(self.log_accept(d_logp, start, end), start, end, u, flip=True)

r"""Langevin kernels: unadjusted (ULA) and Metropolis-adjusted (MALA).

With step ``eps`` and score ``g = grad log pi`` the proposal is
``x' = x + eps g(x) + sqrt(2 eps) z`` (Roberts & Tweedie 1996).  MALA accepts it with

.. math:: \log a = \log\pi(x') - \log\pi(x) + \log q(x | x') - \log q(x' | x), \qquad
          \log q(x' | x) = -|x' - x - \epsilon g(x)|^2 / (4 \epsilon),

with ``log pi(x') - log pi(x)`` from its :class:`~probcomp.inference.kernels.MetropolisTest`.
"""

from __future__ import annotations

import torch

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

__all__ = ["MALA", "ULA"]


class ULA(Kernel):
    """The unadjusted Langevin algorithm (no test)."""

    name = "ula"

    def __init__(self) -> None:
        super().__init__()

    def propose(
        self, state: KernelState, target: Target, t: float, eps: float, generator: torch.Generator
    ) -> tuple[KernelState, torch.Tensor]:
        """The Langevin proposal and its standard-normal noise ``z``."""
        x = state.x
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return self.propose_with(state, target, t, eps, noise), noise

    def propose_with(
        self,
        state: KernelState,
        target: Target,
        t: float | torch.Tensor,
        eps: float | torch.Tensor,
        noise: torch.Tensor,
    ) -> KernelState:
        """The Langevin proposal with its standard-normal noise given."""
        x, g = state.x, state.grad
        x1 = x + eps * g + root(2 * eps) * noise
        g1, logp1 = target(x1, t)  # type: ignore[arg-type]  # a 0-d tensor in the compiled loop
        return state.moved(x1, g1, logp1)

    def step(self, state, target, t, step_size, generator):
        return self.propose(state, target, t, step_size, generator)[0], StepInfo()

    def step_with(self, state, target, t, step_size, z, u):
        return self.propose_with(state, target, t, step_size, z), StepInfo()


class MALA(ULA):
    """The Metropolis-adjusted Langevin algorithm (Roberts & Tweedie 1996)."""

    name = "mala"
    target_accept = 0.57
    metropolis: MetropolisTest  # an adjusted kernel always has a test (set in __init__)

    def __init__(self, metropolis: MetropolisTest) -> None:
        Kernel.__init__(self, metropolis=metropolis)

    def log_accept(
        self,
        state: KernelState,
        proposal: KernelState,
        noise: torch.Tensor,
        target: Target,
        t: float | torch.Tensor,
        eps: float | torch.Tensor,
    ) -> torch.Tensor:
        """``log a`` of the proposal made with ``noise`` (module docstring)."""
        log_q_fwd = -(noise.square().sum(1)) / 2  # |x1 - x - eps g|^2 / (4 eps)
        # x - x1 - eps g1 = -(eps (g + g1) + sqrt(2 eps) z): no cancellation of x
        back = eps * (state.grad + proposal.grad) + root(2 * eps) * noise
        log_q_bwd = -back.square().sum(1) / (4 * eps)
        d_logp = self.metropolis.log_ratio(target, t, state, proposal)  # type: ignore[arg-type]
        return d_logp + log_q_bwd - log_q_fwd

    def step(self, state, target, t, step_size, generator):
        proposal, noise = self.propose(state, target, t, step_size, generator)
        log_a = self.log_accept(state, proposal, noise, target, t, step_size)
        return metropolis_select(log_a, state, proposal, generator, flip=False)

    def step_with(self, state, target, t, step_size, z, u):
        proposal = self.propose_with(state, target, t, step_size, z)
        log_a = self.log_accept(state, proposal, z, target, t, step_size)
        assert u is not None  # an adjusted kernel draws its uniforms (Kernel.draw)
        return metropolis_select_with(log_a, state, proposal, u, flip=False)

r"""Langevin kernels: unadjusted (ULA) and Metropolis-adjusted (MALA).

With step ``eps`` and score ``g = grad log pi`` the proposal is
``x' = x + eps g(x) + sqrt(2 eps) z`` (Roberts & Tweedie 1996).  MALA accepts it with

.. math:: \log a = \log\pi(x') - \log\pi(x) + \log q(x | x') - \log q(x' | x), \qquad
          \log q(x' | x) = -|x' - x - \epsilon g(x)|^2 / (4 \epsilon),

with ``log pi(x') - log pi(x)`` from its :class:`~probcomp.inference.kernels.MetropolisTest`.
"""

from __future__ import annotations

import math

import torch

from .base import Kernel, KernelState, MetropolisTest, StepInfo, Target, metropolis_select

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
        x, g = state.x, state.grad
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x1 = x + eps * g + math.sqrt(2 * eps) * noise
        g1, logp1 = target(x1, t)
        return state.moved(x1, g1, logp1), noise

    def step(self, state, target, t, step_size, generator):
        return self.propose(state, target, t, step_size, generator)[0], StepInfo()


class MALA(ULA):
    """The Metropolis-adjusted Langevin algorithm (Roberts & Tweedie 1996)."""

    name = "mala"
    target_accept = 0.57
    metropolis: MetropolisTest  # an adjusted kernel always has a test (set in __init__)

    def __init__(self, metropolis: MetropolisTest) -> None:
        Kernel.__init__(self, metropolis=metropolis)

    def step(self, state, target, t, step_size, generator):
        eps = step_size
        proposal, noise = self.propose(state, target, t, eps, generator)
        log_q_fwd = -(noise.square().sum(1)) / 2  # |x1 - x - eps g|^2 / (4 eps)
        log_q_bwd = -(state.x - proposal.x - eps * proposal.grad).square().sum(1) / (4 * eps)
        d_logp = self.metropolis.log_ratio(target, t, state, proposal)
        log_a = d_logp + log_q_bwd - log_q_fwd
        return metropolis_select(log_a, state, proposal, generator, flip=False)

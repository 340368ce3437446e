r"""The kernel contract: a state, ``init`` and ``step``, and the Metropolis-Hastings selection.

A kernel moves ``N`` particles, flattened to ``(N, D)``, at one noise level ``t`` of an
annealed sampler, targeting ``pi_t`` through a :class:`Target` that returns the score
``grad log pi_t`` and, when energies exist, ``log pi_t``:

* ``state = kernel.init(x, target, t, generator)``
* ``state, info = kernel.step(state, target, t, step_size, generator)``
* ``z, u = kernel.draw(x, generator)`` and ``kernel.step_with(state, target, t, step_size, z, u)``:
  the same step split into its random draws and its arithmetic (the built-in kernels), which
  :mod:`probcomp.inference.compiled_loop` compiles

``step_size`` is the Langevin step ``eps`` (a leapfrog step is ``h = sqrt(2 eps)``).
A kernel with a Metropolis test (``kernel.metropolis``, a :class:`MetropolisTest`)
reports its acceptance probabilities in ``info.accept_prob``, and the engine adapts the
step size toward the kernel's target acceptance.  The interface follows the shape of
BlackJAX's kernels (``init`` / ``step -> (state, info)``) and of Pyro's ``MCMCKernel``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from probcomp.compiled import CompiledScene

from ..steps import Packer

__all__ = [
    "FlatTarget",
    "Kernel",
    "KernelState",
    "MetropolisTest",
    "StepInfo",
    "Target",
    "metropolis_select",
    "metropolis_select_with",
    "root",
]


def root(v: float | torch.Tensor) -> float | torch.Tensor:
    """``sqrt(v)`` of a Python number (``math.sqrt``, as the eager kernels always computed it) or
    of a tensor (a step size traced by the compiled loop)."""
    return v.sqrt() if isinstance(v, torch.Tensor) else math.sqrt(v)


class Target(Protocol):
    """``target(x, t) -> (grad log pi_t(x), log pi_t(x) or None)`` on flat ``(N, D)`` particles."""

    energy: bool

    def __call__(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class FlatTarget:
    """A compiled scene's target on flat ``(N, D)`` particles (``log pi_t`` when ``energy``).

    Scores are not checked here (a non-finite proposal is rejected by the Metropolis test);
    the engine checks the state and its score once per level.
    """

    def __init__(self, compiled: CompiledScene, packer: Packer, energy: bool) -> None:
        self.compiled, self.packer, self.energy = compiled, packer, energy

    def __call__(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.compiled.target(self.packer.unpack(x), t, energy=self.energy, check=False)
        return self.packer.pack(out.grad), out.log_p


@dataclass(frozen=True)
class KernelState:
    """Particles ``x`` ``(N, D)``, their score, their log-density (``None`` without energies)
    and a momentum (drawn for every kernel, so that the random stream does not depend on it)."""

    x: torch.Tensor
    grad: torch.Tensor
    log_p: torch.Tensor | None
    momentum: torch.Tensor

    def take(self, idx: torch.Tensor) -> KernelState:
        """The particles ``idx`` (resampling)."""
        log_p = self.log_p[idx] if self.log_p is not None else None
        return KernelState(self.x[idx], self.grad[idx], log_p, self.momentum[idx])

    def moved(self, x: torch.Tensor, grad: torch.Tensor, log_p: torch.Tensor | None) -> KernelState:
        """The same momentum at new positions."""
        return KernelState(x, grad, log_p, self.momentum)


@dataclass(frozen=True)
class StepInfo:
    """What a step reports: per-particle acceptance probabilities (``None`` without a test)."""

    accept_prob: torch.Tensor | None = None


class MetropolisTest:
    """How a kernel estimates ``log pi(x') - log pi(x)`` for its Metropolis-Hastings test."""

    name = "test"
    needs_energy = False

    def log_ratio(
        self,
        target: Target,
        t: float,
        current: KernelState,
        proposal: KernelState,
        path: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Per particle; ``path`` is the ``(x, score)`` points of a leapfrog trajectory, if any."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def metropolis_select(
    log_a: torch.Tensor,
    current: KernelState,
    proposal: KernelState,
    generator: torch.Generator,
    *,
    flip: bool = False,
) -> tuple[KernelState, StepInfo]:
    """Accept each particle's proposal with probability ``min(1, exp(log_a))`` (NaN: reject).

    With ``flip`` a rejected particle's momentum is negated (generalised HMC, Horowitz 1991).
    """
    u = torch.rand(log_a.shape, generator=generator, dtype=log_a.dtype, device=log_a.device)
    return metropolis_select_with(log_a, current, proposal, u, flip=flip)


def metropolis_select_with(
    log_a: torch.Tensor, current: KernelState, proposal: KernelState, u: torch.Tensor, *, flip: bool = False
) -> tuple[KernelState, StepInfo]:
    """:func:`metropolis_select` with its uniforms ``u`` (shape ``(N,)``) given: no generator, so
    the compiled loop (:mod:`probcomp.inference.compiled_loop`) can draw them eagerly."""
    log_a = torch.nan_to_num(log_a, nan=-math.inf)
    ok = torch.log(u) < log_a
    col = ok[:, None]
    x = torch.where(col, proposal.x, current.x)
    grad = torch.where(col, proposal.grad, current.grad)
    p_cur = -current.momentum if flip else current.momentum
    momentum = torch.where(col, proposal.momentum, p_cur)
    log_p = None
    if current.log_p is not None and proposal.log_p is not None:
        log_p = torch.where(ok, proposal.log_p, current.log_p)
    return KernelState(x, grad, log_p, momentum), StepInfo(log_a.clamp(max=0.0).exp())


class Kernel:
    """Base class of MCMC kernels; see the module docstring.

    Subclasses implement :meth:`step`; set ``metropolis`` to a :class:`MetropolisTest` for an
    adjusted kernel (then the engine adapts the step size toward ``target_accept``).
    """

    name = "kernel"
    #: the acceptance rate the step size adapts toward (an adjusted kernel must set it)
    target_accept: float | None = None

    def __init__(self, *, metropolis: MetropolisTest | None = None, mass: float = 1.0) -> None:
        self.metropolis, self.mass = metropolis, float(mass)

    @property
    def adjusted(self) -> bool:
        return self.metropolis is not None

    @property
    def needs_energy(self) -> bool:
        return self.metropolis is not None and self.metropolis.needs_energy

    def init(self, x: torch.Tensor, target: Target, t: float, generator: torch.Generator) -> KernelState:
        """The state at ``x``: momentum ``~ N(0, mass)``, then the target's score and log-density."""
        momentum = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device) * math.sqrt(
            self.mass
        )
        grad, log_p = target(x, t)
        return KernelState(x, grad, log_p, momentum)

    def step(
        self, state: KernelState, target: Target, t: float, step_size: float, generator: torch.Generator
    ) -> tuple[KernelState, StepInfo]:
        raise NotImplementedError

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The random numbers of one :meth:`step` at ``x``, in the order :meth:`step` draws them:
        a standard normal ``z`` shaped like ``x`` and, for an adjusted kernel, ``N`` uniforms.

        With :meth:`step_with` this splits a step into its draws and its arithmetic, which the
        compiled loop (:mod:`probcomp.inference.compiled_loop`) traces without a generator.  A
        kernel whose :meth:`step` draws otherwise overrides both (or neither: then it runs eagerly).
        """
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        if not self.adjusted:
            return z, None
        return z, torch.rand((x.shape[0],), generator=generator, dtype=x.dtype, device=x.device)

    def step_with(
        self,
        state: KernelState,
        target: Target,
        t: float | torch.Tensor,
        step_size: float | torch.Tensor,
        z: torch.Tensor,
        u: torch.Tensor | None,
    ) -> tuple[KernelState, StepInfo]:
        """:meth:`step` with its random numbers ``(z, u)`` of :meth:`draw` given (``t`` and
        ``step_size`` may be 0-d tensors); the built-in kernels compute exactly what
        :meth:`step` does."""
        raise NotImplementedError(f"kernel {self.name!r} has no step_with")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(metropolis={self.metropolis!r})"

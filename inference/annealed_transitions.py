r"""The moves of annealed MCMC between noise levels: the reverse step, the SMC weight increment,
resampling, and the population's counts across processes.

Moving particles from level ``t`` to ``s`` by the reverse step ``F`` (DDPM's, ``eta = 1``) adds
to each log-weight (Del Moral, Doucet & Jasra 2006)

.. math:: \Delta \log w = \log\pi_s(x_s) - \log\pi_t(x_t) + \log B(x_t | x_s) - \log F(x_s | x_t),

with the forward noising as ``B``; without a move, the annealed-importance ratio
``log pi_s(x) - log pi_t(x)`` (Neal 2001).  The functions are in :mod:`probcomp.inference.smc`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from probcomp.compiled import CompiledScene
from probcomp.distributed import Communicator, take_state
from probcomp.errors import NumericalError, first_line

from . import smc
from .kernels import KernelState
from .kernels.base import Target
from .steps import Packer, ReverseStep

if TYPE_CHECKING:
    from probcomp import schedules as sched

__all__ = ["LevelTransitions", "check_weights", "usable"]


class LevelTransitions:
    """The level-to-level part of :class:`~probcomp.inference.AnnealedMCMC` (a mixin: it reads
    the engine's ``resample``, ``reverse_step``, ``ess_threshold``, ``resampling``,
    ``trapezoid_points``, ``weights`` and ``schedule``)."""

    if TYPE_CHECKING:
        weights: str
        resample: str | None
        reverse_step: bool
        ess_threshold: float
        resampling: str
        trapezoid_points: int
        schedule: sched.Schedule

    @staticmethod
    def _global_counts(comm: Any, stats: dict[str, Any]) -> dict[str, Any]:
        """Batched calls summed over ranks; NFE (per particle, per level and in total: the same
        on every rank, so the largest), the slowest rank's wall time and time in collectives."""
        per_level = stats["nfe_per_level"].tolist()
        calls = comm.sum([stats["calls"]])[0]
        top = comm.max([stats["nfe_total"], *per_level, stats["wall_time"], comm.comm_time])
        nfe = dict(zip(stats["nfe"], comm.max(list(stats["nfe"].values())), strict=True))
        wall, comm_time = top[-2], top[-1]
        return {
            "nfe": {k: int(v) for k, v in nfe.items()},
            "nfe_total": int(top[0]),
            "calls": int(calls),
            "nfe_per_level": torch.tensor(top[1:-2], dtype=torch.float64),
            "wall_time": wall,
            "comm_time": comm_time,
            "world_size": comm.world_size,
        }

    # ------------------------------------------------------------------------------
    def _next_level(
        self,
        compiled: CompiledScene,
        packer: Packer,
        target: Target,
        state: KernelState,
        log_w: torch.Tensor,
        lv: Any,
        gen: torch.Generator,
        comm: Communicator,
        n_all: int,
        resample: str | None,
    ) -> tuple[KernelState, float, bool]:
        """Move from level ``t`` to ``next_t`` (a DDPM step, or none), update ``log_w`` (this
        rank's block of the ``n_all`` weights) in place and resample the whole population when
        due by the rule ``resample`` (resolved for the scene): returns the new state, the ESS
        before resampling, and whether the particles were resampled."""
        t, s = lv.t, lv.next_t
        step = lv.reverse_step(1.0)
        # the compiled target takes the step and evaluates the new positions in one call
        after_step = getattr(target, "after_step", None)
        fused = (
            after_step(step, state.x, state.grad, s, gen)
            if after_step and s > 0.0 and self.reverse_step
            else None
        )
        if fused is not None:
            new, g_new, logp_new, top = fused
        else:
            new = step(state.x, state.grad, gen) if self.reverse_step or s == 0.0 else state.x
            top = None

        def check() -> None:
            finite = bool(torch.isfinite(new).all()) if top is None else math.isfinite(top.item())
            if not finite:
                compiled.diagnose(packer.unpack(state.x), t, f"in the step from level t={t:.4g}")

        if new is not state.x:  # (an unmoved state was checked after its MCMC moves)
            comm.together(check, f"in the step from level t={t:.4g}")
        if s > 0.0:
            if fused is None:
                g_new, logp_new = target(new, s)
            moved = state.moved(new, g_new, logp_new)
            if resample:
                log_w += self._increment(compiled, packer, target, step, state, moved, t, s)
                where = f"from level t={t:.4g} to {s:.4g}"

                def find() -> None:  # names a factor that is not finite at the new positions
                    compiled.target(packer.unpack(moved.x), s, energy=target.energy, check=True)

                comm.together(lambda: check_weights(log_w, where, find), f"in the weights {where}")
            state = moved
        else:
            state = state.moved(new, state.grad, state.log_p)
        if not resample:  # unweighted particles: the ESS is the population
            return state, float(n_all), False
        log_w_all = comm.gather(log_w, n_all)
        ess = smc.ess(log_w_all)
        due = resample == "always" or ess < self.ess_threshold * n_all
        if s > 0.0 and due:
            state = take_state(state, comm.ancestors(log_w_all, gen, self.resampling), comm)
            log_w.zero_()
            return state, ess, True
        return state, ess, False

    def weighs_by_energy(self, term: Any) -> bool:
        """Whether the weights take ``term``'s change from its energy (else from its scores):
        explicit densities and priors always; diffusion factors with an energy under
        ``weights="energy"``, and under ``"auto"`` those that are not :attr:`learned`."""
        if not term.factor.has_energy:
            return False
        if term.kind in ("explicit", "prior"):
            return True
        return self.weights == "energy" or (self.weights == "auto" and not term.factor.learned)

    def weighs_all_by_energy(self, compiled: CompiledScene) -> bool:
        """Whether the weights take every term's change from its energy: then they are the
        differences of the target's log-density, and only then do they need it."""
        return all(self.weighs_by_energy(tm) for tm in compiled.terms)

    def _increment(
        self,
        compiled: CompiledScene,
        packer: Packer,
        target: Target,
        step: ReverseStep,
        old: KernelState,
        new: KernelState,
        t: float,
        s: float,
    ) -> torch.Tensor:
        """The log-weight increment of one level change (float64): see the module docstring.

        With energies, ``log pi_s(x1) - log pi_t(x)`` is exact.  Otherwise it is split into
        ``log pi_s(x1) - log pi_s(x)`` (trapezoid line integral of the score at ``s``) and
        ``log pi_s(x) - log pi_t(x)``: exact energy differences for the terms that have
        energies (:func:`~probcomp.inference.smc.energy_change`), the trapezoid in log-SNR of
        :func:`~probcomp.inference.smc.log_snr_derivative` (from scores alone) for the others.
        """
        x, x1 = old.x, new.x
        by_energy = [self.weighs_by_energy(tm) for tm in compiled.terms]
        if old.log_p is not None and new.log_p is not None and all(by_energy):
            d_logp = smc.ais_increment(new.log_p, old.log_p)
        else:
            lam_t, lam_s = (float(self.schedule.log_snr(u)) for u in (t, s))
            xd = packer.unpack(x)
            exact = [tm for tm, e in zip(compiled.terms, by_energy, strict=True) if e]
            fp = [tm for tm, e in zip(compiled.terms, by_energy, strict=True) if not e]
            d_time = smc.log_snr_derivative(compiled, xd, t, terms=fp) + smc.log_snr_derivative(
                compiled, xd, s, terms=fp
            )
            d_logp = (lam_s - lam_t) / 2 * d_time
            if exact:
                d_logp = d_logp + smc.energy_change(compiled, xd, t, s, exact)
            if self.reverse_step:  # the trapezoid rule from x to x1, at s
                g_s, _ = target(x, s)
                line = smc.line_integral(
                    lambda v: target(v, s)[0],
                    x,
                    x1,
                    g_s,
                    new.grad,
                    self.trapezoid_points,
                    dtype=torch.float64,
                )
                d_logp = d_logp + line
        if not self.reverse_step:
            return d_logp
        return d_logp + smc.kernel_log_ratio(step, x, x1, old.grad)


def usable(log_w: torch.Tensor) -> bool:
    """Whether resampling can use the log-weights: no NaN, and not all ``-inf``."""
    return not bool(torch.isnan(log_w).any()) and bool(torch.isfinite(log_w).any())


def check_weights(log_w: torch.Tensor, where: str, find: Callable[[], None] | None = None) -> None:
    """Refuse log-weights that resampling cannot use: NaN (a NaN energy or ``-inf - -inf``), or
    all ``-inf`` (every particle outside the support of the target); ``where`` names the step,
    and ``find`` (re-evaluating the target with per-factor checks) the factor, if one is to blame."""
    if usable(log_w):
        return
    cause = ""
    if find is not None:
        try:
            find()
        except NumericalError as err:
            cause = f" ({first_line(err)})"
    raise NumericalError(
        f"the SMC weights {where} are NaN or all -inf{cause}: a factor's energy or score is not "
        "finite where the particles are (a hard constraint at t > 0?); use resample=None or a smooth "
        "density"
    )

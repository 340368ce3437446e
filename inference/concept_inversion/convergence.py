r"""Convergence diagnostics of concept inversion: is the answer the minimum the search can reach?

Two signs, both measured on the shared draws the answer is re-scored on (common random
numbers, so the comparisons are not noisy):

* **still falling** -- a line search from the answer along the negative gradient of its
  loss, with steps of ``0.1 .. 10 x lr`` (the engine's step size, in the concepts' units),
  lowers the loss by more than ``min_drop`` relative: the descent stopped (its step size
  decayed, or it ran out of steps) before the minimum (more ``steps`` or a larger ``lr``);
* **restarts disagree** -- no second surviving restart comes within ``rtol`` (relative) of the
  best one's loss: the answer was reached once, so it may be one minimum among several
  (more restarts, ``init="greedy"`` or ``relocate``).

A run with either sign warns (:class:`~probcomp.errors.ConvergenceWarning`) and records
``stats["convergence"]``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import torch

from probcomp.compiled_inversion import CompiledInversion, Draws, State
from probcomp.errors import ConvergenceWarning

STEP_SCALES = (0.1, 0.3, 1.0, 3.0, 10.0)  # line-search steps, in units of the engine's lr

__all__ = ["Convergence", "assess", "line_search_drop", "warn_if_unconverged"]


@dataclass(frozen=True)
class Convergence:
    """The diagnostics of one run (see the module docstring)."""

    converged: bool
    still_falling: bool
    restarts_disagree: bool
    relative_drop: float  # the line search's relative loss decrease at the answer
    loss_spread: float  # (second best - best) / best over the surviving restarts (0 with one survivor)

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def line_search_drop(prob: CompiledInversion, answer: State, draws: Draws, lr: float) -> float:
    """The largest relative loss decrease from ``answer`` (``(1, ...)`` per control) along the
    negative gradient of its continuous controls, over steps ``lr x (0.1, 0.3, 1, 3, 10)``
    (projected into the supports); 0 if none lowers it."""
    cont = list(prob.continuous)
    params = {n: answer[n].detach().clone().requires_grad_(True) for n in cont}
    with torch.enable_grad():
        loss = prob.loss({**answer, **params}, draws).sum()
        grads = torch.autograd.grad(loss, [params[n] for n in cont])
    norm = math.sqrt(sum(float(g.square().sum()) for g in grads))
    base = float(loss.detach())
    if not norm > 0 or not base > 0:
        return 0.0
    best = base
    with torch.no_grad():
        for scale in STEP_SCALES:
            trial = {n: p - (scale * lr / norm) * g for (n, p), g in zip(params.items(), grads, strict=True)}
            prob.project(trial)
            best = min(best, float(prob.loss({**answer, **trial}, draws).sum()))
    return (base - best) / base


def assess(drop: float, losses: torch.Tensor, *, min_drop: float = 0.2, rtol: float = 0.1) -> Convergence:
    """Diagnose a run from the line-search ``drop`` at its answer and the ``(R,)`` re-scored losses
    of its restarts (NaN where pruned)."""
    falling = drop > min_drop
    alive = losses[torch.isfinite(losses)].double()
    spread = 0.0
    if alive.numel() >= 2:  # does a second restart reach the best's loss? (others may sit in worse minima)
        low = alive.sort().values
        spread = float((low[1] - low[0]) / low[0].abs().clamp_min(1e-12))
    disagree = spread > rtol
    return Convergence(not (falling or disagree), falling, disagree, drop, spread)


def warn_if_unconverged(c: Convergence, *, steps: int, restarts: int) -> None:
    """A :class:`ConvergenceWarning` saying what to change, if the run did not converge."""
    if c.converged:
        return
    why = []
    if c.still_falling:
        why.append(f"a line search from the answer still lowers its loss by {c.relative_drop:.0%} "
                   f"(steps={steps}: use more, or a larger lr)")  # fmt: skip
    if c.restarts_disagree:
        why.append(f"the surviving restarts' losses spread by {c.loss_spread:.0%} (restarts={restarts}: "
                   "use more, init='greedy' or relocate)")  # fmt: skip
    warnings.warn(
        "concept inversion may not have converged: " + "; ".join(why), ConvergenceWarning, stacklevel=4
    )

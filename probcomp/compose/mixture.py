r"""The mixture ``sum_k pi_k p_k``: not linear in scores, so it needs normalised energies.

With energies ``E_k = -log p_k`` (Du et al. 2023, Reduce, Reuse, Recycle: mixtures of
diffusion models need energies, not scores alone),

.. math:: E = -\operatorname{logsumexp}_k(\log \pi_k - E_k), \qquad
          s = \sum_k \operatorname{softmax}_k(\log \pi_k - E_k)\, s_k.

Because the forward noising is linear, the noised mixture is the mixture of the noised
factors, so this is exact at every ``t`` when the ``E_k`` are normalised (as analytic
factors' are).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import schedules as sched
from ..errors import FactorError
from ..factors.base import ScoreFactor
from ._checks import check_same_event

__all__ = ["Mixture", "mixture"]


class Mixture(ScoreFactor):
    """``sum_k pi_k p_k``, from normalised energies (see the module docstring).

    Learned energies carry an unknown constant per model and noise level, which shifts
    the weights; wrap low-dimensional ones in :class:`probcomp.factors.NormalisedEnergy`.
    """

    def __init__(
        self,
        factors: Sequence[ScoreFactor],
        weights: Sequence[float] | None = None,
        *,
        name: str | None = None,
        schedule: sched.Schedule | None = None,
    ) -> None:
        factors = list(factors)
        shape = check_same_event(factors, name or "mixture")
        for f in factors:
            if not f.has_energy:
                raise FactorError(f"mixture needs energies; factor {f.name!r} has none")
        w = torch.full((len(factors),), 1.0 / len(factors)) if weights is None else torch.as_tensor(weights)
        w = w.to(torch.float64)
        if w.shape != (len(factors),) or not torch.all(w > 0):
            raise FactorError(f"mixture weights must be {len(factors)} positive numbers, got {weights}")
        super().__init__(shape, schedule or factors[0].schedule, name or "mixture")
        self.factors = factors
        self.log_weights = (w / w.sum()).log()

    @property
    def cost(self) -> int:  # type: ignore[override]
        return sum(f.cost for f in self.factors)

    @property
    def learned(self) -> bool:  # type: ignore[override]
        return any(f.learned for f in self.factors)

    def _parts(self, y: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        scores, logits = [], []
        for f, lw in zip(self.factors, self.log_weights, strict=True):
            s, e = f.score_and_energy(y, sched.match(t, self.schedule, f.schedule))
            scores.append(s)
            logits.append(lw.to(y.dtype) - e)
        return torch.stack(scores, 1), torch.stack(logits, 1)

    def score_and_energy(self, y: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        scores, logits = self._parts(y, t)
        r = torch.softmax(logits, 1).reshape(*logits.shape, *([1] * (y.ndim - 1)))
        return (r * scores).sum(1), -torch.logsumexp(logits, 1)

    def score(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        return self.score_and_energy(y, t)[0]

    def energy(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        return self.score_and_energy(y, t)[1]


def mixture(
    factors: Sequence[ScoreFactor], weights: Sequence[float] | None = None, *, name: str = "mixture"
) -> Mixture:
    """``sum_k pi_k p_k`` (needs energies)."""
    return Mixture(factors, weights, name=name)

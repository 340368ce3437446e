r"""Energies normalised by quadrature, for low-dimensional learned factors.

A learned energy is known only up to a constant that may differ between noise levels
and between models: ``E_theta(y, t) = -log p_t(y) + c(t)``.  Products never see ``c``
(it does not depend on ``y``), but a mixture ``sum_k pi_k p_k`` weights its components
by ``softmax_k(log pi_k - E_k)`` and so by ``exp(c_j(t) - c_k(t))``.
:class:`NormalisedEnergy` removes ``c``: it tabulates

.. math:: \log Z(t) = \log \int \exp(-E(y, t))\, dy

by the midpoint rule on a grid over the box ``|y_j| <= alpha_t R + w sigma_t`` (``R`` the
data's half-width, ``w`` standard deviations of noise), at levels ``t_k = t_0 + (1 - t_0)
u_k^2`` (``u`` uniform: denser at low noise, where ``log Z`` moves fastest; ``t_0 = 1e-4``,
because learned energies such as ``|f|^2 / (2 sigma)`` are undefined at ``t = 0``), and
returns ``E + log Z(t)`` (linear interpolation in ``t``, constant below ``t_0``).
Feasible for ``d <= 3``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import FactorError
from .base import ScoreFactor, as_time

__all__ = ["NormalisedEnergy"]

_T0 = 1e-4  # first level of the log Z table


class NormalisedEnergy(ScoreFactor):
    """``factor`` with its energy shifted so that ``exp(-E(., t))`` integrates to one at every ``t``.

    Args:
        factor: a factor with an energy and an event of at most 3 values.
        radius: ``R``, the half-width of a box holding the clean data.
        points: grid points per axis (midpoint rule).
        levels: noise levels of the ``log Z`` table (see the module docstring).
        width: noise standard deviations added to the box at each level.
    """

    def __init__(
        self, factor: ScoreFactor, radius: float, *, points: int = 161, levels: int = 101, width: float = 6.0
    ) -> None:
        if not factor.has_energy:
            raise FactorError(f"NormalisedEnergy needs an energy; factor {factor.name!r} has none")
        d = factor.event_shape.numel()
        if d > 3:
            raise FactorError(
                f"NormalisedEnergy integrates on a grid and needs an event of at most 3 values; "
                f"factor {factor.name!r} has {d}"
            )
        if not radius > 0 or points < 2 or levels < 2:
            raise FactorError("NormalisedEnergy needs radius > 0, points >= 2 and levels >= 2")
        super().__init__(factor.event_shape, factor.schedule, f"{factor.name} (normalised)")
        self.factor, self.radius, self.points, self.levels, self.width = (
            factor,
            float(radius),
            int(points),
            int(levels),
            float(width),
        )
        self._table: torch.Tensor | None = None

    @property
    def cost(self) -> int:  # type: ignore[override]
        return self.factor.cost

    @property
    def learned(self) -> bool:  # type: ignore[override]
        return self.factor.learned

    def log_normaliser(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, log Z(t))`` of the table (computed on first use, float64, on the CPU)."""
        if self._table is None:
            u = torch.linspace(0.0, 1.0, self.levels, dtype=torch.float64)
            ts = _T0 + (1 - _T0) * u.square()
            d = self.event_shape.numel()
            out = []
            for t in ts.tolist():
                half = float(self.schedule.alpha(torch.tensor(t))) * self.radius + self.width * float(
                    self.schedule.sigma(torch.tensor(t))
                )
                cell = 2 * half / self.points
                axis = -half + cell * (torch.arange(self.points, dtype=torch.float64) + 0.5)
                grid = torch.stack(torch.meshgrid(*([axis] * d), indexing="ij"), -1).reshape(-1, d)
                with torch.no_grad():
                    e = self.factor.energy(grid.to(torch.float32).reshape(-1, *self.event_shape), t)
                out.append(float(torch.logsumexp(-e.double(), 0)) + d * torch.log(torch.tensor(cell)).item())
            self._table = torch.stack([ts, torch.tensor(out, dtype=torch.float64)])
        return self._table[0], self._table[1]

    def _log_z(self, t: Any, like: torch.Tensor) -> torch.Tensor:
        ts, values = self.log_normaliser()
        tt = as_time(t, like).reshape(-1).to(torch.float64).cpu().clamp(_T0, 1.0)
        lo = (torch.searchsorted(ts, tt, right=True) - 1).clamp(0, self.levels - 2)
        frac = (tt - ts[lo]) / (ts[lo + 1] - ts[lo])
        z = values[lo] * (1 - frac) + values[lo + 1] * frac
        return z.expand(like.shape[0]).to(like.device, like.dtype)

    def score(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        return self.factor.score(y, t)

    def energy(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        return self.factor.energy(y, t) + self._log_z(t, y)

    def score_and_energy(self, y: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        s, e = self.factor.score_and_energy(y, t)
        return s, e + self._log_z(t, y)

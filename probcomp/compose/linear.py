r"""Linear composition: weighted sums of factor scores.

A :class:`Composite` is the factor ``prod_k p_k^{w_k}`` up to normalisation, with score
``sum_k w_k s_k`` (and energy ``sum_k w_k E_k`` where every part has one):

* :func:`product` -- all ``w = 1``, the conjunction of Liu et al. 2022 (composable
  diffusion) with unit weights;
* :func:`weighted` -- any real weights;
* :func:`guidance` -- classifier-free guidance, ``(1 + g) s_c - g s_u`` (Ho & Salimans 2022);
* :func:`negation` -- ``E_p - g E_q``, i.e. ``p / q^g`` (Du et al. 2023, Reduce, Reuse,
  Recycle; the negation of Liu et al. 2022).

Each part's time argument is in its own schedule: the composite maps its time to each
part's by matching log-SNR (:func:`probcomp.schedules.match`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .. import schedules as sched
from ..errors import FactorError
from ..factors.base import ScoreFactor
from ._checks import check_normalisable, check_same_event

__all__ = ["Composite", "guidance", "negation", "product", "weighted"]


class Composite(ScoreFactor):
    """A weighted sum of factor scores, ``sum_k w_k s_k`` (and energies, where all have one).

    **Normalisability** is checked at construction, on the flattened leaves with their total
    weights (:func:`probcomp.compose._checks.check_normalisable`); only negative weights can
    break it, so products and positive weightings are not checked.  With negative weights:

    * all leaves analytic (``Gaussian``, ``GaussianMixture``, ``ConditionalGaussian``): a
      :class:`~probcomp.errors.FactorError` if the clean target ``prod_k p_k^{w_k}`` is not
      normalisable -- for Gaussians, when ``sum_k w_k Sigma_k^{-1}`` is not positive definite
      (what :func:`~probcomp.factors.exact_product` refuses); for mixtures, when the tail
      exponent ``sum_k w_k min_j v' Sigma_kj^{-1} v`` is shown <= 0 along some direction (a
      ``UserWarning`` when it is neither shown <= 0 nor > 0).  A ``UserWarning`` also when the
      clean target is normalisable but the noised composite is not at some noise level
      (e.g. ``negation(narrow, wide, 2)``: at high noise every factor tends to ``N(0, I)`` and
      the weights sum to -1).
    * some leaf without a closed-form density (learned models, explicit densities): the clean
      target cannot be decided, and nothing is said while the weights sum to > 0 (guidance,
      projective composition and attribute conjunction sum to 1: normalisable if the terms
      share one covariance).  A ``UserWarning`` when they sum to <= 0: at high noise the
      composite is close to ``N(0, I)^{sum_k w_k}``, which is not normalisable.
    """

    def __init__(
        self,
        factors: Sequence[ScoreFactor],
        weights: Sequence[float],
        *,
        name: str | None = None,
        schedule: sched.Schedule | None = None,
    ) -> None:
        factors = list(factors)
        weights = [float(w) for w in weights]
        shape = check_same_event(factors, name or "composite")
        if len(weights) != len(factors):
            raise FactorError(f"{name or 'composite'}: {len(factors)} factors but {len(weights)} weights")
        if not all(torch.isfinite(torch.tensor(weights))):
            raise FactorError(f"{name or 'composite'}: weights must be finite, got {weights}")
        super().__init__(shape, schedule or factors[0].schedule, name or "composite")
        self.terms: list[tuple[ScoreFactor, float]] = list(zip(factors, weights, strict=True))
        check_normalisable(list(self.leaves()), self.name)

    def leaves(self, weight: float = 1.0) -> Iterator[tuple[ScoreFactor, float]]:
        """The non-composite factors with their total weights (nested composites flattened).

        A factor that appears more than once (``guidance(attributes(...), model)`` holds the
        unconditional model twice) is one leaf with the summed weight, so it costs one
        evaluation; a leaf whose weights cancel (to 1e-12 of the largest) is left out.
        """
        total: dict[int, list[Any]] = {}
        scale = 0.0
        for f, w in self._flat(weight):
            total.setdefault(id(f), [f, 0.0])[1] += w
            scale = max(scale, abs(w))
        for f, w in total.values():
            if abs(w) > 1e-12 * scale:
                yield f, w

    def _flat(self, weight: float) -> Iterator[tuple[ScoreFactor, float]]:
        for f, w in self.terms:
            if isinstance(f, Composite):
                yield from f._flat(weight * w)
            else:
                yield f, weight * w

    @property
    def cost(self) -> int:  # type: ignore[override]
        return sum(f.cost for f, _ in self.leaves())

    @property
    def has_energy(self) -> bool:
        return all(f.has_energy for f, _ in self.leaves())

    @property
    def learned(self) -> bool:  # type: ignore[override]
        return any(f.learned for f, _ in self.leaves())

    def score(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        out = torch.zeros_like(y)
        for f, w in self.leaves():
            out = out + w * f.score(y, sched.match(t, self.schedule, f.schedule))
        return out

    def energy(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        if not self.has_energy:
            missing = [f.name for f, _ in self.leaves() if not f.has_energy]
            raise FactorError(f"composite {self.name!r}: factors {missing} have no energy")
        out = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        for f, w in self.leaves():
            out = out + w * f.energy(y, sched.match(t, self.schedule, f.schedule))
        return out


def product(*factors: ScoreFactor, name: str = "product") -> Composite:
    """``prod_i p_i``: every weight 1 (the conjunction of Liu et al. 2022)."""
    return Composite(factors, [1.0] * len(factors), name=name)


def weighted(
    factors: Sequence[ScoreFactor], weights: Sequence[float], *, name: str = "weighted"
) -> Composite:
    """``prod_i p_i^{w_i}``."""
    return Composite(factors, weights, name=name)


def guidance(cond: ScoreFactor, uncond: ScoreFactor, scale: float, *, name: str = "guidance") -> Composite:
    """Classifier-free guidance (Ho & Salimans 2022): ``(1 + g) s_c - g s_u``."""
    return Composite([cond, uncond], [1.0 + scale, -scale], name=name)


def negation(
    positive: ScoreFactor, negative: ScoreFactor, scale: float = 1.0, *, name: str = "negation"
) -> Composite:
    """``E_p - g E_q``: keep ``p`` and push away from ``q`` (Du et al. 2023, ``p / q^g``)."""
    return Composite([positive, negative], [1.0, -scale], name=name)

r"""Exact targets: 2-D distributions with exact samples and exact normalised log-density.

* :class:`ExactTarget` -- the interface: ``sample(n, generator)`` draws exact,
  independent samples and ``log_prob(x)`` is the exact *normalised* log-density
  (``-inf`` outside the support).
* :class:`ProductTarget` and :func:`mixture_times_boxes` -- a Gaussian mixture times a
  piecewise-constant function, which is a mixture of Gaussians truncated to rectangles:
  its normaliser, the mass of each component and its samples are exact (normal CDFs and
  inverse CDFs in log space).
* :func:`truncated_normal` -- the inverse-CDF sampler of a standard normal truncated to
  an interval, accurate far into the tails.

Computations run in float64; samples come back in the default dtype, log-densities in
the dtype of ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.special import ndtri_exp

from ..datasets import Dataset2D
from ..errors import DataError
from ..factors import GaussianMixture

__all__ = [
    "ExactTarget",
    "ProductTarget",
    "mixture_times_boxes",
    "truncated_normal",
]

Box = tuple[float, float, float, float]


# Interface ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ExactTarget:
    """A 2-D distribution with exact samples and exact normalised log-density.

    ``sample(n, generator=None)`` returns ``(n, 2)`` samples in the default dtype;
    ``log_prob(x)`` returns ``(N,)`` log-densities (``-inf`` off the support) in the
    dtype of ``x``.  ``info`` holds JSON-able facts about the target.
    """

    name: str
    sample: Callable[..., torch.Tensor]
    log_prob: Callable[[torch.Tensor], torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: the name and ``info``."""
        return {"name": self.name, **self.info}

    def as_dataset(self) -> Dataset2D:
        """The target as a :class:`probcomp.datasets.Dataset2D`."""
        return Dataset2D(self.name, self.sample, self.log_prob)


@dataclass(frozen=True, eq=False, kw_only=True)
class ProductTarget(ExactTarget):
    r"""A Gaussian mixture times a piecewise-constant function, normalised.

    .. math::
        p(x) = \frac1Z \sum_k \pi_k \mathcal N(x; \mu_k, \sigma_k^2 I)\ \sum_j c_j 1[x \in B_j],
        \qquad Z = \sum_{k,j} \pi_k c_j P_{kj},

    with ``P_kj`` the mass of ``N(mu_k, sigma_k^2 I)`` in the rectangle ``B_j``.

    Attributes:
        mode_means: ``(K, 2)`` centres of the mixture components (the modes).
        mode_weights: ``(K,)`` exact mass of each component in the product,
            ``sum_j pi_k c_j P_kj / Z`` (float64, sums to 1).
        component_weights: ``(K, J)`` exact mass of each (component, rectangle) piece.
        log_z: ``log Z``.
    """

    mode_means: torch.Tensor
    mode_weights: torch.Tensor
    component_weights: torch.Tensor
    log_z: float

    @property
    def z(self) -> float:
        """The normalising constant ``Z``."""
        return math.exp(self.log_z)

    def mode_of(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest mode centre for each sample, a ``(N,)`` LongTensor.

        The empirical frequencies are :func:`probcomp.metrics.mode_weights` with
        ``means=self.mode_means``; compare them with :attr:`mode_weights`.
        """
        xd = torch.as_tensor(x).detach().to(torch.float64).cpu().reshape(-1, 2)
        return torch.cdist(xd, self.mode_means).argmin(1)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "Z": _sig(self.z),
            "log_Z": _sig(self.log_z),
            "mode_weights": [_sig(w) for w in self.mode_weights.tolist()],
            **self.info,
        }


def _sig(v: float, digits: int = 6) -> float:
    return float(f"{v:.{digits}g}")


# Truncated Gaussians -------------------------------------------------------------------
def _log_ndtr_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""``log(Phi(b) - Phi(a))`` for ``a <= b``, stable in both tails.

    An interval in the upper tail is reflected into the lower tail, where
    ``Phi`` is tiny but has full relative precision: ``Phi(b) - Phi(a) = Phi(-a) - Phi(-b)``.
    """
    flip = (a + b) > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    la, lb = torch.special.log_ndtr(lo), torch.special.log_ndtr(hi)
    return lb + torch.log1p(-torch.exp(la - lb))


def truncated_normal(a: torch.Tensor, b: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    r"""Standard normal truncated to ``[a, b]`` by its inverse CDF, from uniforms ``u`` in [0, 1).

    With the interval reflected into the lower tail when ``a + b > 0`` (so that no
    ``Phi`` is close to 1 where it carries information),

    .. math::
        z = \Phi^{-1}\big(\Phi(a) + u(\Phi(b) - \Phi(a))\big), \quad
        \log(\cdot) = \log\Phi(b) + \log\big(u + (1-u)e^{\log\Phi(a) - \log\Phi(b)}\big),

    and ``Phi^{-1}(e^y)`` is evaluated directly from ``y`` (``scipy.special.ndtri_exp``),
    so the map is exact to rounding even 40 standard deviations out.  All float64.
    """
    a, b, u = (v.to(torch.float64) for v in (a, b, u))
    flip = (a + b) > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    la, lb = torch.special.log_ndtr(lo), torch.special.log_ndtr(hi)
    log_p = lb + torch.log(u + (1 - u) * torch.exp(la - lb))
    z = torch.from_numpy(np.asarray(ndtri_exp(log_p.cpu().numpy()), dtype=np.float64))
    z = torch.minimum(torch.maximum(z, lo), hi)
    return torch.where(flip, -z, z)


def _check_boxes(boxes: Sequence[Box], who: str) -> torch.Tensor:
    b = torch.tensor([list(map(float, bx)) for bx in boxes], dtype=torch.float64).reshape(-1, 4)
    if b.shape[0] == 0 or not torch.all((b[:, 1] > b[:, 0]) & (b[:, 3] > b[:, 2])):
        raise DataError(f"{who}: boxes must be (x0, x1, y0, y1) with x0 < x1 and y0 < y1, got {boxes}")
    return b


def mixture_times_boxes(
    means: Any,
    std: Any,
    boxes: Sequence[Box],
    levels: Sequence[float],
    weights: Any = None,
    *,
    name: str = "mixture-times-boxes",
    info: dict[str, Any] | None = None,
) -> ProductTarget:
    r"""``p(x) ∝ sum_k pi_k N(x; mu_k, sigma_k^2 I) * sum_j c_j 1[x in B_j]``, exactly.

    Each pair ``(k, j)`` is a Gaussian truncated to the rectangle ``B_j``, of weight
    ``pi_k c_j P_kj / Z`` with

    .. math:: P_{kj} = \prod_{i \in \{x, y\}} \big[\Phi(\tfrac{h_{j,i} - \mu_{k,i}}{\sigma_k})
              - \Phi(\tfrac{l_{j,i} - \mu_{k,i}}{\sigma_k})\big],

    computed in log space.  Sampling picks a pair with these weights, then each
    coordinate by the inverse CDF of the truncated normal (:func:`truncated_normal`).

    Args:
        means: ``(K, 2)`` component means.
        std: a scalar or ``(K,)`` isotropic standard deviations.
        boxes: rectangles ``(x0, x1, y0, y1)``; they may overlap (levels add up).
        levels: ``c_j >= 0``, one per box, not all zero.
        weights: ``(K,)`` positive mixture weights (normalised here); uniform if None.
    """
    mu = torch.as_tensor(means, dtype=torch.float64)
    if mu.ndim != 2 or mu.shape[1] != 2:
        raise DataError(f"{name}: means must be (K, 2), got shape {tuple(mu.shape)}")
    k = mu.shape[0]
    sd = torch.as_tensor(std, dtype=torch.float64).expand(k).clone()
    if not torch.all(sd > 0):
        raise DataError(f"{name}: standard deviations must be positive")
    pi = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights)
    pi = pi.to(torch.float64)
    if pi.shape != (k,) or not torch.all(pi > 0):
        raise DataError(f"{name}: weights must be {k} positive numbers")
    pi = pi / pi.sum()
    bx = _check_boxes(boxes, name)
    c = torch.as_tensor(levels, dtype=torch.float64)
    if c.shape != (bx.shape[0],) or not torch.all(c >= 0) or not c.sum() > 0:
        raise DataError(f"{name}: levels must be {bx.shape[0]} non-negative numbers, not all zero")
    gm = GaussianMixture(mu, sd, pi, name=name)

    # standardised rectangle edges per (k, j, axis)
    lo = (bx[None, :, [0, 2]] - mu[:, None, :]) / sd[:, None, None]
    hi = (bx[None, :, [1, 3]] - mu[:, None, :]) / sd[:, None, None]
    log_mass = _log_ndtr_diff(lo, hi).sum(-1)  # (K, J): log P_kj
    logw = pi.log()[:, None] + c.log()[None, :] + log_mass  # -inf where c_j = 0
    log_z = float(torch.logsumexp(logw.reshape(-1), 0))
    comp_w = torch.exp(logw - log_z)
    mode_w = comp_w.sum(1)
    log_c = c.log()

    def sample(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = torch.multinomial(comp_w.reshape(-1), n, replacement=True, generator=generator)
        kk, jj = idx // bx.shape[0], idx % bx.shape[0]
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        z = truncated_normal(lo[kk, jj], hi[kk, jj], u)
        x = mu[kk] + sd[kk, None] * z
        return x.to(torch.get_default_dtype())

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        xd = x.detach().to(torch.float64).cpu().reshape(-1, 2)
        inside = (
            (xd[:, None, 0] >= bx[:, 0])
            & (xd[:, None, 0] <= bx[:, 1])
            & (xd[:, None, 1] >= bx[:, 2])
            & (xd[:, None, 1] <= bx[:, 3])
        )  # (N, J)
        log_level = torch.logsumexp(log_c.masked_fill(~inside, -math.inf), 1)
        return (gm.log_prob(xd) + log_level - log_z).to(x.device, x.dtype)

    return ProductTarget(
        name=name,
        sample=sample,
        log_prob=log_prob,
        info=dict(info or {}),
        mode_means=mu,
        mode_weights=mode_w,
        component_weights=comp_w,
        log_z=log_z,
    )


# Rejection sampling -------------------------------------------------------------------
def _rejection(
    propose: Callable[[int, torch.Generator | None], torch.Tensor],
    accept: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    rate: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``n`` exact draws of ``propose`` conditioned on ``accept``, in proposal order."""
    kept: list[torch.Tensor] = []
    have = 0
    while have < n:
        batch = int(1.1 * (n - have) / rate) + 16
        x = propose(batch, generator)
        x = x[accept(x)]
        kept.append(x)
        have += x.shape[0]
    return torch.cat(kept)[:n]

r"""Concrete benchmark targets for the 2-D composition experiments, all exact.

* :func:`ring_bar_product` -- ``p(x) ∝ ring(x) bar_s(x)``, the zoo's 8-Gaussian ring
  times the bar with a fraction ``s`` of its mass spread over ``[-1.1, 1.1]^2``
  (the protocol of Du et al. 2023); a :class:`~probcomp.targets.exact.ProductTarget`.
* :func:`analytic_ring_bar` -- the same benchmark built from analytic Gaussian-mixture
  factors, whose noised scores are exact at every noise level.
* :func:`bar_mixture` -- ``0.5 left_bar + 0.5 right_bar``.
* :func:`box_negation` -- "box-0.7 NOT box-0.3": uniform on the square frame
  ``box_0.7 \ box_0.3``.
* :func:`spread_bar` and :func:`mixture` -- the building blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .. import datasets
from ..datasets import Dataset2D
from ..errors import DataError
from ..factors import GaussianMixture, exact_product
from .exact import ExactTarget, ProductTarget, _rejection, _sig, mixture_times_boxes

__all__ = [
    "BAR_BOX",
    "analytic_ring_bar",
    "bar_mixture",
    "box_negation",
    "mixture",
    "ring_bar_product",
    "ring_means",
    "spread_bar",
]

BAR_BOX: tuple[float, float, float, float] = (-0.2, 0.2, -1.0, 1.0)
"""The zoo bar ``(x0, x1, y0, y1)``: :func:`probcomp.datasets.bar` is uniform on it."""


# The ring x bar benchmark ----------------------------------------------------------------
def ring_means(radius: float = 0.5, k: int = 8) -> torch.Tensor:
    """``(k, 2)`` ring centres at angles ``2 pi i / k``, as in :func:`probcomp.datasets.ring`."""
    ang = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    return radius * torch.stack([ang.cos(), ang.sin()], 1)


def _check_spread(spread: float) -> float:
    s = float(spread)
    if not 0.0 <= s <= 1.0:
        raise DataError(f"spread must lie in [0, 1], got {spread}")
    return s


def ring_bar_product(
    spread: float = 0.01,
    *,
    radius: float = 0.5,
    std: float = 0.03,
    num_modes: int = 8,
    square_half_width: float = 1.1,
) -> ProductTarget:
    r"""The exact product ``p(x) ∝ ring(x) bar_s(x)`` of the zoo's ring and (spread) bar.

    ``ring`` is :func:`probcomp.datasets.ring` (``num_modes`` equal-weight Gaussians of
    std ``std`` at radius ``radius``, angles ``2 pi k / K``) and

    .. math:: \mathrm{bar}_s = (1-s)\,\mathcal U([-0.2, 0.2]\times[-1, 1]) + s\,\mathcal U([-h, h]^2),

    :func:`spread_bar` with ``h = square_half_width`` (``s = 0.01``, ``h = 1.1`` is the
    protocol of Du et al. 2023; ``s = 0`` is the hard bar of :func:`probcomp.datasets.bar`).
    The bar is the two overlapping levels ``(1-s)/0.8`` on the bar and ``s/(4h^2)`` on
    the square, so the product is a mixture of ``2K`` truncated Gaussians
    (:func:`mixture_times_boxes`): ``Z``, the mode masses and the samples are exact.

    With the defaults the components at ``(0, +-0.5)`` (angles pi/2 and 3 pi/2) hold almost
    all the mass; each of the other six holds about ``s / (8 * 4.84 * Z)`` (8.3e-4 for
    ``s = 0.01``), nearly all of it from the spread part; with ``s = 0`` only the bar's
    Gaussian tails reach them: 7.7e-8 for each diagonal mode, 3.8e-24 for the modes at
    angles 0 and pi.
    """
    s = _check_spread(spread)
    h = float(square_half_width)
    x0, x1, y0, y1 = BAR_BOX
    if not (h >= max(abs(x0), abs(x1), abs(y0), abs(y1))):
        raise DataError(f"square_half_width must cover the bar (>= 1), got {square_half_width}")
    bar_area, square_area = (x1 - x0) * (y1 - y0), (2 * h) ** 2
    boxes = [BAR_BOX, (-h, h, -h, h)]
    levels = [(1 - s) / bar_area, s / square_area]
    info = {
        "spread": s,
        "ring": {"radius": radius, "std": std, "num_modes": num_modes},
        "bar": list(BAR_BOX),
        "square_half_width": h,
    }
    target = mixture_times_boxes(
        ring_means(radius, num_modes),
        std,
        boxes,
        levels,
        name=f"ring{num_modes}-x-bar-spread{s:g}",
        info=info,
    )
    target.info["dominant_mass"] = _sig(float(target.mode_weights.topk(2).values.sum()))
    return target


def analytic_ring_bar(
    num_bar_components: int = 8,
    *,
    spread: float = 0.01,
    radius: float = 0.5,
    std: float = 0.03,
    num_modes: int = 8,
    overlap: float = 0.6,
    square_half_width: float = 1.1,
) -> tuple[GaussianMixture, GaussianMixture, GaussianMixture]:
    r"""The ring x bar benchmark with analytic factors: ``(ring, bar, product)``.

    * ``ring`` -- the zoo ring as a :class:`~probcomp.factors.GaussianMixture`
      (``num_modes`` components, isotropic std ``std``).
    * ``bar`` -- a smooth stand-in for ``bar_s`` of :func:`ring_bar_product`: weight
      ``1 - s`` on a column of ``M = num_bar_components`` equal Gaussians at the cell
      midpoints ``y_i = -1 + (2i + 1)/M`` of ``[-1, 1]``, with diagonal stds
      ``(0.1, overlap * 2/M)`` (x: half the bar's half-width, so 95% of the x-profile
      lies in ``|x| < 0.2``; y: ``overlap = 0.6`` flattens the column to a ripple of
      about ``2 exp(-2 pi^2 overlap^2)`` = 0.2%), plus, when ``s > 0``, weight ``s`` on
      one wide isotropic Gaussian of std ``h / sqrt(3)`` (the std of ``U([-h, h])``)
      in place of the uniform spread over the square.
    * ``product`` -- :func:`~probcomp.factors.exact_product` of the two: a
      ``K (M + 1)``-component mixture with exact samples and log-density, and exact
      noised scores at every noise level (ring index major: component ``k (M+1) + m``
      is ring mode ``k`` times bar component ``m``).

    The Gaussian bar has soft edges, so this product is *not* :func:`ring_bar_product`:
    with the defaults each diagonal mode keeps 2.4e-3 of the mass (8.3e-4 in
    :func:`ring_bar_product`) and the two dominant modes 0.989 (0.995).  It is the
    variant in which a composition's error can be measured with no learned model involved.
    """
    s = _check_spread(spread)
    m = int(num_bar_components)
    if m < 1:
        raise DataError(f"num_bar_components must be >= 1, got {num_bar_components}")
    if not overlap > 0:
        raise DataError(f"overlap must be positive, got {overlap}")
    ring = GaussianMixture(ring_means(radius, num_modes), torch.full((num_modes,), float(std)), name="ring")
    x0, x1, y0, y1 = BAR_BOX
    cell = (y1 - y0) / m
    ys = y0 + cell * (torch.arange(m, dtype=torch.float64) + 0.5)
    means = torch.stack([torch.full_like(ys, 0.5 * (x0 + x1)), ys], 1)
    scales = torch.tensor([[0.25 * (x1 - x0), overlap * cell]], dtype=torch.float64).expand(m, 2)
    weights = torch.full((m,), (1 - s) / m, dtype=torch.float64)
    if s > 0:
        wide = float(square_half_width) / math.sqrt(3)
        means = torch.cat([means, torch.zeros(1, 2, dtype=torch.float64)])
        scales = torch.cat([scales, torch.full((1, 2), wide, dtype=torch.float64)])
        weights = torch.cat([weights, torch.tensor([s], dtype=torch.float64)])
    if s == 1:
        means, scales, weights = means[-1:], scales[-1:], weights[-1:]
    bar = GaussianMixture(means, scales, weights, name="bar")
    product = exact_product([ring, bar], name="ring x bar (analytic)")
    return ring, bar, product


# Mixtures and negations of the zoo's uniform sets -----------------------------------------
def mixture(
    components: Sequence[Dataset2D | ExactTarget],
    weights: Sequence[float] | None = None,
    *,
    name: str | None = None,
) -> ExactTarget:
    r"""``p(x) = sum_i w_i p_i(x)`` of exact 2-D distributions, sampled exactly.

    Each sample picks its component with probability ``w_i`` and is drawn from it;
    ``log p = logsumexp_i(log w_i + log p_i)``.  Components of weight 0 are dropped.
    """
    if not components:
        raise DataError("mixture needs at least one component")
    w = torch.full((len(components),), 1.0) if weights is None else torch.as_tensor(weights)
    w = w.to(torch.float64)
    if w.shape != (len(components),) or not torch.all(w >= 0) or not w.sum() > 0:
        raise DataError(f"mixture: weights must be {len(components)} non-negative numbers, not all zero")
    w = w / w.sum()
    keep = [i for i in range(len(components)) if w[i] > 0]
    comps, w = [components[i] for i in keep], w[keep]
    logw = w.log()
    name = name or " + ".join(f"{float(wi):g}*{c.name}" for wi, c in zip(w, comps, strict=True))

    def sample(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        which = torch.multinomial(w, n, replacement=True, generator=generator)
        out = torch.empty(n, 2, dtype=torch.get_default_dtype())
        for i, comp in enumerate(comps):
            idx = (which == i).nonzero().squeeze(1)
            if idx.numel():
                out[idx] = comp.sample(idx.numel(), generator).to(out.dtype)
        return out

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        xd = x.detach().to(torch.float64).cpu()
        lp = torch.stack([c.log_prob(xd).to(torch.float64) + lw for c, lw in zip(comps, logw, strict=True)])
        return torch.logsumexp(lp, 0).to(x.device, x.dtype)

    info = {"components": [c.name for c in comps], "weights": [_sig(float(v)) for v in w]}
    return ExactTarget(name, sample, log_prob, info)


def spread_bar(spread: float = 0.01, *, square_half_width: float = 1.1) -> ExactTarget:
    """``(1 - s) bar + s U([-h, h]^2)``: the zoo bar with a fraction ``s`` of its mass spread out."""
    s = _check_spread(spread)
    return mixture([datasets.bar(), datasets.box(square_half_width)], [1 - s, s], name=f"bar-spread{s:g}")


def bar_mixture(weights: Sequence[float] = (0.5, 0.5)) -> ExactTarget:
    """``w_0 left_bar + w_1 right_bar`` (default 0.5 / 0.5): uniform on the two bars."""
    return mixture([datasets.left_bar(), datasets.right_bar()], weights, name="left-bar OR right-bar")


def box_negation(outer: float = 0.7, inner: float = 0.3) -> ExactTarget:
    r""" "box-``outer`` NOT box-``inner``": uniform on the frame ``box_outer \ box_inner``.

    A negation ``E_1 - g E_2`` composes ``p_1(x) p_2(x)^{-g}``; with uniform boxes that
    is degenerate (``p_2 = 0`` outside its box, so ``p_2^{-g}`` is infinite there), and
    the only sensible target is its hard-negation (``g -> infinity``) limit, which is also
    what "in box-0.7 but not in box-0.3" means: the uniform density
    ``1 / (4 (outer^2 - inner^2))`` on the closed outer square minus the *open* inner
    square (so points rounded onto the inner edge still count), ``-inf`` elsewhere.

    The ``-inf`` is deliberate: :func:`probcomp.metrics.mean_log_likelihood` returns
    ``-inf`` as soon as one sample falls inside the inner box (count such samples
    separately to report a rate), and the histogram metrics (``kl_hist``, ``js_hist``)
    turn ``-inf`` into zero density before smoothing.  Samples: rejection from
    :func:`probcomp.datasets.box` ``(outer)``, exact.
    """
    o, i = float(outer), float(inner)
    if not 0 < i < o:
        raise DataError(f"box_negation needs 0 < inner < outer, got inner={inner}, outer={outer}")
    base = datasets.box(o)
    area = 4 * (o * o - i * i)

    def in_frame(x: torch.Tensor) -> torch.Tensor:
        xd = x.to(torch.float64)
        return torch.isfinite(base.log_prob(xd)) & (xd.abs().amax(1) >= i)

    def sample(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return _rejection(base.sample, in_frame, n, area / (4 * o * o), generator)

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        out = torch.full((x.shape[0],), -math.log(area), dtype=torch.float64)
        return out.masked_fill(~in_frame(x.detach().cpu()), -math.inf).to(x.device, x.dtype)

    info = {
        "outer": o,
        "inner": i,
        "area": _sig(area),
        "definition": f"uniform on box-{o:g} minus box-{i:g} (hard-negation limit)",
    }
    return ExactTarget(f"box-{o:g} NOT box-{i:g}", sample, log_prob, info)

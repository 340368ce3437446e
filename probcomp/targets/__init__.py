r"""Exact ground-truth targets for the 2-D composition benchmarks.

Every target is an :class:`ExactTarget`: ``sample(n, generator)`` draws exact,
independent samples and ``log_prob(x)`` is the exact *normalised* log-density
(``-inf`` outside the support), so samplers can be scored with any of
:mod:`probcomp.metrics`.

* :func:`ring_bar_product` -- ``p(x) ∝ ring(x) bar_s(x)``, the zoo's 8-Gaussian ring
  times the bar with a fraction ``s`` of its mass spread over ``[-1.1, 1.1]^2``
  (the protocol of Du et al. 2023).  A Gaussian mixture times a piecewise-constant
  function is a mixture of Gaussians truncated to rectangles, so the normaliser,
  the mass of each ring mode and the samples are all exact (normal CDFs and
  inverse CDFs in log space); see :class:`ProductTarget`.
* :func:`analytic_ring_bar` -- the same benchmark built from analytic Gaussian-mixture
  factors, whose noised scores are exact at every noise level.
* :func:`bar_mixture` -- ``0.5 left_bar + 0.5 right_bar``.
* :func:`box_negation` -- "box-0.7 NOT box-0.3": uniform on the square frame
  ``box_0.7 \ box_0.3``.
* :func:`spread_bar` and :func:`mixture` -- the building blocks.
* :mod:`probcomp.targets.products` -- products of analytic Gaussian-mixture factors in 2, 3
  and 8 dimensions, with their modes' exact weights (the cost-accuracy frontier's targets).

All samplers take a ``torch.Generator``: same seed, same samples.  Computations run in
float64; samples come back in the default dtype, log-densities in the dtype of ``x``.

The machinery lives in :mod:`probcomp.targets.exact`, the concrete targets in
:mod:`probcomp.targets.benchmarks`; everything is re-exported here.
"""

from . import benchmarks, exact, products
from .benchmarks import (
    BAR_BOX,
    analytic_ring_bar,
    bar_mixture,
    box_negation,
    mixture,
    ring_bar_product,
    ring_means,
    spread_bar,
)
from .exact import (
    ExactTarget,
    ProductTarget,
    mixture_times_boxes,
    truncated_normal,
)
from .products import MixtureProduct

__all__ = [
    "BAR_BOX",
    "ExactTarget",
    "MixtureProduct",
    "ProductTarget",
    "analytic_ring_bar",
    "bar_mixture",
    "box_negation",
    "mixture",
    "mixture_times_boxes",
    "products",
    "ring_bar_product",
    "ring_means",
    "spread_bar",
    "truncated_normal",
]

# Helpers that are not part of the public API, still reachable as ``probcomp.targets.X``.
Box = exact.Box
_sig = exact._sig
_log_ndtr_diff = exact._log_ndtr_diff
_check_boxes = exact._check_boxes
_rejection = exact._rejection
_check_spread = benchmarks._check_spread

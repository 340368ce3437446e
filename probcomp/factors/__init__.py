"""Factors: what is known of ``p(y)`` for an observable.

* :class:`ScoreFactor` -- the interface (noised ``score``, ``eps``, optional ``energy``).
* :class:`Gaussian`, :class:`GaussianMixture` -- analytic factors, exact at every ``t``.
* :class:`ConditionalGaussian` -- analytic ``p(y | c)``, the ground truth of concept inversion.
* :class:`ExplicitFactor` -- a clean log-density (Pyro distribution or callable).
* :func:`explicit` -- the right factor for a distribution: exact Gaussian where possible.
* :func:`exact_product` -- the exact (weighted) product of Gaussian mixtures.
* :class:`NormalisedEnergy` -- a low-dimensional energy normalised by quadrature (mixtures).
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch

from .. import schedules as sched
from .base import ExplicitFactor, ScoreFactor, as_time, check_event, check_output, event_shape_of
from .gaussian import ConditionalGaussian, Gaussian, GaussianMixture, exact_product
from .normalised import NormalisedEnergy

__all__ = [
    "ConditionalGaussian",
    "ExplicitFactor",
    "Gaussian",
    "GaussianMixture",
    "NormalisedEnergy",
    "ScoreFactor",
    "as_time",
    "check_event",
    "check_output",
    "event_shape_of",
    "exact_product",
    "explicit",
]


def explicit(
    d: Any,
    event_shape: Any = None,
    *,
    schedule: sched.Schedule | None = None,
    name: str | None = None,
) -> ScoreFactor:
    """A factor for a distribution or log-density, exact along the noise path where possible.

    ``Normal`` (any batch shape, independent) and ``MultivariateNormal`` become
    :class:`Gaussian` factors, whose noised form is exact; anything else becomes an
    :class:`ExplicitFactor` with the tempered path documented there.
    """
    if isinstance(d, ScoreFactor):
        return d
    if not callable(getattr(d, "log_prob", None)):
        return ExplicitFactor(d, event_shape, schedule=schedule, name=name)
    base, full = d, tuple(d.batch_shape) + tuple(d.event_shape)
    if event_shape is not None and tuple(event_shape) != full:
        ex = ExplicitFactor(d, event_shape, schedule=schedule, name=name)
        base, full = ex.distribution, tuple(event_shape)
    while isinstance(base, dist.Independent):
        base = base.base_dist
    kw = {"schedule": schedule, "name": name or "explicit"}
    if isinstance(base, dist.Normal):
        loc = torch.broadcast_to(base.loc, full).reshape(-1)
        scale = torch.broadcast_to(base.scale, full).reshape(-1)
        return Gaussian(loc, scale, event_shape=full, **kw)
    if isinstance(base, dist.MultivariateNormal) and base.batch_shape == ():
        return Gaussian(base.loc, base.covariance_matrix, **kw)
    return ExplicitFactor(d, event_shape, schedule=schedule, name=name)

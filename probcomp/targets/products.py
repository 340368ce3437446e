r"""Products of analytic Gaussian-mixture factors whose composition is known in closed form.

A product of Gaussian mixtures is a Gaussian mixture (:func:`~probcomp.factors.exact_product`):
every combination of components ``(k_1, ..., k_m)`` is one Gaussian with precision
``sum_i Lambda_{i,k_i}``, so the composed density, its exact samples, the weight of each of its
modes and the noised scores of every factor at every noise level are all exact.  These are the
frontier benchmark's targets (:mod:`benchmarks.frontier`):

* :func:`ring_bar` -- the 2-D ring x bar of :func:`~probcomp.targets.analytic_ring_bar`, with
  the eight ring modes as its modes;
* :func:`planes_3d` -- three factors in 3-D, each narrow along one axis (two, two and three
  slabs) and weakly informative along the others: twelve modes whose weights couple the factors;
* :func:`slabs_8d` -- four two-component factors in 8-D, each narrow in its own pair of
  coordinates and offset in the next pair: sixteen modes, the smallest with about 1% of the mass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probcomp.factors import GaussianMixture, exact_product
from probcomp.scene import Scene

from .benchmarks import analytic_ring_bar, ring_means

__all__ = ["MixtureProduct", "planes_3d", "ring_bar", "slabs_8d"]


@dataclass(frozen=True)
class MixtureProduct:
    """Analytic factors, their exact product, and the product's modes with their exact weights.

    ``mode_means`` ``(M, D)`` are the points samples are assigned to (nearest mean); ``mode_weights``
    ``(M,)`` the exact mass of each.
    """

    name: str
    factors: tuple[GaussianMixture, ...]
    product: GaussianMixture
    mode_means: torch.Tensor
    mode_weights: torch.Tensor

    @property
    def dim(self) -> int:
        return int(self.mode_means.shape[1])

    def scene(self, factors: tuple | None = None) -> Scene:
        """One control ``x`` observed by every factor (or by ``factors``, e.g. learned stand-ins)."""
        sc = Scene()
        x = sc.control("x", (self.dim,))
        for k, f in enumerate(self.factors if factors is None else factors):
            sc.observe(f"y{k}", x, factor=f)
        return sc

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.product.sample(n, generator).to(torch.float32)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.product.log_prob(x.to(torch.float64))


def _by_mode(name: str, factors: tuple[GaussianMixture, ...]) -> MixtureProduct:
    prod = exact_product(list(factors), name=name)
    return MixtureProduct(name, factors, prod, prod.means.to(torch.float64), prod.weights.to(torch.float64))


def ring_bar() -> MixtureProduct:
    """The analytic ring x bar; its modes are the ring's eight components (bar components summed)."""
    ring, bar, prod = analytic_ring_bar()
    means = ring_means()
    mass = prod.weights.to(torch.float64).reshape(means.shape[0], -1).sum(1)
    return MixtureProduct("ring x bar (2-D, 2 factors)", (ring, bar), prod, means, mass)


def _slab(axis: int, centres: list[list[float]], weights: list[float], name: str) -> GaussianMixture:
    """Components at ``centres``, std 0.08 along ``axis`` and 0.8 across it."""
    means = torch.tensor(centres, dtype=torch.float64)
    scales = torch.full_like(means, 0.8)
    scales[:, axis] = 0.08
    return GaussianMixture(means, scales, torch.tensor(weights), name=name)


def planes_3d() -> MixtureProduct:
    """Three factors in 3-D: two slabs in ``x``, two in ``y`` (offset in ``x``), three in ``z``
    (offset in ``y``); the product has twelve modes with weights between about 1% and 20%."""
    a = _slab(0, [[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]], [0.65, 0.35], "x-slabs")
    b = _slab(1, [[0.2, -0.5, 0.0], [-0.2, 0.5, 0.0]], [0.3, 0.7], "y-slabs")
    c = _slab(2, [[0.0, 0.3, -0.6], [0.0, 0.0, 0.0], [0.0, -0.3, 0.6]], [0.2, 0.5, 0.3], "z-slabs")
    return _by_mode("three slab mixtures (3-D, 3 factors)", (a, b, c))


def slabs_8d() -> MixtureProduct:
    """Four factors in 8-D: factor ``i`` has two components at ``+-(0.4, 0.4)`` in coordinates
    ``(2i, 2i + 1)`` (std 0.08 there, 0.8 elsewhere), offset by ``+-0.3`` in the next pair."""
    dim, factors = 8, []
    for i, w in enumerate(([0.7, 0.3], [0.4, 0.6], [0.5, 0.5], [0.8, 0.2])):
        centres = torch.zeros(2, dim, dtype=torch.float64)
        for j, sign in enumerate((1.0, -1.0)):
            centres[j, 2 * i : 2 * i + 2] = 0.4 * sign
            nxt = (2 * i + 2) % dim
            centres[j, nxt : nxt + 2] = 0.3 * sign
        scales = torch.full((2, dim), 0.8, dtype=torch.float64)
        scales[:, 2 * i : 2 * i + 2] = 0.08
        factors.append(GaussianMixture(centres, scales, torch.tensor(w), name=f"pair{i}"))
    return _by_mode("four slab mixtures (8-D, 4 factors)", tuple(factors))

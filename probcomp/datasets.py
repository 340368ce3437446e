"""Synthetic data sets with exact densities, for training and scoring zoo models.

Every 2-D set is a :class:`Dataset2D`: ``sample(n, generator)`` draws exact samples
and ``log_prob(x)`` is the exact log-density (``-inf`` outside a uniform support).

* ``ring``         -- 8 Gaussians on a circle of radius 0.5, std 0.03;
* ``bar``          -- uniform on ``[-0.2, 0.2] x [-1, 1]``;
* ``left_bar``, ``right_bar`` -- the bar shifted to x in ``[-0.6, -0.2]`` / ``[0.2, 0.6]``;
* ``box(h)``       -- uniform on ``[-h, h]^2`` (``box-0.7``, ``box-0.3``);
* ``rectangles``   -- the notes seed's pair of rectangles and its 90-degree rotation;
* :func:`coind_toy` -- ``X = (C1, C2) + 0.2 N(0, I)``, ``C`` in ``{-1, +1}^2``, with
  chosen attribute combinations left out of the support.

All samplers take a ``torch.Generator``: same seed, same data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .errors import DataError

__all__ = [
    "DATASETS_2D",
    "Dataset2D",
    "bar",
    "box",
    "coind_toy",
    "get",
    "left_bar",
    "rectangles",
    "right_bar",
    "ring",
]


@dataclass(frozen=True)
class Dataset2D:
    """A 2-D distribution with exact samples and log-density."""

    name: str
    sample: Callable[[int, torch.Generator | None], torch.Tensor]
    log_prob: Callable[[torch.Tensor], torch.Tensor]


def _gaussian_mixture(name: str, means: torch.Tensor, std: float) -> Dataset2D:
    from .factors import GaussianMixture

    gm = GaussianMixture(means, torch.full((means.shape[0],), std), name=name)
    return Dataset2D(name, lambda n, g=None: gm.sample(n, g), gm.log_prob)


def _uniform_boxes(name: str, boxes: Sequence[tuple[float, float, float, float]]) -> Dataset2D:
    """Uniform on a union of disjoint axis-aligned boxes ``(x0, x1, y0, y1)``."""
    b = torch.tensor(boxes, dtype=torch.float64)
    area = (b[:, 1] - b[:, 0]) * (b[:, 3] - b[:, 2])
    if not torch.all(area > 0):
        raise DataError(f"{name}: boxes must have positive area")
    total = float(area.sum())

    def sample(n: int, g: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(area / total, n, replacement=True, generator=g)
        u = torch.rand(n, 2, generator=g, dtype=torch.float64)
        lo = torch.stack([b[k, 0], b[k, 2]], 1)
        hi = torch.stack([b[k, 1], b[k, 3]], 1)
        return (lo + u * (hi - lo)).to(torch.get_default_dtype())

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        xd = x.to(torch.float64)
        inside = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for x0, x1, y0, y1 in boxes:
            inside |= (xd[:, 0] >= x0) & (xd[:, 0] <= x1) & (xd[:, 1] >= y0) & (xd[:, 1] <= y1)
        out = torch.full((x.shape[0],), -math.log(total), dtype=x.dtype, device=x.device)
        return out.masked_fill(~inside, -math.inf)

    return Dataset2D(name, sample, log_prob)


def ring(radius: float = 0.5, std: float = 0.03, k: int = 8) -> Dataset2D:
    """``k`` Gaussians evenly spaced on a circle."""
    ang = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    return _gaussian_mixture("ring8", radius * torch.stack([ang.cos(), ang.sin()], 1), std)


def bar() -> Dataset2D:
    """Uniform on ``[-0.2, 0.2] x [-1, 1]``."""
    return _uniform_boxes("bar", [(-0.2, 0.2, -1.0, 1.0)])


def left_bar() -> Dataset2D:
    return _uniform_boxes("left-bar", [(-0.6, -0.2, -1.0, 1.0)])


def right_bar() -> Dataset2D:
    return _uniform_boxes("right-bar", [(0.2, 0.6, -1.0, 1.0)])


def box(half_width: float) -> Dataset2D:
    """Uniform on ``[-h, h]^2``."""
    h = float(half_width)
    return _uniform_boxes(f"box-{h:g}", [(-h, h, -h, h)])


def rectangles(rotated: bool = False) -> Dataset2D:
    """Two parallel rectangles (the notes seed's toy); ``rotated`` turns them by 90 degrees."""
    pair = [(-0.8, -0.2, -0.3, 0.3), (0.2, 0.8, -0.3, 0.3)]
    if rotated:
        pair = [(y0, y1, x0, x1) for x0, x1, y0, y1 in pair]
    return _uniform_boxes("rectangles-rot" if rotated else "rectangles", pair)


def coind_toy(
    n: int,
    generator: torch.Generator | None = None,
    *,
    held_out: Sequence[tuple[int, int]] = ((1, 1),),
    std: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """COIND's 2-D attribute toy: ``X = (C1, C2) + std N(0, I)``.

    Returns ``(x, labels)`` with ``labels`` in ``{0, 1}^2`` (0 for -1, 1 for +1);
    combinations in ``held_out`` (given as signs) never occur.
    """
    combos = [(a, b) for a in (-1, 1) for b in (-1, 1) if (a, b) not in set(map(tuple, held_out))]
    if not combos:
        raise DataError("coind_toy: every attribute combination is held out")
    c = torch.tensor(combos, dtype=torch.float64)
    k = torch.randint(len(combos), (n,), generator=generator)
    x = c[k] + std * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return x.to(torch.get_default_dtype()), ((c[k] + 1) / 2).long()


DATASETS_2D: dict[str, Callable[[], Dataset2D]] = {
    "ring8": ring,
    "bar": bar,
    "left-bar": left_bar,
    "right-bar": right_bar,
    "box-0.7": lambda: box(0.7),
    "box-0.3": lambda: box(0.3),
    "rectangles": rectangles,
    "rectangles-rot": lambda: rectangles(True),
}


def get(name: str) -> Dataset2D:
    """A 2-D data set by name (see :data:`DATASETS_2D`)."""
    if name not in DATASETS_2D:
        raise DataError(f"unknown data set {name!r}; known: {sorted(DATASETS_2D)}")
    return DATASETS_2D[name]()

"""Synthetic data sets with exact densities, for training and scoring zoo models.

Every 2-D set is a :class:`Dataset2D`: ``sample(n, generator)`` draws exact samples
and ``log_prob(x)`` is the exact log-density (``-inf`` outside a uniform support).

* ``ring``         -- 8 Gaussians on a circle of radius 0.5, std 0.03;
* ``bar``          -- uniform on ``[-0.2, 0.2] x [-1, 1]``;
* ``left_bar``, ``right_bar`` -- the bar shifted to x in ``[-0.6, -0.2]`` / ``[0.2, 0.6]``;
* ``box(h)``       -- uniform on ``[-h, h]^2`` (``box-0.7``, ``box-0.3``);
* ``rectangles``   -- the pair of rectangles of the composition notes' toy and its 90-degree rotation;
* :func:`coind_toy` -- ``X = (C1, C2) + 0.2 N(0, I)``, ``C`` in ``{-1, +1}^2``, with
  chosen attribute combinations left out of the support.

Images and signals (channels-first, values in [-1, 1]):

* :func:`blobs` -- 32x32 scenes of 1-8 coloured Gaussian blobs or squares on a plain
  background, with labels: normalised coordinates, colour indices, count, mask;
* :func:`shapes` -- 32x32 images of one coloured shape (circle, square, triangle) labelled
  with shape and colour, with chosen combinations left out (COIND's shape x colour task);
* :func:`smooth_signals` -- smooth 1-D signals, and :func:`textures` -- smooth 2-D
  random fields, from which panorama-style windows are cut.

All samplers take a ``torch.Generator``: same seed, same data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from .errors import DataError

__all__ = [
    "BACKGROUNDS",
    "DATASETS_2D",
    "PALETTE",
    "Dataset2D",
    "bar",
    "blobs",
    "blobs_global",
    "box",
    "coind_toy",
    "get",
    "left_bar",
    "rectangles",
    "right_bar",
    "ring",
    "shapes",
    "smooth_signals",
    "textures",
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
    """Two parallel rectangles (a composition toy); ``rotated`` turns them by 90 degrees."""
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


PALETTE = torch.tensor(
    [[1.0, 0.2, 0.2], [0.2, 0.9, 0.2], [0.25, 0.35, 1.0], [1.0, 0.9, 0.2], [0.9, 0.3, 0.9], [0.2, 0.9, 0.9]]
)
"""RGB in [0, 1]: red, green, blue, yellow, magenta, cyan."""


def blobs(
    n: int,
    generator: torch.Generator | None = None,
    *,
    size: int = 32,
    num_objects: tuple[int, int] = (1, 8),
    radius: float = 2.5,
    shape: str = "blob",
    colors: torch.Tensor | None = None,
    background: Sequence[float] = (0.0, 0.0, 0.0),
    margin: float = 0.1,
    min_separation: float = 0.0,
    masks: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Images of coloured objects; returns ``(images (n, 3, size, size), labels)``.

    ``labels``: ``xy`` ``(n, K, 2)`` centres normalised to [0, 1] (x right, y down),
    ``color`` ``(n, K)`` palette indices, ``mask`` ``(n, K)`` which of the ``K = max``
    slots hold an object, and ``count`` ``(n,)``.  Objects are Gaussian blobs of
    standard deviation ``radius`` pixels or squares of half-side ``radius``; where
    objects overlap the later one is painted on top; ``min_separation`` (pixels)
    redraws a centre until it lies at least that far from the earlier ones (by
    rejection, so the centres are uniform on the allowed set).  Pixel values are
    mapped from [0, 1] to [-1, 1].  With ``masks`` the labels also hold ``masks``
    ``(n, K, size, size)``: each object's visible opacity after occlusion by later ones
    (the background's share is ``1 - masks.sum(1)``); the random draws are the same either way.
    """
    lo, hi = num_objects
    if not (1 <= lo <= hi):
        raise DataError(f"num_objects must satisfy 1 <= min <= max, got {num_objects}")
    if shape not in ("blob", "square"):
        raise DataError(f"shape must be 'blob' or 'square', got {shape!r}")
    pal = PALETTE if colors is None else torch.as_tensor(colors, dtype=torch.float32)
    count = torch.randint(lo, hi + 1, (n,), generator=generator)
    mask = torch.arange(hi)[None, :] < count[:, None]
    xy = margin + (1 - 2 * margin) * torch.rand(n, hi, 2, generator=generator)
    for k in range(1, hi if min_separation > 0 else 0):
        for _ in range(1000):
            d = (xy[:, :k] - xy[:, k : k + 1]).norm(dim=-1) * size
            bad = (d < min_separation).any(1)
            if not bool(bad.any()):
                break
            redraw = margin + (1 - 2 * margin) * torch.rand(n, 2, generator=generator)
            xy[:, k] = torch.where(bad[:, None], redraw, xy[:, k])
        else:
            raise DataError(f"cannot place {hi} objects {min_separation} px apart in a {size} px image")
    color = torch.randint(pal.shape[0], (n, hi), generator=generator)
    img = torch.tensor(background, dtype=torch.float32).reshape(1, 3, 1, 1).repeat(n, 1, size, size)
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    gx, gy = grid[None, None, :], grid[None, :, None]  # x along width, y along height
    visible = torch.zeros(n, hi, size, size) if masks else None
    for k in range(hi):
        dx = (gx - xy[:, k, 0, None, None]) * size
        dy = (gy - xy[:, k, 1, None, None]) * size
        if shape == "blob":
            alpha = torch.exp(-(dx**2 + dy**2) / (2 * radius**2))
        else:
            alpha = ((dx.abs() <= radius) & (dy.abs() <= radius)).float()
        alpha = (alpha * mask[:, k, None, None]).unsqueeze(1)  # (n, 1, H, W)
        img = img * (1 - alpha) + alpha * pal[color[:, k]].reshape(n, 3, 1, 1)
        if visible is not None:  # a later object covers the share alpha of everything below it
            visible[:, :k] *= 1 - alpha
            visible[:, k] = alpha[:, 0]
    labels = {"xy": xy, "color": color, "mask": mask, "count": count}
    if visible is not None:
        labels["masks"] = visible
    return img * 2 - 1, labels


BACKGROUNDS = torch.tensor([[0.0, 0.0, 0.0], [0.35, 0.35, 0.35], [0.3, 0.15, 0.0], [0.0, 0.2, 0.35]])
"""RGB in [0, 1] of the global variant's backgrounds: black, grey, brown, navy."""


def blobs_global(
    n: int,
    generator: torch.Generator | None = None,
    *,
    gain: tuple[float, float] = (0.6, 1.0),
    backgrounds: torch.Tensor | None = None,
    **options: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`blobs` with two global factors: a background colour and a lighting gain.

    Each image gets a background drawn uniformly from ``backgrounds`` (:data:`BACKGROUNDS` by
    default) where no object covers it, then every pixel in [0, 1] is multiplied by a gain
    uniform on ``gain``.  Labels: those of :func:`blobs` with its per-object ``masks``, plus
    ``background`` ``(n,)`` (index), ``background_rgb`` ``(n, 3)`` and ``gain`` ``(n,)``.
    """
    lo, hi = gain
    if not 0 < lo <= hi:
        raise DataError(f"gain must satisfy 0 < low <= high, got {gain}")
    bgs = BACKGROUNDS if backgrounds is None else torch.as_tensor(backgrounds, dtype=torch.float32)
    if bgs.ndim != 2 or bgs.shape[1] != 3:
        raise DataError(f"backgrounds must be (B, 3) RGB rows, got shape {tuple(bgs.shape)}")
    options = {**options, "masks": True, "background": (0.0, 0.0, 0.0)}
    img, labels = blobs(n, generator, **options)
    which = torch.randint(bgs.shape[0], (n,), generator=generator)
    g = lo + (hi - lo) * torch.rand(n, generator=generator)
    rgb = bgs[which]
    bare = (1 - labels["masks"].sum(1, keepdim=True)).clamp(min=0)  # (n, 1, H, W)
    img01 = (img + 1) / 2 + bare * rgb[:, :, None, None]
    img01 = (img01 * g[:, None, None, None]).clamp(0, 1)
    labels.update(background=which, background_rgb=rgb, gain=g)
    return img01 * 2 - 1, labels


SHAPES = ("circle", "square", "triangle")
"""The shape attribute of :func:`shapes`, by index."""


def shapes(
    n: int,
    generator: torch.Generator | None = None,
    *,
    size: int = 32,
    held_out: Sequence[tuple[int, int]] = ((1, 2), (2, 2)),
    n_colors: int = 3,
    radius: tuple[float, float] = (0.2, 0.3),
    jitter: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One coloured shape per image; returns ``(images (n, 3, size, size), {"shape", "color"})``.

    ``shape`` indexes :data:`SHAPES` and ``color`` the first ``n_colors`` entries of
    :data:`PALETTE` (red, green, blue).  Combinations ``(shape, color)`` in ``held_out``
    never occur (default: square and triangle in blue, so blue is seen only as a
    circle); the others are equally likely.  The shape sits near the centre (offset up
    to ``jitter`` of the side) with a size ``r`` drawn uniformly from ``radius`` (a
    fraction of the side: the circle's radius, 0.8 r the square's half-side, 1.3 r the
    triangle's circumradius, so the areas are alike), on black.  Pixel values are in [-1, 1].
    """
    if not 1 <= n_colors <= PALETTE.shape[0]:
        raise DataError(f"n_colors must be in 1..{PALETTE.shape[0]}, got {n_colors}")
    held = {(int(a), int(b)) for a, b in held_out}
    bad = [h for h in held if not (0 <= h[0] < len(SHAPES) and 0 <= h[1] < n_colors)]
    if bad:
        raise DataError(f"held-out combination(s) {bad} are not (shape < {len(SHAPES)}, colour < {n_colors})")
    combos = [(a, b) for a in range(len(SHAPES)) for b in range(n_colors) if (a, b) not in held]
    if not combos:
        raise DataError("shapes: every shape-colour combination is held out")
    c = torch.tensor(combos)[torch.randint(len(combos), (n,), generator=generator)]
    centre = 0.5 + jitter * (2 * torch.rand(n, 2, generator=generator) - 1)
    r = radius[0] + (radius[1] - radius[0]) * torch.rand(n, generator=generator)
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    dx = grid[None, None, :] - centre[:, 0, None, None]  # x along the width
    dy = grid[None, :, None] - centre[:, 1, None, None]  # y down the height
    r = r[:, None, None]
    circle = dx**2 + dy**2 <= r**2
    square = (dx.abs() <= 0.8 * r) & (dy.abs() <= 0.8 * r)
    # upright equilateral triangle of circumradius R = 1.3 r: base at dy = R/2, apex at dy = -R
    big = 1.3 * r
    triangle = (dy <= big / 2) & (math.sqrt(3) * dx.abs() <= dy + big)
    mask = torch.stack([circle, square, triangle], 1)[torch.arange(n), c[:, 0]].float()
    img = mask[:, None] * PALETTE[c[:, 1]].reshape(n, 3, 1, 1)
    return img * 2 - 1, {"shape": c[:, 0], "color": c[:, 1]}


def _smooth_noise(
    shape: tuple[int, ...], length_scale: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Gaussian-filtered white noise along the last ``len(shape) - 1`` axes, unit variance."""
    noise = torch.randn(shape, generator=generator)
    dims = len(shape) - 1
    freq = [torch.fft.fftfreq(s) for s in shape[1:]]
    # a tensor: both callers give one axis after the batch axis at least (not sum()'s start 0)
    k2 = cast(
        torch.Tensor,
        sum(f.reshape([-1 if i == j else 1 for j in range(dims)]) ** 2 for i, f in enumerate(freq)),
    )
    spec = torch.fft.fftn(noise, dim=tuple(range(1, dims + 1))) * torch.exp(
        -2 * (math.pi * length_scale) ** 2 * k2
    )
    out = torch.fft.ifftn(spec, dim=tuple(range(1, dims + 1))).real
    return out / out.flatten(1).std(1).reshape(-1, *([1] * dims))


def smooth_signals(
    n: int, generator: torch.Generator | None = None, *, length: int = 256, length_scale: float = 6.0
) -> torch.Tensor:
    """Smooth periodic 1-D signals ``(n, length)`` with unit variance (filtered noise)."""
    return _smooth_noise((n, length), length_scale, generator)


def smooth_signal_covariance(width: int, *, length: int = 256, length_scale: float = 6.0) -> torch.Tensor:
    r"""Covariance ``(width, width)`` of ``width`` consecutive samples of :func:`smooth_signals`.

    The signals are white noise filtered by ``H(f) = exp(-2 pi^2 l^2 f^2)`` on a periodic
    grid of ``length`` points, so they are a stationary Gaussian process with covariance
    ``c(tau) = sum_f |H(f)|^2 cos(2 pi f tau) / sum_f |H(f)|^2``.  Each signal is then
    rescaled to unit sample std *about its own mean*, whose variance is the share
    ``c0 = |H(0)|^2 / sum_f |H(f)|^2`` of the total, so the covariance is ``c / (1 - c0)``
    (the rescaling also makes the data only approximately Gaussian).
    """
    if not 0 < width <= length:
        raise DataError(f"need 0 < width <= length, got width={width}, length={length}")
    f = torch.fft.fftfreq(length, dtype=torch.float64)
    power = torch.exp(-4 * (math.pi * length_scale * f) ** 2)
    lag = torch.arange(width, dtype=torch.float64)
    c = (power[None, :] * torch.cos(2 * math.pi * f[None, :] * lag[:, None])).sum(1) / power.sum()
    c = c / (1 - float(power[0] / power.sum()))
    idx = (lag[:, None] - lag[None, :]).abs().long()
    return c[idx]


def textures(
    n: int, generator: torch.Generator | None = None, *, size: int = 64, length_scale: float = 3.0
) -> torch.Tensor:
    """Smooth periodic 2-D random fields ``(n, 1, size, size)`` with unit variance."""
    return _smooth_noise((n, size, size), length_scale, generator).unsqueeze(1)

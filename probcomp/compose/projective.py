r"""Projective composition (Bradley et al. 2025), optionally confined to masks.

With a background ``p_b`` and factors ``p_1..p_k``, Def. 5.1 composes
``C[p_b, p_1..p_k] ∝ p_b prod_i p_i / p_b``, whose score is Eq. 6,

.. math:: s = s_b + \sum_i (s_i - s_b),

a linear composite with weight ``1 - k`` on the background (:func:`projective`).  With
``masks=[m_1..m_k]`` each score delta is kept on its own coordinates only,
``s_b + sum_i m_i * (s_i - s_b)`` (:class:`MaskedProjective`: the Factorized
Conditionals of Def. 5.2 imposed); :func:`location_masks` builds disjoint masks around
object centres in images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import schedules as sched
from ..errors import FactorError, ShapeError
from ..factors.base import ScoreFactor, as_time, check_event
from ._checks import check_same_event
from .linear import Composite

__all__ = ["MaskedProjective", "location_masks", "projective"]


def projective(
    *factors: ScoreFactor,
    background: ScoreFactor,
    masks: Sequence[torch.Tensor] | None = None,
    fill: torch.Tensor | None = None,
    name: str = "projective",
) -> Composite | MaskedProjective:
    """Bradley et al. 2025 Def. 5.1: ``C[p_b, p_1..p_k] ∝ p_b prod_i p_i / p_b`` (score Eq. 6).

    With ``masks`` (one per factor, see :class:`MaskedProjective`) each factor's score
    delta ``s_i - s_b`` is kept on its own coordinates only; with ``fill`` as well (a
    background sample), each factor sees the noised background outside its mask.
    """
    if not factors:
        raise FactorError("projective composition needs at least one factor besides the background")
    if masks is not None:
        return MaskedProjective(factors, background, masks, fill=fill, name=name)
    if fill is not None:
        raise FactorError(f"{name}: fill= replaces each factor's input outside its mask; it needs masks=")
    return Composite([background, *factors], [1.0 - len(factors)] + [1.0] * len(factors), name=name)


class MaskedProjective(ScoreFactor):
    r"""Projective composition with each factor's score delta confined to its mask.

    The Factorized Conditionals of Bradley et al. 2025 (Def. 5.2) ask that ``p_i`` differ
    from the background ``p_b`` only on its own coordinates ``M_i``, with the ``M_i``
    disjoint; then the delta ``v_i = s_i - s_b`` vanishes off ``M_i`` at every noise level (App. F, the
    display before Def. F.1) and reverse diffusion on Eq. 6 samples the composition
    (Thm. 5.3).  Learned models only approximate this: each ``v_i`` leaks a little off
    ``M_i``, and the composition adds ``k`` leaks on every coordinate.  Given the masks,

    .. math:: s(x, t) = s_b(x, t) + \sum_i m_i \odot \big(s_i(x, t) - s_b(x, t)\big),

    which equals Eq. 6 whenever Def. 5.2 holds (the masks then remove nothing) and drops
    the leaks when it does not.  ``m_i`` are tensors with values in [0, 1] that broadcast to
    the factor's event shape, optionally with a leading batch axis of one mask per
    particle; where they overlap their sum may not exceed 1 (the background's weight
    ``1 - sum_i m_i`` stays in [0, 1]).  The masked field is not a gradient in general, so
    this factor has a score and no energy.  Every engine runs it; Metropolis tests that
    integrate the score along a move (annealed MALA / HMC without energies) are exact only
    where the field is a gradient, i.e. where Def. 5.2 holds.

    **Inputs** (``fill``).  Under Def. 5.2, ``p_i^t(x) = p_i^t(x|M_i) p_b^t(x|M_i^c)``, so
    ``s_i`` on ``M_i`` depends on ``x|M_i`` only and may be evaluated at any completion of
    it.  A learned ``p_i`` was trained with background outside ``M_i``; in a composed
    state it sees the other objects there instead, and its prediction on ``M_i`` drifts
    (colours and positions, for many objects).  With ``fill``, a draw ``x_b`` from the
    background at ``t = 0`` (say, the empty image), factor ``i`` is evaluated at

    .. math:: \tilde x_i = m_i \odot x + (1 - m_i) \odot (\alpha_t x_b + \sigma_t z),

    a draw of the noised background outside its mask.  ``z`` is drawn once, from
    ``torch.Generator().manual_seed(fill_seed)``, with shape ``(P, *event_shape)``: ``P``
    is the number of particles the masks or the fill are given for (1 when none is given
    per particle, and then every particle sees the same completion).  So the field is
    deterministic.  Exact when Def. 5.2 holds, and it keeps every network's input in its
    training distribution.

    **Shapes.**  A mask (or ``fill``) with as many dimensions as the event, or fewer, is
    one for every particle (broadcast from the right); one with a single extra leading
    axis holds one per particle.  Per-particle masks follow the particle index: engines
    that resample particles (SMC) move a particle's state, not its mask, as with any
    per-particle condition.
    """

    def __init__(
        self,
        factors: Sequence[ScoreFactor],
        background: ScoreFactor,
        masks: Sequence[torch.Tensor],
        *,
        fill: torch.Tensor | None = None,
        fill_seed: int = 0,
        name: str = "projective",
    ) -> None:
        factors = list(factors)
        shape = check_same_event([background, *factors], name)
        masks = list(masks)
        if len(masks) != len(factors):
            raise FactorError(f"{name}: {len(factors)} factors but {len(masks)} masks")
        checked = [
            self._as_particles(m, shape, f"the mask of factor {f.name!r}", name)
            for m, f in zip(masks, factors, strict=True)
        ]
        for m, f in zip(checked, factors, strict=True):
            if float(m.min()) < 0 or float(m.max()) > 1:
                raise FactorError(f"{name}: the mask of factor {f.name!r} must hold values in [0, 1]")
        sizes = sorted({m.shape[0] for m in checked} - {1})
        if len(sizes) > 1:
            raise FactorError(f"{name}: the masks are for different numbers of particles {sizes}")
        expanded = torch.broadcast_tensors(*checked)
        total = torch.stack(expanded).sum(0)
        if float(total.max()) > 1.0 + 1e-6:
            where = tuple(int(i) for i in (total == total.max()).nonzero()[0])
            both = [f.name for f, m in zip(factors, expanded, strict=True) if m[where] > 0]
            raise FactorError(
                f"{name}: the masks of factors {both} overlap (their sum is {float(total.max()):.3g} > 1 at "
                f"index {where}); projective composition needs disjoint masks"
            )
        particles = sizes[0] if sizes else 1
        z = None
        if fill is not None:
            fill = self._as_particles(fill, shape, "fill", name)
            if fill.shape[0] not in (1, particles) and particles != 1:
                raise FactorError(
                    f"{name}: fill is for {fill.shape[0]} particles but the masks for {particles}"
                )
            particles = max(particles, fill.shape[0])
            g = torch.Generator().manual_seed(int(fill_seed))
            z = torch.randn((particles, *shape), generator=g, dtype=torch.float64)
        super().__init__(shape, background.schedule, name)
        self.background, self.factors, self.masks = background, factors, checked
        self.fill, self.noise = fill, z
        self._cast: dict[tuple[Any, ...], torch.Tensor] = {}

    @staticmethod
    def _as_particles(v: Any, shape: torch.Size, what: str, name: str) -> torch.Tensor:
        """``v`` as a CPU float64 tensor ``(1 or P, *shape)``, or a :class:`FactorError` naming ``what``."""
        v = torch.as_tensor(v).detach().to("cpu", torch.float64)
        lead = v.ndim - len(shape)
        event = v.shape[1:] if lead == 1 else v.shape
        try:
            if lead > 1:
                raise RuntimeError
            torch.broadcast_shapes(event, shape)
        except RuntimeError:
            raise FactorError(
                f"{name}: {what} has shape {tuple(v.shape)}; it must broadcast to the event shape "
                f"{tuple(shape)}, optionally with one leading axis of one per particle"
            ) from None
        if not bool(torch.isfinite(v).all()):
            raise FactorError(f"{name}: {what} must be finite")
        return v if lead == 1 else v.reshape(1, *([1] * (len(shape) - v.ndim)), *v.shape)

    @property
    def cost(self) -> int:  # type: ignore[override]
        return self.background.cost + sum(f.cost for f in self.factors)

    @property
    def learned(self) -> bool:  # type: ignore[override]
        return self.background.learned or any(f.learned for f in self.factors)

    def _per_particle(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``v`` ``(1 or P, ...)`` for the batch ``y``: a batch of ``n / P`` stacked particle sets."""
        n = y.shape[0]
        if v.shape[0] not in (1, n) and n % v.shape[0]:
            raise ShapeError(
                f"factor {self.name!r} holds masks for {v.shape[0]} particles, but is evaluated on {n}"
            )
        key = (id(v), y.device, y.dtype)
        if key not in self._cast:  # each stored tensor moves to a device and dtype once
            self._cast[key] = v.to(dtype=y.dtype, device=y.device)
        v = self._cast[key]
        return v if v.shape[0] in (1, n) else v.repeat(n // v.shape[0], *([1] * (v.ndim - 1)))

    def _filled(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        """``alpha_t x_b + sigma_t z``: the noised background sample the factors see off their masks."""
        assert self.fill is not None and self.noise is not None
        tt = as_time(t, y)
        shape = (-1, *([1] * len(self.event_shape)))
        alpha = self.schedule.alpha(tt).reshape(shape).to(dtype=y.dtype, device=y.device)
        sigma = self.schedule.sigma(tt).reshape(shape).to(dtype=y.dtype, device=y.device)
        return alpha * self._per_particle(self.fill, y) + sigma * self._per_particle(self.noise, y)

    def score(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        check_event(y, self.event_shape, f"factor {self.name!r}")
        s_b = self.background.score(y, sched.match(t, self.schedule, self.background.schedule))
        outside = None if self.fill is None else self._filled(y, t)
        out = s_b
        for f, m in zip(self.factors, self.masks, strict=True):
            m = self._per_particle(m, y)
            y_f = y if outside is None else m * y + (1 - m) * outside
            delta = f.score(y_f, sched.match(t, self.schedule, f.schedule)) - s_b
            out = out + m * delta
        return out


def location_masks(xy: torch.Tensor, size: int, radius: float) -> list[torch.Tensor]:
    """Disjoint masks around requested object centres, for :class:`MaskedProjective` on images.

    ``xy`` ``(N, K, 2)`` holds centres normalised to [0, 1] (x right, y down, as in
    :func:`probcomp.datasets.blobs`).  Mask ``k`` ``(N, 1, size, size)`` is 1 on the pixels
    whose nearest centre is ``k`` and that lie within ``radius`` pixels of it (a Voronoi
    cell cut to a disc), so the masks never overlap and the rest is the background's.
    """
    xy = torch.as_tensor(xy, dtype=torch.float32)
    if xy.ndim != 3 or xy.shape[-1] != 2:
        raise FactorError(f"location_masks: xy must have shape (N, K, 2), got {tuple(xy.shape)}")
    if not radius > 0:
        raise FactorError(f"location_masks: radius must be positive, got {radius}")
    grid = (torch.arange(size, dtype=torch.float32, device=xy.device) + 0.5) / size
    dx = grid[None, None, None, :] - xy[..., 0, None, None]
    dy = grid[None, None, :, None] - xy[..., 1, None, None]
    dist = (dx.square() + dy.square()).sqrt() * size  # (N, K, size, size), pixels
    nearest = dist.argmin(1)
    return [((nearest == k) & (dist[:, k] < radius)).float()[:, None] for k in range(xy.shape[1])]

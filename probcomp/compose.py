r"""Composition operators.

Linear operators are sugar over observation weights: they build a
:class:`Composite`, whose score is ``sum_k w_k s_k``, and the compiled scene
expands it into one weighted term per factor (so factors that share a network
are still evaluated in one batched call).  With the target of a scene

.. math:: \log p(X) = \log \mathrm{prior}(X) + \sum_i w_i \log p_i(f_i(X)),

* ``product(p_1, ..., p_k)``               -- all ``w = 1``;
* ``weighted([p_i], [w_i])``               -- any real weights;
* ``projective(p_1..p_k, background=p_b)`` -- Bradley et al. Def. 5.1 / Eq. 6:
  ``s_b + sum_i (s_i - s_b)``, i.e. weight ``1 - k`` on the background; with
  ``masks=[m_1..m_k]`` each score delta is kept on its own coordinates only,
  ``s_b + sum_i m_i * (s_i - s_b)`` (:class:`MaskedProjective`, Def. 5.2 imposed);
* ``guidance(cond, uncond, scale=g)``      -- ``(1 + g) s_c - g s_u``;
* ``negation(p, q, scale=g)``              -- ``E_p - g E_q`` (weights ``1, -g``);
* ``attributes(model, {a: v, ...}, gamma)`` -- COIND Eq. 1/2: ``sum_i gamma_i s(c_i) -
  (sum_i gamma_i - 1) s(null)``, the conjunction of attribute-conditional scores.

The mixture is not linear in scores; it needs normalised energies:

* ``mixture([p_k], [pi_k])`` -- ``E = -logsumexp_k(log pi_k - E_k)`` and
  ``s = sum_k softmax_k(log pi_k - E_k) s_k``.  Because the forward noising is
  linear, the noised mixture is the mixture of the noised factors, so this is
  exact at every ``t`` when the ``E_k`` are normalised (as analytic factors' are).

Every factor's time argument is in its own schedule; composed factors map
their time to each part's schedule by matching log-SNR (:func:`probcomp.schedules.match`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from . import schedules as sched
from .errors import FactorError, ShapeError
from .factors.base import ScoreFactor, as_time, check_event

__all__ = [
    "Composite",
    "MaskedProjective",
    "Mixture",
    "attributes",
    "guidance",
    "location_masks",
    "mixture",
    "negation",
    "product",
    "projective",
    "weighted",
]


def _check_same_event(factors: Sequence[ScoreFactor], op: str) -> torch.Size:
    if not factors:
        raise FactorError(f"{op} needs at least one factor")
    for f in factors:
        if not isinstance(f, ScoreFactor):
            raise FactorError(f"{op}: {f!r} is not a probcomp factor")
    shape = factors[0].event_shape
    for f in factors[1:]:
        if f.event_shape != shape:
            raise FactorError(
                f"{op}: factor {f.name!r} has event shape {tuple(f.event_shape)}, but "
                f"{factors[0].name!r} has {tuple(shape)}"
            )
    return shape


class Composite(ScoreFactor):
    """A weighted sum of factor scores, ``sum_k w_k s_k`` (and energies, where all have one)."""

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
        shape = _check_same_event(factors, name or "composite")
        if len(weights) != len(factors):
            raise FactorError(f"{name or 'composite'}: {len(factors)} factors but {len(weights)} weights")
        if not all(torch.isfinite(torch.tensor(weights))):
            raise FactorError(f"{name or 'composite'}: weights must be finite, got {weights}")
        super().__init__(shape, schedule or factors[0].schedule, name or "composite")
        self.terms: list[tuple[ScoreFactor, float]] = list(zip(factors, weights, strict=True))

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


class Mixture(ScoreFactor):
    """``sum_k pi_k p_k``, from normalised energies (see the module docstring).

    Learned energies carry an unknown constant per model and noise level, which shifts
    the weights; wrap low-dimensional ones in :class:`probcomp.factors.NormalisedEnergy`.
    """

    def __init__(
        self,
        factors: Sequence[ScoreFactor],
        weights: Sequence[float] | None = None,
        *,
        name: str | None = None,
        schedule: sched.Schedule | None = None,
    ) -> None:
        factors = list(factors)
        shape = _check_same_event(factors, name or "mixture")
        for f in factors:
            if not f.has_energy:
                raise FactorError(f"mixture needs energies; factor {f.name!r} has none")
        w = torch.full((len(factors),), 1.0 / len(factors)) if weights is None else torch.as_tensor(weights)
        w = w.to(torch.float64)
        if w.shape != (len(factors),) or not torch.all(w > 0):
            raise FactorError(f"mixture weights must be {len(factors)} positive numbers, got {weights}")
        super().__init__(shape, schedule or factors[0].schedule, name or "mixture")
        self.factors = factors
        self.log_weights = (w / w.sum()).log()

    @property
    def cost(self) -> int:  # type: ignore[override]
        return sum(f.cost for f in self.factors)

    def _parts(self, y: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        scores, logits = [], []
        for f, lw in zip(self.factors, self.log_weights, strict=True):
            s, e = f.score_and_energy(y, sched.match(t, self.schedule, f.schedule))
            scores.append(s)
            logits.append(lw.to(y.dtype) - e)
        return torch.stack(scores, 1), torch.stack(logits, 1)

    def score_and_energy(self, y: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        scores, logits = self._parts(y, t)
        r = torch.softmax(logits, 1).reshape(*logits.shape, *([1] * (y.ndim - 1)))
        return (r * scores).sum(1), -torch.logsumexp(logits, 1)

    def score(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        return self.score_and_energy(y, t)[0]

    def energy(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        return self.score_and_energy(y, t)[1]


def product(*factors: ScoreFactor, name: str = "product") -> Composite:
    """``prod_i p_i``: every weight 1."""
    return Composite(factors, [1.0] * len(factors), name=name)


def weighted(
    factors: Sequence[ScoreFactor], weights: Sequence[float], *, name: str = "weighted"
) -> Composite:
    """``prod_i p_i^{w_i}``."""
    return Composite(factors, weights, name=name)


def projective(
    *factors: ScoreFactor,
    background: ScoreFactor,
    masks: Sequence[torch.Tensor] | None = None,
    fill: torch.Tensor | None = None,
    name: str = "projective",
) -> Composite | MaskedProjective:
    """Bradley et al. Def. 5.1: ``C[p_b, p_1..p_k] ∝ p_b prod_i p_i / p_b`` (score Eq. 6).

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

    Bradley et al.'s Factorized Conditionals (Def. 5.2) ask that ``p_i`` differ from the
    background ``p_b`` only on its own coordinates ``M_i``, with the ``M_i`` disjoint; then
    the delta ``v_i = s_i - s_b`` vanishes off ``M_i`` at every noise level (App. F, the
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
        shape = _check_same_event([background, *factors], name)
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


def guidance(cond: ScoreFactor, uncond: ScoreFactor, scale: float, *, name: str = "guidance") -> Composite:
    """Classifier-free guidance: ``(1 + g) s_c - g s_u``."""
    return Composite([cond, uncond], [1.0 + scale, -scale], name=name)


def negation(
    positive: ScoreFactor, negative: ScoreFactor, scale: float = 1.0, *, name: str = "negation"
) -> Composite:
    """``E_p - g E_q``: keep ``p`` and push away from ``q``."""
    return Composite([positive, negative], [1.0, -scale], name=name)


def mixture(
    factors: Sequence[ScoreFactor], weights: Sequence[float] | None = None, *, name: str = "mixture"
) -> Mixture:
    """``sum_k pi_k p_k`` (needs energies)."""
    return Mixture(factors, weights, name=name)


def attributes(
    model: Any,
    values: dict[str, Any],
    *,
    gamma: float | Sequence[float] | None = None,
    reference: dict[str, Any] | None = None,
    name: str | None = None,
) -> Composite:
    r"""Compose attribute-conditional scores of one model into the score of their conjunction.

    Under conditional independence of the attributes given ``x`` (COIND, Eq. 1),

    .. math:: \nabla \log p(x \mid c_1 \wedge \dots \wedge c_n) = \sum_i \gamma_i \nabla \log p(x \mid c_i)
              - \big(\textstyle\sum_i \gamma_i - 1\big) \nabla \log p(x),

    with every ``gamma_i = 1`` by default (so ``sum_i s(c_i) - (n - 1) s(\varnothing)``).
    For two attributes a scalar ``gamma`` weights the first one: ``gamma s(c_1) + s(c_2) -
    gamma s(\varnothing)``, the seed's Eq. 2.  ``model`` is a conditional factor with
    :meth:`condition` (a :class:`~probcomp.models.NetworkFactor`); unnamed attributes are
    its null token.  The result is an ordinary composite factor: every engine runs it.

    ``reference`` composes *joint* conditionals instead of marginals (the seed's App. E.1).
    Conditional independence makes ``log p(x | c)`` additive over the attributes, so with a
    reference combination ``r`` and ``r[i -> v_i]`` the reference with attribute ``i`` set
    to the requested value,

    .. math:: \nabla \log p(x \mid v) = \sum_i \gamma_i \nabla \log p(x \mid r[i \to v_i])
              - \big(\textstyle\sum_i \gamma_i - 1\big) \nabla \log p(x \mid r)

    (for two attributes ``s(+1,+1) = s(+1,-1) + s(-1,+1) - s(-1,-1)``).  Choose ``r`` so that
    it and every ``r[i -> v_i]`` are combinations seen in training: then every term is a
    trained joint.  The marginals of partial-support data are not what Eq. 1 needs (with
    ``(+1, +1)`` held out, ``p(x | c_1 = +1)`` is the ``(+1, -1)`` cluster alone); the
    seen joints are.  Attributes that ``reference`` names and ``values`` does not are held
    at their reference value in every term.
    """
    if not hasattr(model, "condition") or not getattr(model, "condition_names", ()):
        raise FactorError(f"attributes() needs a conditional model with .condition(...), got {model!r}")
    if len(values) < 1:
        raise FactorError("attributes() needs at least one attribute value")
    for what, spec in (("values", values), ("reference", reference or {})):
        unknown = set(spec) - set(model.condition_names)
        if unknown:
            raise FactorError(
                f"model {model.name!r} has no attribute(s) {sorted(unknown)} (in {what}); "
                f"it takes {list(model.condition_names)}"
            )
    n = len(values)
    if gamma is None:
        gammas = [1.0] * n
    elif isinstance(gamma, (int, float)):
        if n != 2:
            raise FactorError(f"a scalar gamma weights the first of two attributes; got {n} attributes")
        gammas = [float(gamma), 1.0]
    else:
        gammas = [float(g) for g in gamma]
        if len(gammas) != n:
            raise FactorError(f"gamma has {len(gammas)} entries for {n} attributes {list(values)}")
    label = ",".join(f"{k}={v}" for k, v in values.items())
    if reference is None:
        leaves = [model.condition(**{k: v}) for k, v in values.items()]
        base = model
    else:
        missing = [k for k in values if k not in reference]
        if missing:
            raise FactorError(
                f"reference {reference!r} gives no value for attribute(s) {missing}; a joint "
                "composition needs the reference combination of every attribute it changes"
            )
        leaves = [model.condition(**{**reference, k: v}) for k, v in values.items()]
        base = model.condition(**reference)
        label += " via " + ",".join(f"{k}={v}" for k, v in reference.items())
    return Composite([*leaves, base], [*gammas, 1.0 - sum(gammas)], name=name or f"attributes({label})")

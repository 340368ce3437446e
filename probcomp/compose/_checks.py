r"""Argument checks shared by the composition operators.

:func:`check_normalisable` is the construction-time test of a linear composite
``prod_i p_i^{w_i}`` (see :class:`~probcomp.compose.Composite` for what it decides).
"""

from __future__ import annotations

import itertools
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch

from ..errors import FactorError
from ..factors.base import ScoreFactor
from ..factors.gaussian import ConditionalGaussian, GaussianMixture

#: noise levels (``abar``) at which an all-analytic composite's noised precision is checked, besides t = 0
PATH_LEVELS = tuple(i / 16 for i in range(16))
#: the most combined-precision entries (levels x choices x d x d) the check builds at once
_BUDGET = 2**22
_PACKAGE = str(Path(__file__).resolve().parent.parent)

#: an analytic factor's distinct components: eigenvalues ``(K, d)``, eigenvectors or ``None``, first indices
_Components = tuple[torch.Tensor, torch.Tensor | None, list[int]]


def check_same_event(factors: Sequence[ScoreFactor], op: str) -> torch.Size:
    """The common event shape of ``factors``, or a :class:`FactorError` naming ``op``."""
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


def _components(f: ScoreFactor) -> _Components | None:
    """The distinct covariances of an analytic factor as eigendecompositions ``(lam (K, d), U or None)``
    with each one's first component index; ``None`` if the factor's density is not known in closed form."""
    if isinstance(f, GaussianMixture):
        lam, u = f.evals, f.evecs
    elif isinstance(f, ConditionalGaussian):
        lam, u = torch.full((1, f.event_shape.numel()), f.std**2, dtype=torch.float64), None
    else:
        return None
    keys = lam if u is None else torch.cat([lam, u.flatten(1)], 1)
    first: dict[tuple[float, ...], int] = {}
    for k, row in enumerate(keys.tolist()):
        first.setdefault(tuple(row), k)
    idx = list(first.values())
    return lam[idx], (None if u is None else u[idx]), idx


def _precisions(lam: torch.Tensor, u: torch.Tensor | None, abar: float, dense: bool) -> torch.Tensor:
    """Noised precisions ``(abar Sigma + (1 - abar) I)^-1``: ``(K, d)`` diagonal or ``(K, d, d)``."""
    p = 1.0 / (abar * lam + (1.0 - abar))
    if not dense:
        return p
    if u is None:
        return torch.diag_embed(p)
    return u @ torch.diag_embed(p) @ u.transpose(-1, -2)


def _screen(comps: list[_Components], weights: list[float], abars: list[float]) -> list[bool]:
    """Per level ``abar``: whether every choice of components has a positive definite combined
    precision (all levels at once; :func:`_level_failure` looks closer at the levels that fail)."""
    dense = any(u is not None for _, u, _ in comps)
    a = torch.tensor(abars, dtype=torch.float64)[:, None, None]
    prec = []
    for lam, u, _ in comps:
        p = 1.0 / (a * lam + (1.0 - a))  # (L, K, d)
        if dense:
            p = torch.diag_embed(p) if u is None else u @ torch.diag_embed(p) @ u.transpose(-1, -2)
        prec.append(p)
    choices = torch.tensor(list(itertools.product(*[range(p.shape[1]) for p in prec])), dtype=torch.long)
    # a sum of one tensor per factor (there is one at least), so a tensor, not sum()'s start 0
    total = cast(
        torch.Tensor, sum(w * p[:, choices[:, i]] for i, (w, p) in enumerate(zip(weights, prec, strict=True)))
    )
    low = torch.linalg.eigvalsh(total).amin(-1) if dense else total.amin(-1)  # (L, n)
    scale = torch.stack([abs(w) * p.flatten(1).abs().amax(1) for w, p in zip(weights, prec, strict=True)])
    return (low > 1e-9 * scale.amax(0)[:, None]).all(1).tolist()


def _stacklevel() -> int:
    """The ``warnings.warn`` stack level of the first caller outside probcomp (models and inference
    included: in a checkout they are top-level folders)."""
    dirs = [_PACKAGE]
    for name in ("probcomp.models", "probcomp.inference"):
        file = getattr(sys.modules.get(name), "__file__", None)
        if file:
            dirs.append(str(Path(file).resolve().parent))
    prefixes = tuple(d.rstrip("/") + "/" for d in dirs)
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(prefixes):
        frame, level = frame.f_back, level + 1
    return level


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=_stacklevel())


def _level_failure(
    comps: list[_Components],
    weights: list[float],
    abar: float,
) -> tuple[float, tuple[int, ...], bool, float] | None:
    """At noise level ``abar``: ``None`` if the composite is normalisable there.

    That is so if, for every choice of one component per positively weighted factor, some choice
    for the negatively weighted ones makes the combined precision ``sum_i w_i Lambda_{i,k_i}``
    positive definite.  Else ``(smallest eigenvalue, the choice, proven, least tail exponent
    found)``, ``proven`` when the exact tail exponent ``sum_i w_i min_k v' Lambda_ik v`` is <= 0
    along some direction ``v`` tried (then the composite is not normalisable).
    """
    dense = any(u is not None for _, u, _ in comps)
    prec = [_precisions(lam, u, abar, dense) for lam, u, _ in comps]
    scale = max(abs(w) * float(p.abs().max()) for w, p in zip(weights, prec, strict=True))
    tol = 1e-9 * scale
    choices = torch.tensor(list(itertools.product(*[range(p.shape[0]) for p in prec])), dtype=torch.long)
    # a sum of one tensor per factor (there is one at least), so a tensor, not sum()'s start 0
    total = cast(
        torch.Tensor, sum(w * p[choices[:, i]] for i, (w, p) in enumerate(zip(weights, prec, strict=True)))
    )
    if dense:
        evals, evecs = torch.linalg.eigh(total)
        low, at = evals.amin(-1), evals.argmin(-1)
        vecs = evecs[torch.arange(len(at)), :, at]  # (n, d): each choice's least-curved direction
    else:
        low, at = total.amin(-1), total.argmin(-1)
        vecs = torch.nn.functional.one_hot(at, total.shape[-1]).to(total.dtype)
    # normalisable if, for every choice of the positively weighted factors' components, some choice
    # of the negatively weighted ones is positive definite (the tail exponent is at least its form),
    # or their component precisions averaged are (a convex combination bounds the exponent too)
    positive = [i for i, w in enumerate(weights) if w > 0]
    if positive:
        keys, group = torch.unique(choices[:, positive], dim=0, return_inverse=True)
    else:
        keys, group = torch.zeros(1, 0, dtype=torch.long), torch.zeros(len(choices), dtype=torch.long)
    covered = torch.zeros(len(keys), dtype=torch.bool).index_put_((group,), low > tol, accumulate=True)
    if not bool(covered.all()):
        # a tensor: check_normalisable only gets here with a negative weight
        averaged = cast(torch.Tensor, sum(w * p.mean(0) for w, p in zip(weights, prec, strict=True) if w < 0))
        for j in (~covered).nonzero().flatten().tolist():
            a = averaged + sum(weights[i] * prec[i][keys[j, m]] for m, i in enumerate(positive))
            least = torch.linalg.eigvalsh(a).min() if dense else a.min()
            covered[j] = bool(least > tol)
    bad = (~covered[group]).nonzero().flatten()
    if len(bad) == 0:
        return None
    worst = int(bad[low[bad].argmin()])
    # the exact tail exponent along candidate directions (every choice's least-curved one, and
    # seeded random ones): a mixture's tail in a direction is its widest component's there
    g = torch.Generator().manual_seed(0)
    rand = torch.randn(64, total.shape[-1], generator=g, dtype=torch.float64)
    v = torch.cat([vecs, rand / rand.norm(dim=1, keepdim=True)])
    tail = torch.zeros(len(v), dtype=torch.float64)
    for w, p in zip(weights, prec, strict=True):
        q = torch.einsum("nd,kde,ne->nk", v, p, v) if dense else torch.einsum("nd,kd->nk", v * v, p)
        tail = tail + w * q.amin(1)
    proven = bool((tail <= tol).any())
    choice = tuple(comps[i][2][int(k)] for i, k in enumerate(choices[worst]))
    return float(low[worst]), choice, proven, float(tail.min())


def check_normalisable(leaves: Sequence[tuple[ScoreFactor, float]], who: str) -> None:
    r"""Refuse (or warn about) a composite ``prod_i p_i^{w_i}`` that is not normalisable.

    ``leaves`` are the composite's non-composite factors with their total weights.  Only a
    negative weight can make the product of normalisable densities non-normalisable, so
    composites whose weights are all >= 0 pass unchecked.  Otherwise:

    * every leaf **analytic** (:class:`~probcomp.factors.Gaussian`, :class:`~probcomp.factors.
      GaussianMixture`, :class:`~probcomp.factors.ConditionalGaussian`): along a direction ``v``
      the log-density falls like ``-r^2/2 sum_i w_i min_k v' Lambda_ik v`` (a mixture's tail is
      its widest component's).  At ``t = 0`` a :class:`FactorError` is raised when that exponent
      is <= 0 along some direction, i.e. for single Gaussians exactly when ``sum_i w_i
      Sigma_i^{-1}`` is not positive definite (what :func:`~probcomp.factors.exact_product`
      refuses); every choice of one component per factor is tried, and when a choice fails
      but the exponent cannot be shown <= 0 (a mixture with a negative weight) a
      ``UserWarning`` says the question is undecided.  The same test at the noise levels
      ``abar`` in :data:`PATH_LEVELS` (precisions ``(abar Sigma + (1 - abar) I)^{-1}``) warns
      when the clean target is normalisable but the noised composite is not somewhere on
      the path (``abar = 0`` is the weight sum: every noised factor tends to ``N(0, I)``).
    * some leaf **not analytic** (a learned model, an explicit density, a mixture or masked
      composition of factors): its tails are unknown, so the clean target is not decided.
      If such factors shared one covariance, the composite would be normalisable exactly
      when the weights sum to > 0 -- the premise of classifier-free guidance, projective
      composition and attribute conjunction, whose weights sum to 1, which therefore pass
      silently.  A ``UserWarning`` is emitted when a negative weight sits on such a factor
      and the weights sum to <= 0: at high noise every factor is close to ``N(0, I)``, so
      the composite is close to ``N(0, I)^{sum_i w_i}``, which is not normalisable.

    Above a size budget (choices x d x d entries) only the weight sum is checked.
    """
    leaves = list(leaves)
    if not any(w < 0 for _, w in leaves):
        return
    total = sum(w for _, w in leaves)
    named = ", ".join(f"{f.name!r}: {w:g}" for f, w in leaves)
    comps = [_components(f) for f, _ in leaves]
    opaque = [f.name for (f, _), c in zip(leaves, comps, strict=True) if c is None]
    analytic = [c for c in comps if c is not None]  # all of comps unless some factor is opaque
    d = leaves[0][0].event_shape.numel()
    n = 0 if opaque else math.prod(c[0].shape[0] for c in analytic)
    dense = any(c[1] is not None for c in analytic)
    size = (1 + len(PATH_LEVELS)) * n * d * (d if dense else 1)
    if opaque or size > _BUDGET or (dense and d > 256):
        if total <= 1e-12 * max(abs(w) for _, w in leaves):
            why = (
                f"factors {opaque} have no closed-form density"
                if opaque
                else f"{n} choices of components in {d} dimensions are too many to check in closed form"
            )
            _warn(
                f"{who}: the weights {{{named}}} sum to {total:g} <= 0 ({why}, so only the high-noise "
                f"limit is checked): at high noise every factor is close to N(0, I), so the composite is "
                f"close to N(0, I)^{total:g}, which is not normalisable; samplers that start from noise may "
                "run away"
            )
        return
    weights = [w for _, w in leaves]
    screened = _screen(analytic, weights, [1.0, *PATH_LEVELS])
    clean = None if screened[0] else _level_failure(analytic, weights, 1.0)
    if clean is not None:
        low, choice, proven, tail = clean
        picked = ", ".join(
            f"{f.name!r}[{k}]"
            for (f, _), k in zip(leaves, choice, strict=True)
            if getattr(f, "num_components", 1) > 1
        )
        where = f" (components {picked})" if picked else ""
        mixed = any(w < 0 and len(c[2]) > 1 for w, c in zip(weights, analytic, strict=True))
        if proven and mixed:
            raise FactorError(
                f"{who}: prod_i p_i^w_i with weights {{{named}}} is not normalisable: along some direction "
                f"v its tail exponent sum_i w_i min_k v' Sigma_ik^-1 v is {tail:.3g} <= 0 (a mixture's tail "
                "is its widest component's); raise the positive weights or lower the negative ones"
            )
        if proven:
            raise FactorError(
                f"{who}: prod_i p_i^w_i with weights {{{named}}} is not normalisable: its precision "
                f"sum_i w_i Sigma_i^-1{where} is not positive definite (smallest eigenvalue {low:.3g}); "
                "raise the positive weights or lower the negative ones"
            )
        _warn(
            f"{who}: cannot decide whether prod_i p_i^w_i with weights {{{named}}} is normalisable: "
            f"the precision sum_i w_i Sigma_i^-1{where} is not positive definite (smallest eigenvalue "
            f"{low:.3g}), but a mixture with a negative weight may have wider tails; samples may run away"
        )
        return
    failing = []
    for abar, ok in zip(PATH_LEVELS, screened[1:], strict=True):
        failure = None if ok else _level_failure(analytic, weights, abar)
        if failure is not None and failure[2]:
            failing.append((abar, failure[0]))
    if failing:
        levels = (
            f"abar = {failing[0][0]:.3g}"
            if len(failing) == 1
            else (f"abar in [{failing[0][0]:.3g}, {failing[-1][0]:.3g}]")
        )
        _warn(
            f"{who}: prod_i p_i^w_i with weights {{{named}}} is normalisable at t = 0, but not at the "
            f"noise levels {levels} (the noised precision sum_i w_i (abar Sigma_i + (1 - abar) I)^-1 has "
            f"eigenvalue {min(e for _, e in failing):.3g} <= 0; the weights sum to {total:g}): engines that "
            "anneal from noise may run away there"
        )

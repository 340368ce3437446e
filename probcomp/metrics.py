r"""Sample-quality metrics against ground truth.

All functions accept torch tensors or numpy arrays of shape ``(n, *event)``
(flattened to ``(n, d)``) and return Python floats or tensors.

* :func:`w2` -- exact empirical 2-Wasserstein distance between equal-size sets,
  ``sqrt(min_perm mean_i ||x_i - y_perm(i)||^2)`` by optimal assignment.
* :func:`sliced_w2` -- sliced W2: root-mean over random unit directions of the
  1-D W2 between projections (quantile matching), for large ``n``.
* :func:`mmd` -- unbiased RBF-kernel MMD^2 (Gretton et al. 2012, Eq. 3).
* :func:`kl_hist`, :func:`js_hist` -- KL and Jensen-Shannon divergences (nats)
  between 2-D histograms on a common grid, with additive smoothing.
* :func:`mean_log_likelihood` -- mean ``log p(x)`` under an analytic target.
* :func:`mode_weights`, :func:`mode_coverage` -- mass per mode of a mixture target.
* :func:`ci_violation` -- how far a conditional diffusion model's implicit classifier is
  from conditional independence of its attributes (COIND App. A.1, Eq. 17), in bits.
* :func:`group_accuracies`, :func:`balanced_accuracy`, :func:`worst_group_accuracy` -- a
  classifier's accuracy per group, per class averaged, and on its worst group (the
  subpopulation-shift metrics of Sagawa et al. 2019 and COIND Table 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .errors import DataError, FactorError, ShapeError

__all__ = [
    "adjusted_rand_index",
    "balanced_accuracy",
    "ci_violation",
    "group_accuracies",
    "histogram2d",
    "js_hist",
    "kl_hist",
    "mean_log_likelihood",
    "median_bandwidth",
    "mmd",
    "mode_coverage",
    "mode_weights",
    "sliced_w2",
    "w2",
    "worst_group_accuracy",
]


def _flat(x: Any, who: str = "samples") -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu()
    t = t.to(torch.float64)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim < 2 or t.shape[0] < 1:
        raise ShapeError(f"{who} must be (n, ...) with n >= 1, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ShapeError(f"{who} contain NaN or infinite values")
    return t.reshape(t.shape[0], -1)


def _pair(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _flat(x, "x"), _flat(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ShapeError(f"x has dimension {x.shape[1]} but y has {y.shape[1]}")
    return x, y


def w2(x: Any, y: Any) -> float:
    """Exact empirical W2 between two sets of equal size (Hungarian assignment)."""
    x, y = _pair(x, y)
    if x.shape[0] != y.shape[0]:
        raise ShapeError(f"w2 needs equal sample sizes, got {x.shape[0]} and {y.shape[0]} (use sliced_w2)")
    cost = torch.cdist(x, y).pow(2).numpy()
    r, c = linear_sum_assignment(cost)
    return float(math.sqrt(cost[r, c].mean()))


def sliced_w2(x: Any, y: Any, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced W2: ``sqrt(E_theta W2^2(theta.x, theta.y))`` over uniform unit directions.

    Unequal sample sizes are matched by evaluating both empirical quantile
    functions on the same grid of ``max(n, m)`` levels.
    """
    x, y = _pair(x, y)
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], num_projections, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    n = max(px.shape[0], py.shape[0])
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n

    def quantiles(p: torch.Tensor) -> torch.Tensor:
        if p.shape[0] == n:
            return p
        idx = (q * p.shape[0] - 0.5).clamp(0, p.shape[0] - 1)
        lo = idx.floor().long()
        hi = (lo + 1).clamp(max=p.shape[0] - 1)
        frac = (idx - lo)[:, None]
        return p[lo] * (1 - frac) + p[hi] * frac

    return float(((quantiles(px) - quantiles(py)) ** 2).mean().sqrt())


def median_bandwidth(z: Any, max_points: int = 2000) -> float:
    """RBF bandwidth by the median heuristic: ``h^2 = median_{i<j} ||z_i - z_j||^2 / 2``."""
    z = _flat(z)
    z = z[:max_points]
    d2 = torch.cdist(z, z).pow(2)
    iu = torch.triu_indices(z.shape[0], z.shape[0], 1)
    med = d2[iu[0], iu[1]].median()
    return float(math.sqrt(0.5 * med)) if med > 0 else 1.0


def mmd(x: Any, y: Any, bandwidth: float | None = None) -> float:
    r"""Unbiased MMD^2 with the RBF kernel ``k(a, b) = exp(-||a-b||^2 / (2 h^2))``.

    .. math:: \widehat{MMD}^2 = \frac{1}{n(n-1)}\sum_{i\ne j}k(x_i,x_j)
              + \frac{1}{m(m-1)}\sum_{i\ne j}k(y_i,y_j) - \frac{2}{nm}\sum_{i,j}k(x_i,y_j).

    Unbiased, so it can be slightly negative when the distributions agree.  The
    bandwidth ``h`` defaults to the median heuristic on the pooled sample
    (``h^2 = median ||z_i - z_j||^2 / 2``); pass it to compare runs.
    """
    x, y = _pair(x, y)
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ShapeError("mmd needs at least two samples on each side")
    h = median_bandwidth(torch.cat([x, y])) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ShapeError(f"bandwidth must be positive, got {h}")
    k = lambda a, b: torch.exp(-torch.cdist(a, b).pow(2) / (2 * h * h))  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


def histogram2d(
    samples: Any,
    bins: int = 50,
    range: Sequence[Sequence[float]] = ((-1.5, 1.5), (-1.5, 1.5)),
    smoothing: float = 1e-3,
) -> torch.Tensor:
    """Normalised 2-D histogram with additive smoothing: ``p_b = (c_b + a) / (n + a B)``.

    ``a = smoothing`` is a pseudo-count per bin (``B = bins^2`` bins), which keeps
    every probability positive so that KL is finite; samples outside ``range`` are
    dropped (their fraction is not renormalised away: they simply do not count).
    """
    x = _flat(samples)
    if x.shape[1] != 2:
        raise ShapeError(f"histogram2d needs 2-D samples, got dimension {x.shape[1]}")
    if smoothing < 0:
        raise ShapeError("smoothing must be >= 0")
    counts, _, _ = np.histogram2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=bins, range=range)
    c = torch.as_tensor(counts) + smoothing
    return c / c.sum()


def _grid_density(log_prob: Callable[[torch.Tensor], torch.Tensor], bins: int, range: Any) -> torch.Tensor:
    (x0, x1), (y0, y1) = range
    xs = torch.linspace(x0, x1, bins + 1, dtype=torch.float64)
    ys = torch.linspace(y0, y1, bins + 1, dtype=torch.float64)
    cx, cy = 0.5 * (xs[1:] + xs[:-1]), 0.5 * (ys[1:] + ys[:-1])
    grid = torch.stack(torch.meshgrid(cx, cy, indexing="ij"), -1).reshape(-1, 2)
    lp = log_prob(grid.to(torch.get_default_dtype())).detach().to(torch.float64).reshape(bins, bins)
    p = torch.exp(lp - lp.max())
    return p / p.sum()


def _as_hist(q: Any, bins: int, range: Any, smoothing: float) -> torch.Tensor:
    if callable(q):  # a log-density, documented to return a tensor
        p = _grid_density(cast("Callable[[torch.Tensor], torch.Tensor]", q), bins, range)
        return (p + smoothing / p.numel()) / (1 + smoothing)
    return histogram2d(q, bins, range, smoothing)


def kl_hist(
    p: Any, q: Any, bins: int = 50, range: Any = ((-1.5, 1.5), (-1.5, 1.5)), smoothing: float = 1e-3
) -> float:
    """``KL(P || Q)`` in nats between histograms of ``p`` and ``q`` on one grid.

    ``p`` and ``q`` are 2-D samples, or ``q`` (or ``p``) a log-density callable,
    which is integrated by the midpoint rule on the grid (then smoothed likewise).
    """
    hp, hq = _as_hist(p, bins, range, smoothing), _as_hist(q, bins, range, smoothing)
    return float((hp * (hp.log() - hq.log())).sum())


def js_hist(
    p: Any, q: Any, bins: int = 50, range: Any = ((-1.5, 1.5), (-1.5, 1.5)), smoothing: float = 1e-3
) -> float:
    """Jensen-Shannon divergence in nats (between 0 and log 2) of two histograms."""
    hp, hq = _as_hist(p, bins, range, smoothing), _as_hist(q, bins, range, smoothing)
    hm = 0.5 * (hp + hq)
    kl = lambda a, b: (a * (a.log() - b.log())).sum()  # noqa: E731
    return float(0.5 * kl(hp, hm) + 0.5 * kl(hq, hm))


def mean_log_likelihood(samples: Any, target: Any) -> float:
    """Mean ``log p(x)`` of samples under ``target`` (anything with ``log_prob``)."""
    if not callable(getattr(target, "log_prob", None)):
        raise ShapeError(f"target must have a log_prob method, got {type(target).__name__}")
    x = torch.as_tensor(samples).to(torch.get_default_dtype())
    return float(target.log_prob(x).mean())


def mode_weights(samples: Any, means: Any, radius: float | None = None) -> torch.Tensor:
    """Fraction of samples whose nearest mode is ``k``, shape ``(K,)``.

    With ``radius``, samples farther than ``radius`` from every mode are counted
    as off-mode and belong to no ``k`` (then the weights sum to less than 1).
    """
    x, mu = _pair(samples, means)
    d = torch.cdist(x, mu)
    dmin, idx = d.min(1)
    keep = torch.ones_like(dmin, dtype=torch.bool) if radius is None else dmin <= radius
    counts = torch.bincount(idx[keep], minlength=mu.shape[0]).to(torch.float64)
    return counts / x.shape[0]


def mode_coverage(
    samples: Any,
    means: Any,
    weights: Any = None,
    radius: float | None = None,
    min_fraction: float = 0.5,
) -> float:
    """Fraction of modes that receive at least ``min_fraction`` of their true weight."""
    w_hat = mode_weights(samples, means, radius)
    k = w_hat.shape[0]
    w = (
        torch.full((k,), 1.0 / k, dtype=torch.float64)
        if weights is None
        else torch.as_tensor(weights, dtype=torch.float64)
    )
    if w.shape != (k,):
        raise ShapeError(f"weights must have one entry per mode ({k}), got {tuple(w.shape)}")
    return float((w_hat >= min_fraction * w / w.sum()).to(torch.float64).mean())


def _jsd_bits(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in bits (log base 2, so in [0, 1]) between rows of ``p`` and ``q``."""
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * (a.clamp_min(1e-30).log2() - b.clamp_min(1e-30).log2())).sum(1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def ci_violation(
    model: Any,
    x: torch.Tensor,
    classes: dict[str, int] | None = None,
    *,
    draws: int = 5,
    t_range: tuple[float, float] = (0.3, 0.6),
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    r"""Conditional-independence violation of a model's attributes, in bits (COIND App. A.1).

    A conditional diffusion model is an implicit classifier (COIND Eqs. 14-15): with the
    denoising loss ``L(x, c) = E_{t, eps} ||eps - eps_hat(alpha_t x + sigma_t eps, t | c)||^2``
    (``t`` uniform in ``t_range``, ``draws`` draws shared by every condition),
    ``p(c | x) ∝ exp(-L(x, c))``, where ``c`` may name some attributes only (the others are
    the null token).  For each pair of attributes ``(i, j)`` this returns the mean over the
    points ``x`` ``(n, *event)`` of the Jensen-Shannon divergence between the joint
    posterior ``p(c_i, c_j | x)`` and the product of the marginal ones ``p(c_i | x) p(c_j |
    x)`` (Eq. 17), in bits: 0 when the model treats the attributes as conditionally
    independent, at most 1.  Keys are ``"i,j"``; ``"mean"`` averages the pairs.

    ``classes`` maps attribute names to their number of classes (default: every discrete
    attribute of ``model``, read from its network's config).  ``model`` needs
    ``eps_given(y, t, cond)`` (a :class:`~probcomp.models.NetworkFactor`) with none of
    these attributes bound.  ``t`` and then ``eps`` are drawn from ``generator``.

    The estimator: ``draws`` pairs ``(t, eps)`` are shared by every point and every
    condition (common random numbers: the posteriors differ only through the conditions),
    and the loss sums the squared error over the event, the ELBO's scale.  On large events
    that makes the posteriors sharp, so the JSD approaches a 0/1 disagreement rate; the
    numbers compare models under this estimator, not with other implementations' tables
    (which may average over pixels, standardise the losses or report nats).
    """
    if not hasattr(model, "eps_given"):
        raise FactorError(f"ci_violation needs a conditional model with eps_given(), got {model!r}")
    if classes is None:
        classes = dict((getattr(getattr(model, "net", None), "config", None) or {}).get("attributes", {}))
    if len(classes) < 2:
        raise FactorError(f"ci_violation needs at least two discrete attributes, got {sorted(classes)}")
    unknown = set(classes) - set(model.condition_names)
    if unknown:
        raise FactorError(
            f"model {model.name!r} has no attribute(s) {sorted(unknown)}; "
            f"it takes {list(model.condition_names)}"
        )
    bound = set(classes) & set(getattr(model, "cond", None) or {})
    if bound:
        raise FactorError(
            f"ci_violation: model {model.name!r} has attribute(s) {sorted(bound)} bound already; "
            "pass the unconditioned model"
        )
    known = (getattr(getattr(model, "net", None), "config", None) or {}).get("attributes", {})
    for k, n_k in classes.items():
        if not isinstance(n_k, int) or n_k < 1 or (k in known and n_k > known[k]):
            limit = f" (the model has {known[k]})" if k in known else ""
            raise FactorError(f"ci_violation: attribute {k!r} cannot have {n_k!r} classes{limit}")
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if x.shape[1:] != model.event_shape:
        raise ShapeError(
            f"ci_violation: points of shape {tuple(x.shape)} do not match model {model.name!r}'s event "
            f"shape {tuple(model.event_shape)}"
        )
    lo, hi = t_range
    if not 0 < lo <= hi <= 1 or draws < 1:
        raise FactorError(
            f"ci_violation: need 0 < t_range[0] <= t_range[1] <= 1 and draws >= 1, got {t_range}, {draws}"
        )
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    n = x.shape[0]
    t = lo + (hi - lo) * torch.rand(draws, generator=g, dtype=torch.float64)
    eps = torch.randn(draws, *x.shape[1:], generator=g).to(dtype=x.dtype, device=x.device)
    alpha = model.schedule.alpha(t).to(dtype=x.dtype, device=x.device)
    sigma = model.schedule.sigma(t).to(dtype=x.dtype, device=x.device)

    def loss(cond: dict[str, int]) -> torch.Tensor:
        total = torch.zeros(n, dtype=torch.float64, device=x.device)
        c = {k: torch.full((n,), v, device=x.device) for k, v in cond.items()}
        for d in range(draws):
            with torch.no_grad():
                e = model.eps_given(alpha[d] * x + sigma[d] * eps[d], float(t[d]), c)
            total += (eps[d] - e).double().square().flatten(1).sum(1) / draws
        return total

    names = list(classes)
    alone = {k: torch.stack([loss({k: v}) for v in range(classes[k])], 1) for k in names}
    out: dict[str, float] = {}
    for a_i, a in enumerate(names):
        for b in names[a_i + 1 :]:
            joint = torch.stack([loss({a: u, b: v}) for u in range(classes[a]) for v in range(classes[b])], 1)
            p1, p2 = torch.softmax(-alone[a], 1), torch.softmax(-alone[b], 1)
            product = (p1[:, :, None] * p2[:, None, :]).reshape(joint.shape)
            out[f"{a},{b}"] = float(_jsd_bits(torch.softmax(-joint, 1), product).mean())
    out["mean"] = sum(out.values()) / len(out)
    return out


# ---------------------------------------------------------------- group accuracies


def _labels(v: Any, who: str) -> torch.Tensor:
    """Integer labels ``(n,)``, or group rows ``(n, k)`` where ``who`` allows it, as an int64 tensor."""
    t = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v).detach().cpu()
    if t.dtype == torch.bool:
        t = t.long()
    if t.is_floating_point() or t.is_complex() or t.dtype not in (
        torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    ):  # fmt: skip
        raise DataError(
            f"{who} must be integer class indices, got dtype {t.dtype} (pass labels, not scores or logits)"
        )
    return t.long()


def _prepared(
    y_true: Any, y_pred: Any, groups: Any | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.ndim != 1 or p.ndim != 1:
        raise ShapeError(f"y_true and y_pred must be 1-D, got shapes {tuple(t.shape)} and {tuple(p.shape)}")
    if t.shape[0] == 0:
        raise ShapeError("y_true is empty: an accuracy needs at least one example")
    if p.shape[0] != t.shape[0]:
        raise ShapeError(f"y_true has {t.shape[0]} labels but y_pred has {p.shape[0]}")
    if groups is None:
        return t, p, None
    g = _labels(groups, "groups")
    if g.ndim == 1:
        g = g[:, None]
    if g.ndim != 2 or g.shape[0] != t.shape[0]:
        raise ShapeError(
            f"groups must be (n,) or (n, k) with n = {t.shape[0]} (one group per label), got {tuple(g.shape)}"
        )
    return t, p, g


def _key(row: torch.Tensor) -> int | tuple[int, ...]:
    values = tuple(int(v) for v in row)
    return values[0] if len(values) == 1 else values


def group_accuracies(
    y_true: Any, y_pred: Any, groups: Any, expected: Sequence[Any] | None = None
) -> dict[Any, float]:
    r"""Accuracy of ``y_pred`` within each group: ``acc_g = |{i in g : yhat_i = y_i}| / |g|``.

    ``y_true`` and ``y_pred`` are integer labels ``(n,)``; ``groups`` is ``(n,)`` (one group
    id per example) or ``(n, k)`` (one tuple per example, e.g. the attribute combination
    ``(shape, colour)`` of Sagawa et al. 2019's groups).  Keys are the group ids (ints) or
    tuples, sorted.  With ``expected`` every listed group must occur (a :class:`DataError`
    names the ones with no examples, whose accuracy is undefined) and the result holds
    exactly those groups, in that order; without it, the groups present.
    """
    t, p, g = _prepared(y_true, y_pred, groups)
    assert g is not None
    ok = (t == p).to(torch.float64)
    keys, inverse = torch.unique(g, dim=0, return_inverse=True)
    acc = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, inverse, ok)
    acc /= torch.bincount(inverse, minlength=len(keys)).to(torch.float64)
    found = {_key(k): float(a) for k, a in zip(keys, acc, strict=True)}
    if expected is None:
        return found
    want = [w if isinstance(w, int) else tuple(int(v) for v in w) for w in expected]
    if not want:
        raise DataError("group_accuracies: expected lists no group")
    missing = [w for w in want if w not in found]
    if missing:
        raise DataError(f"group(s) {missing} have no examples: their accuracy is undefined")
    return {w: found[w] for w in want}


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    r"""Mean per-class recall: ``(1 / |K|) sum_{k in K} |{i : y_i = k, yhat_i = k}| / |{i : y_i = k}|``.

    ``K`` is the set of classes present in ``y_true`` (Brodersen et al. 2010; the "balanced
    accuracy" of COIND's Table 3 and of scikit-learn's ``balanced_accuracy_score``): equal
    to the accuracy when the classes are equally frequent, and ``1 / |K|`` for a constant
    guess however imbalanced the classes are.
    """
    t, p, _ = _prepared(y_true, y_pred)
    return float(sum(group_accuracies(t, p, t).values()) / len(torch.unique(t)))


def worst_group_accuracy(
    y_true: Any, y_pred: Any, groups: Any, expected: Sequence[Any] | None = None
) -> float:
    r"""The lowest per-group accuracy, ``min_g acc_g`` (Sagawa et al. 2019, "worst-group accuracy").

    ``acc_g`` as in :func:`group_accuracies` (same arguments): with ``expected`` every
    listed group must have examples, so a test set missing a group cannot hide it.
    """
    return min(group_accuracies(y_true, y_pred, groups, expected).values())


def adjusted_rand_index(true_masks: Any, pred_masks: Any, *, foreground: Any = None) -> torch.Tensor:
    r"""Adjusted Rand index of predicted against true segmentations, one value per image.

    ``true_masks`` and ``pred_masks`` are ``(N, K, H, W)`` soft or one-hot masks (each pixel's
    segment is the argmax over ``K``; the two ``K`` may differ).  With the contingency table
    ``n_ij`` of true segment ``i`` against predicted ``j`` over the scored pixels, ``a_i`` and
    ``b_j`` its sums and ``n`` the pixel count (Hubert & Arabie 1985),

    .. math:: \mathrm{ARI} = \frac{\sum_{ij} \binom{n_{ij}}{2} - E}{\tfrac12 [\sum_i \binom{a_i}{2}
              + \sum_j \binom{b_j}{2}] - E}, \qquad E = \sum_i \binom{a_i}{2} \sum_j \binom{b_j}{2}
              \Big/ \binom{n}{2}.

    ``foreground`` ``(N, H, W)`` (boolean) restricts the score to those pixels (the ARI-FG of
    object-centric learning: background pixels are not scored).  1 is a perfect segmentation
    up to relabelling; 0 is chance.  An image whose scored pixels form a single segment in both
    has ARI 1 if the prediction is a single segment too (else 0).
    """
    t = torch.as_tensor(true_masks).detach().cpu()
    p = torch.as_tensor(pred_masks).detach().cpu()
    if t.ndim != 4 or p.ndim != 4 or t.shape[0] != p.shape[0] or t.shape[2:] != p.shape[2:]:
        raise ShapeError(
            f"adjusted_rand_index expects masks (N, K, H, W) of one N, H, W; got {tuple(t.shape)} "
            f"and {tuple(p.shape)}"
        )
    if not (torch.isfinite(t.double()).all() and torch.isfinite(p.double()).all()):
        raise ShapeError("adjusted_rand_index: the masks contain NaN or infinite values")
    n_img = t.shape[0]
    keep = (
        torch.ones(n_img, *t.shape[2:], dtype=torch.bool)
        if foreground is None
        else torch.as_tensor(foreground).detach().cpu().bool()
    )
    if keep.shape != (n_img, *t.shape[2:]):
        raise ShapeError(f"foreground must be (N, H, W) = {(n_img, *t.shape[2:])}, got {tuple(keep.shape)}")
    ti, pi = t.argmax(1), p.argmax(1)
    out = torch.empty(n_img, dtype=torch.float64)
    for i in range(n_img):
        a_lab, b_lab = ti[i][keep[i]], pi[i][keep[i]]
        n = a_lab.numel()
        table = torch.zeros(t.shape[1], p.shape[1], dtype=torch.float64)
        table.index_put_((a_lab, b_lab), torch.ones(n, dtype=torch.float64), accumulate=True)
        pairs = lambda v: (v * (v - 1) / 2).sum()  # noqa: E731 -- sum of binomial(v, 2)
        index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
        total = n * (n - 1) / 2
        expected = rows * cols / total if total > 0 else torch.tensor(0.0, dtype=torch.float64)
        top = (rows + cols) / 2 - expected
        out[i] = (index - expected) / top if top > 0 else float(index == rows == cols)
    return out

r"""Analytic Gaussian and Gaussian-mixture factors: the ground truth of every test.

Under the VP forward process a mixture stays a mixture with the same weights,

.. math::
    p_t(y) = \sum_k w_k\, \mathcal N\big(y;\ \alpha_t \mu_k,\ \bar\alpha_t \Sigma_k + (1-\bar\alpha_t) I\big),

so the noised log-density, score and energy are exact at every ``t``.  Each
covariance is stored by its eigendecomposition ``Sigma_k = U_k diag(lam_k) U_k^T``,
which makes the noised covariance ``U_k diag(abar lam_k + 1 - abar) U_k^T``
(inverse and log-determinant included) free at any noise level.

:func:`exact_product` gives the exact (weighted) product of Gaussian mixtures as
another mixture, the reference every composition test samples from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .. import schedules as sched
from ..errors import FactorError, first_line
from .base import ScoreFactor, as_time, check_event, event_shape_of

__all__ = ["Gaussian", "GaussianMixture", "exact_product"]

_LOG_2PI = math.log(2 * math.pi)

#: a mixture's parameters in one dtype and device: means, eigenvalues, eigenvectors (or None), log-weights
_Params = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]


def _numeric(v: Any, who: str, what: str) -> torch.Tensor:
    """``v`` as a float64 tensor, or a :class:`FactorError` naming ``who`` and the argument ``what``."""
    if isinstance(v, (str, bytes)):
        raise FactorError(f"{who}: {what} must be numbers (a tensor, array or nested list), got a string")
    try:  # Python numbers straight to float64 (through float32 they would lose bits)
        t = v if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise FactorError(
            f"{who}: {what} must be a rectangular array of numbers (a tensor, array or nested list of "
            f"equal lengths), got {type(v).__name__}: {first_line(e)}"
        ) from None
    if t.dtype == torch.bool or t.is_complex():
        raise FactorError(f"{who}: {what} must be real numbers, got dtype {t.dtype}")
    return t.to(torch.float64)


class GaussianMixture(ScoreFactor):
    """``sum_k w_k N(mu_k, Sigma_k)`` with exact noised score, energy and samples.

    Args:
        means: ``(K, d)`` component means.
        scales: ``(K,)`` isotropic standard deviations, ``(K, d)`` diagonal standard
            deviations, or ``(K, d, d)`` full covariance matrices.
        weights: ``(K,)`` positive mixture weights (normalised here); uniform if None.
        event_shape: shape of one observation if not ``(d,)`` (e.g. an image);
            ``prod(event_shape)`` must equal ``d``.
        schedule: the schedule the factor's time argument refers to.
    """

    def __init__(
        self,
        means: Any,
        scales: Any,
        weights: Any = None,
        *,
        event_shape: Sequence[int] | None = None,
        schedule: sched.Schedule | None = None,
        name: str | None = None,
    ) -> None:
        who = name or type(self).__name__
        means = _numeric(means, who, "means")
        if means.ndim != 2:
            raise FactorError(f"{who}: means must be (K, d), got shape {tuple(means.shape)}")
        k, d = means.shape
        scales = _numeric(scales, who, "scales")
        if weights is None:
            weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        weights = _numeric(weights, who, "weights")
        if weights.shape != (k,) or not torch.all(weights > 0) or not torch.isfinite(weights).all():
            raise FactorError(f"{who}: weights must be {k} positive finite numbers, got {weights}")
        if not torch.isfinite(means).all() or not torch.isfinite(scales).all():
            raise FactorError(f"{who}: means and scales must be finite")
        if scales.shape == (k,):
            if not torch.all(scales > 0):
                raise FactorError(f"{who}: standard deviations must be positive")
            evals, evecs = (scales**2)[:, None].expand(k, d).clone(), None
        elif scales.shape == (k, d):
            if not torch.all(scales > 0):
                raise FactorError(f"{who}: standard deviations must be positive")
            evals, evecs = scales**2, None
        elif scales.shape == (k, d, d):
            if not torch.allclose(scales, scales.transpose(-1, -2), atol=1e-10, rtol=1e-8):
                raise FactorError(f"{who}: covariance matrices must be symmetric")
            evals, evecs = torch.linalg.eigh(scales)
            if not torch.all(evals > 0):
                raise FactorError(f"{who}: covariance matrices must be positive definite")
        else:
            raise FactorError(
                f"{who}: scales must be (K,)={k}, (K, d)=({k}, {d}) or (K, d, d)=({k}, {d}, {d}), "
                f"got {tuple(scales.shape)}"
            )
        event_shape = (d,) if event_shape is None else event_shape_of(event_shape, who)
        if math.prod(event_shape) != d:
            raise FactorError(f"{who}: event_shape {tuple(event_shape)} does not hold d={d} values")
        super().__init__(event_shape, schedule, name)
        self.means = means
        self.evals = evals
        self.evecs = evecs
        self.weights = weights / weights.sum()
        self._cache: dict[tuple[torch.dtype, torch.device], _Params] = {}

    # Parameters --------------------------------------------------------------------
    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def covariances(self) -> torch.Tensor:
        """``(K, d, d)`` covariance matrices."""
        if self.evecs is None:
            return torch.diag_embed(self.evals)
        return self.evecs @ torch.diag_embed(self.evals) @ self.evecs.transpose(-1, -2)

    def _params(self, like: torch.Tensor) -> _Params:
        key = (like.dtype, like.device)
        if key not in self._cache:

            def cast(v: torch.Tensor) -> torch.Tensor:
                return v.to(dtype=like.dtype, device=like.device)

            self._cache[key] = (
                cast(self.means),
                cast(self.evals),
                None if self.evecs is None else cast(self.evecs),
                cast(self.weights.log()),
            )
        return self._cache[key]

    # Noised density ----------------------------------------------------------------
    def _components(self, y: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """Per-component log-densities ``(N, K)``, whitened residuals and variances at time t."""
        check_event(y, self.event_shape, f"factor {self.name!r}")
        mu, lam, u, logw = self._params(y)
        yf = y.reshape(y.shape[0], -1)
        abar = self.schedule.abar(as_time(t, y)).to(dtype=y.dtype, device=y.device)  # (N|1, 1)
        alpha = abar.sqrt()
        var = abar[..., None] * lam + (1 - abar[..., None])  # (N|1, K, d)
        z = yf[:, None, :] - alpha[..., None] * mu  # (N, K, d)
        if u is not None:
            z = torch.einsum("nkd,kde->nke", z, u)
        maha = (z * z / var).sum(-1)
        logdet = var.log().sum(-1)
        logn = logw - 0.5 * (maha + logdet + self.dim * _LOG_2PI)
        return logn, z, var, u

    def log_prob_t(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        """Exact ``log p_t(y)``, shape ``(N,)``."""
        logn, *_ = self._components(y, t)
        return torch.logsumexp(logn, dim=-1)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """Clean ``log p(y)`` (``t = 0``)."""
        return self.log_prob_t(y, 0.0)

    def energy(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        """``-log p_t(y)``, normalised (so mixtures of factors are exact)."""
        return -self.log_prob_t(y, t)

    def score(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        logn, z, var, u = self._components(y, t)
        return self._score(logn, z, var, u, y.shape)

    def score_and_energy(self, y: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        logn, z, var, u = self._components(y, t)
        return self._score(logn, z, var, u, y.shape), -torch.logsumexp(logn, dim=-1)

    @staticmethod
    def _score(
        logn: torch.Tensor, z: torch.Tensor, var: torch.Tensor, u: Any, shape: torch.Size
    ) -> torch.Tensor:
        """``-sum_k r_k(y) C_k^{-1} (y - alpha mu_k)`` with responsibilities ``r = softmax(logn)``."""
        g = -(z / var)  # (N, K, d), in each component's eigenbasis
        if logn.shape[-1] > 1:
            g = g * torch.softmax(logn, dim=-1)[..., None]
        if u is not None:
            g = torch.einsum("nke,kde->nkd", g, u)
        return g.sum(1).reshape(shape)

    # Sampling ----------------------------------------------------------------------
    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``n`` exact draws of the clean mixture, shape ``(n, *event_shape)``."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = noise * self.evals[comp].sqrt()
        if self.evecs is not None:
            x = torch.einsum("nde,ne->nd", self.evecs[comp], x)
        x = x + self.means[comp]
        return x.to(dtype).reshape(n, *self.event_shape)


class Gaussian(GaussianMixture):
    """A single Gaussian ``N(mean, Sigma)``.

    ``scale`` is a scalar standard deviation, a ``(d,)`` vector of standard
    deviations, or a ``(d, d)`` covariance matrix.
    """

    def __init__(self, mean: Any, scale: Any = 1.0, **kw: Any) -> None:
        who = kw.get("name") or "Gaussian"
        mean = _numeric(mean, who, "mean")
        if mean.ndim == 0:
            mean = mean.reshape(1)
        d = mean.reshape(-1).shape[0]
        if "event_shape" not in kw and mean.ndim > 1:
            kw["event_shape"] = tuple(mean.shape)
        scale = _numeric(scale, who, "scale")
        if scale.ndim == 0:
            scale = scale.reshape(1)
        elif scale.shape == (d,):
            scale = scale.reshape(1, d)
        elif scale.shape == (d, d):
            scale = scale.reshape(1, d, d)
        else:
            raise FactorError(
                f"{who}: scale must be a scalar, ({d},) or ({d}, {d}), got {tuple(scale.shape)}"
            )
        super().__init__(mean.reshape(1, d), scale, None, **kw)

    @property
    def mean(self) -> torch.Tensor:
        return self.means[0]

    @property
    def covariance(self) -> torch.Tensor:
        return self.covariances[0]


def _describe(f: Any) -> str:
    """What a non-analytic factor is, for error messages: ``'ring8' is a learned model``."""
    if not isinstance(f, ScoreFactor):
        return f"{f!r} is not a probcomp factor ({type(f).__name__})"
    kinds = {c.__name__ for c in type(f).__mro__}
    if "ModelFactor" in kinds or hasattr(f, "net") or hasattr(f, "model"):
        what = f"a learned model ({type(f).__name__})"
    elif "Composite" in kinds:
        what = "a composite (pass its leaves and weights instead)"
    else:
        what = f"a {type(f).__name__}, not a Gaussian"
    return f"{f.name!r} is {what}"


def exact_product(
    factors: Sequence[GaussianMixture], weights: Sequence[float] | None = None, **kw: Any
) -> GaussianMixture:
    r"""The normalised ``prod_i p_i(y)^{w_i}`` of Gaussian mixtures, as a mixture.

    Mixtures with more than one component need ``w_i = 1`` (a mixture raised to
    another power is not a mixture); single Gaussians take any real weight, which
    covers products, weighted products, guidance and the projective composition
    with a Gaussian background (weight ``1 - k``).  Each combination of components
    ``(k_1, ..., k_m)`` is a Gaussian with precision ``Lambda = sum_i w_i Lambda_{i,k_i}``,
    mean ``Lambda^{-1} sum_i w_i Lambda_{i,k_i} mu_{i,k_i}`` and weight proportional to

    .. math:: \prod_i \pi_{i,k_i}^{w_i} \int \prod_i \mathcal N(y; \mu_{i,k_i}, \Sigma_{i,k_i})^{w_i} dy.

    Raises :class:`FactorError` if a combination is not normalisable.
    """
    if not factors:
        raise FactorError("exact_product needs at least one factor")
    try:
        weights = [1.0] * len(factors) if weights is None else [float(w) for w in weights]
    except (TypeError, ValueError):
        raise FactorError(f"exact_product: weights must be a list of numbers, got {weights!r}") from None
    if not all(math.isfinite(w) for w in weights):
        raise FactorError(f"exact_product: weights must be finite, got {weights}")
    if len(weights) != len(factors):
        raise FactorError(f"exact_product: got {len(factors)} factors but {len(weights)} weights")
    for f in factors:
        if not isinstance(f, GaussianMixture):
            raise FactorError(
                f"exact_product needs analytic Gaussian/GaussianMixture factors; {_describe(f)}"
            )
    d = factors[0].dim
    for f, w in zip(factors, weights, strict=True):
        if f.dim != d:
            raise FactorError(f"factor {f.name!r} has dimension {f.dim}, expected {d}")
        if f.num_components > 1 and w != 1.0:
            raise FactorError(
                f"factor {f.name!r} is a {f.num_components}-component mixture raised to power {w}: "
                "only single Gaussians may carry a weight other than 1"
            )
    grids = torch.cartesian_prod(*[torch.arange(f.num_components) for f in factors])
    grids = grids.reshape(-1, len(factors))
    prec = torch.zeros(grids.shape[0], d, d, dtype=torch.float64)
    h = torch.zeros(grids.shape[0], d, dtype=torch.float64)
    logc = torch.zeros(grids.shape[0], dtype=torch.float64)
    for i, (f, w) in enumerate(zip(factors, weights, strict=True)):
        idx = grids[:, i]
        cov = f.covariances[idx]
        p_i = torch.linalg.inv(cov)
        mu = f.means[idx]
        prec += w * p_i
        h += w * torch.einsum("nde,ne->nd", p_i, mu)
        quad = torch.einsum("nd,nde,ne->n", mu, p_i, mu)
        logc += w * (f.weights[idx].log() - 0.5 * (quad + torch.logdet(cov) + d * _LOG_2PI))
    evals = torch.linalg.eigvalsh(prec)
    if not torch.all(evals > 0):
        raise FactorError("the weighted product is not normalisable (its precision is not positive definite)")
    cov = torch.linalg.inv(prec)
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    mean = torch.einsum("nde,ne->nd", cov, h)
    # log of the integral of exp(-1/2 y'Py + h'y): 1/2 h' P^-1 h + d/2 log 2pi - 1/2 logdet P
    logz = 0.5 * torch.einsum("nd,nd->n", h, mean) + 0.5 * d * _LOG_2PI - 0.5 * torch.logdet(prec)
    logw = logc + logz
    kw.setdefault("event_shape", factors[0].event_shape)
    kw.setdefault("schedule", factors[0].schedule)
    kw.setdefault("name", "product")
    return GaussianMixture(mean, cov, torch.softmax(logw, 0).clamp_min(1e-300), **kw)


class ConditionalGaussian(ScoreFactor):
    r"""The analytic conditional factor ``p(y | c) = N(m(c), std^2 I)``: ground truth for inversion.

    Noised along the factor's VP path, ``y_t | c ~ N(alpha m(c), v I)`` with
    ``v = alpha^2 std^2 + sigma^2``, so

    .. math:: \hat\epsilon(y, t \mid c) = \sigma\,(y - \alpha\, m(c)) / v

    exactly, and the expected denoising loss of an observation ``x`` is minimised at
    ``m(c) = x``.  ``mean_fn`` maps a batch of conditions ``(N, *condition shape)`` to
    means ``(N, *event_shape)`` (identity by default: ``y | c ~ N(c, std^2)``).  With a
    Gaussian background ``N(0, std^2 I)`` of weight ``1 - K``, ``K`` such terms compose
    (projective composition) to exactly ``N(sum_k m(c_k), std^2 I)``: a scene of ``K``
    additive objects with a known answer.  :meth:`condition` binds a value, after which
    the factor is an ordinary analytic factor (score and energy) usable by every engine.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        std: float = 1.0,
        mean_fn: Any = None,
        *,
        condition: str = "c",
        value: Any = None,
        schedule: sched.Schedule | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(event_shape, schedule, name or "conditional-gaussian")
        if not float(std) > 0:
            raise FactorError(f"{self.name}: std must be positive, got {std}")
        self.std = float(std)
        self.mean_fn = mean_fn if mean_fn is not None else (lambda c: c)
        self.condition_names = (str(condition),)
        self.value = None if value is None else torch.as_tensor(value)

    def condition(self, **cond: Any) -> ConditionalGaussian:
        """The same factor with its condition bound (``factor.condition(c=value)``)."""
        (key,) = self.condition_names
        if set(cond) != {key}:
            raise FactorError(f"factor {self.name!r} takes the condition {key!r}, got {sorted(cond)}")
        return ConditionalGaussian(
            self.event_shape,
            self.std,
            self.mean_fn,
            condition=key,
            value=cond[key],
            schedule=self.schedule,
            name=self.name,
        )

    def _moments(self, y: torch.Tensor, t: Any, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        check_event(y, self.event_shape, f"factor {self.name!r}")
        m = self.mean_fn(c.to(y.dtype))
        if m.shape[1:] != self.event_shape:
            raise FactorError(
                f"factor {self.name!r}: mean_fn gives shape {tuple(m.shape[1:])}, "
                f"expected {tuple(self.event_shape)}"
            )
        alpha = self._scale(self.schedule.alpha, t, y)
        sigma = self._scale(self.schedule.sigma, t, y)
        return y - alpha * m, sigma, alpha**2 * self.std**2 + sigma**2

    def eps_given(self, y: torch.Tensor, t: Any, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        (key,) = self.condition_names
        if set(cond) != {key}:
            raise FactorError(f"factor {self.name!r} takes the condition {key!r}, got {sorted(cond)}")
        r, sigma, v = self._moments(y, t, cond[key])
        return sigma * r / v

    def _bound(self, y: torch.Tensor) -> torch.Tensor:
        if self.value is None:
            raise FactorError(
                f"factor {self.name!r} is conditional: bind its condition with .condition(...) first"
            )
        return self.value.to(y.dtype).expand(y.shape[0], *self.value.shape)

    def score(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        r, _, v = self._moments(y, t, self._bound(y))
        return -r / v

    def energy(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        r, _, v = self._moments(y, t, self._bound(y))
        d = self.event_shape.numel()
        return (r.square() / (2 * v)).reshape(y.shape[0], -1).sum(1) + 0.5 * d * v.reshape(-1).log()

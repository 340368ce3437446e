r"""Lift-score rejection (Yu & Gao 2025, CompLift): keep a composed sample only where every factor wants it.

The *lift* of a condition ``c`` at a sample ``x`` is (Yu & Gao 2025, Eq. 1)

.. math:: \operatorname{lift}(x \mid c) = \log \frac{p(x \mid c)}{p(x)},

and CompLift's product rule keeps a sample of a composition ``c_1 AND ... AND c_K`` when
every lift is positive (a negated condition, ``NOT c``, when its lift is negative).

**What "p(x)" is in a probcomp scene.**  A scene composes factors ``p_i(f_i(X))``, each a
normalised density of its observable ``y_i = f_i(X)`` (a diffusion model, or an analytic
factor); there is, in general, no unconditional model.  Nor is one implied: the product
``prod_i p_i`` equals ``p_b prod_i (p_i / p_b)`` (Liu et al. 2022's composition of
conditionals) only for a flat background ``p_b``, which is improper, so the lift of
a pure product is defined only up to a constant per factor, and "lift > 0" needs a
*proper* reference density ``p_ref`` on each observable's space:

.. math:: \ell_i(X) = \log p_i(y_i) - \log p_{\mathrm{ref}}(y_i), \qquad y_i = f_i(X).

probcomp's default reference is ``"normal"``, the standard normal ``N(0, I)``: the density
that every factor of the VP diffusion reaches at ``t = 1`` (where it knows nothing), whose
noise prediction is known exactly at every level (``eps_ref(y_t) = sigma_t y_t``, no network
evaluation).  ``l_i > 0`` then reads "factor ``i`` explains ``y_i`` better than noise does".
The test removes the modes the product empties: a draw that factor ``i`` gives a density
below ``N(0, I)``'s has, on data of unit scale, negligible mass under the product (on the
ring x bar product every factor beats ``N(0, I)`` by orders of magnitude at the product's
modes, and the test cuts a mode's tails beyond about 3.2 standard deviations, 0.6% of
its mass).  The alternatives are worse:

* ``"tempered"``: CompLift's own choice on its 2-D tasks, whose component models are trained
  independently (no unconditional model): ``eps_ref = alpha eps_i`` with ``alpha = 0.9``.
  For a Gaussian factor of std ``s`` this reference is about ``N(mu, s^2 / alpha)``, and the
  test keeps ``|y - mu|^2 < s^2 d log(1/alpha) / (1 - alpha)``, in 2-D a disc of radius
  ``1.45 s`` holding 65% of the mode's mass: the accepted modes are much too narrow and
  about 0.65^K of the draws survive (the issue's "modes 40% too narrow").  Offered to
  reproduce CompLift.
* the scene's prior, or the other factors' composition: the first exists only in the
  controls' space (an observable with a non-identity ``f_i`` lives elsewhere) and the
  second only up to the normaliser ``int p_i pi_{-i}``, which no estimator here knows.
* a :class:`~probcomp.factors.ScoreFactor`: the unconditional model, where the user has one
  (a text-to-image model's empty prompt, a projective composition's background, Bradley et
  al. 2025); then ``l_i`` is CompLift's lift exactly.  It costs one evaluation per term
  and level.

**The estimator.**  For a VP diffusion with exact noise predictions, the log-density is the
integral over log-SNR ``lambda`` of the denoising error (the continuous-time ELBO is tight:
Kingma et al. 2021, Eq. 17 with ``v = e^lambda``; Kong et al. 2023, Eq. 6), so the lift is

.. math:: \ell_i(x) = \tfrac12 \int_{-\infty}^{\infty} \mathbb E_\epsilon \big[
          \|\epsilon - \hat\epsilon_{\mathrm{ref}}(y_\lambda, \lambda)\|^2
          - \|\epsilon - \hat\epsilon_i(y_\lambda, \lambda)\|^2 \big] \, d\lambda,
          \qquad y_\lambda = \alpha_\lambda y + \sigma_\lambda \epsilon,

(Yu & Gao 2025, Eq. 6, with the ELBO's weight ``w(t) = -d lambda / dt / 2`` and the
constants cancelling between the two terms).  It is computed here on a grid of levels
``lambda_k``: the trapezoid rule in ``lambda`` plus the two tails, ``int_{lambda_max}^inf f =
f(lambda_max)`` and likewise below ``lambda_min`` (the integrand decays like
``e^{-|lambda|}`` at both ends: at high SNR it is ``d sigma^2 (1/s^2 - 1) + O(sigma^4)`` for a
factor of scale ``s``).  ``weighting="simple"`` instead averages the squared-error
difference over the levels with weight 1, CompLift's code (Ho et al. 2020's simple loss):
not a log-density ratio, only its sign is meant.

Three estimators (``estimator=``):

* ``"cached"`` (CompLift's cached variant, Yu & Gao 2025, Sec. 4.3): reuse the noise
  predictions ``eps_i(x_{t_k})`` the reverse chain made anyway, with
  ``epsilon_k = (y_{t_k} - alpha_k y_0) / sigma_k`` the noise that takes the chain's end
  ``y_0`` to its state at level ``k``: under an exact ancestral (DDPM) sampler, the path
  given its end is the forward process, so ``epsilon_k ~ N(0, I)``.  No extra evaluations
  (the ``"normal"`` and ``"tempered"`` references are free); the sum is accumulated while
  the chain runs, as ``S - 2 y_0 . V`` with ``S = sum_k c_k (|e_ref|^2 - |e_i|^2 + 2 y_k . d_k /
  sigma_k)`` and ``V = sum_k c_k alpha_k d_k / sigma_k`` (``d_k = e_i - e_ref``), so memory does
  not grow with the number of levels.  On summed scores the chain is not exact, and the
  lift inherits its bias; the observation ``f_i`` should be linear and norm-preserving
  (identity, crops), so that ``f_i(x_t)`` is the noised ``f_i(x_0)``.
* ``"fresh"``: fresh ``epsilon`` at ``levels`` levels uniform in ``lambda`` (``draws`` each):
  ``levels x draws`` evaluations per term and particle, correct for any ``f_i``.
* ``"exact"``: ``log p_i(y) = -E_i(y, 0)`` from factors with *normalised* energies (analytic
  Gaussian mixtures, :class:`~probcomp.factors.NormalisedEnergy`), the ground truth.

:class:`LiftRejection` draws with :class:`~probcomp.inference.ReverseDiffusion` (its step,
unchanged), computes the lifts and keeps the draws that pass, drawing more until
``num_samples`` are kept.  :func:`lift_filter` applies the same test to a weighted population
(annealed MCMC with SMC / AIS weights): the test multiplies the target by the indicator of
the accepted set, so a rejected particle's log-weight becomes ``-inf`` and resampling
draws only from the rest.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from probcomp.compiled import CompiledScene
from probcomp.errors import ConvergenceWarning, FactorError, NumericalError, SceneError, ScheduleError
from probcomp.factors import GaussianMixture, NormalisedEnergy, ScoreFactor
from probcomp.results import Result
from probcomp.scene import Scene
from probcomp.terms import Term
from probcomp.validation import check_count

from .base import DiffusionEngine, DiffusionOptions, register, seeded
from .reverse_diffusion import ReverseDiffusion

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's from Python 3.11

__all__ = [
    "ESTIMATORS",
    "REFERENCES",
    "WEIGHTINGS",
    "LiftEstimate",
    "LiftFilter",
    "LiftRejection",
    "estimate_lifts",
    "exact_lifts",
    "lift_filter",
    "lift_weights",
]

REFERENCES = ("normal", "tempered")
WEIGHTINGS = ("elbo", "simple")
ESTIMATORS = ("cached", "fresh", "exact")
_LOG_2PI = math.log(2 * math.pi)

Reference = str | ScoreFactor


class LiftEstimate(NamedTuple):
    """Lifts per tested term (``(N,)`` float64), their Monte-Carlo standard errors (NaN with one
    draw per level) and the evaluations made per term (per particle)."""

    lifts: dict[str, torch.Tensor]
    stderr: dict[str, torch.Tensor]
    nfe: dict[str, int]


class LiftFilter(NamedTuple):
    """A weighted population filtered by lifts: ``log_w`` (float64, ``-inf`` where rejected),
    ``keep`` (bool), the lifts per tested term and the evaluations made per term (per particle)."""

    log_w: torch.Tensor
    keep: torch.Tensor
    lifts: dict[str, torch.Tensor]
    nfe: dict[str, int]


# Options -------------------------------------------------------------------------------------
def _check_reference(reference: Any, alpha: Any) -> tuple[Reference, float]:
    if isinstance(reference, ScoreFactor):
        pass
    elif not isinstance(reference, str) or reference not in REFERENCES:
        raise FactorError(
            f"reference must be one of {list(REFERENCES)} or a probcomp ScoreFactor (the unconditional "
            f"model), got {reference!r}"
        )
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
        raise ScheduleError(f"alpha (the tempered reference's eps scale) must lie in (0, 1), got {alpha!r}")
    return reference, float(alpha)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ScheduleError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ScheduleError(
            f"threshold must be a finite number (nats with weighting='elbo'), got {threshold!r}"
        )
    return float(threshold)


def tested_terms(compiled: CompiledScene, terms: Sequence[str] | None) -> tuple[Term, ...]:
    """The terms whose lifts are tested: ``terms`` by key, or every score term of positive weight.

    A term of negative weight (a negation, ``E_1 - g E_2``) is tested as ``NOT c``: its lift must
    fall *below* ``-threshold``.  By default such terms are not tested (a projective
    composition's background has weight ``1 - k`` and is no condition).  Priors and explicit
    densities are never tested: they are not diffusion factors.
    """
    score = {t.key: t for t in compiled.terms if t.kind == "score"}
    if terms is None:
        out = tuple(t for t in score.values() if t.weight > 0)
    else:
        if isinstance(terms, str) or not all(isinstance(k, str) for k in terms):
            raise SceneError(
                f"terms must be a list of term keys, got {terms!r}; the score terms are {list(score)}"
            )
        unknown = [k for k in terms if k not in score]
        if unknown:
            raise SceneError(
                f"terms {unknown} are not score terms of the scene; its score terms are {list(score)}"
            )
        out = tuple(score[k] for k in dict.fromkeys(terms))
    if not out:
        raise SceneError(
            f"the scene has no score term of positive weight to test (score terms: {list(score)}); "
            "pass terms=[...] to name them"
        )
    return out


def _check_reference_shapes(reference: Reference, terms: Sequence[Term]) -> None:
    if isinstance(reference, ScoreFactor):
        for term in terms:
            if reference.event_shape != term.factor.event_shape:
                raise FactorError(
                    f"reference factor {reference.name!r} has event shape {tuple(reference.event_shape)}, "
                    f"term {term.key!r} (factor {term.factor.name!r}) has {tuple(term.factor.event_shape)}"
                )


def is_normalised(factor: ScoreFactor) -> bool:
    """Whether ``exp(-factor.energy(y, 0))`` integrates to one: analytic Gaussian mixtures,
    :class:`~probcomp.factors.NormalisedEnergy`, or a factor that sets ``normalised = True``."""
    return (
        isinstance(factor, (GaussianMixture, NormalisedEnergy))
        or getattr(factor, "normalised", False) is True
    )


# The lift's quadrature -----------------------------------------------------------------------
def lift_weights(log_snr: torch.Tensor, weighting: str = "elbo") -> torch.Tensor:
    r"""Weights ``c_k`` of the squared-error differences at levels of log-SNR ``lambda_k``.

    ``"elbo"``: ``1/2 x`` the trapezoid rule in ``lambda`` plus the two tails (``+1`` on each
    end node: ``int_{lambda_max}^inf f = f(lambda_max)`` for ``f ~ e^{-lambda}``), so that
    ``sum_k c_k D_k`` estimates the lift in nats; ``"simple"``: ``1 / L`` (CompLift's average).
    """
    lam = log_snr.to(torch.float64).reshape(-1)
    n = lam.shape[0]
    if weighting == "simple":
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    c = torch.zeros(n, dtype=torch.float64)
    if n > 1:
        gap = (lam[1:] - lam[:-1]).abs()
        c[:-1] += gap / 2
        c[1:] += gap / 2
    c[0] += 1.0
    c[-1] += 1.0
    return 0.5 * c


def _reference_eps(
    compiled: CompiledScene,
    reference: Reference,
    alpha: float,
    y_t: torch.Tensor,
    eps_i: torch.Tensor,
    t: float,
    sigma: float,
) -> torch.Tensor:
    """The reference's noise prediction at ``y_t`` (engine time ``t``)."""
    if reference == "normal":
        return sigma * y_t
    if reference == "tempered":
        return alpha * eps_i
    assert isinstance(reference, ScoreFactor)
    return reference.eps(y_t, compiled.factor_time(reference, t))


def _sq(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).double().square().sum(1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.reshape(a.shape[0], -1).double() * b.reshape(b.shape[0], -1).double()).sum(1)


def _ref_cost(reference: Reference) -> int:
    return reference.cost if isinstance(reference, ScoreFactor) else 0


# Estimators -----------------------------------------------------------------------------------
def exact_lifts(
    compiled: CompiledScene,
    x: Mapping[str, torch.Tensor],
    *,
    terms: Sequence[str] | None = None,
    reference: Reference = "normal",
) -> dict[str, torch.Tensor]:
    r"""``l_i(X) = log p_i(f_i(X)) - log p_ref(f_i(X))`` from normalised energies (float64, ``(N,)``).

    ``log p_i = -E_i(y, 0)`` needs an energy that integrates to one (:func:`is_normalised`);
    the ``"normal"`` reference is ``log N(y; 0, I) = -|y|^2/2 - (d/2) log 2 pi``, a reference
    factor must be normalised too, and ``"tempered"`` has no closed form (refused).
    """
    reference, _ = _check_reference(reference, 0.9)
    chosen = tested_terms(compiled, terms)
    _check_reference_shapes(reference, chosen)
    if reference == "tempered":
        raise FactorError(
            "estimator='exact' has no closed form for reference='tempered'; use 'normal' or a factor"
        )
    if isinstance(reference, ScoreFactor) and not is_normalised(reference):
        raise FactorError(
            f"estimator='exact' needs a normalised energy; reference factor {reference.name!r} has none "
            "(use estimator='fresh')"
        )
    compiled.check_state(dict(x))
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for term in chosen:
            f = term.factor
            if not is_normalised(f):
                raise FactorError(
                    f"estimator='exact' needs a normalised energy; factor {f.name!r} (term {term.key!r}) "
                    "has none (analytic Gaussian mixtures and NormalisedEnergy do; use estimator='fresh')"
                )
            y = compiled.observe(term, [x[p] for p in term.parents]).detach()
            log_p = -f.energy(y, 0.0).double()
            if isinstance(reference, ScoreFactor):
                log_ref = -reference.energy(y, 0.0).double()
            else:
                log_ref = -0.5 * _sq(y) - 0.5 * y[0].numel() * _LOG_2PI
            out[term.key] = log_p - log_ref
    return out


def estimate_lifts(
    compiled: CompiledScene,
    x: Mapping[str, torch.Tensor],
    *,
    terms: Sequence[str] | None = None,
    reference: Reference = "normal",
    alpha: float = 0.9,
    weighting: str = "elbo",
    levels: int = 64,
    draws: int = 1,
    t_min: float = 1e-3,
    t_max: float = 1.0,
    generator: torch.Generator | None = None,
) -> LiftEstimate:
    r"""The lift of every tested term by the denoising ELBO with fresh noise (module docstring).

    ``levels`` levels uniform in log-SNR between engine times ``t_max`` and ``t_min``, ``draws``
    noise draws at each: ``y_k = alpha_k y + sigma_k eps``, ``D_k = |eps - e_ref|^2 - |eps - e_i|^2``,
    and ``l_i = sum_k c_k mean_j D_kj`` with :func:`lift_weights`.  The standard error is
    ``sqrt(sum_k c_k^2 var_j(D_kj) / draws)`` (NaN with ``draws = 1``).  Each term costs
    ``levels x draws`` evaluations per particle (counted in ``compiled.nfe`` too), the
    reference factor as many again.
    """
    reference, alpha = _check_reference(reference, alpha)
    weighting = _check_choice("weighting", weighting, WEIGHTINGS)
    levels = check_count("levels", levels, 2)
    draws = check_count("draws", draws)
    if not 0.0 < t_min < t_max <= 1.0:
        raise ScheduleError(f"need 0 < t_min < t_max <= 1, got t_min={t_min!r}, t_max={t_max!r}")
    chosen = tested_terms(compiled, terms)
    _check_reference_shapes(reference, chosen)
    n = compiled.check_state(dict(x))
    sched = compiled.schedule
    lam = torch.linspace(
        float(sched.log_snr(t_max)), float(sched.log_snr(t_min)), levels, dtype=torch.float64
    )
    ts = sched.t_of_log_snr(lam).tolist()
    alphas, sigmas = torch.sigmoid(lam).sqrt().tolist(), torch.sigmoid(-lam).sqrt().tolist()
    c = lift_weights(lam, weighting)
    lifts, stderr, nfe = {}, {}, {}
    with torch.no_grad():
        for term in chosen:
            y = compiled.observe(term, [x[p] for p in term.parents]).detach()
            rows = y.repeat(draws, *([1] * (y.ndim - 1)))  # draw-major: row j * n + p
            total = torch.zeros(n, dtype=torch.float64, device=y.device)
            var = torch.zeros(n, dtype=torch.float64, device=y.device)
            for k, (t, a, s) in enumerate(zip(ts, alphas, sigmas, strict=True)):
                eps = torch.randn(rows.shape, generator=generator, dtype=y.dtype, device=y.device)
                y_t = a * rows + s * eps
                score, _ = compiled.evaluate((term,), y_t, compiled.factor_time(term.factor, t), t)
                e_i = -s * score
                e_ref = _reference_eps(compiled, reference, alpha, y_t, e_i, t, s)
                d = (_sq(eps - e_ref) - _sq(eps - e_i)).reshape(draws, n)
                total += float(c[k]) * d.mean(0)
                if draws > 1:
                    var += float(c[k]) ** 2 * d.var(0) / draws
            cost = levels * draws * term.factor.cost
            compiled.nfe[term.key] += cost
            nfe[term.key] = cost + levels * draws * _ref_cost(reference)
            lifts[term.key] = total
            stderr[term.key] = var.sqrt() if draws > 1 else torch.full_like(total, math.nan)
    return LiftEstimate(lifts, stderr, nfe)


def _accept(lifts: Mapping[str, torch.Tensor], chosen: Sequence[Term], threshold: float) -> torch.Tensor:
    """Every positive-weight term's lift ``> threshold``, every negative-weight one's ``< -threshold``."""
    keep: torch.Tensor | None = None
    for term in chosen:
        v = lifts[term.key]
        ok = (v > threshold) if term.weight > 0 else (v < -threshold)
        ok = ok & torch.isfinite(v)
        keep = ok if keep is None else keep & ok
    assert keep is not None
    return keep


def lift_filter(
    compiled: CompiledScene,
    x: Mapping[str, torch.Tensor],
    log_w: torch.Tensor | None = None,
    *,
    threshold: float = 0.0,
    terms: Sequence[str] | None = None,
    reference: Reference = "normal",
    estimator: str = "auto",
    alpha: float = 0.9,
    weighting: str = "elbo",
    levels: int = 64,
    draws: int = 1,
    generator: torch.Generator | None = None,
) -> LiftFilter:
    r"""Filter a weighted population ``(x, log_w)`` by lifts: ``log_w + log 1[every lift passes]``.

    For a population targeting ``pi`` (annealed MCMC with SMC / AIS weights) the result
    targets ``pi 1_A / pi(A)``, ``A`` the accepted set: the mass the product leaves in modes
    it empties goes, the weights keep the shape inside ``A`` and the split between its modes.
    Resample from the returned ``log_w`` (``smc.resample``) to get equally weighted particles.
    ``estimator="auto"`` is ``"exact"`` when every tested factor (and a reference factor) has a
    normalised energy, else ``"fresh"`` (``levels x draws`` evaluations per term and
    particle); a population has no reverse chain, so there is no ``"cached"`` here.  Raises
    :class:`~probcomp.NumericalError` if no particle passes.
    """
    threshold = _check_threshold(threshold)
    estimator = _check_choice("estimator", estimator, ("auto", "exact", "fresh"))
    reference, alpha = _check_reference(reference, alpha)
    chosen = tested_terms(compiled, terms)
    n = compiled.check_state(dict(x))
    if log_w is None:
        log_w = torch.zeros(n, dtype=torch.float64)
    if not isinstance(log_w, torch.Tensor) or log_w.shape != (n,):
        got = tuple(log_w.shape) if isinstance(log_w, torch.Tensor) else type(log_w).__name__
        raise SceneError(f"log_w must be a tensor of one log-weight per particle ({n},), got {got}")
    if estimator == "auto":
        normalised = all(is_normalised(t.factor) for t in chosen) and (
            reference == "normal" or (isinstance(reference, ScoreFactor) and is_normalised(reference))
        )
        estimator = "exact" if normalised else "fresh"
    if estimator == "exact":
        lifts = exact_lifts(compiled, x, terms=[t.key for t in chosen], reference=reference)
        nfe = {t.key: 0 for t in chosen}
    else:
        est = estimate_lifts(
            compiled,
            x,
            terms=[t.key for t in chosen],
            reference=reference,
            alpha=alpha,
            weighting=weighting,
            levels=levels,
            draws=draws,
            generator=generator,
        )
        lifts, nfe = est.lifts, est.nfe
    keep = _accept(lifts, chosen, threshold).to(log_w.device)
    if not bool(keep.any()):
        raise NumericalError(
            f"lift_filter rejected all {n} particles (threshold={threshold:g}, reference="
            f"{getattr(reference, 'name', reference)!r}): no particle is plausible under every tested factor"
        )
    out = log_w.double().masked_fill(~keep, -math.inf)
    return LiftFilter(out, keep, lifts, nfe)


# The engine ------------------------------------------------------------------------------------
class _ChainCache:
    """Accumulates the cached lift of every tested term while a reverse chain runs.

    It wraps :meth:`CompiledScene.evaluate` of a private shallow copy of the compiled scene
    (the user's object is not touched), so the reverse-diffusion engine runs unchanged and every
    noise prediction it makes at a level of the grid is folded into ``S`` and ``V`` (module
    docstring) as it is made; the first evaluation at each level is the chain's (Tweedie's
    last step evaluates again at ``t_min``, and those are skipped).
    """

    def __init__(
        self,
        compiled: CompiledScene,
        chosen: Sequence[Term],
        ts: torch.Tensor,
        schedule_log_snr: torch.Tensor,
        reference: Reference,
        alpha: float,
        weighting: str,
    ) -> None:
        self.compiled = copy.copy(compiled)
        self.compiled.evaluate = self._evaluate  # type: ignore[method-assign]
        self._inner = compiled.evaluate
        self.chosen = {t.key: t for t in chosen}
        lam = schedule_log_snr
        self.level = {float(t): k for k, t in enumerate(ts.tolist())}
        self.alpha = torch.sigmoid(lam).sqrt().tolist()
        self.sigma = torch.sigmoid(-lam).sqrt().tolist()
        self.c = lift_weights(lam, weighting).tolist()
        self.ts = [float(t) for t in ts.tolist()]
        self.reference, self.temper = reference, alpha
        self.ref_evals = 0  # evaluations of a reference factor, summed over particles
        self.reset()

    def reset(self) -> None:
        self.S: dict[str, torch.Tensor] = {}
        self.V: dict[str, torch.Tensor] = {}
        self.seen: set[tuple[int, str]] = set()

    def _evaluate(
        self, group: tuple[Term, ...], y: torch.Tensor, tf: Any, t: Any, *, energy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        s, e = self._inner(group, y, tf, t, energy=energy)
        k = self.level.get(float(t)) if not isinstance(t, torch.Tensor) or t.ndim == 0 else None
        if k is not None:
            n = y.shape[0] // len(group)
            for j, term in enumerate(group):
                if term.key in self.chosen and (k, term.key) not in self.seen:
                    self.seen.add((k, term.key))
                    self._fold(term.key, k, y[j * n : (j + 1) * n].detach(), s[j * n : (j + 1) * n].detach())
        return s, e

    def _fold(self, key: str, k: int, y_k: torch.Tensor, score: torch.Tensor) -> None:
        a, sig, c = self.alpha[k], self.sigma[k], self.c[k]
        e_i = -sig * score
        e_ref = _reference_eps(self.compiled, self.reference, self.temper, y_k, e_i, self.ts[k], sig)
        self.ref_evals += _ref_cost(self.reference) * y_k.shape[0]
        d = e_i - e_ref
        s_k = c * (_sq(e_ref) - _sq(e_i) + 2 * _dot(y_k, d) / sig)
        v_k = (c * a / sig) * d.double()
        self.S[key] = s_k if key not in self.S else self.S[key] + s_k
        self.V[key] = v_k if key not in self.V else self.V[key] + v_k

    def lifts(self, x0: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``S - 2 y_0 . V`` per tested term, ``y_0 = f_i(x_0)`` at the chain's end."""
        out = {}
        for key, term in self.chosen.items():
            if key not in self.S:
                raise SceneError(f"the reverse chain made no evaluation of term {key!r} to cache")
            y0 = self.compiled.observe(term, [x0[p] for p in term.parents]).detach()
            out[key] = self.S[key] - 2 * _dot(y0, self.V[key])
        return out


class LiftRejection(DiffusionEngine):
    """Reverse diffusion on the composed score, then lift-score rejection (module docstring).

    Args:
        steps: reverse steps of each draw (:class:`~probcomp.inference.ReverseDiffusion`).
        sampler, eta: ``"ddpm"`` (default) or ``"ddim"`` with ``eta``; ``estimator="cached"``
            needs DDPM (``eta = 1``), whose chain given its end is the forward process.
        threshold: keep a draw when every tested lift exceeds it (a negative-weight term's lift
            must fall below ``-threshold``); nats with ``weighting="elbo"``.
        reference: ``"normal"`` (default), ``"tempered"`` (CompLift's 2-D choice) or a factor
            (the unconditional model); see the module docstring.
        estimator: ``"cached"`` (default, no extra evaluations), ``"fresh"`` or ``"exact"``.
        terms: keys of the score terms to test (default: every score term of positive weight).
        alpha: the tempered reference's eps scale (CompLift: 0.9).
        weighting: ``"elbo"`` (lifts in nats) or ``"simple"`` (CompLift's unweighted average).
        levels, draws: the fresh estimator's levels (uniform in log-SNR) and draws per level.
        max_draws: the most particles drawn in all (default ``50 x num_samples``).
        shortfall: when ``max_draws`` draws keep fewer than ``num_samples``: ``"raise"`` (a
            :class:`~probcomp.NumericalError`) or ``"warn"`` (a ``ConvergenceWarning``, and the
            draws kept are returned).
        schedule, t_max, t_min, group, max_abs, clip_x0, last_step, dtype, device, progress,
        callback: as in :class:`~probcomp.inference.ReverseDiffusion` (the callback sees every
        level of every batch of draws).

    ``res.stats``: ``nfe`` (per term) and ``nfe_total`` are evaluations per *returned* sample,
    rejected draws included; ``nfe_per_draw``, ``draws``, ``accepted``, ``acceptance_rate``,
    ``acceptance_per_term``, ``batches``, ``threshold``, ``reference``, ``estimator``.
    ``res.particle_stats["lift[KEY]"]`` holds each tested term's lift of the returned samples.
    Same seed, same samples.
    """

    name = "lift-rejection"
    label = "LiftRejection"
    levels_arg = "steps"

    def __init__(
        self,
        steps: int = 50,
        sampler: str = "ddpm",
        eta: float | None = None,
        *,
        threshold: float = 0.0,
        reference: Reference = "normal",
        estimator: str = "cached",
        terms: Sequence[str] | None = None,
        alpha: float = 0.9,
        weighting: str = "elbo",
        levels: int = 64,
        draws: int = 1,
        max_draws: int | None = None,
        shortfall: str = "raise",
        clip_x0: tuple[float, float] | None = None,
        last_step: str = "mean",
        **options: Unpack[DiffusionOptions],
    ) -> None:
        callback = options.pop("callback", None)
        self.sampler_engine = ReverseDiffusion(  # (callback was popped from options)
            steps,
            sampler,
            eta,
            clip_x0=clip_x0,
            last_step=last_step,
            callback=callback,
            **options,  # pyright: ignore[reportCallIssue]
        )
        super().__init__(steps, callback=callback, **options)  # pyright: ignore[reportCallIssue]
        self.steps = steps
        self.threshold = _check_threshold(threshold)
        self.reference, self.alpha = _check_reference(reference, alpha)
        self.estimator = _check_choice("estimator", estimator, ESTIMATORS)
        self.weighting = _check_choice("weighting", weighting, WEIGHTINGS)
        self.shortfall = _check_choice("shortfall", shortfall, ("raise", "warn"))
        self.levels_fresh = check_count("levels", levels, 2)
        self.draws = check_count("draws", draws)
        self.max_draws = None if max_draws is None else check_count("max_draws", max_draws, error=SceneError)
        if terms is not None and (isinstance(terms, str) or not all(isinstance(k, str) for k in terms)):
            raise SceneError(f"terms must be a list of term keys, got {terms!r}")
        self.terms = None if terms is None else list(terms)
        if self.estimator == "cached" and self.sampler_engine.eta != 1.0:
            raise ScheduleError(
                "estimator='cached' reads the noise of the reverse chain, a draw from q(x_t | x_0) only "
                f"under DDPM's ancestral steps (eta = 1); got sampler={sampler!r}, eta="
                f"{self.sampler_engine.eta}: use sampler='ddpm' or estimator='fresh'"
            )
        if self.estimator == "exact" and self.reference == "tempered":
            raise FactorError(
                "estimator='exact' has no closed form for reference='tempered'; use 'normal' or a factor"
            )

    def check_compiled(self, compiled: CompiledScene) -> None:
        """The tested terms exist, the reference fits them, and (exact) their energies are normalised."""
        self.sampler_engine.check_compiled(compiled)
        chosen = tested_terms(compiled, self.terms)
        _check_reference_shapes(self.reference, chosen)
        if self.estimator == "exact":
            bad = [t.factor.name for t in chosen if not is_normalised(t.factor)]
            if bad:
                raise FactorError(
                    f"estimator='exact' needs normalised energies; factors {bad} have none "
                    "(use estimator='cached' or 'fresh')"
                )

    def _batch_size(self, need: int, drawn: int, accepted: int, num_samples: int, cap: int) -> int:
        """Draws for the next batch: ``num_samples`` first, then what the acceptance so far needs
        (with 20% slack), at most ``8 x num_samples`` and what the cap leaves."""
        if drawn == 0:
            size = num_samples
        else:
            rate = max(accepted / drawn, 1.0 / max(drawn, 1))
            size = math.ceil(1.2 * need / rate) + 8
        return max(1, min(size, 8 * num_samples, cap - drawn))

    def run(
        self,
        scene: Scene | CompiledScene,
        num_samples: int = 1000,
        *,
        seed: Any = 0,
        num_chains: int = 1,
    ) -> Result:
        """Draw until ``num_samples`` draws pass the lift test; same ``seed``, same samples."""
        compiled = self.prepare(scene, num_samples)
        chosen = tested_terms(compiled, self.terms)
        cap = self.max_draws if self.max_draws is not None else 50 * num_samples
        gen, seed_used = seeded(seed, self.device)
        inner = self.sampler_engine
        cache = _ChainCache(
            compiled,
            chosen,
            inner.ts[:-1],
            self.schedule.log_snr(inner.ts[:-1]),
            self.reference,
            self.alpha,
            self.weighting,
        )
        kept: list[dict[str, torch.Tensor]] = []
        kept_lifts: list[dict[str, torch.Tensor]] = []
        nfe_sum = {t.key: 0 for t in compiled.terms}
        lift_nfe = 0
        passed = {t.key: 0 for t in chosen}
        drawn = accepted = batches = 0
        start = time.perf_counter()
        while accepted < num_samples and drawn < cap:
            size = self._batch_size(num_samples - accepted, drawn, accepted, num_samples, cap)
            cache.reset()
            res = inner.run(cache.compiled, size, seed=gen)
            x0 = res.samples
            for key, v in res.stats["nfe"].items():
                nfe_sum[key] += v * size
            if self.estimator == "cached":
                lifts = cache.lifts(x0)
            elif self.estimator == "fresh":
                est = estimate_lifts(
                    compiled,
                    x0,
                    terms=list(cache.chosen),
                    reference=self.reference,
                    alpha=self.alpha,
                    weighting=self.weighting,
                    levels=self.levels_fresh,
                    draws=self.draws,
                    generator=gen,
                )
                lifts = est.lifts
                lift_nfe += sum(est.nfe.values()) * size
            else:
                lifts = exact_lifts(compiled, x0, terms=list(cache.chosen), reference=self.reference)
            keep = _accept(lifts, chosen, self.threshold)
            for term in chosen:
                v = lifts[term.key]
                passed[term.key] += int(
                    ((v > self.threshold) if term.weight > 0 else (v < -self.threshold)).sum()
                )
            idx = keep.nonzero().reshape(-1).to(next(iter(x0.values())).device)
            kept.append({k: v[idx] for k, v in x0.items()})
            kept_lifts.append({k: v[idx.cpu()] for k, v in lifts.items()})
            drawn += size
            accepted += int(idx.numel())
            batches += 1
        rate = accepted / drawn if drawn else 0.0
        if accepted < num_samples:
            msg = (
                f"LiftRejection kept {accepted} of {drawn} draws (acceptance {rate:.3g}), fewer than "
                f"num_samples={num_samples} within max_draws={cap}: raise max_draws, lower threshold "
                f"(now {self.threshold:g}) or check that the factors' product has mass where each "
                "factor beats the reference"
            )
            if self.shortfall == "raise" or accepted == 0:
                raise NumericalError(msg)
            warnings.warn(msg, ConvergenceWarning, stacklevel=2)
        n_out = min(accepted, num_samples)
        samples = {k: torch.cat([b[k] for b in kept])[:n_out] for k in compiled.shapes}
        lift_out = {k: torch.cat([b[k] for b in kept_lifts])[:n_out] for k in cache.chosen}
        extra = lift_nfe + cache.ref_evals  # the lift's own evaluations (fresh; a reference factor)
        nfe_per_sample = {k: v / max(n_out, 1) for k, v in nfe_sum.items()}
        if extra:
            nfe_per_sample["lift"] = extra / max(n_out, 1)
        total_evals = sum(nfe_sum.values()) + extra
        stats = {
            "nfe": nfe_per_sample,
            "nfe_total": total_evals / max(n_out, 1),
            "nfe_per_draw": {k: v / drawn for k, v in nfe_sum.items()},
            "calls": batches,
            "wall_time": time.perf_counter() - start,
            "t": self.ts[:-1].clone(),
            "seed": seed_used,
            "steps": self.steps,
            "sampler": inner.sampler,
            "draws": drawn,
            "accepted": accepted,
            "acceptance_rate": rate,
            "acceptance_per_term": {k: v / drawn for k, v in passed.items()},
            "draws_per_sample": drawn / max(n_out, 1),
            "batches": batches,
            "threshold": self.threshold,
            "reference": getattr(self.reference, "name", self.reference),
            "estimator": self.estimator,
            "weighting": self.weighting,
        }
        return Result(
            samples,
            stats,
            {f"lift[{k}]": v for k, v in lift_out.items()},
            num_chains=num_chains if n_out % num_chains == 0 else 1,
            engine=f"{self.name}/{self.estimator}",
        )


register(
    "lift-rejection",
    lambda steps, steps_per_level, progress: LiftRejection(steps, progress=progress),
    "DDPM on the summed scores, then CompLift's cached lift-score rejection (reference N(0, I))",
)

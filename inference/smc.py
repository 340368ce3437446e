r"""Sequential Monte Carlo over noise levels: effective sample size, resampling, weight increments.

Particles carry log-weights ``log w`` across the levels of an annealed sampler.  Moving
from level ``t`` to ``s`` by a forward kernel ``F(x_s | x_t)`` (a reverse-diffusion step),
with the forward noising ``B(x_t | x_s) = N(sqrt(abar_t / abar_s) x_s, 1 - abar_t / abar_s)``
as the backward kernel, adds (Del Moral, Doucet & Jasra 2006, Eq. 31)

.. math:: \Delta \log w = \log\pi_s(x_s) - \log\pi_t(x_t) + \log B(x_t | x_s) - \log F(x_s | x_t),

and without a move (``x_s = x_t``) the annealed-importance ratio
``log pi_s(x) - log pi_t(x)`` (Neal 2001).  Metropolis-adjusted moves that leave
``pi_s`` invariant leave the weights alone.  When only scores exist, the change in
noise level at fixed ``x`` comes from the Fokker-Planck equation integrated in log-SNR
by the trapezoid rule, and the change in space from the score's line integral (in the
spirit of the Feynman-Kac correctors of Skreta et al. 2025).

Resampling draws ancestor indices from normalised weights: systematic and stratified
(Kitagawa 1996; Douc, Cappé & Moulines 2005) and multinomial.  Every function here
takes the log-weights of all particles and the uniforms explicitly (``generator`` draws
them when they are not given), so a distributed run can all-gather the log-weights,
draw the uniforms once and compute the same indices on every process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from probcomp.compiled import CompiledScene
from probcomp.terms import Term

from .steps import ReverseStep

__all__ = [
    "RESAMPLERS",
    "ais_increment",
    "energy_change",
    "ess",
    "initial_log_weight",
    "kernel_log_ratio",
    "line_integral",
    "log_snr_derivative",
    "matched_precision",
    "multinomial",
    "resample",
    "stratified",
    "systematic",
]


def ess(log_w: torch.Tensor) -> float:
    """Effective sample size ``(sum w)^2 / sum w^2`` of log-weights (Kong, Liu & Wong 1994)."""
    w = torch.softmax(log_w, 0)
    return float(1.0 / w.square().sum())


def _uniform(shape: tuple[int, ...], log_w: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=log_w.device)


def _search(log_w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Ancestor of each point ``u`` in ``[0, 1)``: inverse CDF of the normalised weights."""
    w = torch.softmax(log_w, 0)
    return torch.searchsorted(torch.cumsum(w, 0), u).clamp(max=log_w.shape[0] - 1)


def systematic(
    log_w: torch.Tensor, generator: torch.Generator | None = None, *, u: torch.Tensor | None = None
) -> torch.Tensor:
    """Systematic resampling: one uniform ``u``, points ``(u + i) / N``; returns ``(N,)`` indices."""
    n = log_w.shape[0]
    u = _uniform((), log_w, generator) if u is None else u
    return _search(log_w, (u + torch.arange(n, dtype=torch.float64, device=log_w.device)) / n)


def stratified(
    log_w: torch.Tensor, generator: torch.Generator | None = None, *, u: torch.Tensor | None = None
) -> torch.Tensor:
    """Stratified resampling: one uniform per stratum, points ``(u_i + i) / N``."""
    n = log_w.shape[0]
    u = _uniform((n,), log_w, generator) if u is None else u
    return _search(log_w, (u + torch.arange(n, dtype=torch.float64, device=log_w.device)) / n)


def multinomial(
    log_w: torch.Tensor, generator: torch.Generator | None = None, *, u: torch.Tensor | None = None
) -> torch.Tensor:
    """Multinomial resampling: ``N`` independent draws (``N`` sorted uniforms)."""
    n = log_w.shape[0]
    u = _uniform((n,), log_w, generator) if u is None else u
    return _search(log_w, u.sort().values)


RESAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "systematic": systematic,
    "stratified": stratified,
    "multinomial": multinomial,
}


def resample(log_w: torch.Tensor, generator: torch.Generator | None = None, method: str = "systematic"):
    """Ancestor indices by the named method (``"systematic"``, ``"stratified"``, ``"multinomial"``)."""
    if method not in RESAMPLERS:
        from probcomp.errors import ScheduleError

        raise ScheduleError(f"resampling must be one of {sorted(RESAMPLERS)}, got {method!r}")
    return RESAMPLERS[method](log_w, generator)


# Weight increments ---------------------------------------------------------------------------
def ais_increment(log_p_new: torch.Tensor, log_p_old: torch.Tensor) -> torch.Tensor:
    """``log pi_s(x_s) - log pi_t(x_t)`` from exact log-densities (float64)."""
    return log_p_new.double() - log_p_old.double()


def line_integral(
    score: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    x1: torch.Tensor,
    g: torch.Tensor,
    g1: torch.Tensor,
    points: int,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""``log pi(x1) - log pi(x) = int_0^1 g(x + u (x1 - x)) . (x1 - x) du`` per particle.

    The trapezoid rule on ``points`` equally spaced points (Sjöberg et al. 2023); ``g`` and
    ``g1`` are the scores at the ends, ``score`` is called at the ``points - 2`` interior ones.
    With ``dtype`` the sum is cast before the final division (weights accumulate in float64).
    """
    d = x1 - x
    total = (g * d).sum(1) / 2 + (g1 * d).sum(1) / 2
    for j in range(1, points - 1):
        total = total + (score(x + (j / (points - 1)) * d) * d).sum(1)
    if dtype is not None:
        total = total.to(dtype)
    return total / (points - 1)


def matched_precision(
    x: torch.Tensor, g: torch.Tensor, *, lo: float = 0.1, hi: float = 100.0
) -> torch.Tensor:
    r"""Per-coordinate precision of a Gaussian matched to ``pi``, from standard-normal draws.

    For ``x ~ N(0, I)`` Stein's lemma gives ``E[-x_d \partial_d \log\pi(x)] =
    E[-\partial^2_{dd} \log\pi(x)]``, the mean curvature of ``-log pi`` along coordinate ``d``
    (exactly the precision when ``pi`` is Gaussian); it is estimated by the particles' average
    of ``-x_d g_d`` (``g`` their scores) and clamped to ``[lo, hi]``.  A product of ``K`` noised
    factors at high noise is close to ``N(0, I / K)``, so ``N(0, I)`` draws would give
    importance weights whose variance grows with the dimension; drawing from
    ``N(0, diag(1 / P))`` instead keeps them usable.  Returns float64 ``(D,)``.
    """
    return (-(x.double() * g.double()).mean(0)).clamp(lo, hi)


def initial_log_weight(
    score: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    g: torch.Tensor,
    log_p: torch.Tensor | None,
    points: int,
    precision: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""``log pi_{t_0}(x) - log N(x; 0, diag(1 / P))`` of the first draws (float64, up to a constant).

    The first importance weight of SMC (Del Moral, Doucet & Jasra 2006, Eq. 6): the particles
    start from a Gaussian with precision ``P`` (``precision``; default the identity), not from the
    target of the first level.  With ``log_p`` (energies) it is exact; from scores alone
    ``log pi(x) - log pi(0)`` is the score's line integral from the origin (:func:`line_integral`
    on ``points`` points), the constant ``log pi(0)`` being shared by all particles.
    """
    sq = x.double().square()
    half_sq = (sq if precision is None else sq * precision).sum(1) / 2
    if log_p is not None:
        return log_p.double() + half_sq
    zero = torch.zeros_like(x)
    return line_integral(score, zero, x, score(zero), g, points, dtype=torch.float64) + half_sq


def kernel_log_ratio(step: ReverseStep, x: torch.Tensor, x1: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``log B(x | x1) - log F(x1 | x)`` of a reverse step from ``x`` (score ``g``) to ``x1`` (float64).

    A deterministic step (no fresh noise) has no transition density, and the correct increment
    would need the Jacobian ``|det dx1/dx|`` of the map; 0 is returned, which is right only for
    a volume-preserving map.  The annealed engine therefore steps between levels with DDPM's
    noise (``eta = 1``), where this case does not arise.
    """
    c = step.noise
    ratio = (step.a_t / step.a_s) ** 2  # abar_t / abar_s
    var_b = 1.0 - ratio
    log_b = -(x - math.sqrt(ratio) * x1).double().square().sum(1) / (2 * var_b)
    if c > 0:
        log_f = -(x1 - step.mean(x, g)).double().square().sum(1) / (2 * c**2)
        d = x.shape[1]
        log_b = log_b - d / 2 * math.log(var_b)
        log_f = log_f - d / 2 * math.log(c**2)
    else:
        log_b = log_f = torch.zeros_like(log_b)
    return log_b - log_f


def log_snr_derivative(
    compiled: CompiledScene,
    x: dict[str, torch.Tensor],
    t: float,
    *,
    terms: Sequence[Term] | None = None,
    fd_step: float = 1e-3,
) -> torch.Tensor:
    r"""``d log pi_lambda(X) / d lambda`` per particle at log-SNR ``lambda(t)``, from scores alone.

    The forward (Fokker-Planck) equation of a VP diffusion gives, for every factor
    at fixed ``y`` (``sigma^2 = 1 - abar``, ``s`` its score),

    .. math:: \partial_\lambda \log p_\lambda(y) = -\tfrac12 \sigma^2 \big(d + y \cdot s
              + \nabla \cdot s + |s|^2\big),

    and the target's is the weighted sum over terms at ``y = f_i(X)``.  The constant
    ``d`` is dropped (it is the same for every particle).  The divergence is a
    central finite difference along every axis of the factor's event (``2 d``
    score calls per term; meant for low-dimensional factors).  Annealed
    importance weights of score-only factors integrate this over ``lambda``; ``terms``
    restricts the sum (default: every term of the scene).  The equation holds for diffusion
    factors only: an explicit density applied at ``t = 0`` is not a noised family, so its
    change comes from :func:`energy_change`.
    """
    ref = next(iter(x.values()))
    n = ref.shape[0]
    sig2 = float(torch.sigmoid(-compiled.schedule.log_snr(t)))
    out = torch.zeros(n, dtype=torch.float64, device=ref.device)
    with torch.no_grad():
        for term in compiled.terms if terms is None else terms:
            y = compiled.observe(term, [x[p] for p in term.parents]).detach()
            f, tf = term.factor, compiled.factor_time(term.factor, t)
            s = f.score(y, tf)
            flat_y, flat_s = y.reshape(n, -1), s.reshape(n, -1)
            div = torch.zeros(n, dtype=torch.float64, device=ref.device)
            for j in range(flat_y.shape[1]):
                e = torch.zeros_like(flat_y)
                e[:, j] = fd_step
                up = f.score((flat_y + e).reshape(y.shape), tf).reshape(n, -1)[:, j]
                down = f.score((flat_y - e).reshape(y.shape), tf).reshape(n, -1)[:, j]
                div += ((up - down) / (2 * fd_step)).double()
            compiled.nfe[term.key] += f.cost * (1 + 2 * flat_y.shape[1])
            g = (flat_y * flat_s).sum(1).double() + div + flat_s.double().square().sum(1)
            out -= 0.5 * sig2 * term.weight * g
    return out


def energy_change(
    compiled: CompiledScene, x: dict[str, torch.Tensor], t: float, s: float, terms: Sequence[Term]
) -> torch.Tensor:
    """``sum_j w_j (E_j(f_j(X), t) - E_j(f_j(X), s))`` per particle (float64): the exact change of
    ``log pi`` from level ``t`` to ``s`` at fixed ``X`` of the terms that have energies."""
    ref = next(iter(x.values()))
    out = torch.zeros(ref.shape[0], dtype=torch.float64, device=ref.device)
    with torch.no_grad():
        for term in terms:
            y = compiled.observe(term, [x[p] for p in term.parents]).detach()
            f = term.factor
            e_t, e_s = (f.energy(y, compiled.factor_time(f, u)) for u in (t, s))
            compiled.nfe[term.key] += 2 * f.cost
            out += term.weight * (e_t.double() - e_s.double())
    return out

r"""Annealed MCMC on the composed target of a scene (Du et al. 2023; Sjöberg et al. 2023).

Reverse diffusion on summed scores samples the product of the *noised* factors
at every level, which is not the noised product.  This engine instead runs, at
each noise level ``t_i`` of a descending grid, ``k`` transitions of an MCMC
kernel whose target is the composed density

.. math:: \log \pi_t(X) = \sum_i w_i \log p_i^t(f_i(X)) + \text{const},
          \qquad \nabla_X \log \pi_t = \sum_i w_i J_{f_i}^\top s_i(f_i(X), t),

optionally followed by a reverse-diffusion step to ``t_{i+1}`` (the default, as in
Du et al.).  The last step goes to ``t = 0`` and returns the denoised estimate.

Kernels (``eps`` is the Langevin step, ``h = sqrt(2 eps)`` the leapfrog step, ``m`` the mass):

* ``ula``  -- ``x' = x + eps g(x) + sqrt(2 eps) z``;
* ``mala`` -- the same proposal with a Metropolis-Hastings test, including the
  proposal densities ``log q(x'|x) = -|x' - x - eps g(x)|^2 / (4 eps)``;
* ``uhmc`` -- underdamped Langevin: partial momentum refresh
  ``p <- sqrt(1 - gamma) p + sqrt(gamma m) z`` (``gamma`` = ``damping``), then
  ``L`` leapfrog steps, no test;
* ``hmc``  -- the same with a test on ``H = -log pi + |p|^2 / (2 m)`` (the kinetic
  term included) and the momentum negated on rejection (generalised HMC; with
  ``damping = 1`` this is plain HMC).

Metropolis tests (per particle, never for the batch at once) use

* ``"energy"`` -- ``log pi`` from the factors' energies, exact;
* ``"score"`` -- for score-only factors, the MCMC-correction construction
  (Sjöberg et al.): ``log pi(x') - log pi(x) = int_0^1 g(x + u (x' - x)) . (x' - x) du``
  by the trapezoid rule on ``trapezoid_points`` points (default 3: one extra score
  call per transition; the end points' scores are computed anyway);
* ``"effective"`` (HMC) -- the same integral along the leapfrog path, segment by
  segment, from the scores the leapfrog already computed: no extra score calls.
  Caution: per leapfrog step this trapezoid estimate cancels the kinetic-energy
  change algebraically, leaving ``log a = -(h^2/8) sum (|g_{l+1}|^2 - |g_l|^2)``,
  which ignores the true energy error (the same holds for MALA's 2-point score
  test, and for HMC with one leapfrog step); measured on ring x bar it is worse than
  no test.  The engine warns when a run would use such a test.  Prefer energies or
  ``"score"`` with ``trapezoid_points >= 3``.

Step sizes follow the noise level, ``eps(t) = c * sigma_t^2``, and ``c`` adapts
toward ``target_accept`` during the run by a Robbins-Monro update of ``log c``
after every transition of an adjusted kernel; the step size used at each level is
recorded.

With ``resample``, particles carry sequential-Monte-Carlo
weights across levels: the reverse step is the forward kernel ``F`` and the
forward noising ``B(x_t | x_s) = N(sqrt(abar_t / abar_s) x_s, 1 - abar_t / abar_s)``
the backward kernel (Del Moral et al. 2006), so

.. math:: \log w \mathrel{+}= \log\pi_s(x_s) + \log B(x_t | x_s) - \log\pi_t(x_t) - \log F(x_s | x_t),

and the adjusted MCMC moves, which leave ``pi_s`` invariant, leave the weights
alone (with ``reverse_step=False`` the increment is the annealed-importance ratio
``log pi_s(x) - log pi_t(x)``).  Energies give these ratios exactly.  Score-only
scenes get them from scores alone, in the spirit of the Feynman-Kac correctors of
Skreta et al. (2025): the change of ``log pi`` in noise level at fixed ``x`` follows
from the Fokker-Planck equation (:meth:`CompiledScene.log_snr_derivative`, a
trapezoid in log-SNR between levels), and the change in space from the score's
line integral.  The log-SNR trapezoid needs small steps in log-SNR; on the default grid
the last interval (to ``t_min = 1e-3``) is the widest, about 3 units at 100 levels, so
score-only weights there are the least accurate (``t_min = 0`` or more levels narrow
it, at the cost of the mode-width bias of :data:`probcomp.schedules.DEFAULT_T_MIN`).
When the effective sample size falls below ``ess_threshold * N`` the
particles are resampled (systematic resampling) and the weights reset.  This is
what moves mass between distant modes, which local MCMC at low noise cannot.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from probcomp import schedules as sched
from probcomp.compiled import CompiledScene
from probcomp.errors import FactorError, ScheduleError
from probcomp.results import Result
from probcomp.scene import Scene

from .steps import Packer, ReverseStep, prepare

__all__ = ["KERNELS", "AnnealedMCMC"]

KERNELS = ("ula", "mala", "uhmc", "hmc")
_ADJUSTED = ("mala", "hmc")
_DEFAULT_ACCEPT = {"mala": 0.57, "hmc": 0.65}
_DEFAULT_STEP = 0.05  # c in eps(t) = c sigma_t^2; adapted by the adjusted kernels


class _Target:
    """The compiled target on flat ``(N, D)`` particles at one level, counting what it costs.

    Scores are not checked here (a non-finite proposal is rejected by the Metropolis
    test); the engine checks the state and its score once per level.
    """

    def __init__(self, compiled: CompiledScene, packer: Packer, energy: bool) -> None:
        self.compiled, self.packer, self.energy = compiled, packer, energy

    def __call__(self, v: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.compiled.target(self.packer.unpack(v), t, energy=self.energy, check=False)
        return self.packer.pack(out.grad), out.log_p


class AnnealedMCMC:
    """Annealed ULA / MALA / underdamped-Langevin / HMC over the controls of a scene.

    Args:
        kernel: ``"ula"``, ``"mala"``, ``"uhmc"`` or ``"hmc"``.
        steps_per_level: MCMC transitions at every noise level.
        levels: number of noise levels (reverse steps) from ``t_max`` to 0.
        step_size: ``c`` in ``eps(t) = c sigma_t^2``, or a callable ``t -> eps``.
        leapfrog_steps, damping, mass: of ``uhmc`` / ``hmc``.
        metropolis: ``"energy"``, ``"score"``, ``"effective"`` (HMC) or ``None`` for the
            default: energies when every factor has one, else the score line integral.
        trapezoid_points: points of the trapezoid rule of ``"score"`` tests (>= 2).
        adapt: adapt the step size toward ``target_accept`` (adjusted kernels).
        target_accept: defaults to 0.57 (MALA) and 0.65 (HMC).
        reverse_step: interleave a DDPM step between levels (else the particles are
            carried to the next level unchanged).
        resample: ``None``, ``"ess"`` (when ESS < ``ess_threshold`` N) or ``"always"``.
        final_resample: with ``resample``, resample once more after the last level so the
            returned particles are equally weighted (``stats["ess_final"]`` is the ESS
            before it).  With ``False`` the particles keep their weights, in
            ``res.particle_stats["log_weight"]`` (weight the samples by them).
        t_min: the last MCMC level, then one denoising step to 0 (default 1e-3; with 0 the
            levels are uniform on ``[0, t_max]``: see :data:`probcomp.schedules.DEFAULT_T_MIN`).
        schedule, t_max, group, dtype, device, progress: as in
            :class:`~probcomp.inference.ReverseDiffusion`.
        callback: called at every level after its transitions with ``{i, t, x, step_size}``.
    """

    name = "annealed-mcmc"

    def __init__(
        self,
        kernel: str = "hmc",
        steps_per_level: int = 10,
        levels: int = 100,
        *,
        step_size: float | Callable[[float], float] | None = None,
        leapfrog_steps: int = 3,
        damping: float = 0.5,
        mass: float = 1.0,
        metropolis: str | None = None,
        trapezoid_points: int = 3,
        adapt: bool = True,
        target_accept: float | None = None,
        adapt_rate: float = 0.05,
        reverse_step: bool = True,
        resample: str | None = None,
        ess_threshold: float = 0.5,
        final_resample: bool = True,
        schedule: sched.Schedule | None = None,
        t_max: float = 1.0,
        t_min: float = sched.DEFAULT_T_MIN,
        group: bool = True,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        progress: bool = False,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if kernel not in KERNELS:
            raise ScheduleError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if steps_per_level < 0 or levels < 1 or leapfrog_steps < 1:
            raise ScheduleError("need steps_per_level >= 0, levels >= 1 and leapfrog_steps >= 1")
        if not 0.0 < damping <= 1.0 or mass <= 0:
            raise ScheduleError(f"need 0 < damping <= 1 and mass > 0, got {damping}, {mass}")
        if metropolis not in (None, "energy", "score", "effective"):
            raise ScheduleError(f"metropolis must be 'energy', 'score' or 'effective', got {metropolis!r}")
        if metropolis is not None and kernel not in _ADJUSTED:
            raise ScheduleError(f"kernel {kernel!r} has no Metropolis test; use 'mala' or 'hmc'")
        if metropolis == "effective" and kernel != "hmc":
            raise ScheduleError("the 'effective' test reuses leapfrog points: it needs kernel='hmc'")
        if trapezoid_points < 2:
            raise ScheduleError(f"trapezoid_points must be >= 2, got {trapezoid_points}")
        self.final_resample = bool(final_resample)
        if resample not in (None, "ess", "always"):
            raise ScheduleError(f"resample must be None, 'ess' or 'always', got {resample!r}")
        if isinstance(step_size, (int, float)) and step_size <= 0:
            raise ScheduleError(f"step_size must be positive, got {step_size}")
        self.kernel, self.k, self.levels = kernel, int(steps_per_level), int(levels)
        self.step_size = _DEFAULT_STEP if step_size is None else step_size
        self.leapfrog_steps, self.damping, self.mass = int(leapfrog_steps), float(damping), float(mass)
        self.metropolis, self.trapezoid_points = metropolis, int(trapezoid_points)
        self.adapt = bool(adapt) and kernel in _ADJUSTED and not callable(self.step_size)
        self.target_accept = target_accept if target_accept is not None else _DEFAULT_ACCEPT.get(kernel, 0.0)
        self.adapt_rate = float(adapt_rate)
        self.reverse_step, self.resample, self.ess_threshold = (
            bool(reverse_step),
            resample,
            float(ess_threshold),
        )
        self.schedule = schedule if schedule is not None else sched.linear()
        self.ts = sched.time_grid(self.levels, t_max=t_max, t_min=t_min)
        self.group, self.dtype, self.device = group, dtype, torch.device(device)
        self.progress, self.callback = progress, callback

    # ------------------------------------------------------------------------------
    def compile(self, scene: Scene) -> CompiledScene:
        """Validate ``scene`` and build its batched target."""
        compiled = CompiledScene(scene, self.schedule, group=self.group)
        compiled.require_value_observables("AnnealedMCMC")
        return compiled

    def _test(self, compiled: CompiledScene) -> str | None:
        """The Metropolis test this run uses (``None`` for unadjusted kernels)."""
        if self.kernel not in _ADJUSTED:
            return None
        test = self.metropolis or ("energy" if compiled.has_energy else "score")
        if test == "energy" and not compiled.has_energy:
            lacking = sorted({t.factor.name for t in compiled.terms if not t.factor.has_energy})
            raise FactorError(
                f"metropolis='energy' needs an energy for every factor; {lacking} have only scores "
                "(use metropolis='score' or 'effective')"
            )
        degenerate = test == "effective" or (
            test == "score"
            and self.trapezoid_points == 2
            and (self.kernel == "mala" or self.leapfrog_steps == 1)
        )
        if degenerate:
            warnings.warn(
                f"metropolis={test!r} with these settings reduces algebraically to "
                "log a = -(eps/4)(|g(x')|^2 - |g(x)|^2), which ignores the energy change; use "
                "energies or metropolis='score' with trapezoid_points >= 3 (AnnealedMCMC docs)",
                UserWarning,
                stacklevel=3,
            )
        return test

    def run(
        self, scene: Scene | CompiledScene, num_samples: int = 1000, *, seed: int = 0, num_chains: int = 1
    ) -> Result:
        """Draw ``num_samples`` particles; same ``seed``, same samples."""
        compiled = prepare(self, scene, num_samples)
        test = self._test(compiled)
        energy = test == "energy" or (bool(self.resample) and compiled.has_energy)
        compiled.reset_counters()
        packer = Packer(compiled.shapes)
        target = _Target(compiled, packer, energy)
        gen = torch.Generator(self.device).manual_seed(int(seed))
        n = num_samples
        x = packer.pack(compiled.noise(n, gen, dtype=self.dtype, device=self.device))
        p = self._randn(x, gen) * math.sqrt(self.mass)
        lam = self.schedule.log_snr(self.ts)
        alpha, sigma = torch.sigmoid(lam).sqrt().tolist(), torch.sigmoid(-lam).sqrt().tolist()
        log_c = math.log(self.step_size) if not callable(self.step_size) else 0.0
        log_w = torch.zeros(n, dtype=torch.float64, device=self.device)
        acc_level = torch.zeros(self.levels, n, dtype=self.dtype)
        rec: dict[str, list[float]] = {"step_size": [], "accept": [], "ess": [], "nfe": [], "resampled": []}
        start = time.perf_counter()
        t = float(self.ts[0])
        g, logp = target(x, t)
        bar = tqdm(range(self.levels), desc=f"annealed {self.kernel}", disable=not self.progress, leave=False)
        with torch.no_grad():
            for i in bar:
                t = float(self.ts[i])
                nfe0 = compiled.nfe_total
                accs, x_start = [], x
                for _ in range(self.k):
                    eps = self.step_size(t) if callable(self.step_size) else math.exp(log_c) * sigma[i] ** 2
                    x, g, logp, p, acc = self._transition(target, test, x, g, logp, p, t, eps, gen)
                    if acc is not None:
                        accs.append(acc)
                        if self.adapt:
                            log_c += self.adapt_rate * (float(acc.mean()) - self.target_accept) * 10
                if not (bool(torch.isfinite(g).all()) and bool(torch.isfinite(x).all())):
                    compiled.diagnose(packer.unpack(x_start), t, f"in the MCMC moves at t={t:.4g}")
                rec["step_size"].append(
                    self.step_size(t) if callable(self.step_size) else math.exp(log_c) * sigma[i] ** 2
                )
                mean_acc = torch.stack(accs).mean(0) if accs else torch.full((n,), float("nan"))
                acc_level[i] = mean_acc.to(acc_level.dtype).cpu()
                rec["accept"].append(float(mean_acc.mean()))
                if self.callback is not None:  # the state at level t, after its MCMC transitions
                    self.callback({"i": i, "t": t, "x": packer.unpack(x), "step_size": rec["step_size"][-1]})
                # move to the next level
                s = float(self.ts[i + 1])
                step = ReverseStep(alpha[i], sigma[i], alpha[i + 1], sigma[i + 1], 1.0)
                new = step(x, g, gen) if self.reverse_step or s == 0.0 else x
                if not bool(torch.isfinite(new).all()):
                    compiled.diagnose(packer.unpack(x), t, f"in the step from level t={t:.4g}")
                if s > 0.0:
                    g_new, logp_new = target(new, s)
                    if self.resample:
                        log_w += self._increment(
                            compiled, packer, target, step, x, new, g, g_new, logp, logp_new, t, s
                        )
                    x, g, logp = new, g_new, logp_new
                else:
                    x = new
                ess = _ess(log_w)
                resampled = 0.0
                if self.resample and s > 0.0 and (self.resample == "always" or ess < self.ess_threshold * n):
                    idx = _systematic(log_w, gen)
                    x, g, p = x[idx], g[idx], p[idx]
                    logp = logp[idx] if logp is not None else None
                    log_w.zero_()
                    resampled = 1.0
                rec["ess"].append(ess / n)
                rec["resampled"].append(resampled)
                rec["nfe"].append(compiled.nfe_total - nfe0)
        ess_final = _ess(log_w) / n
        if self.resample and self.final_resample and bool((log_w != log_w[0]).any()):
            x = x[_systematic(log_w, gen)]
            log_w.zero_()
        wall = time.perf_counter() - start
        stats = {
            "nfe": dict(compiled.nfe),
            "nfe_total": compiled.nfe_total,
            "calls": compiled.calls,
            "wall_time": wall,
            "t": self.ts[:-1].clone(),
            "kernel": self.kernel,
            "metropolis": test,
            "steps_per_level": self.k,
            "levels": self.levels,
            **({"ess_final": ess_final} if self.resample else {}),
            **{k: torch.tensor(v, dtype=torch.float64) for k, v in rec.items()},
        }
        stats["accept_mean"] = float(torch.nanmean(stats["accept"])) if test else float("nan")
        return Result(
            packer.unpack(x),
            stats,
            {
                **({"accept": acc_level.T.contiguous()} if test else {}),
                **({"log_weight": log_w.cpu()} if self.resample else {}),
            },
            num_chains=num_chains,
            engine=f"{self.name}/{self.kernel}",
        )

    # ------------------------------------------------------------------------------
    def _randn(self, like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(like.shape, generator=gen, dtype=like.dtype, device=like.device)

    def _transition(self, target, test, x, g, logp, p, t, eps, gen):
        """One kernel transition; returns ``(x, g, logp, p, accept_prob or None)``."""
        if self.kernel in ("ula", "mala"):
            noise = self._randn(x, gen)
            x1 = x + eps * g + math.sqrt(2 * eps) * noise
            g1, logp1 = target(x1, t)
            if test is None:
                return x1, g1, logp1, p, None
            log_q_fwd = -(noise.square().sum(1)) / 2  # |x1 - x - eps g|^2 / (4 eps)
            log_q_bwd = -(x - x1 - eps * g1).square().sum(1) / (4 * eps)
            d_logp = self._delta(target, test, x, x1, g, g1, logp, logp1, t, None)
            log_a = d_logp + log_q_bwd - log_q_fwd
            return self._accept(log_a, x, g, logp, p, x1, g1, logp1, p, gen, flip=False)
        # (U-)HMC: partial refresh, leapfrog
        gamma, m = self.damping, self.mass
        p = math.sqrt(1 - gamma) * p + math.sqrt(gamma * m) * self._randn(x, gen)
        h = math.sqrt(2 * eps)
        xs, gs = [x], [g]
        x1, g1, p1 = x, g, p
        logp1 = None
        for _ in range(self.leapfrog_steps):
            p1 = p1 + 0.5 * h * g1
            x1 = x1 + h * p1 / m
            g1, logp1 = target(x1, t)
            p1 = p1 + 0.5 * h * g1
            xs.append(x1)
            gs.append(g1)
        if test is None:
            return x1, g1, logp1, p1, None
        d_logp = self._delta(target, test, x, x1, g, g1, logp, logp1, t, (xs, gs))
        log_a = d_logp - (p1.square().sum(1) - p.square().sum(1)) / (2 * m)
        return self._accept(log_a, x, g, logp, p, x1, g1, logp1, p1, gen, flip=True)

    def _delta(self, target, test, x, x1, g, g1, logp, logp1, t, path):
        """``log pi(x1) - log pi(x)`` per particle by the chosen test."""
        if test == "energy":
            return (logp1 - logp).to(x.dtype)
        if test == "effective":
            xs, gs = path
            segments = zip(xs[:-1], xs[1:], gs[:-1], gs[1:], strict=True)
            return sum(((b - a) * (ga + gb)).sum(1) / 2 for a, b, ga, gb in segments)
        n = self.trapezoid_points
        d = x1 - x
        total = (g * d).sum(1) / 2 + (g1 * d).sum(1) / 2
        for j in range(1, n - 1):
            gj, _ = target(x + (j / (n - 1)) * d, t)
            total = total + (gj * d).sum(1)
        return total / (n - 1)

    def _accept(self, log_a, x, g, logp, p, x1, g1, logp1, p1, gen, *, flip: bool):
        u = torch.rand(log_a.shape, generator=gen, dtype=log_a.dtype, device=log_a.device)
        log_a = torch.nan_to_num(log_a, nan=-math.inf)
        ok = torch.log(u) < log_a
        col = ok[:, None]
        x_new = torch.where(col, x1, x)
        g_new = torch.where(col, g1, g)
        p_new = torch.where(col, p1, -p if flip else p)
        logp_new = torch.where(ok, logp1, logp) if logp is not None and logp1 is not None else None
        return x_new, g_new, logp_new, p_new, log_a.clamp(max=0.0).exp()

    def _increment(self, compiled, packer, target, step, x, x1, g, g1, logp, logp1, t, s) -> torch.Tensor:
        """The log-weight increment of one level change (float64): see the module docstring.

        With energies, ``log pi_s(x1) - log pi_t(x)`` is exact.  Score-only scenes split it
        into ``log pi_s(x1) - log pi_s(x)`` (trapezoid line integral of the score at ``s``)
        and ``log pi_s(x) - log pi_t(x)`` (trapezoid in log-SNR of
        :meth:`~probcomp.compiled.CompiledScene.log_snr_derivative`, from scores alone).
        """
        if logp is not None and logp1 is not None:
            d_logp = logp1.double() - logp.double()
        else:
            lam_t, lam_s = (float(self.schedule.log_snr(u)) for u in (t, s))
            xd = packer.unpack(x)
            d_time = compiled.log_snr_derivative(xd, t) + compiled.log_snr_derivative(xd, s)
            d_logp = (lam_s - lam_t) / 2 * d_time
            if self.reverse_step:  # trapezoid rule on trapezoid_points points from x to x1, at s
                m = self.trapezoid_points
                d = x1 - x
                g_s, _ = target(x, s)
                line = (g_s * d).sum(1) / 2 + (g1 * d).sum(1) / 2
                for j in range(1, m - 1):
                    line = line + (target(x + (j / (m - 1)) * d, s)[0] * d).sum(1)
                d_logp = d_logp + line.double() / (m - 1)
        if not self.reverse_step:
            return d_logp
        return d_logp + self._kernel_ratio(step, x, x1, g)

    def _kernel_ratio(self, step: ReverseStep, x, x1, g) -> torch.Tensor:
        """``log B(x | x1) - log F(x1 | x)`` of the reverse step (float64)."""
        c = step.noise
        ratio = (step.a_t / step.a_s) ** 2  # abar_t / abar_s
        var_b = 1.0 - ratio
        log_b = -(x - math.sqrt(ratio) * x1).double().square().sum(1) / (2 * var_b)
        if c > 0:
            log_f = -(x1 - step.mean(x, g)).double().square().sum(1) / (2 * c**2)
            d = x.shape[1]
            log_b = log_b - d / 2 * math.log(var_b)
            log_f = log_f - d / 2 * math.log(c**2)
        else:  # deterministic move: no kernel densities (the weight is then a plain importance ratio)
            log_b = log_f = torch.zeros_like(log_b)
        return log_b - log_f


def _ess(log_w: torch.Tensor) -> float:
    """Effective sample size ``(sum w)^2 / sum w^2`` of log-weights."""
    w = torch.softmax(log_w, 0)
    return float(1.0 / w.square().sum())


def _systematic(log_w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Systematic resampling indices from log-weights."""
    n = log_w.shape[0]
    w = torch.softmax(log_w, 0)
    u = (
        torch.rand((), generator=gen, dtype=torch.float64, device=log_w.device)
        + torch.arange(n, dtype=torch.float64, device=log_w.device)
    ) / n
    return torch.searchsorted(torch.cumsum(w, 0), u).clamp(max=n - 1)

"""Seconds per 1000 factor evaluations of annealed MCMC: eager, compiled, and a hand-written limit.

For each kernel (ula, mala, uhmc, hmc), factor set and particle count, three loops run the same
annealed sampler (``levels`` levels of ``steps`` transitions, step-size adaptation, a DDPM step
between levels) from the same seed:

* ``eager``: ``AnnealedMCMC(kernel)``, the reference path;
* ``compiled``: ``AnnealedMCMC(kernel, compile=True)`` (:mod:`probcomp.inference.compiled_loop`);
* ``reference``: plain torch functions written for this factor set (the factors' formulas or
  their networks called directly, the kernel's arithmetic, the Robbins-Monro update), compiled
  the same way (``torch.compile(fullgraph=True)``, one transition per call, the random numbers
  drawn eagerly in the same order), driven by a bare Python loop: the limit of what compiling
  can give.

Factor sets: the analytic 2-D ring x bar product (exact scores and energies), a 64-D product of
two 4-component Gaussian mixtures, the zoo's learned ``ring8`` x ``bar`` MLPs (scores only, so
MALA and HMC use the 3-point score test) and the zoo's ``blob-empty`` U-Net (3x32x32, score only).
Timings are medians of repeats after a warm-up run in one process (compile time, the first run's
excess, is reported separately); the compiled and reference loops run alternately (at least
``--repeats`` pairs, for at least ``--budget`` seconds), and their ratio is the median of the
pairs' ratios, so that a drift in the machine's speed hits both.  NFE are the compiled scene's
factor evaluations (one per factor per target evaluation).

Usage: ``python benchmarks/loop_cost.py [--quick] [--out FILE] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from _output import emit  # benchmarks/ is on sys.path when a script runs
from _settings import EARLIER_ANNEALED

import probcomp as pc
from probcomp import targets
from probcomp.factors import GaussianMixture
from probcomp.inference import AnnealedMCMC
from probcomp.inference.compiled_loop import _own_code

KERNELS = ("ula", "mala", "uhmc", "hmc")
LEAPFROG, DAMPING, POINTS, RATE = 3, 0.5, 3, 0.05
Fn = Callable[..., Any]


# Scenes ---------------------------------------------------------------------------------------
def _scene(factors: list[Any], shape: tuple[int, ...]) -> pc.Scene:
    s = pc.Scene()
    x = s.control("x", shape)
    for k, f in enumerate(factors):
        s.observe(f"y{k}", x, factor=f)
    return s


def _gauss64() -> list[GaussianMixture]:
    g = torch.Generator().manual_seed(0)
    means = [0.5 * torch.randn(4, 64, generator=g, dtype=torch.float64) for _ in range(2)]
    return [GaussianMixture(m, 0.2 + 0.3 * torch.rand(4, 64, generator=g)) for m in means]


def factor_sets() -> dict[str, tuple[list[Any], tuple[int, ...]]]:
    ring, bar, _ = targets.analytic_ring_bar()
    return {
        "ring_bar_2d": ([ring, bar], (2,)),
        "gauss_mixtures_64d": (_gauss64(), (64,)),
        "mlp_ring8_bar": ([pc.models.load("ring8"), pc.models.load("bar")], (2,)),
        "unet_blob": ([pc.models.load("blob-empty")], (3, 32, 32)),
    }


# The hand-written reference -------------------------------------------------------------------
def _abar(t: torch.Tensor, b0: float = 0.1, b1: float = 20.0) -> torch.Tensor:
    """The linear VP schedule's abar(t) (every factor here is trained on it)."""
    return torch.sigmoid(-torch.log(torch.expm1(b0 * t + 0.5 * (b1 - b0) * t * t)))


def _mixture(f: GaussianMixture, dtype: torch.dtype) -> Fn:
    mu, lam, logw = f.means.to(dtype), f.evals.to(dtype), f.weights.log().to(dtype)
    d = mu.shape[1]

    def score_energy(y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = _abar(t).to(y.dtype)
        var = a * lam + (1 - a)
        z = y[:, None, :] - a.sqrt() * mu
        logn = logw - 0.5 * ((z * z / var).sum(-1) + var.log().sum(-1) + d * math.log(2 * math.pi))
        g = -(z / var) * torch.softmax(logn, -1)[..., None]
        return g.sum(1), -torch.logsumexp(logn, -1)

    return score_energy


def _network(f: Any) -> Fn:
    net, cond = f.net, f.cond

    def score_energy(y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, None]:
        sigma = (1 - _abar(t)).sqrt().to(y.dtype)
        eps = net(y, t.to(y.dtype).expand(y.shape[0]), cond)
        return -eps / sigma, None

    return score_energy


def reference_target(
    factors: list[Any], shape: tuple[int, ...], dtype: torch.dtype, kernel: str = "hmc"
) -> tuple[Fn, bool]:
    """``(x, t) -> (score, log pi or None)`` on flat particles, and whether it gives ``log pi``:
    where every factor has an energy and the kernel has a Metropolis test that uses it (as
    the engine, which evaluates energies only when they are used)."""
    parts = [_mixture(f, dtype) if isinstance(f, GaussianMixture) else _network(f) for f in factors]
    energy = kernel in ("mala", "hmc") and all(isinstance(f, GaussianMixture) for f in factors)

    def target(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        y = x.reshape(x.shape[0], *shape)
        g, lp = None, None
        for part in parts:
            gk, ek = part(y, t)
            g = gk if g is None else g + gk
            if energy and ek is not None:
                lp = -ek if lp is None else lp - ek
        assert g is not None
        return g.reshape(x.shape[0], -1), lp

    return target, energy


def reference_transition(kernel: str, target: Fn, energy: bool, adapt_to: float | None) -> Fn:
    """One transition of ``kernel`` with its draws ``(z, u)`` given, and the log c update."""

    def d_logp(x, x1, g, g1, lp, lp1, t):
        if energy:
            return lp1 - lp
        d = x1 - x
        mid = target(x + 0.5 * d, t)[0]
        return ((g * d).sum(1) / 2 + (g1 * d).sum(1) / 2 + (mid * d).sum(1)) / (POINTS - 1)

    def select(log_a, new, old, flip):
        log_a = torch.nan_to_num(log_a, nan=-math.inf)
        ok = torch.log(new[-1]) < log_a
        x1, g1, lp1, p1 = new[:-1]
        x, g, lp, p = old
        col = ok[:, None]
        p_old = -p if flip else p
        lp_sel = torch.where(ok, lp1, lp) if lp is not None else None
        return torch.where(col, x1, x), torch.where(col, g1, g), lp_sel, torch.where(col, p1, p_old), log_a

    def step(x, g, lp, p, z, u, t, eps0, log_c0, log_c):
        eps = eps0 * torch.exp(log_c - log_c0) if adapt_to is not None else eps0
        if kernel in ("ula", "mala"):
            x1 = x + eps * g + (2 * eps).sqrt() * z
            g1, lp1 = target(x1, t)
            if kernel == "ula":
                return x1, g1, lp1, p, log_c, None
            # x - x1 - eps g1 = -(eps (g + g1) + sqrt(2 eps) z), as the engine computes it
            back = eps * (g + g1) + (2 * eps).sqrt() * z
            log_q = -back.square().sum(1) / (4 * eps) + z.square().sum(1) / 2
            log_a = d_logp(x, x1, g, g1, lp, lp1, t) + log_q
            x, g, lp, p, log_a = select(log_a, (x1, g1, lp1, p, u), (x, g, lp, p), False)
        else:
            p = math.sqrt(1 - DAMPING) * p + math.sqrt(DAMPING) * z
            h = (2 * eps).sqrt()
            x1, g1, p1, lp1 = x, g, p, None
            for _ in range(LEAPFROG):
                p1 = p1 + 0.5 * h * g1
                x1 = x1 + h * p1
                g1, lp1 = target(x1, t)
                p1 = p1 + 0.5 * h * g1
            if kernel == "uhmc":
                return x1, g1, lp1, p1, log_c, None
            log_a = d_logp(x, x1, g, g1, lp, lp1, t) - (p1.square().sum(1) - p.square().sum(1)) / 2
            x, g, lp, p, log_a = select(log_a, (x1, g1, lp1, p1, u), (x, g, lp, p), True)
        acc = log_a.clamp(max=0.0).exp()
        if adapt_to is not None:
            log_c = log_c + RATE * (acc.mean().double() - adapt_to) * 10
        return x, g, lp, p, log_c, acc

    return step


class Reference:
    """The hand-written annealed sampler: compiled transition and target, a bare level loop."""

    def __init__(self, engine: AnnealedMCMC, factors: list[Any], shape: tuple[int, ...]) -> None:
        self.engine, self.shape = engine, shape
        target, energy = reference_target(factors, shape, engine.dtype, engine.kernel)
        goal = engine.target_accept if engine.adapt else None
        step = reference_transition(engine.kernel, target, energy, goal)
        # fresh code objects: each configuration gets a dynamo cache of its own (one shared cache
        # across configurations recompiles and, in torch 2.13, can fail comparing their guards)
        self.step = torch.compile(_own_code(step, f"step_{id(self):x}"), fullgraph=True)
        self.target = torch.compile(_own_code(target, f"target_{id(self):x}"), fullgraph=True)
        self.evals = (LEAPFROG if engine.kernel in ("uhmc", "hmc") else 1) + (
            0 if energy or engine.kernel in ("ula", "uhmc") else POINTS - 2
        )

    def run(self, n: int, seed: int) -> tuple[torch.Tensor, int]:
        e = self.engine
        lam = e.schedule.log_snr(e.ts)
        alpha, sigma = torch.sigmoid(lam).sqrt().tolist(), torch.sigmoid(-lam).sqrt().tolist()
        ts = [float(v) for v in e.ts]
        gen = torch.Generator().manual_seed(seed)
        d = math.prod(self.shape)
        x = torch.randn(n, *self.shape, generator=gen).reshape(n, d)
        p = torch.randn(n, d, generator=gen)
        adjusted = e.kernel in ("mala", "hmc")
        log_c, nfe = math.log(e.step_size), 0

        def f64(v: float) -> torch.Tensor:
            return torch.tensor(v, dtype=torch.float64)

        with torch.no_grad():
            g, lp = self.target(x, f64(ts[0]))
            nfe += 1
            for i in range(len(ts) - 1):
                draws = []
                for _ in range(e.k):
                    z = torch.randn(n, d, generator=gen)
                    draws.append((z, torch.rand(n, generator=gen) if adjusted else None))
                tt, eps0, lc0 = f64(ts[i]), f64(math.exp(log_c) * sigma[i] ** 2), f64(log_c)
                lc = lc0
                for z, u in draws:
                    x, g, lp, p, lc, _ = self.step(x, g, lp, p, z, u, tt, eps0, lc0, lc)
                nfe += e.k * self.evals
                log_c = float(lc)
                a_t, s_t, a_s, s_s = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
                c = (s_s**2 / s_t**2 * (1 - (a_t / a_s) ** 2)) ** 0.5 if s_s > 0 else 0.0
                x0 = (x + s_t**2 * g) / a_t
                x = a_s * x0 - max(s_s**2 - c**2, 0.0) ** 0.5 * s_t * g
                if c > 0:
                    x = x + c * torch.randn(x.shape, generator=gen)
                if s_s > 0:
                    g, lp = self.target(x, f64(ts[i + 1]))
                    nfe += 1
        return x, nfe


# Timing ---------------------------------------------------------------------------------------
def _time(run: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(first call's seconds, median of ``repeats`` further calls (none: the first's), last output)."""
    t0 = time.perf_counter()
    out = run()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times) if times else first, out


def _pairs(
    a: Callable[[], Any], b: Callable[[], Any], repeats: int, budget: float
) -> tuple[list[float], list[float]]:
    """Seconds of ``a`` and ``b`` run alternately (so that drifts of the machine's speed hit both),
    at least ``repeats`` times and until ``budget`` seconds have passed."""
    ta: list[float] = []
    tb: list[float] = []
    start = time.perf_counter()
    while len(ta) < repeats or time.perf_counter() - start < budget:
        for run, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            run()
            out.append(time.perf_counter() - t0)
    return ta, tb


def measure(
    name: str, factors: list[Any], shape: tuple[int, ...], kernel: str, n: int, a: Any, memo: dict[Any, Any]
) -> dict[str, Any]:
    """One row; ``memo`` keeps the engines, compiled scene and reference of ``(name, kernel)``
    across particle counts, so their graphs are reused (recompiled once for a new count)."""
    steps, levels = (2, 3) if name == "unet_blob" else (a.steps, a.levels)
    if (name, kernel) not in memo:
        # the recorded settings (AnnealedMCMC's earlier defaults): the reference loop takes a DDPM
        # step between levels and has no weights
        opts = {
            **EARLIER_ANNEALED,
            "leapfrog_steps": LEAPFROG,
            "damping": DAMPING,
            "trapezoid_points": POINTS,
        }
        fast = AnnealedMCMC(kernel, steps, levels, compile=True, **opts)
        memo.clear()  # (free the previous configuration's graphs)
        memo[name, kernel] = (
            AnnealedMCMC(kernel, steps, levels, **opts),
            fast,
            fast.compile(_scene(factors, shape)),
            Reference(fast, factors, shape),
        )
    eager, fast, compiled, ref = memo[name, kernel]
    row: dict[str, Any] = {
        "factors": name,
        "kernel": kernel,
        "particles": n,
        "levels": levels,
        "steps_per_level": steps,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first_c, _, res_c = _time(lambda: fast.run(compiled, n, seed=0), 0)
    row["fallback_warnings"] = [str(w.message) for w in caught if "could not be compiled" in str(w.message)]
    _, wall_e, res_e = _time(lambda: eager.run(compiled, n, seed=0), max(1, a.repeats - 1))
    first_r, _, (x_r, nfe_r) = _time(lambda: ref.run(n, 0), 0)
    times_c, times_r = _pairs(
        lambda: fast.run(compiled, n, seed=0), lambda: ref.run(n, 0), a.repeats, a.budget
    )
    wall_c, wall_r = statistics.median(times_c), statistics.median(times_r)
    ratio = statistics.median(c / r for c, r in zip(times_c, times_r, strict=True))
    nfe = int(res_e.stats["nfe_total"])
    per = 1000.0 / nfe
    row.update(
        nfe=nfe,
        nfe_compiled=int(res_c.stats["nfe_total"]),
        nfe_reference=nfe_r * len(factors),
        seconds={"eager": wall_e, "compiled": wall_c, "reference": wall_r},
        seconds_per_1000_nfe={"eager": wall_e * per, "compiled": wall_c * per, "reference": wall_r * per},
        compile_seconds={"compiled": max(first_c - wall_c, 0.0), "reference": max(first_r - wall_r, 0.0)},
        ratio_compiled_over_reference=ratio,  # the median of the alternating pairs' ratios
        timed_pairs=len(times_c),
        ratio_eager_over_compiled=wall_e / wall_c,
        max_abs_diff_compiled_vs_eager=float((res_c["x"] - res_e["x"]).abs().max()),
        max_abs_diff_reference_vs_compiled=float((x_r.reshape(res_c["x"].shape) - res_c["x"]).abs().max()),
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="ring x bar and 64-D only, 500 particles, hmc and ula"
    )
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--levels", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5, help="transitions per level")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs at least (the eager loop: one fewer)")
    ap.add_argument(
        "--budget", type=float, default=3.0, help="seconds of alternating compiled / reference runs, at least"
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sets = factor_sets()
    counts = {"ring_bar_2d": (500, 2000, 20000), "gauss_mixtures_64d": (2000,), "mlp_ring8_bar": (2000,)}
    counts["unet_blob"] = (8,)
    kernels = {k: KERNELS for k in sets}
    kernels["unet_blob"] = ("ula",)
    dropped = {
        "gauss_mixtures_64d": "500 and 20000 particles dropped (compile time of the full run)",
        "mlp_ring8_bar": "500 and 20000 particles dropped (compile time of the full run)",
        "unet_blob": "500 / 2000 / 20000 particles dropped: one U-Net evaluation costs ~20 ms per "
        "particle on one CPU thread; 8 particles, 3 levels x 2 steps, ula only (compile time)",
    }
    if a.quick:
        sets = {k: sets[k] for k in ("ring_bar_2d", "gauss_mixtures_64d")}
        counts = {k: (500,) for k in sets}
        kernels = {k: ("ula", "hmc") for k in sets}
        a.levels, a.steps, a.repeats, a.budget = 4, 3, 2, 0.0
        dropped = {"quick": "ring x bar and 64-D only, 500 particles, ula and hmc"}
    rows: list[dict[str, Any]] = []
    memo: dict[Any, Any] = {}
    t_start = time.perf_counter()
    for name, (factors, shape) in sets.items():
        for kernel in kernels[name]:
            for n in counts[name]:
                rows.append(measure(name, factors, shape, kernel, n, a, memo))
                r = rows[-1]
                print(f"{name} {kernel} {n}: {r['seconds_per_1000_nfe']}", file=sys.stderr, flush=True)
    goals = []
    for r in rows:
        if r["factors"] == "ring_bar_2d":
            goals.append(
                {
                    "kernel": r["kernel"],
                    "particles": r["particles"],
                    "compiled_within_1.1x_of_reference": r["ratio_compiled_over_reference"] <= 1.1,
                    "compiled_over_reference": r["ratio_compiled_over_reference"],
                    "missed_by_1.1x": max(r["ratio_compiled_over_reference"] / 1.1 - 1, 0.0),
                    "compiled_at_least_3x_faster_than_eager": r["ratio_eager_over_compiled"] >= 3.0,
                    "eager_over_compiled": r["ratio_eager_over_compiled"],
                    "missed_by_3x": max(1 - r["ratio_eager_over_compiled"] / 3.0, 0.0),
                }
            )
    settings = {
        "levels": a.levels,
        "steps_per_level": a.steps,
        "leapfrog_steps": LEAPFROG,
        "damping": DAMPING,
    }
    settings.update(trapezoid_points=POINTS, repeats=a.repeats, budget_seconds=a.budget, quick=a.quick)
    emit(
        {
            "benchmark": "loop_cost",
            "command": "python benchmarks/loop_cost.py" + (" --quick" if a.quick else ""),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": "cpu",
            "settings": settings,
            "nfe_counts": "factor evaluations (one per factor per target evaluation): stats['nfe_total']",
            "dropped": dropped,
            "goals_ring_bar_2d": goals,
            "rows": rows,
            "total_seconds": time.perf_counter() - t_start,
        },
        a.out,
    )


if __name__ == "__main__":
    main()

"""Cost of the compiled annealed-HMC loop over a hand-written torch loop doing the same math.

Both run annealed HMC with energy Metropolis tests, partial momentum refresh
(damping 0.5), 3 leapfrog steps, 10 transitions per level, step-size adaptation
and a DDPM step between levels, on the analytic ring x bar product (exact scores
and energies, the cheapest factors there are, so the framework's share is as large
as it gets).  Timed in one process (median of repeats after a warm-up), same seed:
the samples must agree.

Usage: ``python benchmarks/annealed_overhead.py [--quick]`` (prints JSON).
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from _settings import EARLIER_ANNEALED  # benchmarks/ is on sys.path when a script runs
from _timing import timed

import probcomp as pc
from probcomp import targets
from probcomp.inference import AnnealedMCMC


def handwritten(factors, n: int, levels: int, k: int, seed: int) -> torch.Tensor:
    """Annealed generalised HMC as a paper's code would write it, for two 2-D factors."""
    sch = pc.schedules.linear()
    ts = pc.schedules.time_grid(levels)
    lam = sch.log_snr(ts)
    alpha, sigma = torch.sigmoid(lam).sqrt().tolist(), torch.sigmoid(-lam).sqrt().tolist()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen)
    p = torch.randn(n, 2, generator=gen)

    def target(v, t):
        g, e = zip(*(f.score_and_energy(v, t) for f in factors), strict=True)
        return g[0] + g[1], -(e[0] + e[1])

    log_c, gamma, target_acc = math.log(0.05), 0.5, 0.65
    with torch.no_grad():
        g, logp = target(x, float(ts[0]))
        for i in range(levels):
            t = float(ts[i])
            for _ in range(k):
                h = math.sqrt(2 * math.exp(log_c) * sigma[i] ** 2)
                p = math.sqrt(1 - gamma) * p + math.sqrt(gamma) * torch.randn(x.shape, generator=gen)
                x1, g1, p1 = x, g, p
                for _ in range(3):
                    p1 = p1 + 0.5 * h * g1
                    x1 = x1 + h * p1
                    g1, logp1 = target(x1, t)
                    p1 = p1 + 0.5 * h * g1
                log_a = (logp1 - logp) - (p1.square().sum(1) - p.square().sum(1)) / 2
                u = torch.rand(log_a.shape, generator=gen)
                log_a = torch.nan_to_num(log_a, nan=-math.inf)
                ok = torch.log(u) < log_a
                x, g = torch.where(ok[:, None], x1, x), torch.where(ok[:, None], g1, g)
                p, logp = torch.where(ok[:, None], p1, -p), torch.where(ok, logp1, logp)
                log_c += 0.5 * (float(log_a.clamp(max=0).exp().mean()) - target_acc)
            a_t, s_t, a_s, s_s = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
            c = (s_s**2 / s_t**2 * (1 - (a_t / a_s) ** 2)) ** 0.5 if s_s > 0 else 0.0
            x0 = (x + s_t**2 * g) / a_t
            x = a_s * x0 - max(s_s**2 - c**2, 0.0) ** 0.5 * s_t * g
            if c > 0:
                x = x + c * torch.randn(x.shape, generator=gen)
            if s_s > 0:
                g, logp = target(x, float(ts[i + 1]))
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="500 particles, 20 levels, 2 repeats")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (2-D work is fastest on one)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    n, levels, repeats = (500, 20, 2) if a.quick else (2000, 100, 3)
    ring, bar, _ = targets.analytic_ring_bar()
    scene = pc.Scene()
    x = scene.control("x", (2,))
    scene.observe("ring", x, factor=ring)
    scene.observe("bar", x, factor=bar)
    eng = AnnealedMCMC("hmc", 10, levels, **{**EARLIER_ANNEALED, "damping": 0.5})  # what handwritten() does
    compiled = eng.compile(scene)
    t_hand, xh = timed(lambda: handwritten([ring, bar], n, levels, 10, 0), repeats)
    t_pc, res = timed(lambda: eng.run(compiled, n, seed=0), repeats)
    print(
        json.dumps(
            {
                "particles": n,
                "levels": levels,
                "steps_per_level": 10,
                "nfe": res.stats["nfe_total"],
                "handwritten_s": round(t_hand, 4),
                "probcomp_s": round(t_pc, 4),
                "ratio_probcomp_over_handwritten": round(t_pc / t_hand, 3),
                "same_samples_as_handwritten": bool(torch.allclose(res["x"], xh, atol=1e-4)),
                "max_abs_diff": float((res["x"] - xh).abs().max()),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

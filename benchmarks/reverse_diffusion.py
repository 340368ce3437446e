"""Reverse diffusion: composition bias vs steps, framework overhead, and batched grouping.

Prints one JSON object:

* ``quality`` -- on the analytic ring x bar product (the demo's target), W2 / MMD^2 /
  mode-weight TV against exact product samples for DDPM on summed scores and on the
  exact noised product's score ("oracle"), at several step counts, with NFE.
* ``overhead`` -- wall time of ``ReverseDiffusion`` against a hand-written DDPM loop
  over the same two analytic factors (same math, same NFE), run in this process;
  the ratio is probcomp / hand-written.
* ``grouping`` -- a panorama-like scene: one wide signal, K overlapping windows
  scored by one shared patch network; compiled with grouping (one batched call per
  level) against one call per window.  Same NFE, same samples.

Usage: ``python benchmarks/reverse_diffusion.py [--quick]``
"""

from __future__ import annotations

import argparse
import json

import torch
from _timing import timed  # benchmarks/ is on sys.path when a script runs

import probcomp as pc
from probcomp import metrics, ops
from probcomp.demo import ring_and_bar
from probcomp.inference import ReverseDiffusion
from probcomp.models import ModelFactor


def quality(n: int, steps_list: list[int], seed: int = 0) -> list[dict]:
    ring, bar = ring_and_bar()
    exact = pc.factors.exact_product([ring, bar])
    ref = exact.sample(n, torch.Generator().manual_seed(seed + 1))
    bw = metrics.median_bandwidth(ref)
    summed = pc.Scene()
    x = summed.control("x", (2,))
    summed.observe("ring", x, factor=ring)
    summed.observe("bar", x, factor=bar)
    oracle = pc.Scene()
    oracle.observe("product", oracle.control("x", (2,)), factor=exact)
    rows = []
    for steps in steps_list:
        for label, scene in (("summed scores", summed), ("oracle score", oracle)):
            res = ReverseDiffusion(steps=steps).run(scene, n, seed=seed)
            w = metrics.mode_weights(res["x"], exact.means)
            rows.append(
                {
                    "score": label,
                    "steps": steps,
                    "nfe": res.stats["nfe_total"],
                    "w2": round(metrics.w2(res["x"], ref), 4),
                    "mmd2": round(metrics.mmd(res["x"], ref, bandwidth=bw), 5),
                    "mode_tv": round(0.5 * float((w - exact.weights).abs().sum()), 4),
                }
            )
    return rows


def handwritten_ddpm(factors, n, steps, seed):
    """The loop a paper's code would write: sum the scores, take DDPM steps."""
    sch = pc.schedules.linear()
    ts = pc.schedules.time_grid(steps)
    abar = sch.abar(ts)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    with torch.no_grad():
        for i in range(steps):
            t = float(ts[i])
            s = sum(f.score(x, t) for f in factors)
            a_t, a_s = float(abar[i]), float(abar[i + 1])
            x0 = (x + (1 - a_t) * s) / a_t**0.5
            eps = -((1 - a_t) ** 0.5) * s
            var = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
            x = a_s**0.5 * x0 + max(1 - a_s - var, 0.0) ** 0.5 * eps
            if var > 0:
                x = x + var**0.5 * torch.randn(x.shape, generator=g)
    return x


def overhead(n: int, steps: int, repeats: int) -> dict:
    ring, bar = ring_and_bar()
    scene = pc.Scene()
    x = scene.control("x", (2,))
    scene.observe("ring", x, factor=ring)
    scene.observe("bar", x, factor=bar)
    eng = ReverseDiffusion(steps=steps)
    compiled = eng.compile(scene)
    t_base, xb = timed(lambda: handwritten_ddpm([ring, bar], n, steps, 0), repeats)
    t_pc, res = timed(lambda: eng.run(compiled, n, seed=0), repeats)
    return {
        "particles": n,
        "steps": steps,
        "nfe": res.stats["nfe_total"],
        "handwritten_s": round(t_base, 4),
        "probcomp_s": round(t_pc, 4),
        "ratio_probcomp_over_handwritten": round(t_pc / t_base, 3),
        "same_samples_as_handwritten": bool(torch.allclose(res["x"], xb, atol=1e-4)),
    }


class PatchNet(torch.nn.Module):
    """An untrained eps-network standing in for a learned patch model (cost is what matters)."""

    def __init__(self, d: int, hidden: int = 256) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(d + 1, hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, d),
        )

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.1 * self.net(torch.cat([y, t[:, None]], 1))


def grouping(n: int, steps: int, windows: int, repeats: int) -> dict:
    patch, stride = 32, 16
    width = stride * (windows - 1) + patch
    factor = ModelFactor(PatchNet(patch), (patch,), pc.schedules.linear(), "eps", name="patch")
    scene = pc.Scene()
    x = scene.control("x", (width,))
    for k in range(windows):
        scene.observe(f"win{k}", x, factor=factor, fn=ops.window(k * stride, patch))
    grouped = ReverseDiffusion(steps=steps)
    single = ReverseDiffusion(steps=steps, group=False)
    cg, cs = grouped.compile(scene), single.compile(scene)
    t_single, rs = timed(lambda: single.run(cs, n, seed=0), repeats)
    t_group, rg = timed(lambda: grouped.run(cg, n, seed=0), repeats)
    return {
        "particles": n,
        "steps": steps,
        "windows": windows,
        "signal_length": width,
        "nfe": rg.stats["nfe_total"],
        "calls_grouped": rg.stats["calls"],
        "calls_per_window": rs.stats["calls"],
        "per_window_s": round(t_single, 4),
        "grouped_s": round(t_group, 4),
        "speedup_grouped": round(t_single / t_group, 3),
        "max_abs_diff": float((rg["x"] - rs["x"]).abs().max()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    a = p.parse_args()
    if a.quick:
        out = {
            "quality": quality(200, [20]),
            "overhead": overhead(500, 20, 1),
            "grouping": grouping(16, 5, 4, 1),
        }
    else:
        out = {
            "quality": quality(2000, [50, 100, 200, 400]),
            "overhead": overhead(4000, 200, 5),
            "grouping": grouping(64, 100, 8, 3),
        }
    out["torch_threads"] = torch.get_num_threads()
    out["torch"] = torch.__version__
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""``probcomp demo``: compose two 2-D factors whose product is known exactly.

By default the factors are the zoo's *learned* ``ring8`` (8 Gaussians, radius 0.5,
std 0.03) and ``bar`` (uniform on ``[-0.2, 0.2] x [-1, 1]``) score models, loaded
from shipped weights.  The exact product of their data distributions is the ring
restricted to the bar, sampled exactly by rejection, with mode weights from the
Gaussian CDF.  ``--analytic`` composes analytic factors instead (an 8-Gaussian ring
of std 0.05 and a Gaussian bar), whose product is an exact 8-component mixture and
which adds the oracle row.  Every method is scored against exact product samples:

* ``exact (floor)``      -- two independent exact draws against each other;
* ``ddpm summed scores`` -- reverse diffusion on ``s_ring + s_bar`` (the common baseline);
* ``ddim summed scores`` -- the deterministic variant;
* ``annealed HMC + AIS`` -- ``AnnealedMCMC()``, annealed HMC with annealed-importance weights
  on a log-SNR grid, which samples the composed target at every level instead of summing
  noised scores (its defaults: the settings for energies on the analytic factors, for
  score-only factors on the learned ones);
* ``ddpm oracle score``  -- (analytic only) reverse diffusion on the exact noised
  product's score, which isolates the composition bias from the sampler's error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# absolute, as the engines and models (imported below) import them: in the type checker's copy of the
# package (tools/typecheck_tree.py) probcomp.scene and .scene are two files, at run time one module
from probcomp import datasets, factors, metrics
from probcomp.scene import Scene


def ring_and_bar() -> tuple[factors.GaussianMixture, factors.Gaussian]:
    """The analytic demo's two factors."""
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    ring = factors.GaussianMixture(
        0.5 * torch.stack([ang.cos(), ang.sin()], 1), torch.full((8,), 0.05), name="ring"
    )
    bar = factors.Gaussian([0.0, 0.0], [0.15, 0.6], name="bar")
    return ring, bar


@dataclass
class DemoTarget:
    """Two factors and everything known exactly about their product."""

    label: str
    ring: factors.ScoreFactor
    bar: factors.ScoreFactor
    sample: Callable[[int, torch.Generator], torch.Tensor]
    mode_means: torch.Tensor
    mode_weights: torch.Tensor
    log_density: Callable[[torch.Tensor], torch.Tensor]
    oracle: factors.ScoreFactor | None = None


def analytic_target() -> DemoTarget:
    ring, bar = ring_and_bar()
    exact = factors.exact_product([ring, bar], name="exact product")
    return DemoTarget(
        "analytic ring8 x bar (exact product: an 8-component Gaussian mixture)",
        ring,
        bar,
        exact.sample,
        exact.means,
        exact.weights,
        exact.log_prob,
        exact,
    )


def learned_target() -> DemoTarget:
    from probcomp import models

    ring_data, bar_data = datasets.ring(), datasets.bar()
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 0.5 * torch.stack([ang.cos(), ang.sin()], 1)
    # mass of each ring component inside |x| <= 0.2 (|y| <= 1 holds to 1e-60)
    z = lambda v: 0.5 * (1 + torch.erf(v / (0.03 * math.sqrt(2))))  # noqa: E731
    inside = z(0.2 - means[:, 0]) - z(-0.2 - means[:, 0])
    weights = inside / inside.sum()

    def sample(n: int, g: torch.Generator) -> torch.Tensor:
        out = torch.empty(0, 2)
        while out.shape[0] < n:  # exact: ring samples that fall in the bar
            x = ring_data.sample(4 * n, g)
            out = torch.cat([out, x[torch.isfinite(bar_data.log_prob(x))]])
        return out[:n]

    return DemoTarget(
        "learned ring8 x bar (zoo weights; exact product: the ring restricted to the bar)",
        models.load("ring8"),
        models.load("bar"),
        sample,
        means,
        weights,
        lambda x: ring_data.log_prob(x) + bar_data.log_prob(x).clamp(min=-1e4),
    )


def run_demo(
    num_samples: int = 2000, steps: int = 200, seed: int = 0, png: str | None = None, analytic: bool = False
) -> dict[str, Any]:
    """Run every method, return the metrics as a JSON-ready dict (and write the PNG)."""
    from probcomp.inference import AnnealedMCMC, ReverseDiffusion

    target = analytic_target() if analytic else learned_target()
    gen = torch.Generator().manual_seed(seed)
    ref = target.sample(num_samples, gen)
    floor = target.sample(num_samples, gen)

    scene = Scene()
    x = scene.control("x", shape=(2,))
    scene.observe("ring", x, factor=target.ring)
    scene.observe("bar", x, factor=target.bar)
    methods: list[tuple[str, Any, Scene]] = [
        ("ddpm summed scores", ReverseDiffusion(steps=steps, sampler="ddpm"), scene),
        ("ddim summed scores", ReverseDiffusion(steps=steps, sampler="ddim"), scene),
        ("annealed HMC + AIS", AnnealedMCMC(), scene),
    ]
    if target.oracle is not None:
        oracle = Scene()
        oracle.observe("product", oracle.control("x", shape=(2,)), factor=target.oracle)
        methods.append(("ddpm oracle score", ReverseDiffusion(steps=steps, sampler="ddpm"), oracle))

    runs = {"exact (floor)": (floor, 0, 0.0)}
    for label, engine, sc in methods:
        res = engine.run(sc, num_samples, seed=seed)
        runs[label] = (res["x"], res.stats["nfe_total"], res.stats["wall_time"])

    rows = []
    bw = metrics.median_bandwidth(ref.to(torch.float64))
    for label, (xs, nfe, wall) in runs.items():
        w_hat = metrics.mode_weights(xs, target.mode_means)
        rows.append(
            {
                "method": label,
                "w2": metrics.w2(xs, ref),
                "mmd2": metrics.mmd(xs, ref, bandwidth=bw),
                "mode_weights": [round(float(v), 4) for v in w_hat],
                "mode_tv": 0.5 * float((w_hat - target.mode_weights).abs().sum()),
                "nfe": int(nfe),
                "wall_time_s": round(float(wall), 3),
            }
        )
    out = {
        "target": target.label,
        "num_samples": num_samples,
        "steps": steps,
        "seed": seed,
        "true_mode_weights": [round(float(v), 4) for v in target.mode_weights],
        "rows": rows,
    }
    if png:
        _plot(png, target.log_density, {k: v[0] for k, v in runs.items()})
        out["png"] = png
    return out


def format_table(out: dict[str, Any]) -> str:
    """A plain-text table of :func:`run_demo`'s output."""
    head = f"{'method':<22} {'W2':>7} {'MMD^2':>9} {'mode TV':>8} {'NFE':>5}  mode weights"
    lines = [out["target"], f"n={out['num_samples']}, steps={out['steps']}, seed={out['seed']}", "", head]
    lines.append(
        f"{'(true)':<22} {'':>7} {'':>9} {'':>8} {'':>5}  "
        + " ".join(f"{w:.3f}" for w in out["true_mode_weights"])
    )
    for r in out["rows"]:
        lines.append(
            f"{r['method']:<22} {r['w2']:7.4f} {r['mmd2']:9.5f} {r['mode_tv']:8.4f} {r['nfe']:5d}  "
            + " ".join(f"{w:.3f}" for w in r["mode_weights"])
        )
    if "png" in out:
        lines += ["", f"samples over the true density: {out['png']}"]
    return "\n".join(lines)


def _plot(
    path: str, log_density: Callable[[torch.Tensor], torch.Tensor], samples: dict[str, torch.Tensor]
) -> None:
    from . import plots

    fig = plots.samples_2d(
        samples, log_density, title="ring x bar: samples (red) over the exact product density (grey)"
    )
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)

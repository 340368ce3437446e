"""Panorama from a patch model: PerStepEM against stitching and reverse diffusion (issue 5, task 1).

The control is one 64-sample signal; overlapping 32-sample windows at stride 16 (three
windows: the seed's panorama of three patches, §6.1) or 8 (five windows) are its
observables, each scored by the same patch factor.  Two patch factors:

* ``analytic`` -- the exact Gaussian law of 32 consecutive samples of the training signals
  (:func:`probcomp.datasets.smooth_signal_covariance`), exact noised scores;
* ``learned`` -- the zoo's ``signal-window`` model (trained on those windows).

Methods (all at the same number of levels):

* ``per-step-em`` -- :class:`probcomp.inference.PerStepEM`, deterministic DDIM per window
  (Eq. 15) and the least-squares fusion of Eq. 29 (Gauss-Newton: exact in one step);
* ``per-step-em-eta0.5`` / ``-eta1`` -- the same with stochastic DDIM steps (the seed's
  open question);
* ``per-step-em-lambda0.1`` / ``-lambda0`` -- with the auxiliary step sizes of Eq. 30 and
  an L1 prior of strength 0.1 or none (Eq. 41);
* ``ddpm-sum`` / ``ddim-sum`` -- :class:`~probcomp.inference.ReverseDiffusion` on the same
  scene (the overlapping windows' scores are summed);
* ``stitched`` -- two independent windows (DDPM on one window) laid side by side.

Metrics against real panoramas (crops of the training signals): the mean jump
``|x_b - x_{b-1}|`` at window edges over that of real signals (``seam_ratio``; 1 is ideal)
and the same away from edges (``interior_ratio``); sliced W2 of all 32-sample windows at
offsets 0, 8, ..., 32 against real windows, and of whole panoramas against real ones,
each beside the real-vs-real floor; the relative error of the panorama's covariance and
power spectrum; NFE and wall time.

Full run (about 3 min on one CPU thread)::

    python benchmarks/panorama.py --json --out benchmarks/results/panorama.json

Smoke test (analytic only, 64 panoramas, 20 levels, stride 16; a few seconds)::

    python benchmarks/panorama.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import probcomp as pc
from probcomp import datasets, metrics, ops
from probcomp.factors import Gaussian
from probcomp.inference import PerStepEM, ReverseDiffusion

WIDTH, LENGTH = 32, 64


def _starts(stride: int) -> list[int]:
    return list(range(0, LENGTH - WIDTH + 1, stride))


def panorama_scene(patch: pc.factors.ScoreFactor, stride: int) -> pc.Scene:
    """One control of length 64; windows of 32 at ``0, stride, ..., 32``, scored by ``patch``."""
    sc = pc.Scene()
    x = sc.control("x", (LENGTH,))
    for j, start in enumerate(_starts(stride)):
        sc.observe(f"w{j}", x, factor=patch, fn=ops.window(start, WIDTH))
    return sc


def analytic_patch() -> Gaussian:
    cov = datasets.smooth_signal_covariance(WIDTH).to(torch.float32)
    return Gaussian(torch.zeros(WIDTH), cov + 1e-4 * torch.eye(WIDTH), name="gp-window")


Run = Callable[[int, int], tuple[torch.Tensor, dict]]


def methods(patch: pc.factors.ScoreFactor, stride: int, steps: int) -> dict[str, Run]:
    scene = panorama_scene(patch, stride)
    single = pc.Scene()
    single.observe("w", single.control("x", (WIDTH,)), factor=patch)

    def engine(make: Callable[[], Any]) -> Run:
        def run(n: int, seed: int) -> tuple[torch.Tensor, dict]:
            res = make().run(scene, n, seed=seed)
            return res["x"], res.stats

        return run

    def stitched(n: int, seed: int) -> tuple[torch.Tensor, dict]:
        res = ReverseDiffusion(steps).run(single, n * (LENGTH // WIDTH), seed=seed)
        return res["x"].reshape(n, LENGTH), res.stats

    return {
        "per-step-em": engine(lambda: PerStepEM(steps, 1)),
        "per-step-em-eta0.5": engine(lambda: PerStepEM(steps, 1, eta=0.5)),
        "per-step-em-eta1": engine(lambda: PerStepEM(steps, 1, eta=1.0)),
        "per-step-em-lambda0.1": engine(lambda: PerStepEM(steps, 5, lambdas=True, lambda_l1=0.1)),
        "per-step-em-lambda0": engine(lambda: PerStepEM(steps, 5, lambdas=True, lambda_l1=0.0)),
        "ddpm-sum": engine(lambda: ReverseDiffusion(steps)),
        "ddim-sum": engine(lambda: ReverseDiffusion(steps, "ddim")),
        "stitched": stitched,
    }


def _jumps(x: torch.Tensor) -> torch.Tensor:
    return (x[:, 1:] - x[:, :-1]).abs().mean(0)  # jump into position b at index b - 1


def _windows(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[:, o : o + WIDTH] for o in range(0, x.shape[1] - WIDTH + 1, 8)])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def measure(x: torch.Tensor, real: torch.Tensor, stride: int) -> dict[str, float]:
    starts = _starts(stride)
    edges = sorted(({*starts} | {s + WIDTH for s in starts}) - {0, LENGTH})
    interior = [b for b in range(1, x.shape[1]) if b not in edges]
    jx, jr = _jumps(x), _jumps(real)
    spec = lambda v: torch.fft.rfft(v - v.mean(1, keepdim=True), dim=1).abs().square().mean(0)  # noqa: E731
    return {
        "seam_ratio": float(jx[[b - 1 for b in edges]].mean() / jr[[b - 1 for b in edges]].mean()),
        "max_seam_ratio": float((jx[[b - 1 for b in edges]] / jr.mean()).max()),
        "interior_ratio": float(jx[[b - 1 for b in interior]].mean() / jr[[b - 1 for b in interior]].mean()),
        "window_sliced_w2": metrics.sliced_w2(_windows(x), _windows(real), seed=0),
        "panorama_sliced_w2": metrics.sliced_w2(x, real, seed=0),
        "cov_rel_error": _rel(torch.cov(x.T.double()), torch.cov(real.T.double())),
        "spectrum_rel_error": _rel(spec(x.double()), spec(real.double())),
        "std": float(x.std()),
    }


def figure(drawn: dict[str, torch.Tensor], real: torch.Tensor, stride: int, variant: str) -> Any:
    """Three panoramas per method, window edges dashed."""
    from probcomp.plots import _plt

    plt = _plt()
    names = ["real", "per-step-em", "ddpm-sum", "stitched"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.4), sharey=True)
    edges = sorted(({*_starts(stride)} | {s + WIDTH for s in _starts(stride)}) - {0, LENGTH})
    for ax, name in zip(axes, names, strict=True):
        for row in real if name == "real" else drawn[name]:
            ax.plot(row.numpy(), lw=1)
        for b in edges:
            ax.axvline(b - 0.5, color="grey", ls="--", lw=0.7)
        ax.set_title(name if name == "real" else f"{name} ({variant})", fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="analytic only, 64 panoramas, 20 levels, stride 16")
    p.add_argument("--json", action="store_true", help="print the JSON only")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--strides", default="16,8", help="window strides (default 16,8)")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--figure", type=Path, help="PNG: three panoramas per method (last variant, first stride)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, steps = (64, 20) if args.quick else (args.samples, args.steps)
    strides = [16] if args.quick else [int(v) for v in args.strides.split(",")]
    g = torch.Generator().manual_seed(10_000 + args.seed)
    real, real2 = (datasets.smooth_signals(n, g)[:, :LENGTH] for _ in range(2))
    variants: dict[str, Callable[[], pc.factors.ScoreFactor]] = {"analytic": analytic_patch}
    if not args.quick:
        variants["learned"] = lambda: pc.models.load("signal-window")
    out: dict[str, Any] = {
        "config": {
            "strides": strides,
            "width": WIDTH,
            "length": LENGTH,
            "samples": n,
            "levels": steps,
            "seed": args.seed,
            "torch_threads": args.threads,
            "torch": torch.__version__,
        },
        "real_vs_real": {
            f"stride{st}": {key: round(v, 4) for key, v in measure(real2, real, st).items()} for st in strides
        },
        "variants": {},
    }
    start = time.perf_counter()
    drawn: dict[str, torch.Tensor] = {}
    for vname, make_patch in variants.items():
        patch = make_patch()
        for stride in strides:
            rows = {}
            for mname, run in methods(patch, stride, steps).items():
                x, st = run(n, args.seed)
                row = {key: round(v, 4) for key, v in measure(x.detach(), real, stride).items()}
                row.update(nfe=st["nfe_total"], wall_s=round(st["wall_time"], 3))
                rows[mname] = row
                if stride == strides[0]:
                    drawn[mname] = x[:3].detach()
                if not args.json:
                    print(f"{vname} stride {stride} {mname}: {row}", file=sys.stderr, flush=True)
            out["variants"][f"{vname}/stride{stride}"] = rows
    out["config"]["total_wall_s"] = round(time.perf_counter() - start, 1)
    if args.figure:
        figure(drawn, real[:3], strides[0], list(variants)[-1]).savefig(args.figure, dpi=120)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

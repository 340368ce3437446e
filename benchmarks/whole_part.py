"""Whole + part: a whole-image model and a part model on a fixed crop (issue 5, task 3; seed §6.3).

The control is one 32x32 RGB image ``x``.  Its observables:

* ``whole`` -- ``y = x``, scored by the zoo's ``blob-clutter`` model with both conditions
  dropped: scenes of 1-5 blobs of random colours and places.  It never sees a colour
  request;
* ``part`` -- ``y = x[:, 0:16, 0:16]`` (the top-left quadrant, :func:`probcomp.ops.window`),
  scored by the zoo's ``blob-part`` model conditioned on a colour: a 16x16 crop holding
  one blob of that colour.

The requested colour is drawn per image.  Methods, all with the same number of levels:

* ``per-step-em`` -- :class:`~probcomp.inference.PerStepEM` (deterministic DDIM per
  observable, Eq. 15, fused by the least squares of Eq. 29);
* ``-clip`` -- with every denoised estimate clamped to the data's range [-1, 1]
  (``clip_x0``): the zoo's image models predict plain eps, whose error at high noise
  reaches ``x0_hat`` multiplied by ``sigma / alpha`` and is integrated by deterministic DDIM;
* ``per-step-em-eta1-clip`` -- stochastic DDIM steps (``eta = 1``, Eq. 14), clamped;
* ``reverse-diffusion`` -- :class:`~probcomp.inference.ReverseDiffusion` (DDPM) on the
  same scene, the crop's score added to the whole's on its pixels;
* ``*-control`` -- the same engine without the part observable (the seed's control group),
  for ``per-step-em-clip`` and ``reverse-diffusion``.

Metrics, from the programmatic detector (:mod:`probcomp.detection`):

* ``part_satisfied`` -- the share of images whose crop holds a detected blob of the
  requested colour (on the control group: the chance that a free scene does);
* ``objects_in_crop`` -- mean detections in the crop;
* ``whole_count_ok`` -- the share of whole images with 1-5 detected objects, the whole
  model's support (a broken image has none or dozens), and ``whole_mean_count``;
* ``whole_denoising_loss`` -- the whole model's denoising loss on the generated images at
  ``t`` in {0.1, 0.3, 0.5} over its loss on real scenes (1 is "as realistic as data");
* NFE and wall time.

    python benchmarks/whole_part.py --json --out benchmarks/results/whole_part.json
    python benchmarks/whole_part.py --quick --json    # smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from _output import emit  # benchmarks/ is on sys.path when a script runs

import probcomp as pc
from probcomp import datasets, ops
from probcomp.detection import detect
from probcomp.inference import PerStepEM, ReverseDiffusion

CROP = 16
FIGURE: dict[str, torch.Tensor] = {}  # method -> generated images, for --figure


def build(whole: Any, part: Any | None, color: torch.Tensor | None) -> pc.Scene:
    scene = pc.Scene()
    x = scene.control("x", (3, 32, 32))
    scene.observe("whole", x, factor=whole)
    if part is not None:
        crop = ops.window((0, 0), (CROP, CROP), axis=(-2, -1))
        scene.observe("part", x, factor=part.condition(color=color), fn=crop)
    return scene


def denoising_loss(model: Any, x: torch.Tensor, seed: int) -> float:
    """Mean ``||eps - eps_hat(x_t, t)||^2`` per element at t in {0.1, 0.3, 0.5} (shared draws)."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for t in (0.1, 0.3, 0.5):
        eps = torch.randn(x.shape, generator=g).to(x.device)
        tt = torch.tensor(t, dtype=torch.float64)
        a, s = float(model.schedule.alpha(tt)), float(model.schedule.sigma(tt))
        with torch.no_grad():
            pred = model.eps_given(a * x + s * eps, tt, {})
        total += float((pred - eps).square().mean())
    return total / 3


def scores(imgs: torch.Tensor, color: torch.Tensor, whole: Any, real_loss: float, seed: int) -> dict:
    crops = detect(imgs[:, :, :CROP, :CROP])
    scenes = detect(imgs)
    hit = [bool((d.color == int(c)).any()) for d, c in zip(crops, color.tolist(), strict=True)]
    counts = torch.tensor([d.count for d in scenes], dtype=torch.float64)
    return {
        "part_satisfied": round(sum(hit) / len(hit), 4),
        "objects_in_crop": round(sum(d.count for d in crops) / len(crops), 3),
        "whole_count_ok": round(float(((counts >= 1) & (counts <= 5)).double().mean()), 4),
        "whole_mean_count": round(float(counts.mean()), 3),
        "whole_denoising_loss": round(denoising_loss(whole, imgs, seed) / real_loss, 4),
        "max_abs_pixel": round(float(imgs.abs().max()), 3),
    }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    dev = args.device
    whole = pc.models.load("blob-clutter").to(dev)
    part = pc.models.load("blob-part").to(dev)
    g = torch.Generator().manual_seed(args.seed)
    color = torch.randint(6, (args.images,), generator=g)
    real, _ = datasets.blobs(args.images, g, num_objects=(1, 5), min_separation=7.0)
    real_loss = denoising_loss(whole, real.to(dev), args.seed + 1)
    clip = (-1.0, 1.0)
    engines = {  # name: (engine factory, also run the control group)
        "per-step-em": (lambda: PerStepEM(args.levels, 1, device=dev), False),
        "per-step-em-clip": (lambda: PerStepEM(args.levels, 1, clip_x0=clip, device=dev), True),
        "per-step-em-eta1-clip": (
            lambda: PerStepEM(args.levels, 1, eta=1.0, clip_x0=clip, device=dev),
            False,
        ),
        "reverse-diffusion": (lambda: ReverseDiffusion(args.levels, device=dev), True),
        "reverse-diffusion-clip": (lambda: ReverseDiffusion(args.levels, clip_x0=clip, device=dev), False),
    }
    out: dict[str, Any] = {
        "config": {
            "images": args.images,
            "levels": args.levels,
            "seed": args.seed,
            "device": dev,
            "crop": [0, CROP, 0, CROP],
            "command": " ".join(sys.argv),
        },
        "real": scores(real.to(dev), color, whole, real_loss, args.seed + 2),
        "methods": {},
    }
    for name, (make, with_control) in engines.items():
        for control in (False, True) if with_control else (False,):
            scene = build(whole, None if control else part, None if control else color.to(dev))
            t0 = time.perf_counter()
            res = make().run(scene, args.images, seed=args.seed)
            row = scores(res["x"], color, whole, real_loss, args.seed + 2)
            FIGURE[name + ("-control" if control else "")] = res["x"]
            row["nfe_per_sample"] = res.stats["nfe_total"]
            row["seconds"] = round(time.perf_counter() - t0, 2)
            out["methods"][name + ("-control" if control else "")] = row
            print(name, control, row, file=sys.stderr, flush=True)
    return out


def cli(doc: str, run: Callable[[argparse.Namespace], dict], figure: dict[str, torch.Tensor]) -> None:
    """The command line shared by the image-generation benchmarks: run, print JSON, draw ``figure``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--levels", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--figure", help="PNG: the first 8 images of every method, one row each")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.quick:
        args.images, args.levels = 4, 5
    emit(run(args), args.out)
    if args.figure:
        from probcomp.plots import image_grid

        rows = [v[:8] for v in figure.values()]
        titles = [name if j == 0 else "" for name in figure for j in range(8)]
        image_grid(torch.cat(rows).cpu(), ncol=8, titles=titles).savefig(args.figure, dpi=120)


def main() -> None:
    cli(__doc__, run, FIGURE)


if __name__ == "__main__":
    main()

"""Background + object: two controls and a masked composite (issue 5, task 2; seed §6.2).

Controls: ``x1``, a scene without the requested object, and ``x2``, an image of the
object.  Observables:

* ``y1 = x1`` -- scored by the zoo's ``blob-clutter`` model unconditioned: a scene of
  1-5 random blobs (the background);
* ``y2 = x2`` -- scored by the zoo's ``blob-xy`` model conditioned on the requested
  object (colour ``c`` at the box centre ``b``): the object alone;
* ``y3 = composite(x1, x2)`` -- ``x1`` outside a 12x12 box around ``b``, ``x2`` inside it
  (:func:`probcomp.ops.composite`), scored by ``blob-clutter`` conditioned on ``(b, c)``:
  a cluttered scene that holds the requested object at ``b``.

The requested colour is drawn per image; the box is one of four fixed places (the
quadrants' centres; a composite's mask is one per scene, so each place is one run).
Methods (same number of levels):

* ``per-step-em`` -- :class:`~probcomp.inference.PerStepEM` on the three observables
  (Eq. 29 fuses the three DDIM proposals; the composite ties ``x1`` and ``x2``);
  ``-clip`` with every denoised estimate clamped to the data's range [-1, 1] (``clip_x0``;
  see ``whole_part.py``), ``-eta1-clip`` also with stochastic DDIM steps (Eq. 14);
* ``reverse-diffusion`` -- :class:`~probcomp.inference.ReverseDiffusion` on the same scene;
* ``paste`` -- ``x1`` and ``x2`` drawn independently (clamped DDPM on ``y1`` and ``y2`` alone) and
  composited afterwards: what an editor without the joint model does.

Metrics on the composite, from the programmatic detector (:mod:`probcomp.detection`):

* ``object_at_box`` -- a detected blob of the requested colour within 3 px of ``b``;
* ``cut_objects`` -- detections of the composite within 2 px of the box's edge: objects
  of ``x1`` sliced by the box (a seam), which real scenes do not have more of than chance
  (``real`` gives that rate on data with an object at ``b``);
* ``composite_denoising_loss`` -- ``y3``'s model's denoising loss on the composite at
  ``t`` in {0.1, 0.3, 0.5} over that on real scenes holding the object at ``b``;
* ``background_object_free`` -- the share of ``x1`` with no detection inside the box:
  the composite's background is consistent with what the box hides;
* NFE and wall time.

    python benchmarks/background_object.py --json --out benchmarks/results/background_object.json
    python benchmarks/background_object.py --quick --json    # smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import torch
from whole_part import cli, denoising_loss

import probcomp as pc
from probcomp import datasets, ops
from probcomp.detection import detect
from probcomp.inference import PerStepEM, ReverseDiffusion

BOX = 12  # pixels
FIGURE: dict[str, torch.Tensor] = {}  # method -> composites, for --figure
SIZE = 32


def boxes(b: torch.Tensor) -> torch.Tensor:
    """Masks ``(n, 1, 32, 32)``: 1 inside the ``BOX`` x ``BOX`` square centred at each ``b`` ``(n, 2)``."""
    p = (torch.arange(SIZE, dtype=torch.float32) + 0.5) / SIZE
    half = BOX / 2 / SIZE
    inx = ((p[None, :] - b[:, :1]).abs() <= half).float()  # (n, W)
    iny = ((p[None, :] - b[:, 1:]).abs() <= half).float()  # (n, H)
    return (iny[:, :, None] * inx[:, None, :])[:, None]


def build(
    clutter: Any, obj: Any, b: torch.Tensor, c: torch.Tensor, mask: torch.Tensor, joint: bool
) -> pc.Scene:
    """The three observables (``joint``) or ``y1``, ``y2`` alone (the paste baseline)."""
    scene = pc.Scene()
    x1 = scene.control("x1", (3, SIZE, SIZE))
    x2 = scene.control("x2", (3, SIZE, SIZE))
    scene.observe("y1", x1, factor=clutter)
    scene.observe("y2", x2, factor=obj.condition(xy=b, color=c))
    if joint:
        scene.observe("y3", x1, x2, factor=clutter.condition(xy=b, color=c), fn=ops.composite(mask))
    return scene


def scores(
    comp: torch.Tensor,
    x1: torch.Tensor | None,
    b: torch.Tensor,
    c: torch.Tensor,
    judge: Any,
    ref: float,
    seed: int,
) -> dict:
    found = detect(comp)
    bb = b.cpu().numpy()
    at_box, cut = [], []
    for d, centre, col in zip(found, bb, c.tolist(), strict=True):
        dist = np.abs(d.xy - centre[None]) * SIZE  # px, per axis
        near = np.hypot(*(d.xy - centre[None]).T) * SIZE <= 3.0 if d.count else np.zeros(0, bool)
        at_box.append(bool((near & (d.color == col)).any()))
        edge = np.abs(dist.max(1) - BOX / 2) <= 2.0 if d.count else np.zeros(0, bool)
        cut.append(int(edge.sum()))
    out = {
        "object_at_box": round(float(np.mean(at_box)), 4),
        "cut_objects": round(float(np.mean(cut)), 3),
        "composite_denoising_loss": round(denoising_loss(judge, comp, seed) / ref, 4),
        "max_abs_pixel": round(float(comp.abs().max()), 3),
    }
    if x1 is not None:
        inside = [
            not bool((np.abs(d.xy - centre[None]).max(1) * SIZE <= BOX / 2).any()) if d.count else True
            for d, centre in zip(detect(x1), bb, strict=True)
        ]
        out["background_object_free"] = round(float(np.mean(inside)), 4)
    return out


CENTRES = ((0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7))


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    dev = args.device
    clutter = pc.models.load("blob-clutter").to(dev)
    obj = pc.models.load("blob-xy").to(dev)
    g = torch.Generator().manual_seed(args.seed)
    real, lab = datasets.blobs(args.images, g, num_objects=(1, 5), min_separation=7.0)
    real_b, real_c = lab["xy"][:, 0], lab["color"][:, 0]  # real scenes holding an object at b
    real_judge = clutter.condition(xy=real_b.to(dev), color=real_c.to(dev))
    ref = denoising_loss(real_judge, real.to(dev), args.seed + 1)
    per = args.images // len(CENTRES)
    color = torch.randint(6, (per * len(CENTRES),), generator=g)
    out: dict[str, Any] = {
        "config": {
            "images": per * len(CENTRES),
            "levels": args.levels,
            "box_px": BOX,
            "box_centres": CENTRES,
            "seed": args.seed,
            "device": dev,
            "command": " ".join(sys.argv),
        },
        "real": scores(real.to(dev), None, real_b, real_c, real_judge, ref, args.seed + 2),
        "methods": {},
    }
    clip = (-1.0, 1.0)
    runs = {
        "per-step-em": (lambda: PerStepEM(args.levels, 1, device=dev), True),
        "per-step-em-clip": (lambda: PerStepEM(args.levels, 1, clip_x0=clip, device=dev), True),
        "per-step-em-eta1-clip": (lambda: PerStepEM(args.levels, 1, eta=1.0, clip_x0=clip, device=dev), True),
        "reverse-diffusion": (lambda: ReverseDiffusion(args.levels, device=dev), True),
        "reverse-diffusion-clip": (lambda: ReverseDiffusion(args.levels, clip_x0=clip, device=dev), True),
        "paste": (lambda: ReverseDiffusion(args.levels, clip_x0=clip, device=dev), False),
    }
    for name, (make, joint) in runs.items():
        t0, comps, x1s, nfe = time.perf_counter(), [], [], 0
        for j, centre in enumerate(CENTRES):
            c = color[j * per : (j + 1) * per].to(dev)
            b = torch.tensor(centre).expand(per, 2).to(dev)
            mask = boxes(torch.tensor([centre]))[0].to(dev)
            res = make().run(build(clutter, obj, b, c, mask, joint), per, seed=args.seed + j)
            comps.append(ops.composite(mask)(res["x1"], res["x2"]))
            x1s.append(res["x1"])
            nfe = res.stats["nfe_total"]
        b_all = torch.tensor(CENTRES).repeat_interleave(per, 0)
        judge = clutter.condition(xy=b_all.to(dev), color=color.to(dev))
        row = scores(torch.cat(comps), torch.cat(x1s), b_all, color, judge, ref, args.seed + 2)
        FIGURE[name] = torch.cat([c[:2] for c in comps])  # two per box place
        row["nfe_per_sample"] = nfe
        row["seconds"] = round(time.perf_counter() - t0, 2)
        out["methods"][name] = row
        print(name, row, file=sys.stderr, flush=True)
    return out


def main() -> None:
    cli(__doc__, run, FIGURE)


if __name__ == "__main__":
    main()

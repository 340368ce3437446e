"""Length generalisation by projective composition (issue 7B; Bradley et al. 2025, Def. 5.1).

One location-conditioned single-object model (the zoo's ``blob-xy``: one blob at a
requested centre and colour on a black 32x32 image) is composed ``K`` times, ``K = 1..9``,
with a background ``p_b`` (projective composition, score ``s_b + sum_k (s_k - s_b)``, i.e.
weight ``1 - K`` on the background), to draw scenes with ``K`` objects at requested
places -- the model never saw two objects together.  Backgrounds:

* ``empty`` -- the empty scene.  The data's empty image is exactly black (-1 in every
  pixel), so its noised density is known in closed form: an analytic
  :class:`~probcomp.factors.Gaussian` at -1 with std 0.01, exact at every noise level
  (the seed's Def. 5.1 background, without a learned model's error);
* ``empty-learned`` -- the zoo's ``blob-empty``, a plain eps U-Net trained on the empty
  scene like the object model: the seed's learned empty background, whose eps saturates
  away from the data as the object model's does;
* ``empty-precond`` -- ``blob-empty-precond``, the same with EDM preconditioning: its
  eps is ``sigma / v * y`` plus a bounded network term, so it extrapolates linearly, like
  the exact background;
* ``bayes`` -- the unconditional single-object model (``blob-xy`` with its conditions
  dropped), which the seed predicts fails (Lemma 7.2): it often yields no object;
* ``clutter`` -- the seed's variant (C): objects from ``blob-clutter`` (a blob at ``xy``
  among 0-4 random others) over that model's unconditional cluttered background.  Its
  scenes hold the requested objects plus random ones, so count accuracy does not apply;
  the hit rate does;
* ``empty-masked``, ``empty-learned-masked`` -- the first two with the seed's Def. 5.2
  imposed (:class:`~probcomp.compose.MaskedProjective`): object ``k``'s score delta is
  kept only on the pixels nearer to its centre than to any other and within
  ``--mask-radius`` px (:func:`~probcomp.compose.location_masks`; default 8 px, about three
  blob radii), and the background's score alone acts elsewhere;
* ``empty-masked-filled``, ``empty-learned-masked-filled``, ``empty-precond-masked-filled``
  -- the same (the last over ``blob-empty-precond``), and each object
  model also *sees* the noised empty image ``alpha_t (-1) + sigma_t z`` off its mask
  instead of the other objects (``fill=``; exact under Def. 5.2, and the networks' inputs
  stay in their training distribution).

Engines: ``ddpm`` (:class:`~probcomp.inference.ReverseDiffusion`, 100 steps), ``ddpm-clip``
(the same with every denoised estimate clamped to the data's range [-1, 1], ``clip_x0``) and
``annealed-ula`` (:class:`~probcomp.inference.AnnealedMCMC`, ULA, 100 levels x 1 transition
plus the reverse step).  Metrics from the programmatic detector
(:mod:`probcomp.detection`) against the requested objects: exact-count accuracy, hit rate
(a detection within 3 px), position error of matched objects (px), spurious detections
per image, colour accuracy; per ``K`` and averaged; and the median over images of the
largest absolute pixel value, which exposes a diverged chain (data lie in [-1, 1]).

Finding (see the README): with learned object models the exact empty background makes
reverse diffusion diverge for ``K >= 2``.  Under weight ``1 - K`` its score is a linear
repulsion from black that grows without bound away from the data, while the learned
scores it should cancel saturate there; the Bayes background, the same network as the
objects, cancels them but gives no objects (the seed's Lemma 7.2).  Masking the deltas
removes the leaks that add up, and the exact empty background then places every object.

    python benchmarks/length_generalisation.py --json --out benchmarks/results/length_generalisation.json
    python benchmarks/length_generalisation.py --quick --json    # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch
from _output import emit  # benchmarks/ is on sys.path when a script runs
from _settings import EARLIER_ANNEALED

import probcomp as pc
from probcomp import compose, datasets
from probcomp.detection import detect, score_detections
from probcomp.factors import Gaussian
from probcomp.inference import AnnealedMCMC, ReverseDiffusion

SEPARATION = 7.0


# variant -> (background, masked deltas, filled inputs); see the module docstring
VARIANTS = {
    "empty": ("empty", False, False),
    "empty-learned": ("empty-learned", False, False),
    "empty-precond": ("empty-precond", False, False),
    "bayes": ("bayes", False, False),
    "clutter": ("clutter", False, False),
    "empty-masked": ("empty", True, False),
    "empty-learned-masked": ("empty-learned", True, False),
    "empty-masked-filled": ("empty", True, True),
    "empty-learned-masked-filled": ("empty-learned", True, True),
    "empty-precond-masked-filled": ("empty-precond", True, True),
}
BACKGROUNDS = tuple(VARIANTS)
MASK_RADIUS = 8.0


def models_for(background: str, device: str) -> tuple[Any, Any]:
    """``(object model, background factor)`` of one background (module docstring)."""
    if background == "clutter":
        model = pc.models.load("blob-clutter").to(device)
        return model, model
    model = pc.models.load("blob-xy").to(device)
    if background == "empty":
        mean = torch.full((3 * 32 * 32,), -1.0, device=device)
        return model, Gaussian(mean, 0.01, event_shape=(3, 32, 32), name="empty")
    if background == "empty-learned":
        return model, pc.models.load("blob-empty").to(device)
    if background == "empty-precond":
        return model, pc.models.load("blob-empty-precond").to(device)
    return model, model


def generate(
    model: Any,
    bg: Any,
    xy: torch.Tensor,
    color: torch.Tensor,
    engine: str,
    levels: int,
    seed: int,
    device: str,
    mask_radius: float | None = None,
    filled: bool = False,
):
    """Images with the requested objects (``xy`` ``(n, K, 2)``, ``color`` ``(n, K)``).

    With ``mask_radius`` each object's score delta is confined to its location mask; with
    ``filled`` each object model sees the noised empty image off its mask.
    """
    k = xy.shape[1]
    masks = None if mask_radius is None else compose.location_masks(xy, 32, mask_radius)
    fill = torch.full((3, 32, 32), -1.0) if filled else None
    xy, color = xy.to(device), color.to(device)
    objects = [model.condition(xy=xy[:, j], color=color[:, j]) for j in range(k)]
    scene = pc.Scene()
    scene.observe(
        "image",
        scene.control("x", (3, 32, 32)),
        factor=compose.projective(*objects, background=bg, masks=masks, fill=fill),
    )
    n = xy.shape[0]
    if engine in ("ddpm", "ddpm-clip"):
        clip = (-1.0, 1.0) if engine == "ddpm-clip" else None
        res = ReverseDiffusion(steps=levels, clip_x0=clip, device=device).run(scene, n, seed=seed)
    else:
        res = AnnealedMCMC("ula", steps_per_level=1, levels=levels, device=device, **EARLIER_ANNEALED).run(
            scene, n, seed=seed
        )
    return res["x"].cpu(), res.stats


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {
        "config": {
            "ks": args.ks,
            "images_per_k": args.images,
            "levels": args.levels,
            "engines": args.engines,
            "mask_radius_px": args.mask_radius,
            "seed": args.seed,
            "device": args.device,
            "command": " ".join(sys.argv),
        },
        "results": {},
    }
    for bg_name in args.backgrounds:
        base, masked, filled = VARIANTS[bg_name]
        model, bg = models_for(base, args.device)
        radius = args.mask_radius if masked else None
        for engine in args.engines:
            rows, t0, nfe = {}, time.perf_counter(), 0
            for k in args.ks:
                g = torch.Generator().manual_seed(args.seed + k)
                _, lab = datasets.blobs(args.images, g, num_objects=(k, k), min_separation=SEPARATION)
                try:
                    imgs, stats = generate(
                        model,
                        bg,
                        lab["xy"],
                        lab["color"],
                        engine,
                        args.levels,
                        args.seed,
                        args.device,
                        radius,
                        filled=filled,
                    )
                except pc.NumericalError as e:  # the chain diverged until the scores overflowed
                    rows[str(k)] = {"non_finite": str(e).split(" (")[0], "median_max_abs_pixel": float("inf")}
                    print(bg_name, engine, k, "non-finite", file=sys.stderr, flush=True)
                    continue
                nfe += stats["nfe_total"]
                rows[str(k)] = score_detections(detect(imgs), lab["xy"], color=lab["color"])
                # a diverged chain leaves pixels far outside the data's [-1, 1]
                rows[str(k)]["median_max_abs_pixel"] = float(
                    f"{imgs.abs().flatten(1).max(1).values.median():.4g}"
                )
                print(bg_name, engine, k, json.dumps(rows[str(k)]), file=sys.stderr, flush=True)
            mean: dict[str, Any] = {
                m: round(sum(r.get(m) or 0.0 for r in rows.values()) / len(rows), 4)
                for m in ("count_accuracy", "hit_rate", "spurious_per_image", "position_error_px")
            }
            mean["diverged_k"] = [k for k, r in rows.items() if r["median_max_abs_pixel"] > 10]
            out["results"][f"{bg_name}/{engine}"] = {
                "mean_over_k": mean,
                "per_k": rows,
                "nfe_total": nfe,
                "seconds": round(time.perf_counter() - t0, 1),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 5, 9])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--levels", type=int, default=100)
    ap.add_argument(
        "--engines",
        nargs="+",
        default=["ddpm", "annealed-ula"],
        choices=["ddpm", "ddpm-clip", "annealed-ula"],
    )
    ap.add_argument("--backgrounds", nargs="+", default=list(BACKGROUNDS), choices=BACKGROUNDS)
    ap.add_argument("--mask-radius", type=float, default=MASK_RADIUS, help="px, for the -masked variants")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.quick:
        args.ks, args.images, args.levels, args.engines = [1, 3], 2, 10, ["ddpm"]
    res = run(args)
    emit(res, args.out)


if __name__ == "__main__":
    main()

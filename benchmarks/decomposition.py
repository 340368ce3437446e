"""Decomp Diffusion on the blob scenes: reconstruction, attribution and local recombination (issue 25).

Three models are trained from scratch on 32x32 scenes of 2-3 blobs (``probcomp.datasets.blobs``,
objects at least 6 px apart), the same steps, batch and seed each
(:class:`probcomp.models.Decomposition`, ``objective="decomposition"``, dissertation Eq. 4.9):

* ``decomp x0`` -- ``K = 4`` latents of 16 numbers, x0 prediction, mean over components (the
  seed's best configuration, Table 4.3);
* ``single component`` -- the same with ``K = 1`` (Table 4.3's single-component ablation);
* ``decomp eps`` -- ``K = 4`` with eps prediction and the sum of Eq. 4.9 (the eps ablation).

On ``--test`` held-out images of one fixed seed:

* **reconstruction** -- all ``K`` components of each image in one scene
  (:func:`probcomp.models.recombination_scene`, one latent per particle), DDIM with
  ``--ddim-steps`` steps from fixed noise; pixel MSE, and the project's detector
  (:mod:`probcomp.detection`) on the result: recall (objects found within 3 px) and precision;
* **attribution** -- the component that paints each pixel
  (:meth:`~probcomp.models.Decomposition.attributions`), scored by ARI over the objects' pixels
  (ARI-FG) against the true visible masks;
* **local recombination** -- for image pairs (A, B): the component owning A's first object
  (most attributed pixels inside its mask) with B's components less one that owns none of B's
  objects; the detector checks that exactly A's object and B's objects appear where they were
  (precision and recall, 3 px);
* wall time and NFE per image.

Run (about 15 min on 2 CPU cores)::

    python benchmarks/decomposition.py --out benchmarks/results/decomposition.json

``--save models/zoo/decomp-blobs`` also writes the ``decomp x0`` model, the zoo's
``decomp-blobs``.  Smoke test: ``python benchmarks/decomposition.py --quick``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

import probcomp as pc
from probcomp.detection import detect, score_detections
from probcomp.inference import ReverseDiffusion
from probcomp.metrics import adjusted_rand_index
from probcomp.models import Decomposition, recombination_scene, train

sys.path.insert(0, str(Path(__file__).parent))
from _output import emit

CONFIGS = {
    "decomp x0": {"components": 4, "prediction": "x0", "reduce": "mean"},
    "single component": {"components": 1, "prediction": "x0", "reduce": "mean"},
    "decomp eps": {"components": 4, "prediction": "eps", "reduce": "sum"},
}
DATA = {"num_objects": (2, 3), "min_separation": 6.0, "masks": True}


def _data(n: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return pc.datasets.blobs(n, torch.Generator().manual_seed(seed), **DATA)


def _run(model: Decomposition, factors: list, n: int, steps: int) -> tuple[torch.Tensor, dict[str, Any]]:
    engine = ReverseDiffusion(steps=steps, sampler="ddim", clip_x0=(-1.0, 1.0))
    res = engine.run(recombination_scene(factors), num_samples=n, seed=0)
    return res["x"], res.stats


def _owners(attr: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(N, K_objects)``: the component with most attributed pixels ``attr`` inside each object's mask."""
    inside = (masks > 0.5).to(attr.dtype)  # (N, J, H, W)
    return torch.einsum("nkhw,njhw->njk", attr, inside).argmax(-1)


def evaluate(model: Decomposition, x: torch.Tensor, labels: dict[str, torch.Tensor], steps: int) -> dict:
    n = x.shape[0]
    t0 = time.perf_counter()
    recon, stats = _run(model, model.components_of(x), n, steps)
    wall = time.perf_counter() - t0
    found_recon = detect(recon)
    det = score_detections(found_recon, labels["xy"], labels["mask"])
    hits = det["hit_rate"] * int(labels["mask"].sum())
    found = sum(d.count for d in found_recon)
    out: dict[str, Any] = {
        "reconstruction": {
            "mse": round(float((recon - x).square().mean()), 5),
            "recall": det["hit_rate"],
            "precision": round(hits / max(found, 1), 4),
            "position_error_px": det["position_error_px"],
            "nfe_per_image": sum(stats["nfe"].values()) if isinstance(stats.get("nfe"), dict) else None,
            "seconds_per_image": round(wall / n, 4),
        }
    }
    fg = labels["masks"].sum(1) > 0.5
    attr = model.attributions(x)  # (N, K, H, W)
    ari = adjusted_rand_index(labels["masks"], attr, foreground=fg).mean()
    out["attribution_ari_fg"] = round(float(ari), 4)
    if model.components == 1:
        return out
    owners = _owners(attr, labels["masks"])
    xs, chosen_b, wants, masks = [], [], [], []
    factors_a, factors_b = [], []
    for i in range(0, n - 1, 2):
        a, b = i, i + 1
        own_b = {int(owners[b, j]) for j in range(int(labels["count"][b]))}
        spare = [k for k in range(model.components) if k not in own_b]
        if not spare:
            continue
        keep_b = [k for k in range(model.components) if k != spare[0]]
        factors_a.append(int(owners[a, 0]))
        chosen_b.append(keep_b)
        xs.append((a, b))
        want = torch.cat([labels["xy"][a, :1], labels["xy"][b]])
        mask = torch.cat([torch.ones(1, dtype=torch.bool), labels["mask"][b]])
        wants.append(want)
        masks.append(mask)
    if not xs:
        out["recombination"] = {"pairs": 0}
        return out
    za = model.decompose(x[[a for a, _ in xs]])
    zb = model.decompose(x[[b for _, b in xs]])
    rows = torch.arange(len(xs))
    factors = [model.component(za[rows, torch.tensor(factors_a)], name="A's object")]
    for slot in range(model.components - 1):
        factors_b.append(
            model.component(zb[rows, torch.tensor([c[slot] for c in chosen_b])], name=f"B {slot}")
        )
    mixed, _ = _run(model, factors + factors_b, len(xs), steps)
    want, mask = torch.stack(wants), torch.stack(masks)
    found_mixed = detect(mixed)
    det = score_detections(found_mixed, want, mask)
    found = sum(d.count for d in found_mixed)
    out["recombination"] = {
        "pairs": len(xs),
        "recall": det["hit_rate"],
        "precision": round(det["hit_rate"] * int(mask.sum()) / max(found, 1), 4),
        "exact_count": det["count_accuracy"],
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--test", type=int, default=64)
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="tiny throw-away run")
    ap.add_argument("--out")
    ap.add_argument("--save", help="write the trained 'decomp x0' model to this checkpoint stem (the zoo's)")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.test, args.ddim_steps = 3, 8, 3
    torch.set_num_threads(2)
    train_x, _ = _data(20000 if not args.quick else 64, seed=0)
    test_x, test_labels = _data(args.test, seed=1)
    rows = {}
    for name, cfg in CONFIGS.items():
        torch.manual_seed(0)
        model = Decomposition(
            cfg["components"], 16, prediction=cfg["prediction"], reduce=cfg["reduce"], base=16, mults=(1, 2)
        )
        t0 = time.perf_counter()
        res = train(
            model, train_x, steps=args.steps, batch=args.batch, lr=5e-4, ema=0.99, t_min=0.02, progress=False
        )
        rows[name] = {
            "config": cfg,
            "train_seconds": round(time.perf_counter() - t0, 1),
            "final_loss": round(res.final_loss, 5),
            **evaluate(res.model, test_x, test_labels, args.ddim_steps),
        }
        print(name, rows[name], file=sys.stderr)
        if name == "decomp x0" and args.save and not args.quick:
            meta = {"recipe": {"data": "blobs", **DATA, "steps": args.steps, "batch": args.batch, "seed": 0}}
            meta["recipe"]["num_objects"] = list(DATA["num_objects"])
            meta["regenerate"] = "python benchmarks/decomposition.py --save models/zoo/decomp-blobs"
            pc.models.save(
                args.save, res.model, schedule=res.model.schedule, event_shape=(3, 32, 32), meta=meta
            )
    x0, one = rows["decomp x0"]["reconstruction"]["mse"], rows["single component"]["reconstruction"]["mse"]
    result = {
        "command": "python benchmarks/decomposition.py --out benchmarks/results/decomposition.json",
        "settings": {
            **{k: getattr(args, k) for k in ("steps", "batch", "test", "ddim_steps")},
            "data": str(DATA),
        },
        "models": rows,
        "claims": {
            "all components reconstruct better than one (Table 4.3)": x0 < one,
            "recombination places the chosen objects (recall >= 0.8)": (
                rows["decomp x0"].get("recombination", {}).get("recall", 0) >= 0.8
            ),
        },
        "torch": torch.__version__,
    }
    emit(result, None if args.quick else args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

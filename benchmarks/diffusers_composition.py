r"""Attribute AND / NOT through from_diffusers on the shipped diffusers-format shapes model.

``shapes-unet`` (models/zoo, trained by ``python -m probcomp.models.diffusers.train``) is a
diffusers ``UNet2DModel`` with diffusers' ``DDPMScheduler``, trained on 16x16 coloured shapes
with *one* attribute label per image: a shape (circle, square, triangle), a colour (red,
green, blue), or null.  It never saw a joint label, so a (shape, colour) request is answered
only by composing its conditioned copies with Composable Diffusion's weights (Liu et al. 2022):

* AND:  ``eps_u + w (eps_shape - eps_u) + w (eps_colour - eps_u)``;
* NOT:  ``eps_u + w (eps_shape - eps_u) - w (eps_colour - eps_u)`` (the shape, not that colour);
* ``shape only`` (``eps_u + w (eps_shape - eps_u)``) is the baseline: its colour is chance.

Each request is sampled with DDPM (``ReverseDiffusion``, ``clip_x0=(-1, 1)``) and with annealed
ULA (``AnnealedMCMC``, a DDPM step between levels) at equal NFE, and scored by the shape /
colour classifier of the COIND shapes benchmark (trained here on fresh full-support data).
``conformity`` is the share of samples whose shape and colour the classifier reads as asked
(for NOT: the shape, and any colour but the negated one).  ``unet_calls_per_level`` shows
the batching: all terms of all particles in one U-Net call per level.

Run (about 18 minutes on one CPU thread shared with other jobs)::

    python benchmarks/diffusers_composition.py --json --out benchmarks/results/diffusers_composition.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit
from _settings import EARLIER_ANNEALED
from coind_shapes import train_classifier

import probcomp as pc
from probcomp.inference import AnnealedMCMC, ReverseDiffusion
from probcomp.models.diffusers import from_diffusers

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue")


def request(f: Any, op: str, shape: int, colour: int, w: float) -> Any:
    """The composed factor of one request (weights of Composable Diffusion)."""
    s, c = f.condition(class_labels=SHAPES[shape]), f.condition(class_labels=COLOURS[colour])
    if op == "and":
        return pc.compose.weighted(
            [s, c, f], [w, w, 1.0 - 2.0 * w], name=f"{SHAPES[shape]} AND {COLOURS[colour]}"
        )
    if op == "not":
        return pc.compose.weighted([s, c, f], [w, -w, 1.0], name=f"{SHAPES[shape]} AND NOT {COLOURS[colour]}")
    return pc.compose.weighted([s, f], [w, 1.0 - w], name=f"{SHAPES[shape]} only")


def engines(nfe: int) -> dict[str, Any]:
    """DDPM with ``nfe`` steps and annealed ULA with ``nfe / 3`` levels of 2 transitions (+ 1 DDPM step)."""
    return {
        "ddpm": ReverseDiffusion(steps=nfe, clip_x0=(-1.0, 1.0)),
        "annealed-ula": AnnealedMCMC(kernel="ula", levels=nfe // 3, steps_per_level=2, **EARLIER_ANNEALED),
    }


def score(clf: Any, x: torch.Tensor, op: str, shape: int, colour: int) -> dict[str, float]:
    s, c = clf.predict(x.clamp(-1, 1))
    ok_shape = s == shape
    ok = ok_shape & ((c == colour) if op in ("and", "only") else (c != colour))
    return {
        "conformity": round(float(ok.double().mean()), 4),
        "shape_ok": round(float(ok_shape.double().mean()), 4),
        "colour_is_requested": round(float((c == colour).double().mean()), 4),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    f = from_diffusers(args.folder)
    clf, clf_acc = train_classifier(args.classifier_steps, args.seed, int(f.event_shape[-1]))
    combos = [(s, c) for s in range(3) for c in range(3)] if not args.quick else [(1, 0)]
    nots = [(0, 0), (1, 1), (2, 2)] if not args.quick else [(0, 0)]
    todo = [("and", s, c) for s, c in combos] + [("not", s, c) for s, c in nots]
    todo += [("only", s, c) for s, c in combos]
    rows = []
    for op, s, c in todo:
        for w in args.weights:
            for ename, engine in engines(args.nfe).items():
                factor = request(f, op, s, c, w)
                sc = pc.Scene()
                sc.observe("img", sc.control("x", tuple(f.event_shape)), factor=factor)
                before = f.unet_calls
                res = engine.run(sc, args.samples, seed=args.seed)
                levels = args.nfe if ename == "ddpm" else (args.nfe // 3) * 3
                calls = f.unet_calls - before
                rows.append(
                    {
                        "op": op,
                        "shape": SHAPES[s],
                        "colour": COLOURS[c],
                        "weight": w,
                        "engine": ename,
                        "nfe_per_term": res.stats["nfe_total"] // len(list(factor.leaves())),
                        "unet_calls": calls,
                        "unet_calls_per_level": round(calls / levels, 3),
                        "seconds": round(res.stats["wall_time"], 2),
                        **score(clf, res["x"], op, s, c),
                    }
                )
    summary: dict[str, Any] = {}
    for op in ("and", "not", "only"):
        for w in args.weights:
            for ename in engines(args.nfe):
                sel = [r for r in rows if r["op"] == op and r["weight"] == w and r["engine"] == ename]
                if sel:
                    key = f"{op}/w={w:g}/{ename}"
                    summary[key] = {
                        "conformity": round(sum(r["conformity"] for r in sel) / len(sel), 4),
                        "colour_is_requested": round(
                            sum(r["colour_is_requested"] for r in sel) / len(sel), 4
                        ),
                        "requests": len(sel),
                    }
    return {
        "benchmark": "diffusers_composition",
        "model": str(args.folder),
        "samples_per_request": args.samples,
        "nfe_per_term": args.nfe,
        "seed": args.seed,
        "threads": args.threads,
        "classifier": {"steps": args.classifier_steps, **clf_acc},
        "summary": summary,
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default="shapes-unet", help="a diffusers folder or a zoo name")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--nfe", type=int, default=60)
    ap.add_argument("--weights", type=float, nargs="+", default=[1.0, 3.0])
    ap.add_argument("--classifier-steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="one request of each kind, 4 samples, 6 NFE")
    ap.add_argument("--json", action="store_true", help="print JSON (always on; for symmetry)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.samples, args.nfe, args.classifier_steps, args.weights = 4, 6, 50, [3.0]
    emit(run(args), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

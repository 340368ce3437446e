"""The per-step optimisation seed's tasks on a latent, prompt-conditioned diffusers pipeline.

Three scenes (:mod:`probcomp.models.diffusers.scenes`): a panorama whose latent windows are
observables with a prompt each; a background + object composite with three prompts; a whole
+ part (a crop resized up) with its own prompt.  Each runs with ``PerStepEM``,
``ReverseDiffusion`` and ``AnnealedMCMC``; the record holds shapes, NFE, U-Net calls, wall
time and the decoded images' shape and range (``--save`` writes them as a ``.pt`` file).

Without ``--folder`` the pipeline is a tiny one built from configs with random weights (the
numbers are then costs only, not image quality).  On a downloaded Stable Diffusion folder on
a GPU (local files only; nothing is fetched)::

    python benchmarks/diffusers_latent_scenes.py --folder /data/stable-diffusion-v1-5 \\
        --device cuda --autocast float16 --steps 50 --samples 2 --save sd_scenes.pt --json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit
from _settings import EARLIER_ANNEALED

from probcomp.inference import AnnealedMCMC, PerStepEM, ReverseDiffusion
from probcomp.models.diffusers import from_diffusers, scenes, tiny

DTYPES = {"none": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def tasks(f: Any) -> dict[str, Any]:
    return {
        "panorama": lambda: scenes.panorama(f, ["a snowy mountain", "a lake at dawn", "a pine forest"]),
        "background_object": lambda: scenes.background_object(
            f, "an empty wooden table", "a red apple", "a red apple on a wooden table"
        ),
        "whole_part": lambda: scenes.whole_part(f, "a portrait of a man in a suit", "a smiling face"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    folder = args.folder
    if folder is None:
        folder = Path(tempfile.mkdtemp()) / "tiny-latent-pipeline"
        tiny.save_pipeline(
            folder,
            tiny.tiny_cond_unet(),
            tiny.tiny_scheduler(),
            text_encoder=tiny.tiny_text_encoder(),
            tokenizer=tiny.tiny_tokenizer(folder.parent / "tokenizer-src"),
            vae=tiny.tiny_vae(),
        )
    f = from_diffusers(folder, device=args.device, autocast=DTYPES[args.autocast], max_batch=args.max_batch)
    engines = {
        "per-step-em": lambda: PerStepEM(steps=args.steps, inner_steps=2, device=args.device),
        "ddim": lambda: ReverseDiffusion(steps=args.steps, sampler="ddim", device=args.device),
        "annealed-ula": lambda: AnnealedMCMC(
            kernel="ula",
            levels=max(1, args.steps // 2),
            steps_per_level=1,
            device=args.device,
            **EARLIER_ANNEALED,
        ),
    }
    rows, saved = [], {}
    for tname, build in tasks(f).items():
        for ename, make in engines.items():
            before = f.unet_calls
            res = make().run(build(), args.samples, seed=args.seed)
            name = next(iter(res.samples))
            z = res[name]
            with torch.no_grad():
                img = f.core.decode(z) if f.is_latent else z  # (a convolutional VAE decodes any width)
            saved[f"{tname}/{ename}"] = img.cpu()
            rows.append(
                {
                    "task": tname,
                    "engine": ename,
                    "controls": {k: list(v.shape[1:]) for k, v in res.samples.items()},
                    "nfe_total": res.stats["nfe_total"],
                    "unet_calls": f.unet_calls - before,
                    "seconds": round(res.stats["wall_time"], 3),
                    "decoded_shape": list(img.shape[1:]),
                    "decoded_range": [round(float(img.min()), 3), round(float(img.max()), 3)],
                    "finite": bool(torch.isfinite(img).all()),
                }
            )
    if args.save:
        torch.save(saved, args.save)
    return {
        "benchmark": "diffusers_latent_scenes",
        "folder": "tiny (random weights)" if args.folder is None else str(args.folder),
        "device": args.device,
        "steps": args.steps,
        "samples": args.samples,
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default=None, help="a diffusers pipeline folder with vae/ and text_encoder/")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--autocast", default="none", choices=sorted(DTYPES))
    ap.add_argument("--max-batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", default=None, help="write the decoded images to this .pt file")
    ap.add_argument("--quick", action="store_true", help="3 steps")
    ap.add_argument("--json", action="store_true", help="print JSON (always on; for symmetry)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps = 3
    emit(run(args), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

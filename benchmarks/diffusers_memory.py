"""Time per network evaluation and peak memory of a from_diffusers factor against the batch size.

For each batch size ``N`` (particles) and setting (``max_batch`` micro-batching, ``autocast``
precision) one ``eps`` call at ``t = 0.5`` is timed (median of repeats after a warm-up):
``ms_per_call`` and ``ms_per_sample`` (the time per NFE of one particle).  On CUDA the peak
allocated memory of the call is reported (``torch.cuda.max_memory_allocated`` after a reset);
on a CPU there is no allocator statistic and ``peak_mib`` is null.  ``composition`` times one
level of a three-term class composition two ways: the conditioned copies of one factor (one
batched U-Net call) and three separately loaded factors (three calls).

Run (shipped model, CPU)::

    python benchmarks/diffusers_memory.py --json --out benchmarks/results/diffusers_memory.json

and on a downloaded Stable Diffusion folder on a GPU (nothing is fetched; local files only)::

    python benchmarks/diffusers_memory.py --folder /data/stable-diffusion-v1-5 --device cuda \\
        --batch-sizes 1,4,16 --max-batch 4 --autocast float16 --json
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
from _timing import timed

import probcomp as pc
from probcomp.models.diffusers import from_diffusers

DTYPES = {"none": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _terms(f: Any) -> list[Any]:
    """AND of two attributes over the unconditional term (the shipped model's classes), or two prompts."""
    if f.core.text:
        return [f.condition(prompt="a photo of a cat"), f.condition(prompt="a red hat"), f]
    return [f.condition(class_labels="square"), f.condition(class_labels="red"), f]


def measure(f: Any, n: int, repeats: int, device: str) -> dict[str, Any]:
    x = torch.randn((n, *f.event_shape), generator=torch.Generator().manual_seed(0)).to(device)
    f.core.reset()

    def call() -> torch.Tensor:
        f.core.reset()  # every call a fresh round: no cached outputs
        return f.eps(x, 0.5)

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    wall, out = timed(call, repeats)
    peak = None
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return {
        "batch": n,
        "ms_per_call": round(1e3 * wall, 3),
        "ms_per_sample": round(1e3 * wall / n, 4),
        "peak_mib": peak,
        "finite": bool(torch.isfinite(out).all()),
    }


def composition(folder: str, n: int, repeats: int, device: str) -> dict[str, Any]:
    """One level of a three-term composition: conditioned copies (one call) vs separate factors."""
    shared = from_diffusers(folder, device=device)
    separate = [from_diffusers(folder, device=device) for _ in range(3)]
    out = {}
    for label, terms in (
        ("shared", _terms(shared)),
        ("separate", [_terms(f)[k] for k, f in enumerate(separate)]),
    ):
        comp = pc.CompiledScene(_scene(pc.compose.weighted(terms, [1.0, 1.0, -1.0]), shared.event_shape))
        x = {
            "x": torch.randn((n, *shared.event_shape), generator=torch.Generator().manual_seed(1)).to(device)
        }
        state = {"i": 0}

        def level(comp: Any = comp, x: dict = x, state: dict = state) -> Any:
            state["i"] += 1  # a new state each level, as an engine makes
            return comp.target({"x": x["x"] + 1e-3 * state["i"]}, 0.5)

        level()  # the first level finds the siblings
        cores = {id(t.factor.core): t.factor.core for t in comp.terms}
        before = sum(c.unet_calls for c in cores.values())
        wall, _ = timed(level, repeats)
        calls = (sum(c.unet_calls for c in cores.values()) - before) / (repeats + 1)
        out[label] = {"ms_per_level": round(1e3 * wall, 3), "unet_calls_per_level": calls}
    return {"particles": n, "terms": 3, **out}


def _scene(factor: Any, shape: Any) -> pc.Scene:
    sc = pc.Scene()
    sc.observe("y", sc.control("x", tuple(shape)), factor=factor)
    return sc


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = []
    for ac in args.autocast.split(","):
        for mb in args.max_batch.split(","):
            f = from_diffusers(
                args.folder,
                device=args.device,
                max_batch=None if mb == "none" else int(mb),
                autocast=DTYPES[ac],
            )
            for n in (int(v) for v in args.batch_sizes.split(",")):
                rows.append({"autocast": ac, "max_batch": mb, **measure(f, n, args.repeats, args.device)})
    return {
        "benchmark": "diffusers_memory",
        "folder": str(args.folder),
        "device": args.device,
        "threads": args.threads,
        "event_shape": list(f.event_shape),
        "rows": rows,
        "composition": composition(args.folder, args.composition_particles, args.repeats, args.device),
        "note": "peak_mib is CUDA allocator memory; null on CPU (no GPU in the session that produced this)",
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default="shapes-unet", help="a diffusers folder or a zoo name")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-sizes", default="1,8,32,128")
    ap.add_argument("--max-batch", default="none,8", help="comma list; none = one call")
    ap.add_argument("--autocast", default="none,bfloat16", help="comma list of none, float16, bfloat16")
    ap.add_argument("--composition-particles", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="batch sizes 1,4 and one repeat")
    ap.add_argument("--json", action="store_true", help="print JSON (always on; for symmetry)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.repeats, args.composition_particles = "1,4", 1, 4
    emit(run(args), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

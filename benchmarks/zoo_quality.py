"""Quality of every shipped 2-D zoo model against exact data samples.

For each model: W2 of its own samples (2000, 200 steps, DDPM and DDIM) against
exact data samples, next to the data-vs-data floor, with the NFE and wall time of
sampling.  Prints one JSON object.

Usage: ``python benchmarks/zoo_quality.py [--quick] [NAME ...]``
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import probcomp as pc
from probcomp.inference import ReverseDiffusion
from probcomp.models import load
from probcomp.models.checkpoint import ZOO_DIR
from probcomp.models.zoo import RECIPES, _data


def score(name: str, n: int, steps: int, seed: int = 0) -> dict:
    f = load(name)
    ref_sampler = _data(RECIPES[name])[1]
    g = torch.Generator().manual_seed(seed + 1)
    ref, ref2 = ref_sampler(n, g), ref_sampler(n, g)
    scene = pc.Scene()
    scene.observe("y", scene.control("x", (2,)), factor=f)
    row = {
        "name": name,
        "parameterisation": f.meta["parameterisation"],
        "w2_floor": round(pc.metrics.w2(ref2, ref), 4),
    }
    for sampler in ("ddpm", "ddim"):
        t0 = time.perf_counter()
        res = ReverseDiffusion(steps=steps, sampler=sampler, schedule=f.schedule).run(scene, n, seed=seed)
        row[f"w2_{sampler}"] = round(pc.metrics.w2(res["x"], ref), 4)
        row[f"{sampler}_s"] = round(time.perf_counter() - t0, 2)
        row["nfe"] = res.stats["nfe_total"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*")
    p.add_argument("--quick", action="store_true", help="500 samples, 50 steps")
    a = p.parse_args()
    names = a.names or sorted(q.stem for q in ZOO_DIR.glob("*.json"))
    n, steps = (500, 50) if a.quick else (2000, 200)
    rows = [score(name, n, steps) for name in names]
    print(json.dumps({"samples": n, "steps": steps, "models": rows, "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()

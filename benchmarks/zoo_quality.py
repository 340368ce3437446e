"""Quality of every shipped zoo model.

2-D models: W2 of their own samples (2000, 200 steps; DDPM and DDIM) against
exact data samples, next to the data-vs-data floor, with the NFE and wall time of
sampling.  Image and signal models: the detector / sliced-W2 record stored with
the checkpoint (measured on the training device, 256 samples, 100 DDPM steps); with
``--images N`` they are re-scored here on N samples.  Prints one JSON object.

Usage: ``python benchmarks/zoo_quality.py [--quick] [--images N] [NAME ...]``
"""

from __future__ import annotations

import argparse
import json

import torch

from probcomp.models.checkpoint import ZOO_DIR, read_config
from probcomp.models.zoo import evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*")
    p.add_argument("--quick", action="store_true", help="500 samples, 50 steps")
    p.add_argument("--images", type=int, default=0, help="re-score image/signal models on N samples")
    a = p.parse_args()
    names = a.names or sorted(q.stem for q in ZOO_DIR.glob("*.json"))
    n, steps = (500, 50) if a.quick else (2000, 200)
    rows, images = [], []
    for name in names:
        cfg = read_config(name)
        if "w2" not in cfg.get("quality", {"w2": None}):
            q = evaluate(name, a.images) if a.images else cfg["quality"]
            images.append({"name": name, "data": cfg["data"], "rescored": bool(a.images), **q})
            continue
        ddpm = evaluate(name, n, steps, sampler="ddpm")
        ddim = evaluate(name, n, steps, sampler="ddim")
        rows.append(
            {
                "name": name,
                "parameterisation": read_config(name)["parameterisation"],
                "w2_floor": ddpm["w2_floor"],
                "w2_ddpm": ddpm["w2"],
                "w2_ddim": ddim["w2"],
                "nfe": ddpm["nfe"],
                "ddpm_s": ddpm["sample_wall_time_s"],
                "ddim_s": ddim["sample_wall_time_s"],
            }
        )
    out = {"samples": n, "steps": steps, "models": rows, "image_models": images, "torch": torch.__version__}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

"""Quality of every shipped 2-D zoo model against exact data samples.

For each model: W2 of its own samples (2000, 200 steps; DDPM and DDIM) against
exact data samples, next to the data-vs-data floor, with the NFE and wall time of
sampling.  Prints one JSON object.

Usage: ``python benchmarks/zoo_quality.py [--quick] [NAME ...]``
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
    a = p.parse_args()
    names = a.names or sorted(q.stem for q in ZOO_DIR.glob("*.json"))
    n, steps = (500, 50) if a.quick else (2000, 200)
    rows = []
    for name in names:
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
    print(json.dumps({"samples": n, "steps": steps, "models": rows, "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()

"""The engines on CPU and on CUDA, in one process: wall time, throughput and NFE.

Workloads, on the zoo's 32x32 image models:

* ``reverse-diffusion`` -- :class:`~probcomp.inference.ReverseDiffusion` (DDPM, 100 steps)
  on a scene of ``K = 4`` copies of ``blobs-composed`` conditioned on four objects (one
  batched network call per step, since the copies share a network), for several particle
  counts ``N``;
* ``annealed-ula`` -- :class:`~probcomp.inference.AnnealedMCMC` (ULA, 100 levels x 1
  transition) on the same scene;
* ``concept-inversion`` -- :class:`~probcomp.inference.ConceptInversion` on one 4-object
  image with the object-discovery settings (greedy first restart, Adam steps).

Each row gives the median wall time of ``--repeats`` runs after a warm-up, NFE (network
inputs, so batched particles count one each), samples or images per second, and the
ratio CPU / CUDA of the same workload run in this process.  Without CUDA only the CPU
rows are printed.

    python benchmarks/devices.py --json            # on a machine with a GPU
    python benchmarks/devices.py --quick --json    # smoke test (CPU only is fine)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from _output import emit  # benchmarks/ is on sys.path when a script runs
from _settings import EARLIER_ANNEALED
from _timing import timed
from object_discovery import concept_scene

import probcomp as pc
from probcomp import datasets
from probcomp.inference import AnnealedMCMC, ConceptInversion, ReverseDiffusion

K = 4


def _objects(device: str) -> tuple[Any, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model = pc.models.load("blobs-composed").to(device)
    for p in model.net.parameters():
        p.requires_grad_(False)
    x, lab = datasets.blobs(1, torch.Generator().manual_seed(0), num_objects=(K, K), min_separation=7.0)
    return model, x[0], lab["xy"][0], lab


def _sampling_scene(model: Any, lab: dict[str, torch.Tensor], device: str) -> pc.Scene:
    scene = pc.Scene()
    x = scene.control("x", (3, 32, 32))
    for j in range(K):
        f = model.condition(xy=lab["xy"][0, j].to(device), color=lab["color"][0, j].to(device))
        scene.observe(f"object{j}", x, factor=f)
    return scene


def _synced(res: Any) -> Any:
    res["x"].cpu()  # waits for the device
    return res


def measure(device: str, particles: list[int], levels: int, repeats: int, inversion_steps: int) -> dict:
    model, image, _, lab = _objects(device)
    scene = _sampling_scene(model, lab, device)
    rows: dict[str, Any] = {}
    for n in particles:
        engines = {
            "reverse-diffusion": ReverseDiffusion(steps=levels, device=device),
            "annealed-ula": AnnealedMCMC(
                "ula", steps_per_level=1, levels=levels, device=device, **EARLIER_ANNEALED
            ),
        }
        for name, eng in engines.items():
            sec, res = timed(lambda eng=eng, n=n: _synced(eng.run(scene, n, seed=0)), repeats)
            rows[f"{name}/N={n}"] = {
                "seconds": round(sec, 4),
                "nfe": res.stats["nfe_total"],
                "samples_per_s": round(n / sec, 2),
            }
    inv = ConceptInversion(
        restarts=4, steps=inversion_steps, init="greedy", grid=6, greedy_relax=True, lr=0.01,
        prune_every=10, t_range=(0.02, 0.5), draws=8, search_draws=2, device=device,
    )  # fmt: skip
    iscene = concept_scene(image, model, K)
    sec, res = timed(lambda: inv.run(iscene, seed=0), repeats)
    rows["concept-inversion"] = {
        "seconds": round(sec, 4),
        "nfe": res.stats["nfe_total"],
        "images_per_s": round(1 / sec, 3),
    }
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--particles", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--cpu-particles", type=int, nargs="+", default=[1, 16, 64], help="CPU rows (slow)")
    ap.add_argument("--levels", type=int, default=100)
    ap.add_argument("--inversion-steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="CPU torch threads (default: torch's)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.quick:
        args.particles, args.cpu_particles, args.levels, args.inversion_steps, args.repeats = (
            [2],
            [2],
            3,
            2,
            1,
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict[str, Any] = {
        "config": {
            "objects": K,
            "levels": args.levels,
            "repeats": args.repeats,
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "command": " ".join(sys.argv),
        },
        "cpu": measure("cpu", args.cpu_particles, args.levels, args.repeats, args.inversion_steps),
    }
    if torch.cuda.is_available():
        out["config"]["gpu"] = torch.cuda.get_device_name()
        out["cuda"] = measure("cuda", args.particles, args.levels, args.repeats, args.inversion_steps)
        out["speedup_cpu_over_cuda"] = {
            k: round(v["seconds"] / out["cuda"][k]["seconds"], 2)
            for k, v in out["cpu"].items()
            if k in out["cuda"]
        }
    emit(out, args.out)


if __name__ == "__main__":
    main()

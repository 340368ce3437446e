"""Scaling out: particles across processes (torch.distributed) and observations across Ray workers.

Two measurements on the analytic ring x bar product, whose exact samples are known:

* **distributed particles** -- annealed HMC with annealed-importance weights and
  ESS-triggered systematic resampling (``AnnealedMCMC("hmc", 3, 40, resample="ess",
  reverse_step=False)``), ``N`` particles on ``K`` = 1 and 2 gloo processes on this CPU
  (spawned here, one torch thread each).  Throughput is particles x levels per second of
  the slowest rank's wall time; accuracy is the exact W2 (Hungarian) between the ``N``
  returned particles and ``N`` exact samples, averaged over seeds; the communication share
  is the time in collectives (all-gathers of log-weights and acceptances, the broadcast of
  ancestors, the exchange of particles) over the wall time.  ``K = 1`` runs inside a one-rank
  process group, so its collectives are real but trivial.
* **batch inversion** -- :func:`probcomp.batch.run` of concept inversion over ``M``
  observations of a conditional Gaussian at 1 and 2 Ray workers of a local instance (its
  start-up is excluded): items per second.

Usage::

    python benchmarks/scaling.py --json --out benchmarks/results/scaling.json
    python benchmarks/scaling.py --quick --json
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from _output import emit  # benchmarks/ is on sys.path when a script runs
from _settings import EARLIER_ANNEALED

import probcomp as pc
from probcomp import targets
from probcomp.inference import AnnealedMCMC

LEVELS, STEPS = 40, 3


def ring_bar() -> pc.Scene:
    ring, bar, _ = targets.analytic_ring_bar()
    s = pc.Scene()
    x = s.control("x", (2,))
    s.observe("ring", x, factor=ring)
    s.observe("bar", x, factor=bar)
    return s


def engine() -> AnnealedMCMC:
    return AnnealedMCMC(
        "hmc", STEPS, LEVELS, **{**EARLIER_ANNEALED, "resample": "ess", "reverse_step": False}
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, n: int, seeds: list[int], out: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        engine().run(ring_bar(), min(n, 64 * world), seed=0, distributed=True)  # warm-up
        rows = []
        for seed in seeds:
            res = engine().run(ring_bar(), n, seed=seed, distributed=True)
            rows.append(
                {
                    "x": res["x"],
                    "wall_time": res.stats["wall_time"],
                    "comm_time": res.stats["comm_time"],
                    "resamplings": int(res.stats["resampled"].sum()),
                }
            )
        if rank == 0:
            torch.save(rows, out)
    finally:
        tdist.destroy_process_group()


def particles(world: int, n: int, seeds: list[int], exact: torch.Tensor) -> dict:
    """One row of the distributed-particles table: ``world`` gloo ranks, ``n`` particles."""
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/rows.pt"
        mp.spawn(_rank, args=(world, _free_port(), n, seeds, out), nprocs=world, join=True)
        rows = torch.load(out, weights_only=False)
    wall = sum(r["wall_time"] for r in rows) / len(rows)
    comm = sum(r["comm_time"] for r in rows) / len(rows)
    w2 = [pc.metrics.w2(r["x"], exact) for r in rows]
    return {
        "processes": world,
        "particles": n,
        "levels": LEVELS,
        "steps_per_level": STEPS,
        "seconds": round(wall, 3),
        "particle_levels_per_second": round(n * LEVELS / wall, 1),
        "comm_share": round(comm / wall, 4),
        "w2": round(sum(w2) / len(w2), 4),
        "w2_per_seed": [round(v, 4) for v in w2],
        "resamplings_per_run": sum(r["resamplings"] for r in rows) / len(rows),
    }


def inversion(workers: int, m: int) -> dict:
    """One row of the batch-inversion table: ``m`` observations on ``workers`` Ray workers."""
    import ray

    from probcomp import batch
    from probcomp.inference import ConceptInversion

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    obs = [torch.tensor([0.7, -1.2, 0.3]) * (1 + 0.2 * (i % 5)) for i in range(m)]
    eng = ConceptInversion(steps=150, restarts=2, lr=0.1, prune_every=75)
    batch.run(eng, _concept_scene, obs[:workers], progress=False, workers=workers)  # warm the workers
    start = time.perf_counter()
    recs = batch.run(eng, _concept_scene, obs, seed=1, progress=False, workers=workers)
    wall = time.perf_counter() - start
    err = max(
        max(abs(a - b) for a, b in zip(r["concepts"]["c"], x.tolist(), strict=True))
        for r, x in zip(recs, obs, strict=True)
    )
    return {
        "workers": workers,
        "items": m,
        "seconds": round(wall, 3),
        "items_per_second": round(m / wall, 3),
        "max_abs_error": round(float(err), 4),
    }


def _concept_scene(x: torch.Tensor) -> pc.Scene:
    from probcomp.factors import ConditionalGaussian

    s = pc.Scene()
    s.observe("x", value=x, factor=ConditionalGaussian((3,), std=0.1), condition=s.control("c", (3,)))
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--particles", type=int, default=4000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--items", type=int, default=16, help="observations of the batch inversion")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.particles, args.seeds, args.items = 400, 1, 4
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    exact = targets.analytic_ring_bar()[2].sample(args.particles, torch.Generator().manual_seed(101))
    floor = pc.metrics.w2(
        targets.analytic_ring_bar()[2].sample(args.particles, torch.Generator().manual_seed(102)), exact
    )
    rows = [particles(k, args.particles, seeds, exact) for k in (1, 2)]
    from probcomp import batch

    batch.connect(num_cpus=2)
    inv = [inversion(w, args.items) for w in (1, 2)]
    out = {
        "config": {
            "command": " ".join(sys.argv),
            "engine": f"AnnealedMCMC('hmc', {STEPS}, {LEVELS}, resample='ess', reverse_step=False)",
            "backend": "gloo (CPU)",
            "seeds": seeds,
            "torch_threads_per_process": 1,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "note": "CPU only: no GPU in this session; NCCL / multi-device numbers are not measured",
        },
        "distributed_particles": {
            "w2_floor": round(floor, 4),
            "rows": rows,
            "speedup_2_over_1": round(
                rows[1]["particle_levels_per_second"] / rows[0]["particle_levels_per_second"], 3
            ),
        },
        "batch_inversion": {
            "rows": inv,
            "speedup_2_over_1": round(inv[1]["items_per_second"] / inv[0]["items_per_second"], 3),
        },
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()

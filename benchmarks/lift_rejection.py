"""Lift-score rejection (Yu & Gao 2025) on the analytic ring x bar product, against exact samples.

Target: :func:`probcomp.targets.analytic_ring_bar` (Gaussian-mixture ring and bar, exact noised
scores and energies, exact product mixture), the ``analytic`` variant of
``benchmarks/product2d.py``, whose helpers (variant, per-run metrics, floor, aggregation) are
imported from there.

Samplers, at ``--steps`` reverse steps (default 50 and 100), 2000 samples:

* ``ddpm`` -- :class:`ReverseDiffusion` on the summed scores (no rejection);
* ``lift-cached`` -- :class:`LiftRejection` defaults: reference ``N(0, I)``, ELBO weighting,
  cached noise predictions of the chain (no evaluation beyond the chain's);
* ``lift-fresh`` -- the same test with fresh noise, 16 levels uniform in log-SNR (+16 NFE per
  term and draw);
* ``lift-exact`` -- the same test with the exact lifts (normalised energies): the rejection
  rule's own error, free of estimation error;
* ``complift`` -- CompLift's 2-D configuration: reference ``alpha eps_i`` (``alpha = 0.9``),
  unweighted average over the levels, cached.

And annealed HMC with AIS weights (3 leapfrog steps, damping 0.5, energy Metropolis test,
``resample="ess"``, no reverse step) at small budgets (``--ais``, default 25 x 2 and 50 x 2),
alone (``ais``) and with :func:`lift_filter` applied to its final weighted population before
the final systematic resampling (``ais+lift``; exact lifts: no extra NFE).

Per sampler, mean and std over seeds (0, 1, 2): NFE per returned sample (rejected draws
included), acceptance rate, W2 averaged over ``--refs`` exact reference draws, the floor (mean
W2 between ``--floor-pairs`` pairs of exact draws), the largest mode-weight error over the 8
ring modes, mean exact log-likelihood (and the exact samples'), the spread inside the two
dominant modes.

Full run (about 15 min on one CPU thread)::

    python benchmarks/lift_rejection.py --out benchmarks/results/lift_rejection.json

Smoke test (500 samples, 20 steps, one seed, < 1 min)::

    python benchmarks/lift_rejection.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from product2d import _agg, _clean, build_variant, floor_pairs, measure

from probcomp import metrics
from probcomp.inference import AnnealedMCMC, LiftRejection, ReverseDiffusion, lift_filter, smc

LIFT = {
    "lift-cached": {},
    "lift-fresh": {"estimator": "fresh", "levels": 16},
    "lift-exact": {"estimator": "exact"},
    "complift": {"reference": "tempered", "weighting": "simple"},
}


def _w2_refs(x: torch.Tensor, refs: list[torch.Tensor]) -> float:
    return statistics.fmean(metrics.w2(x, r) for r in refs)


def _row(x: torch.Tensor, refs: list[torch.Tensor], v: Any, cost: dict[str, float]) -> dict[str, float]:
    m = measure(x, refs[0], v)
    m["w2"] = _w2_refs(x, refs)
    return {**m, **cost}


def run_lift(name: str, steps: int, n: int, seed: int, v: Any) -> tuple[torch.Tensor, dict[str, float]]:
    if name == "ddpm":
        res = ReverseDiffusion(steps).run(v.scene, n, seed=seed)
        return res["x"], {
            "nfe": float(res.stats["nfe_total"]),
            "accept": 1.0,
            "wall_s": res.stats["wall_time"],
        }
    res = LiftRejection(steps, **LIFT[name]).run(v.scene, n, seed=seed)
    st = res.stats
    cost = {"nfe": float(st["nfe_total"]), "accept": float(st["acceptance_rate"]), "wall_s": st["wall_time"]}
    return res["x"], cost


def run_ais(
    levels: int, k: int, n: int, seed: int, v: Any
) -> dict[str, tuple[torch.Tensor, dict[str, float]]]:
    eng = AnnealedMCMC(
        "hmc",
        k,
        levels,
        leapfrog_steps=3,
        damping=0.5,
        metropolis="energy",
        resample="ess",
        reverse_step=False,
        final_resample=False,
        spacing="uniform",  # the grid of the recorded run (AnnealedMCMC's defaults have changed since)
        t_max=1.0,
        t_min=1e-3,
    )
    start = time.perf_counter()
    res = eng.run(v.scene, n, seed=seed)
    x, log_w = res["x"], res.particle_stats["log_weight"]
    cost = {"nfe": float(res.stats["nfe_total"]), "wall_s": time.perf_counter() - start}
    plain = x[smc.resample(log_w, torch.Generator().manual_seed(seed))]
    filt = lift_filter(eng.compile(v.scene), {"x": x}, log_w)
    kept = x[smc.resample(filt.log_w, torch.Generator().manual_seed(seed))]
    return {
        "ais": (plain, {**cost, "accept": 1.0, "ess_final": smc.ess(log_w) / n}),
        "ais+lift": (
            kept,
            {**cost, "accept": float(filt.keep.double().mean()), "ess_final": smc.ess(filt.log_w) / n},
        ),
    }


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _budgets(text: str) -> list[tuple[int, int]]:
    return [tuple(int(p) for p in b.split("x")) for b in text.split(",") if b.strip()]  # type: ignore[misc]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="500 samples, 20 steps, one seed, AIS 10x2")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--steps", type=_ints, default=[50, 100], help="reverse steps (comma-separated)")
    p.add_argument("--ais", type=_budgets, default=[(25, 2), (50, 2)], help="AIS budgets LEVELSxK, ...")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--refs", type=int, default=5, help="exact reference draws W2 is averaged over")
    p.add_argument("--floor-pairs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.quick:
        a.steps, a.ais, a.seeds, a.samples, a.refs, a.floor_pairs = [20], [(10, 2)], [0], 500, 2, 2
    n = a.samples
    v = build_variant("analytic")
    start = time.perf_counter()
    refs = [v.sample(n, torch.Generator().manual_seed(1000 + r)).to(torch.float32) for r in range(a.refs)]
    exact_rows = [
        _row(v.sample(n, torch.Generator().manual_seed(2000 + s)).to(torch.float32), refs, v, {})
        for s in a.seeds
    ]
    out: dict[str, Any] = {
        "config": {
            "target": "targets.analytic_ring_bar(): ring (8 Gaussians, std 0.03) x bar "
            "(GaussianMixture, spread 0.01)",
            "samples": n,
            "seeds": a.seeds,
            "reference_draws": a.refs,
            "steps": a.steps,
            "ais_budgets": [list(b) for b in a.ais],
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "notes": [
            "nfe: score evaluations per returned sample, summed over the two factors, rejected draws "
            "included (LiftRejection's stats['nfe_total']); accept: acceptance rate of the lift test "
            "(ais+lift: the fraction of the final population the filter keeps).",
            "w2: mean over the exact reference draws (seeds 1000 + r); floor_w2: W2 between pairs of "
            "exact draws (seeds 3000 + 2j, 3001 + 2j); 'exact': a second exact draw (seed 2000 + s) "
            "scored like a sampler.",
            "mode_err_max: largest |mode weight - exact| over the 8 ring modes (nearest-centre "
            "frequencies); mode_std_x / mode_std_y: spread inside the two dominant modes.",
            "ais / ais+lift: one AnnealedMCMC run per seed (final_resample=False); its final "
            "weighted population resampled systematically as it is, or after lift_filter "
            "(rejected particles' log-weights set to -inf).",
        ],
        "floor_w2": floor_pairs(v, n, a.floor_pairs),
        "exact": _agg(exact_rows),
        "exact_mode_weights": [round(float(w), 6) for w in v.mode_weights],
        "reverse": {},
        "ais": {},
    }
    for steps in a.steps:
        block: dict[str, Any] = {}
        for name in ("ddpm", *LIFT):
            rows = []
            for seed in a.seeds:
                x, cost = run_lift(name, steps, n, seed, v)
                rows.append(_row(x, refs, v, cost))
                print(
                    f"[{steps}] {name} seed {seed}: w2 {rows[-1]['w2']:.4f} nfe {cost['nfe']:.0f}",
                    file=sys.stderr,
                )
            block[name] = _agg(rows)
        out["reverse"][f"{steps} steps"] = block
    for levels, k in a.ais:
        per: dict[str, list[dict[str, float]]] = {"ais": [], "ais+lift": []}
        for seed in a.seeds:
            for name, (x, cost) in run_ais(levels, k, n, seed, v).items():
                per[name].append(_row(x, refs, v, cost))
        out["ais"][f"{levels}x{k}"] = {name: _agg(rows) for name, rows in per.items()}
        print(f"[ais {levels}x{k}] done", file=sys.stderr)
    out["total_wall_s"] = time.perf_counter() - start
    text = json.dumps(_clean(out), indent=1)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

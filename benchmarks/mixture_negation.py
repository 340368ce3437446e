"""Mixture and negation of the zoo's bars and boxes against exact targets (issue 4, "Also").

Two compositions that need energies (Du et al. 2023, "Reduce, Reuse, Recycle"):

* **mixture** ``0.3 left-bar + 0.7 right-bar``: :func:`probcomp.compose.mixture`, whose
  score weights each component's score by ``softmax_k(log pi_k - E_k)``.  Exact target
  :func:`probcomp.targets.bar_mixture` ``(0.3, 0.7)``.  Uneven weights, so that a sampler
  (or a model) that ignores them is caught.
* **negation** ``box-0.7 NOT box-0.3``: :func:`probcomp.compose.negation`, the composed
  energy ``E_0.7 - gamma E_0.3`` with ``gamma = 0.1`` (and a DDPM sweep over ``gamma``).  Exact target
  :func:`probcomp.targets.box_negation`, uniform on the frame (the hard-negation limit, see
  its docstring), which is the ``t = 0`` target for every ``gamma > 0``.  Along the noise
  path ``gamma`` matters: the noised boxes have Gaussian tails of equal width, so
  ``p_0.7,t / p_0.3,t^gamma`` decays only for ``gamma < 1``; at ``gamma = 1`` it grows
  like ``exp(0.4 |y| / sigma_t^2)``.  The learned energies are worse: outside the data
  they extrapolate, and box-0.3's grows faster than box-0.7's (``E(3, 0) - E(0, 0)`` is
  1085 against 622 at ``t = 1e-3``), so ``-gamma E_0.3`` rewards escaping already at
  ``gamma = 0.2`` (the sweep shows where particles end).

Variants: ``mixture-analytic`` (each bar an 8-Gaussian column with exact noised scores
and *normalised* energies: the ground truth for the machinery), ``mixture-learned``
(``left-bar-energy`` + ``right-bar-energy``; a learned energy is known up to a constant
per model and noise level, which shifts the mixture weights), ``mixture-learned-normalised``
(the same models wrapped in :class:`probcomp.factors.NormalisedEnergy`, which removes that
constant by quadrature) and ``negation-learned``
(``box-0.7-energy`` + ``box-0.3-energy``).  The analytic mixture's exact target is the
16-component mixture itself.

Samplers: DDPM on the composed score (the Du et al. baseline), annealed ULA, and annealed
HMC with the energy Metropolis test (3 leapfrog steps, damping 0.5).

Per run: W2 to exact samples beside the mean W2 of exact pairs (the floor), the fraction
of samples in the target's support and their mean exact log-likelihood (both targets are
uniform on their support, so the log-likelihood is a constant there and the support
fraction carries the information), the mass on the right bar (mixture; exact 0.7) or
inside the negated box and outside the outer box (negation; exact 0 and 0), NFE, wall
time and acceptance; mean and std over seeds.

Full run (about 25 min on one CPU thread)::

    python benchmarks/mixture_negation.py --json --out benchmarks/results/mixture_negation.json

Smoke test (analytic mixture only, 500 samples, 20 levels x 3; < 30 s)::

    python benchmarks/mixture_negation.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import probcomp as pc
from probcomp import compose, metrics, targets
from probcomp.factors import GaussianMixture, NormalisedEnergy
from probcomp.inference import AnnealedMCMC, ReverseDiffusion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _settings import EARLIER_ANNEALED

WEIGHTS = (0.3, 0.7)  # left, right
LEAPFROG, DAMPING = 3, 0.5
GAMMAS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)  # the negation sweep (DDPM)
VARIANTS = ("mixture-analytic", "mixture-learned", "mixture-learned-normalised", "negation-learned")


@dataclass(frozen=True)
class Variant:
    """A composed scene, its exact target and the mass checks of its task."""

    name: str
    scene: pc.Scene
    target: Any  # sample(n, g), log_prob(x)
    masses: Callable[[torch.Tensor], dict[str, float]]
    exact_masses: dict[str, float]
    factors: list[str]


def _scene(factor: pc.factors.ScoreFactor) -> pc.Scene:
    sc = pc.Scene()
    sc.observe("y", sc.control("x", (2,)), factor=factor)
    return sc


def _column(x_centre: float, m: int = 8) -> GaussianMixture:
    """A bar on ``[x_centre -+ 0.2] x [-1, 1]`` as a column of ``m`` Gaussians (normalised energy)."""
    cell = 2.0 / m
    ys = -1 + cell * (torch.arange(m, dtype=torch.float64) + 0.5)
    means = torch.stack([torch.full_like(ys, x_centre), ys], 1)
    scales = torch.tensor([[0.1, 0.6 * cell]], dtype=torch.float64).expand(m, 2)
    return GaussianMixture(means, scales, name=f"bar@{x_centre:g}")


def _mixture_masses(x: torch.Tensor) -> dict[str, float]:
    return {"right": float((x[:, 0] > 0).double().mean())}


def _negation_masses(outer: float, inner: float) -> Callable[[torch.Tensor], dict[str, float]]:
    def masses(x: torch.Tensor) -> dict[str, float]:
        r = x.abs().amax(1)
        return {
            "inside_negated": float((r < inner).double().mean()),
            "outside": float((r > outer).double().mean()),
        }

    return masses


def build_variant(name: str, gamma: float) -> Variant:
    if name == "mixture-analytic":
        left, right = _column(-0.4), _column(0.4)
        exact = GaussianMixture(
            torch.cat([left.means, right.means]),
            torch.cat([left.evals, right.evals]).sqrt(),
            torch.cat([left.weights * WEIGHTS[0], right.weights * WEIGHTS[1]]),
            name="exact mixture",
        )
        mix = compose.mixture([left, right], WEIGHTS, name="left OR right")
        return Variant(
            name, _scene(mix), exact, _mixture_masses, {"right": WEIGHTS[1]}, [left.name, right.name]
        )
    if name in ("mixture-learned", "mixture-learned-normalised"):
        models = ["left-bar-energy", "right-bar-energy"]
        left, right = (pc.models.load(m) for m in models)
        if name.endswith("normalised"):  # remove each model's unknown log Z(t) by quadrature
            left, right = (NormalisedEnergy(f, radius=1.0) for f in (left, right))
        mix = compose.mixture([left, right], WEIGHTS, name="left-bar OR right-bar")
        return Variant(
            name, _scene(mix), targets.bar_mixture(WEIGHTS), _mixture_masses, {"right": WEIGHTS[1]}, models
        )
    if name == "negation-learned":
        models = ["box-0.7-energy", "box-0.3-energy"]
        outer, inner = (pc.models.load(m) for m in models)
        neg = compose.negation(outer, inner, gamma, name=f"box-0.7 NOT box-0.3 (gamma {gamma:g})")
        masses = _negation_masses(0.7, 0.3)
        exact_masses = {"inside_negated": 0.0, "outside": 0.0}
        return Variant(name, _scene(neg), targets.box_negation(0.7, 0.3), masses, exact_masses, models)
    raise SystemExit(f"unknown variant {name!r}; choose from {VARIANTS}")


SAMPLERS: dict[str, Callable[[int, int], Any]] = {
    "ddpm": lambda levels, k: ReverseDiffusion(steps=levels),
    "ula": lambda levels, k: AnnealedMCMC("ula", k, levels, **EARLIER_ANNEALED),
    "hmc-energy": lambda levels, k: AnnealedMCMC(
        "hmc",
        k,
        levels,
        **{**EARLIER_ANNEALED, "leapfrog_steps": LEAPFROG},
        damping=DAMPING,
        metropolis="energy",
    ),
}


def measure(x: torch.Tensor, ref: torch.Tensor, v: Variant) -> dict[str, float]:
    lp = v.target.log_prob(x.detach().to(torch.float64).cpu())
    finite = torch.isfinite(lp)
    return {
        "w2": metrics.w2(x, ref),
        "in_support": float(finite.double().mean()),
        "loglik_in_support": float(lp[finite].mean()) if bool(finite.any()) else math.nan,
        **v.masses(x.detach().cpu()),
    }


def _stats(rows: list[dict[str, float]]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for key in rows[0]:
        vals = [float(r[key]) for r in rows]
        if any(math.isnan(v) for v in vals):
            out[key] = {"mean": None, "std": None}
            continue
        out[key] = {
            "mean": round(statistics.fmean(vals), 5),
            "std": round(statistics.pstdev(vals), 5) if len(vals) > 1 else 0.0,
        }
    return out


def run_variant(v: Variant, samplers: list[str], n: int, levels: int, k: int, seeds: list[int], log) -> dict:
    floor_rows, runs = [], {s: [] for s in samplers}
    for seed in seeds:
        g = torch.Generator().manual_seed(1000 + seed)
        ref = v.target.sample(n, g).to(torch.float32)
        g2 = torch.Generator().manual_seed(2000 + seed)
        pair = v.target.sample(n, g2).to(torch.float32)
        floor_rows.append(measure(pair, ref, v))
        for s in samplers:
            res = SAMPLERS[s](levels, k).run(v.scene, n, seed=seed)
            st = res.stats
            row = measure(res["x"], ref, v)
            row.update(
                nfe=float(st["nfe_total"]),
                wall_s=float(st["wall_time"]),
                accept=float(st.get("accept_mean", math.nan)),
            )
            runs[s].append(row)
            log(f"{v.name} seed {seed} {s}: w2 {row['w2']:.4f} (floor {floor_rows[-1]['w2']:.4f}) {row}")
    return {
        "composition": v.scene[v.scene.observables[0]]["factor"].name,
        "factors": v.factors,
        "exact_masses": v.exact_masses,
        "seeds": seeds,
        "samples": n,
        "levels": levels,
        "steps_per_level": k,
        "exact": _stats(floor_rows),
        "samplers": {s: _stats(rows) for s, rows in runs.items()},
    }


def gamma_sweep(n: int, levels: int, log) -> list[dict[str, float]]:
    """DDPM on ``box-0.7 NOT box-0.3`` at several strengths: where the particles stay."""
    target = targets.box_negation(0.7, 0.3)
    ref = target.sample(n, torch.Generator().manual_seed(1000)).to(torch.float32)
    rows = []
    for gamma in GAMMAS:
        v = build_variant("negation-learned", gamma)
        x = ReverseDiffusion(steps=levels).run(v.scene, n, seed=0)["x"]
        row = {"gamma": gamma, **measure(x, ref, v), "max_abs": float(x.abs().max())}
        rows.append({key: None if math.isnan(val) else round(val, 5) for key, val in row.items()})
        log(f"negation gamma {gamma}: {rows[-1]}")
    return rows


def summarise(out: dict) -> dict:
    """Best sampler per variant by W2, its ratio to the floor and to DDPM, and its mass errors."""
    summary = {}
    for name, r in out["variants"].items():
        w2 = {s: m["w2"]["mean"] for s, m in r["samplers"].items()}
        best = min(w2, key=w2.get)
        floor = r["exact"]["w2"]["mean"]
        errs = {
            key: round(abs(r["samplers"][best][key]["mean"] - exact), 4)
            for key, exact in r["exact_masses"].items()
        }
        summary[name] = {
            "best": best,
            "best_w2": w2[best],
            "floor_w2": floor,
            "best_over_floor": round(w2[best] / floor, 3),
            "ddpm_over_best": round(w2["ddpm"] / w2[best], 3) if "ddpm" in w2 else None,
            "best_in_support": r["samplers"][best]["in_support"]["mean"],
            "best_mass_error": errs,
        }
    return summary


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="analytic mixture only, 500 samples, 20 x 3, one seed"
    )
    p.add_argument("--json", action="store_true", help="print the JSON only")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS)
    )
    p.add_argument("--gamma", type=float, default=0.1, help="negation strength (default 0.1; see doc)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = ["mixture-analytic"] if args.quick else [s for s in args.variants.split(",") if s]

    def log(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    out: dict[str, Any] = {"variants": {}}
    start = time.perf_counter()
    for name in variants:
        v = build_variant(name, args.gamma)
        analytic = name.endswith("analytic")
        if args.quick:
            n, levels, k, seeds = 500, 20, 3, [0]
        elif analytic:
            n, levels, k, seeds = 2000, 100, 10, [0, 1, 2]
        else:  # learned energy networks: a quarter of the reference budget (CPU time)
            n, levels, k, seeds = 1000, 100, 5, [0]
        out["variants"][name] = run_variant(v, list(SAMPLERS), n, levels, k, seeds, log)
        if name == "negation-learned":
            out["negation_gamma_sweep_ddpm"] = gamma_sweep(n, levels, log)
        out["summary"] = summarise(out)
        out["config"] = {
            "weights": list(WEIGHTS),
            "gamma": args.gamma,
            "leapfrog_steps": LEAPFROG,
            "damping": DAMPING,
            "quick": args.quick,
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "total_wall_s": round(time.perf_counter() - start, 1),
        }
        if args.out:
            args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

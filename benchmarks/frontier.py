"""Cost-accuracy frontier: error against NFE per particle for every sampler configuration.

Targets (:mod:`probcomp.targets.products`; exact products of analytic Gaussian-mixture factors,
so exact samples, exact mode weights and exact noised scores and energies):

* ``ring-bar`` -- the 2-D ring x bar (2 factors, 8 modes, two holding 99%);
* ``planes-3d`` -- three slab mixtures in 3-D (3 factors, 12 modes of 1-33%);
* ``slabs-8d`` -- four two-component slab mixtures in 8-D (4 factors, 16 modes of 0.7-35%).
* ``learned-score`` / ``learned-energy`` (``--targets``) -- the zoo's learned ``ring8`` x ``bar``
  (score only: Metropolis tests and AIS weights from scores alone) and ``ring8-energy`` x
  ``bar-energy``; exact product: the ring restricted to the bar.

The HMC configurations use the energy test where every factor has an energy and the score's
line integral otherwise; their weights likewise (:class:`probcomp.inference.AnnealedMCMC`).

Per configuration and seed (2000 particles; every seed has its own exact reference draw):

* ``w2`` -- exact empirical W2 to the reference, and ``w2_ratio`` its mean over the *floor*,
  the mean W2 between independent pairs of exact draws of the same size;
* ``mode_err`` -- the largest ``|mode weight - exact|`` over the product's modes (samples go to
  the nearest mode mean); reported as mean and 90th percentile over seeds, beside the same
  statistic of exact draws (the sampling noise of 2000 particles);
* ``ll_gap`` -- mean exact log-density of the samples minus that of the product (computed
  from 200 000 exact draws): positive means modes too narrow, negative mass off the modes;
* ``nfe`` -- network (factor) evaluations per particle, summed over the factors, and wall time.

The goal checked in ``summary`` (issue 21): ``w2_ratio <= 1.1``, ``mode_err`` p90 <= 0.02 and
``|ll_gap| <= 0.1`` at <= 500 NFE per particle.

Full run (about 40 min on one CPU thread)::

    python benchmarks/frontier.py --out benchmarks/results/frontier.json --png benchmarks/results/frontier.png

Smoke test (< 60 s)::

    python benchmarks/frontier.py --quick
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
from typing import Any, Protocol

import torch

from probcomp import metrics, targets
from probcomp.inference import AnnealedMCMC, LiftRejection, ReverseDiffusion
from probcomp.targets import products

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit
from _settings import EARLIER_ANNEALED


class Composition(Protocol):
    """What the frontier needs of a target: a scene, exact draws, a log-density, exact modes."""

    name: str
    mode_means: torch.Tensor
    mode_weights: torch.Tensor

    def scene(self) -> Any: ...
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor: ...
    def log_prob(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class LearnedRingBar:
    """The zoo's learned ring8 and bar models; exact product: the ring restricted to the hard bar
    (:func:`probcomp.targets.ring_bar_product` with ``spread=0``).  The log-likelihood is taken
    under the product with 1% spread, finite for samples that miss the bar's edge."""

    name: str
    models: tuple[str, str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "exact", targets.ring_bar_product(spread=0.0))
        object.__setattr__(self, "proxy", targets.ring_bar_product(spread=0.01))

    @property
    def mode_means(self) -> torch.Tensor:
        return self.exact.mode_means

    @property
    def mode_weights(self) -> torch.Tensor:
        return self.exact.mode_weights

    def scene(self) -> Any:
        import probcomp as pc

        return products.ring_bar().scene(tuple(pc.models.load(m) for m in self.models))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.exact.sample(n, generator).to(torch.float32)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.proxy.log_prob(x.to(torch.float64))


TARGETS: dict[str, Callable[[], Composition]] = {
    "ring-bar": products.ring_bar,
    "planes-3d": products.planes_3d,
    "slabs-8d": products.slabs_8d,
    "learned-score": lambda: LearnedRingBar("zoo ring8 x bar (learned, score only)", ("ring8", "bar")),
    "learned-energy": lambda: LearnedRingBar(
        "zoo ring8-energy x bar-energy (learned energies)", ("ring8-energy", "bar-energy")
    ),
}
ANALYTIC = ("ring-bar", "planes-3d", "slabs-8d")
GOAL = {"nfe": 500, "w2_ratio": 1.1, "mode_err_p90": 0.02, "ll_gap": 0.1}


@dataclass(frozen=True)
class Config:
    """One sampler at one budget: ``family`` names the line of the frontier it belongs to;
    ``everywhere=False`` keeps a point to the 2-D targets (costly, or meant for learned ones)."""

    family: str
    budget: tuple[int, ...]
    make: Callable[[], Any]
    everywhere: bool = True

    @property
    def name(self) -> str:
        return f"{self.family} {'x'.join(map(str, self.budget))}"


def _hmc(levels: int, k: int, **kw: Any) -> Callable[[], AnnealedMCMC]:
    return lambda: AnnealedMCMC("hmc", k, levels, **kw)  # energy test where energies exist, else score


#: every family names all its settings (none rely on AnnealedMCMC's defaults, which changed):
#: PLAIN, the earlier defaults, is annealed HMC with a DDPM step between levels and no weights
PLAIN = EARLIER_ANNEALED
AIS = {**PLAIN, "resample": "ess", "reverse_step": False}
LOG_SNR = {"spacing": "log-snr"}
#: the recommended settings (AnnealedMCMC's defaults at 45 x 2): AIS weights on a log-SNR grid
#: from t_max = 0.6 to t_min = 3e-4, two HMC transitions of two leapfrog steps per level
RECOMMENDED = {**AIS, **LOG_SNR, "t_max": 0.6, "t_min": 3e-4, "leapfrog_steps": 2}


def configs() -> list[Config]:
    """Every family at the budgets it is measured at (levels x transitions, or steps)."""
    out = [
        Config("ddpm", (s,), lambda s=s: ReverseDiffusion(steps=s), everywhere=s < 2500)
        for s in (100, 500, 2500)
    ]
    out += [
        Config("lift rejection (cached)", (s,), lambda s=s: LiftRejection(steps=s, shortfall="warn"))
        for s in (50, 100)
    ]
    families: list[tuple[str, dict[str, Any], list[tuple[int, int]]]] = [
        ("hmc", PLAIN, [(25, 2), (100, 3), (100, 10)]),
        ("hmc-ais uniform", AIS, [(25, 2), (100, 3), (100, 10)]),
        ("hmc-ais log-snr", {**AIS, **LOG_SNR}, [(25, 1), (40, 1), (100, 2)]),
        ("hmc-smc log-snr", {**RECOMMENDED, "reverse_step": True}, [(30, 2), (70, 2)]),
        ("recommended", RECOMMENDED, [(15, 2), (20, 2), (30, 2), (45, 2), (70, 2), (100, 2), (100, 6)]),
    ]
    for family, kw, budgets in families:
        out += [
            Config(family, (lv, k), _hmc(lv, k, **kw), everywhere=(lv, k) != (100, 10)) for lv, k in budgets
        ]
    # learned energies weighted by their energies instead of their scores (weights="auto" uses
    # scores for learned factors; on analytic factors this is the same as "hmc-ais log-snr")
    energy_weights = {**AIS, **LOG_SNR, "weights": "energy"}
    out.append(
        Config("hmc-ais log-snr energy-weights", (40, 1), _hmc(40, 1, **energy_weights), everywhere=False)
    )
    return out


QUICK = ("ddpm 100", "recommended 15x2")
#: the configurations AnnealedMCMC() runs (its ENERGY_SETTINGS where every factor has an energy,
#: its SCORE_ONLY_SETTINGS on the score-only targets), and the earlier defaults (100 x 10 on the
#: 2-D target, 100 x 3 elsewhere)
DEFAULT, DEFAULT_SCORE_ONLY, EARLIER = "recommended 45x2", "hmc-ais log-snr 40x1", ("hmc 100x10", "hmc 100x3")
SCORE_ONLY_TARGETS = ("learned-score", "learned-energy")  # (learned energies: weights from scores)


# Exact references ---------------------------------------------------------------------
@dataclass
class Reference:
    target: Composition
    refs: dict[int, torch.Tensor]
    floor: dict[str, Any]
    exact_ll: float
    exact_mode_err: dict[str, float]


def mode_error(x: torch.Tensor, t: Composition) -> float:
    w = metrics.mode_weights(x.to(torch.float64), t.mode_means)
    return float((w - t.mode_weights).abs().max())


def _p90(vals: list[float]) -> float:
    return float(torch.tensor(vals, dtype=torch.float64).quantile(0.9))


def reference(t: Composition, n: int, seeds: list[int], pairs: int) -> Reference:
    """Exact draws: one reference per seed, the W2 floor over ``pairs`` pairs, the exact
    log-likelihood, and the mode error of exact draws (over ``pairs`` draws)."""
    refs = {s: t.sample(n, torch.Generator().manual_seed(1000 + s)) for s in seeds}
    w2s, errs = [], []
    for j in range(pairs):
        a = t.sample(n, torch.Generator().manual_seed(3000 + 2 * j))
        b = t.sample(n, torch.Generator().manual_seed(3001 + 2 * j))
        w2s.append(metrics.w2(a, b))
        errs.append(mode_error(a, t))
    big = t.sample(200_000, torch.Generator().manual_seed(99))
    floor = {
        "mean": statistics.fmean(w2s),
        "std": statistics.stdev(w2s) if pairs > 1 else 0.0,
        "pairs": pairs,
    }
    return Reference(
        t,
        refs,
        floor,
        float(t.log_prob(big).mean()),
        {"mean": statistics.fmean(errs), "p90": _p90(errs), "draws": pairs},
    )


# Runs ---------------------------------------------------------------------------------
def run_config(c: Config, ref: Reference, n: int, seeds: list[int]) -> dict[str, Any]:
    """Every seed of one configuration on one target, aggregated."""
    rows = []
    scene = ref.target.scene()
    for s in seeds:
        res = c.make().run(scene, n, seed=s)
        x = res["x"].detach().cpu().to(torch.float32)
        rows.append(
            {
                "w2": metrics.w2(x, ref.refs[s]),
                "mode_err": mode_error(x, ref.target),
                "ll_gap": float(ref.target.log_prob(x).mean()) - ref.exact_ll,
                "nfe": float(res.stats["nfe_total"]),
                "wall_s": float(res.stats["wall_time"]),
            }
        )
    w2 = [r["w2"] for r in rows]
    errs = [r["mode_err"] for r in rows]
    gaps = [r["ll_gap"] for r in rows]
    out = {
        "family": c.family,
        "budget": list(c.budget),
        "nfe": rows[0]["nfe"],
        "w2": statistics.fmean(w2),
        "w2_std": statistics.stdev(w2) if len(w2) > 1 else 0.0,
        "w2_ratio": statistics.fmean(w2) / ref.floor["mean"],
        "mode_err_mean": statistics.fmean(errs),
        "mode_err_p90": _p90(errs),
        "ll_gap": statistics.fmean(gaps),
        "wall_s": statistics.fmean(r["wall_s"] for r in rows),
    }
    out["meets_goal"] = meets(out)
    return out


def meets(row: dict[str, Any]) -> bool:
    """The issue's floor criteria, at any NFE."""
    return (
        row["w2_ratio"] <= GOAL["w2_ratio"]
        and row["mode_err_p90"] <= GOAL["mode_err_p90"]
        and abs(row["ll_gap"]) <= GOAL["ll_gap"]
    )


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Per target: the default and the earlier default, the cheapest configuration at the goal,
    and the best one within 500 NFE."""
    out = {}
    for name, tgt in result["targets"].items():
        rows = list(tgt["configs"].items())
        at_floor = sorted((r["nfe"], k) for k, r in rows if r["meets_goal"])
        cheap = [(k, r) for k, r in rows if r["nfe"] <= GOAL["nfe"]]
        best = min(cheap, key=lambda kr: kr[1]["w2_ratio"] + 10 * kr[1]["mode_err_p90"], default=None)
        earlier = next((k for k in EARLIER if k in tgt["configs"]), None)
        default = DEFAULT_SCORE_ONLY if name in SCORE_ONLY_TARGETS else DEFAULT
        out[name] = {
            **{
                label: {k: tgt["configs"][c][k] for k in ("nfe", "w2_ratio", "mode_err_p90", "ll_gap")}
                | {"config": c}
                for label, c in (("default", default), ("earlier_default", earlier))
                if c in tgt["configs"]
            },
            "cheapest_at_floor": {"config": at_floor[0][1], "nfe": at_floor[0][0]} if at_floor else None,
            "goal_met_within_500_nfe": bool(at_floor) and at_floor[0][0] <= GOAL["nfe"],
            "best_within_500_nfe": None
            if best is None
            else {k: best[1][k] for k in ("nfe", "w2_ratio", "mode_err_p90", "ll_gap")} | {"config": best[0]},
        }
    return out


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["targets"])
    panels = (("w2_ratio", "W2 / floor", GOAL["w2_ratio"]), ("mode_err_p90", "mode error (p90)", 0.02))
    fig, axes = plt.subplots(
        len(panels), len(names), figsize=(4.2 * len(names), 3.4 * len(panels)), squeeze=False
    )
    for j, name in enumerate(names):
        tgt = result["targets"][name]
        fams: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        for row in tgt["configs"].values():
            fams.setdefault(row["family"], []).append((row["nfe"], row))
        for i, (key, label, goal) in enumerate(panels):
            ax = axes[i][j]
            for fam, pts in sorted(fams.items()):
                pts.sort(key=lambda p: p[0])
                ax.plot([p[0] for p in pts], [p[1][key] for p in pts], "o-", ms=3, label=fam)
            floor = 1.0 if key == "w2_ratio" else tgt["exact_mode_err"]["p90"]
            ax.axhline(floor, color="k", lw=0.8, ls=":")
            ax.axhline(goal, color="g", lw=0.8, ls="--")
            ax.axvline(GOAL["nfe"], color="g", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("NFE per particle")
            ax.set_ylabel(label)
            if i == 0:
                ax.set_title(tgt["name"], fontsize=9)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default=",".join(ANALYTIC), help=f"comma-separated, of {list(TARGETS)}")
    ap.add_argument("--configs", default=None, help="comma-separated config names (default: all)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--pairs", type=int, default=50, help="exact pairs for the W2 floor")
    ap.add_argument("--quick", action="store_true", help="one target, two configs, 2 seeds, 500 particles")
    ap.add_argument("--out", default=None)
    ap.add_argument("--png", default=None)
    ap.add_argument("--merge", nargs="+", default=None, help="combine the targets of earlier runs' JSON")
    args = ap.parse_args(argv)
    if args.merge:
        parts = [json.loads(Path(m).read_text()) for m in args.merge]
        names = [Path(m).name for m in args.merge]
        result = {"config": parts[0]["config"], "targets": {}, "merged_from": names}
        for part in parts:  # each target keeps the settings of the run that measured it
            for name, tgt in part["targets"].items():
                if name in result["targets"]:  # a later run adds configurations to a target
                    result["targets"][name]["configs"].update(tgt["configs"])
                else:
                    result["targets"][name] = {**tgt, "run": part["config"]}
        result["summary"] = summarise(result)
        result["wall_s"] = sum(part.get("wall_s", math.nan) for part in parts)
        if args.png:
            plot(result, args.png)
            result["png"] = args.png
        emit(result, args.out)
        return
    torch.set_num_threads(1)
    if args.quick:
        args.targets, args.seeds, args.n, args.pairs = "ring-bar", 2, 500, 2
        args.configs = ",".join(QUICK)
    chosen = configs()
    if args.configs:
        want = [c.strip() for c in args.configs.split(",")]
        unknown = sorted(set(want) - {c.name for c in chosen})
        if unknown:
            raise SystemExit(f"unknown configs {unknown}; known: {[c.name for c in chosen]}")
        chosen = [c for c in chosen if c.name in want]
    seeds = list(range(args.seeds))
    result: dict[str, Any] = {
        "config": {"n": args.n, "seeds": args.seeds, "floor_pairs": args.pairs, "threads": 1, "goal": GOAL},
        "targets": {},
    }
    start = time.perf_counter()
    for tname in args.targets.split(","):
        t = TARGETS[tname]()
        ref = reference(t, args.n, seeds, args.pairs)
        tgt = {
            "name": t.name,
            "modes": int(t.mode_weights.shape[0]),
            "floor_w2": ref.floor,
            "exact_ll": ref.exact_ll,
            "exact_mode_err": ref.exact_mode_err,
            "run": result["config"],
            "configs": {},
        }
        result["targets"][tname] = tgt
        for c in chosen:
            if not (c.everywhere or tname not in ("planes-3d", "slabs-8d")):
                continue
            row = run_config(c, ref, args.n, seeds)
            tgt["configs"][c.name] = row
            print(
                f"{tname:10s} {c.name:34s} nfe {row['nfe']:7.0f} W2/floor {row['w2_ratio']:.3f} "
                f"mode p90 {row['mode_err_p90']:.4f} ll gap {row['ll_gap']:+.3f}",
                file=sys.stderr,
                flush=True,
            )
            if args.out:  # keep what is done if the run is cut short
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps({**result, "partial": True}, indent=1) + "\n")
    result["summary"] = summarise(result)
    result["wall_s"] = time.perf_counter() - start
    if args.png:
        plot(result, args.png)
        result["png"] = args.png
    emit(result, args.out)


if __name__ == "__main__":
    main()

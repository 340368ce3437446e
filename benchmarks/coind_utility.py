"""COIND's utility claim: does its synthetic data make a classifier robust to compositional shift? (issue 26)

Gaudi et al. 2025 (COIND, Sec. 5.3, Table 3) train a classifier on 20,000 synthetic images
drawn uniformly over *all* attribute combinations, including those never seen in training,
and report the best worst-group accuracy on CelebA, above ERM and Group DRO (Sagawa et al.
2019) on the real data and above synthetic data from a plain conditional model.  This
benchmark asks the same question at CPU scale.

**Coloured shapes** (:mod:`coind_shapes`: the same data, held-out combinations, recipe,
cached U-Nets and samplers).  The task: predict the *shape* of a 16x16 image; the real
training data never shows a blue square or a blue triangle, so blue is always a circle there
(a spurious colour cue).  One small CNN (:class:`coind_shapes.Classifier` with a shape head
only), the same steps, batch and optimiser for every training set:

* ``real`` -- ERM on the real training images (seven seen groups);
* ``real + group DRO`` -- Group DRO over the seen groups (Sagawa et al. 2019, Alg. 1): group
  weights ``q_g <- q_g exp(eta_q l_g)``, renormalised, and the loss ``sum_g q_g l_g``;
* ``synthetic <model> <way> w=<w>`` -- images from the plain conditional U-Net (``vanilla``,
  ``lam = 0``) or the COIND one, ``--samples`` per combination for all nine combinations,
  each asked ``label`` (the network's joint condition), ``marginals`` (Eq. 1) or ``joints``
  (App. E.1), without (``w = 1``) or with classifier-free guidance ``w``;
* ``real + synthetic ...`` -- the real images and one synthetic set, pooled.

Evaluation on a balanced test set of every combination (``--test-per-group`` each):
accuracy, balanced accuracy (mean per-class recall), worst-group accuracy (group = shape x
colour, :func:`probcomp.metrics.worst_group_accuracy`) and the accuracy on the held-out
groups alone, as mean and std over ``--seeds`` classifier seeds.  Each synthetic set is also
scored by coind_shapes' full-support classifier (the conformity score, Eq. 18), and the
models' CI violation (JSD, Eq. 17) is recomputed, so the downstream numbers sit next to the
sample-quality ones (``coind_shapes.json``).

**2-D toy** (``--toy``; :func:`probcomp.datasets.coind_toy`, ``(+1, +1)`` held out; the
zoo's ``coind-vanilla`` and ``coind-lam10``): a linear classifier of ``c1``, the same
conditions (groups ``(c1, c2)``), the synthetic sets drawn without guidance.

``verdict`` is computed from the numbers: the condition with the best mean worst-group
accuracy, whether it is COIND's synthetic data (the claim, compared as in Table 3 with the
real-data baselines and the plain model's synthetic data), and the rank correlation across
synthetic sets of their held-out CS with the classifier's held-out accuracy.

Run (trains or reuses coind_shapes' two U-Nets in ``--cache``; synthetic sets cached there too)::

    python benchmarks/coind_utility.py --out benchmarks/results/coind_utility.json

Smoke test (throw-away 20-step models, tiny sets)::

    python benchmarks/coind_utility.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import coind_shapes  # benchmarks/ is on sys.path when a script runs
import torch
from _output import emit
from coind import temporary_cache
from coind_shapes import HELD_OUT, REFERENCE, SEEN, Classifier, composed_factor, draw, train_model
from torch import nn

import probcomp as pc
from probcomp import datasets, metrics

ALL = [(s, c) for s in range(3) for c in range(3)]
WAYS = ("label", "marginals", "joints")
METRICS = ("accuracy", "balanced_accuracy", "worst_group_accuracy", "held_out_accuracy")
TOY_ALL = [(a, b) for a in range(2) for b in range(2)]
TOY_HELD_OUT = ((1, 1),)  # (+1, +1)
TOY_REFERENCE = {"c1": 0, "c2": 0}
TOY_MEANS = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])  # TOY_ALL's means


# ---------------------------------------------------------------- data


def shapes_of(combos: Sequence[tuple[int, int]], per: int, seed: int, size: int) -> dict[str, torch.Tensor]:
    """``per`` real images of each combination in ``combos`` (datasets.shapes, the others held out)."""
    g = torch.Generator().manual_seed(seed)
    xs, groups = [], []
    for combo in combos:
        x, _ = datasets.shapes(per, g, size=size, held_out=[c for c in ALL if c != combo])
        xs.append(x)
        groups.append(torch.tensor([combo] * per))
    return {"x": torch.cat(xs), "groups": torch.cat(groups)}


def toy_of(combos: Sequence[tuple[int, int]], per: int, seed: int) -> dict[str, torch.Tensor]:
    """``per`` toy points of each combination in ``combos`` (datasets.coind_toy, the others held out)."""
    g = torch.Generator().manual_seed(seed)
    xs, groups = [], []
    for combo in combos:
        held = [(2 * a - 1, 2 * b - 1) for a, b in TOY_ALL if (a, b) != combo]  # coind_toy takes signs
        x, lab = datasets.coind_toy(per, g, held_out=held)
        xs.append(x)
        groups.append(lab)
    return {"x": torch.cat(xs), "groups": torch.cat(groups)}


def synthetic(
    model: Any,
    tag: str,
    how: str,
    guidance: float,
    task: dict[str, Any],
    args: argparse.Namespace,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``args.samples`` draws of every combination asked ``how``; cached in ``args.cache``."""
    path = (
        args.cache
        / "utility"
        / f"{tag}-{how}-w{guidance:g}-n{args.samples}-steps{args.sample_steps}-seed{args.seed}.pt"
    )
    if path.exists():
        data = torch.load(path)
        return {k: data[k] for k in ("x", "groups")}, {**data["cost"], "cached": True}
    xs, groups, nfe, t0 = [], [], 0, time.perf_counter()
    for i, combo in enumerate(task["all"]):
        values = dict(zip(task["attributes"], combo, strict=True))
        factor = composed_factor(model, how, values, task["reference"], guidance)
        x, cost = draw(
            factor, model.event_shape, args.samples, args.sample_steps, args.seed + i, task["clip"]
        )
        x = x.detach().float()
        xs.append(x.clamp(*task["clip"]) if task["clip"] else x)
        groups.append(torch.tensor([combo] * args.samples))
        nfe += cost["nfe"]
    data = {"x": torch.cat(xs), "groups": torch.cat(groups)}
    cost = {"nfe_per_sample": nfe // len(task["all"]), "seconds": round(time.perf_counter() - t0, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**data, "cost": cost}, path)
    return data, {**cost, "cached": False}


def pooled(*sets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([s[k] for s in sets]) for k in ("x", "groups")}


# ---------------------------------------------------------------- classifier


def fit(
    net: nn.Module,
    data: dict[str, torch.Tensor],
    steps: int,
    seed: int,
    *,
    batch: int = 64,
    lr: float = 2e-3,
    dro_eta: float | None = None,
) -> nn.Module:
    """Train ``net`` to predict attribute 0 of ``data["groups"]`` from ``data["x"]`` by Adam.

    ERM by default.  With ``dro_eta`` = ``eta_q``, online Group DRO (Sagawa et al. 2019,
    Alg. 1) over the groups present in ``data``: at each step the per-group mean losses
    ``l_g`` of the minibatch update ``q_g <- q_g exp(eta_q l_g)`` (groups absent from the
    batch keep their weight), ``q`` is renormalised, and the loss is ``sum_g q_g l_g``.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    x, y = data["x"], data["groups"][:, 0]
    keys, gid = torch.unique(data["groups"], dim=0, return_inverse=True)
    q = torch.full((len(keys),), 1.0 / len(keys))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(len(x), (batch,), generator=g)
        logits = net(x[idx])
        logits = logits[0] if isinstance(logits, tuple) else logits
        losses = nn.functional.cross_entropy(logits, y[idx], reduction="none")
        if dro_eta is None:
            loss = losses.mean()
        else:
            counts = torch.bincount(gid[idx], minlength=len(keys)).float()
            per_group = torch.zeros(len(keys)).index_add(0, gid[idx], losses) / counts.clamp_min(1)
            q = q * torch.exp(dro_eta * per_group.detach() * (counts > 0))
            q = q / q.sum()
            loss = (q * per_group).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def evaluate(net: nn.Module, test: dict[str, torch.Tensor], task: dict[str, Any]) -> dict[str, float]:
    """Accuracy, balanced accuracy, worst-group accuracy and held-out-group accuracy of attribute 0."""
    with torch.no_grad():
        logits = net(test["x"])
    pred = (logits[0] if isinstance(logits, tuple) else logits).argmax(1)
    y, groups = test["groups"][:, 0], test["groups"]
    per = metrics.group_accuracies(y, pred, groups, expected=task["all"])
    held = torch.zeros(len(y), dtype=torch.bool)
    for h in task["held_out"]:
        held |= (groups == torch.tensor(h)).all(1)
    return {
        "accuracy": float((pred == y).double().mean()),
        "balanced_accuracy": metrics.balanced_accuracy(y, pred),
        "worst_group_accuracy": metrics.worst_group_accuracy(y, pred, groups, expected=task["all"]),
        "held_out_accuracy": float((pred[held] == y[held]).double().mean()),
        "per_group": {f"{k}": v for k, v in per.items()},
    }


def _stats(values: list[float]) -> dict[str, float]:
    v = torch.tensor(values, dtype=torch.float64)
    return {"mean": round(float(v.mean()), 4), "std": round(float(v.std()) if len(v) > 1 else 0.0, 4)}


def trial(
    make: Callable[[], nn.Module],
    data: dict[str, torch.Tensor],
    test: dict,
    task: dict,
    args: argparse.Namespace,
    **kw: Any,
) -> dict[str, Any]:
    """Mean and std of every metric over ``args.seeds`` classifier seeds."""
    runs = [
        evaluate(fit(make(), data, args.fit_steps, args.seed + 100 * k, **kw), test, task)
        for k in range(args.seeds)
    ]
    out: dict[str, Any] = {m: _stats([r[m] for r in runs]) for m in METRICS}
    out["per_group_mean"] = {
        k: round(sum(r["per_group"][k] for r in runs) / len(runs), 4) for k in runs[0]["per_group"]
    }
    out["train_size"] = len(data["x"])
    return out


# ---------------------------------------------------------------- tasks


def conformity(
    predict: Callable[[torch.Tensor], torch.Tensor], data: dict[str, torch.Tensor], held: Sequence
) -> dict:
    """Share of a synthetic set read as its requested combination (CS, Eq. 18): held-out and seen groups."""
    ok = (predict(data["x"]) == data["groups"]).all(1)
    is_held = torch.zeros(len(ok), dtype=torch.bool)
    for h in held:
        is_held |= (data["groups"] == torch.tensor(h)).all(1)
    return {
        "held_out": round(float(ok[is_held].double().mean()), 4),
        "seen": round(float(ok[~is_held].double().mean()), 4),
    }


def run_task(
    task: dict[str, Any], models: dict[str, Any], args: argparse.Namespace, guidances: Sequence[float]
) -> dict[str, Any]:
    """Every condition of one task: real, Group DRO, each synthetic set alone and pooled with real data."""
    real, test = task["real"], task["test"]
    conds: dict[str, Any] = {
        "real": trial(task["make"], real, test, task, args),
        "real + group DRO": trial(task["make"], real, test, task, args, dro_eta=args.dro_eta),
    }
    sets: dict[str, Any] = {}
    for name, (model, tag) in models.items():
        for w in guidances:
            for how in WAYS:
                key = f"{name} {how} w={w:g}"
                data, cost = synthetic(model, tag, how, w, task, args)
                sets[key] = {"cs": conformity(task["cs_predict"], data, task["held_out"]), **cost}
                conds[f"synthetic {key}"] = trial(task["make"], data, test, task, args)
                conds[f"real + synthetic {key}"] = trial(task["make"], pooled(real, data), test, task, args)
                print(
                    key,
                    sets[key],
                    conds[f"synthetic {key}"]["worst_group_accuracy"],
                    file=sys.stderr,
                    flush=True,
                )
    return {"conditions": conds, "synthetic_sets": sets}


def shapes_task(args: argparse.Namespace) -> dict[str, Any]:
    size = args.shapes_size
    t0 = time.perf_counter()
    cs_clf, cs_acc = coind_shapes.train_classifier(args.classifier_steps, args.seed, size)
    task = {
        "all": ALL,
        "held_out": HELD_OUT,
        "attributes": ("shape", "color"),
        "reference": REFERENCE,
        "clip": (-1.0, 1.0),
        "real": shapes_of(SEEN, args.real_per_group, args.seed + 1, size),
        "test": shapes_of(ALL, args.test_per_group, args.seed + 2, size),
        "make": lambda: Classifier(size, heads=(3,)),
        "cs_predict": lambda x: torch.stack(cs_clf.predict(x), 1),
    }
    models, jsd = {}, {}
    for lam in (0.0, args.shapes_lam):
        name = "vanilla" if lam == 0 else f"coind lam={lam:g}"
        model = train_model(lam, args.shapes_steps, args.cache, args.seed, size)
        models[name] = (model, f"shapes{size}-lam{lam:g}-steps{args.shapes_steps}-seed{args.seed}")
        jsd[name] = coind_shapes.jsd_bits(model, args.jsd_images, args.seed, size)
    out = run_task(task, models, args, args.guidance)
    out["jsd_bits"] = jsd
    out["cs_classifier"] = cs_acc
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def toy_task(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    task = {
        "all": TOY_ALL,
        "held_out": TOY_HELD_OUT,
        "attributes": ("c1", "c2"),
        "reference": TOY_REFERENCE,
        "clip": None,
        "real": toy_of([c for c in TOY_ALL if c not in TOY_HELD_OUT], args.toy_real_per_group, args.seed + 1),
        "test": toy_of(TOY_ALL, args.test_per_group, args.seed + 2),
        "make": lambda: nn.Linear(2, 2),
        # the Bayes classifier of full-support data: the nearest of the four means
        "cs_predict": lambda x: torch.tensor(TOY_ALL)[torch.cdist(x.float(), TOY_MEANS).argmin(1)],
    }
    models = {name: (pc.models.load(name), f"zoo-{name}") for name in args.toy_models}
    toy_args = argparse.Namespace(
        **{**vars(args), "samples": args.toy_samples, "sample_steps": args.toy_sample_steps}
    )
    out = run_task(task, models, toy_args, [1.0])
    out["jsd_bits"] = {
        n: round(pc.metrics.ci_violation(m, task["real"]["x"][:500])["mean"], 5)
        for n, (m, _) in models.items()
    }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


# ---------------------------------------------------------------- verdict


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return round(float((ra * rb).sum()) / den, 3) if den > 0 else None


def verdict(res: dict[str, Any], vanilla_name: str, coind_name: str) -> dict[str, Any]:
    """Which training set gives the best worst-group accuracy, and is it COIND's synthetic data?"""
    conds = res["conditions"]
    wga = {k: v["worst_group_accuracy"]["mean"] for k, v in conds.items()}
    table3 = {k: v for k, v in wga.items() if not k.startswith("real + synthetic")}  # as in Table 3
    best = max(table3, key=table3.get)
    best_all = max(wga, key=wga.get)
    ours = {k: v for k, v in table3.items() if k.startswith(f"synthetic {coind_name}")}
    rivals = {k: v for k, v in table3.items() if k not in ours}
    best_ours, best_rival = max(ours, key=ours.get), max(rivals, key=rivals.get)
    pairs = [
        (k, k.replace(vanilla_name, coind_name, 1))
        for k in conds
        if k.startswith(f"synthetic {vanilla_name}")
    ]
    sets = res["synthetic_sets"]
    keys = list(sets)
    margin = round(ours[best_ours] - rivals[best_rival], 4)
    noise = round(
        conds[best_ours]["worst_group_accuracy"]["std"] + conds[best_rival]["worst_group_accuracy"]["std"], 4
    )
    holds = best.startswith(f"synthetic {coind_name}")
    summary = (
        f"Best worst-group accuracy (real baselines and synthetic-only sets, as in COIND Table 3): {best} "
        f"({table3[best]:.3f}); COIND's best synthetic set {best_ours} ({ours[best_ours]:.3f}) vs the best "
        f"other {best_rival} ({rivals[best_rival]:.3f}), margin {margin:+.3f} (sum of stds {noise:.3f}). "
        f"The claim {'holds' if holds else 'does not hold'} here"
        + (" (within noise)" if abs(margin) <= noise else "")
        + f". COIND beats the plain model's synthetic data in {sum(wga[b] > wga[a] for a, b in pairs)} of "
        f"{len(pairs)} matched (way, guidance) pairs. Including real + synthetic pools, the best is "
        f"{best_all} ({wga[best_all]:.3f})."
    )
    return {
        "claim_holds": holds,
        "within_noise": abs(margin) <= noise,
        "best_condition": best,
        "best_condition_including_pooled": best_all,
        "coind_best": best_ours,
        "best_other": best_rival,
        "margin": margin,
        "coind_wins_matched_pairs": sum(wga[b] > wga[a] for a, b in pairs),
        "matched_pairs": len(pairs),
        "spearman_held_out_cs_vs_held_out_accuracy": _spearman(
            [sets[k]["cs"]["held_out"] for k in keys],
            [conds[f"synthetic {k}"]["held_out_accuracy"]["mean"] for k in keys],
        ),
        "summary": summary,
    }


def committed_quality(args: argparse.Namespace) -> dict[str, Any]:
    """JSD and CS of the same models in coind_shapes' committed results (where their config matches)."""
    out = {}
    for f in ("coind_shapes.json", "coind_shapes_guided.json"):
        path = Path(__file__).parent / "results" / f
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        c = d["config"]
        same = (c["lam"], c["steps"], c["size"], c["seed"]) == (
            args.shapes_lam,
            args.shapes_steps,
            args.shapes_size,
            args.seed,
        )
        if same:
            out[f] = {
                "guidance": c["guidance"],
                **{
                    m: {
                        "jsd_bits": r["jsd_bits"],
                        **{f"held_out_{h}_cs": r[f"held_out_{h}"]["cs"] for h in WAYS},
                        "seen_label_cs": r["seen_label_cs"],
                    }
                    for m, r in d["models"].items()
                },
            }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "config": {
            "shapes": {
                "lam": args.shapes_lam,
                "model_steps": args.shapes_steps,
                "size": args.shapes_size,
                "held_out": [list(h) for h in HELD_OUT],
                "reference": REFERENCE,
                "real_per_seen_group": args.real_per_group,
                "synthetic_per_group": args.samples,
                "synthetic_total": 9 * args.samples,
                "sample_steps": args.sample_steps,
                "guidance": args.guidance,
                "classifier": "coind_shapes.Classifier(size, heads=(3,)): 3 stride-2 convs + MLP, shape head",
            },
            "toy": {
                "models": args.toy_models,
                "real_per_seen_group": args.toy_real_per_group,
                "synthetic_per_group": args.toy_samples,
                "sample_steps": args.toy_sample_steps,
                "classifier": "nn.Linear(2, 2) on c1",
            }
            if args.toy
            else None,
            "test_per_group": args.test_per_group,
            "fit_steps": args.fit_steps,
            "batch": 64,
            "lr": 2e-3,
            "dro_eta": args.dro_eta,
            "classifier_seeds": args.seeds,
            "seed": args.seed,
            "quick": args.quick,
            "command": " ".join(["python", *sys.argv]),
        }
    }
    coind_name = f"coind lam={args.shapes_lam:g}"
    out["shapes"] = shapes_task(args)
    out["verdict"] = verdict(out["shapes"], "vanilla", coind_name)
    out["verdict"]["committed_sample_quality"] = committed_quality(args)
    if args.toy:
        out["toy"] = toy_task(args)
        out["toy_verdict"] = verdict(out["toy"], args.toy_models[0], args.toy_models[-1])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes-lam", type=float, default=1.0, help="COIND's weight (coind_shapes' model)")
    ap.add_argument("--shapes-steps", type=int, default=3000, help="U-Net training steps (coind_shapes')")
    ap.add_argument("--shapes-size", type=int, default=16, choices=[16, 32])
    ap.add_argument("--samples", type=int, default=100, help="synthetic images per combination")
    ap.add_argument("--sample-steps", type=int, default=100)
    ap.add_argument(
        "--guidance", type=float, nargs="+", default=[1.0, 3.0], help="w per synthetic set (1: none)"
    )
    ap.add_argument("--real-per-group", type=int, default=200, help="real training images per seen group")
    ap.add_argument("--test-per-group", type=int, default=200)
    ap.add_argument("--fit-steps", type=int, default=600, help="classifier steps, every condition")
    ap.add_argument("--seeds", type=int, default=3, help="classifier seeds")
    ap.add_argument("--dro-eta", type=float, default=0.1, help="Group DRO step size eta_q")
    ap.add_argument("--classifier-steps", type=int, default=1500, help="the CS classifier's steps")
    ap.add_argument("--jsd-images", type=int, default=64)
    ap.add_argument("--toy", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--toy-models", nargs="+", default=["coind-vanilla", "coind-lam10"])
    ap.add_argument("--toy-real-per-group", type=int, default=300)
    ap.add_argument("--toy-samples", type=int, default=500)
    ap.add_argument("--toy-sample-steps", type=int, default=200)
    ap.add_argument("--cache", type=Path, default=Path("benchmarks/results/coind_models"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true", help="accepted for uniformity: the output is always JSON")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.shapes_steps, args.samples, args.sample_steps, args.guidance = 20, 4, 4, [1.0]
        args.real_per_group, args.test_per_group, args.fit_steps, args.seeds = 8, 4, 5, 2
        args.classifier_steps, args.jsd_images = 5, 2
        args.toy_real_per_group, args.toy_samples, args.toy_sample_steps = 8, 8, 4
        args.cache = temporary_cache(args.cache)
    emit(run(args), args.out)


if __name__ == "__main__":
    main()

"""Discrete attribute inference with a held-out combination (issue 6; dissertation §5.4.2 analogue).

The COIND toy (``X = (C1, C2) + 0.2 N(0, I)``, ``(+1, +1)`` never seen in training) read
backwards: given a point ``x``, which ``(c1, c2)`` produced it?  Test points come from all
four combinations, so the held-out one is out of distribution.  Two scenes, both solved
exactly by :class:`~probcomp.inference.ConceptInversion`'s enumeration (Alg. 4) with 32
shared noise draws:

* ``joint`` -- one observable conditioned on both attributes, ``p(x | c1, c2)``: the
  non-compositional generative classifier (it never saw ``c = (+1, +1)``);
* ``composed`` -- the attribute terms composed as in COIND Eq. 1, ``p(x | c1) p(x | c2) /
  p(x)``: three observables sharing ``x`` (weights 1, 1, -1); the enumeration evaluates
  each attribute term once per value (2 + 2 + 1 network inputs per draw instead of 4 x 3).

Models: the zoo's ``coind-vanilla`` and the models of ``benchmarks/coind.py`` (trained
there and cached in ``--cache``; run that first or let this script train them).
Accuracy is the share of points whose inferred ``(c1, c2)`` is the true one, reported
for the three seen combinations and for the held-out one; the Bayes classifier of the
full-support data (nearest mean) is the ceiling.

    python benchmarks/attribute_inference.py --json --out benchmarks/results/attribute_inference.json
    python benchmarks/attribute_inference.py --quick --json      # smoke test: zoo model, 20 points
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pyro.distributions as dist
import torch
from _output import emit  # benchmarks/ is on sys.path when a script runs
from coind import COMBOS, STD, train_model

import probcomp as pc
from probcomp.inference import ConceptInversion


def scene_for(x: torch.Tensor, model: Any, kind: str) -> pc.Scene:
    s = pc.Scene()
    c1 = s.control("c1", (), prior=dist.Categorical(logits=torch.zeros(2)))
    c2 = s.control("c2", (), prior=dist.Categorical(logits=torch.zeros(2)))
    if kind == "joint":
        s.observe("x", value=x, factor=model, condition={"c1": c1, "c2": c2})
    else:
        s.observe("x|c1", value=x, factor=model, condition={"c1": c1})
        s.observe("x|c2", value=x, factor=model, condition={"c2": c2})
        s.observe("x", value=x, factor=model, weight=-1.0)
    return s


def accuracy(model: Any, kind: str, x: torch.Tensor, labels: torch.Tensor, draws: int, seed: int) -> dict:
    eng = ConceptInversion(draws=draws)
    right = torch.zeros(len(x), dtype=torch.bool)
    t0, nfe = time.perf_counter(), 0
    for i in range(len(x)):
        r = eng.run(scene_for(x[i], model, kind), seed=seed + i)
        right[i] = int(r["c1"]) == int(labels[i, 0]) and int(r["c2"]) == int(labels[i, 1])
        nfe += r.stats["nfe_total"]
    held = (labels == 1).all(1)
    return {
        "seen_accuracy": round(float(right[~held].double().mean()), 4),
        "held_out_accuracy": round(float(right[held].double().mean()), 4),
        "nfe_per_point": nfe / len(x),
        "seconds_per_point": round((time.perf_counter() - t0) / len(x), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=100, help="test points per combination")
    ap.add_argument("--lams", type=float, nargs="+", default=[0.0, 1.0, 10.0, 100.0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--draws", type=int, default=32)
    ap.add_argument("--cache", type=Path, default=Path("benchmarks/results/coind_models"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = {"vanilla (zoo)": pc.models.load("coind-vanilla")}
    if args.quick:
        args.points, args.draws = 5, 8
    else:
        for lam in args.lams:
            models[f"lam={lam:g}"] = train_model(lam, args.steps, args.cache, args.seed)
    g = torch.Generator().manual_seed(args.seed + 7)
    k = torch.arange(4).repeat_interleave(args.points)
    x = COMBOS[k] + STD * torch.randn(len(k), 2, generator=g)
    labels = ((COMBOS[k] + 1) / 2).long()
    nearest = (x[:, None] - COMBOS[None]).square().sum(-1).argmin(1)
    held = k == 3
    out: dict[str, Any] = {
        "config": {"points_per_combination": args.points, "draws": args.draws, "command": " ".join(sys.argv)},
        "bayes_classifier": {
            "seen_accuracy": round(float((nearest == k)[~held].double().mean()), 4),
            "held_out_accuracy": round(float((nearest == k)[held].double().mean()), 4),
        },
        "models": {},
    }
    for name, model in models.items():
        out["models"][name] = {
            kind: accuracy(model, kind, x, labels, args.draws, args.seed) for kind in ("joint", "composed")
        }
        print(name, json.dumps(out["models"][name]), file=sys.stderr, flush=True)
    emit(out, args.out)


if __name__ == "__main__":
    main()

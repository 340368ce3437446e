"""COIND on coloured shapes: shape x colour with a block of combinations held out (issue 7A, task 2).

Data (:func:`probcomp.datasets.shapes`): one shape (circle, square, triangle) in one colour
(red, green, blue) per image, 16x16 by default (``--shapes-size 32`` for the issue's size).
Square and triangle in blue are never shown, so blue is seen only as a circle (the corner
structure of the seed's CelebA split).  Two U-Nets are
trained with the same recipe, seed and attribute dropout ``p_uncond = 0.3``: plain
conditional training (``lam = 0``) and COIND (``objective="coind"``, weight ``lam``).

Metrics (the seed's App. A):

* ``jsd_bits`` -- the conditional-independence violation (Eq. 17): the Jensen-Shannon
  divergence in bits (base-2 logs, so in [0, 1]) between the implicit classifier's joint
  posterior ``p(shape, colour | x)`` (Eq. 15) and the product of its marginals (Eq. 14),
  averaged over training images; each posterior is ``softmax(-E||eps - eps(x_t | c)||^2)``
  over 5 shared draws with ``t`` in [0.3, 0.6].
* ``cs`` -- the conformity score (Eq. 18): the share of generated images whose shape *and*
  colour a classifier trained on full-support data (all nine combinations) reads as the
  requested ones.  Reported for the held-out combinations by three ways of asking:
  ``label`` (the network's own joint condition, never trained there), ``marginals``
  (Eq. 1: ``s(shape) + s(colour) - s(null)``) and ``joints`` (App. E.1:
  ``s(shape, red) + s(circle, colour) - s(circle, red)``, every term a seen combination),
  and for the seen combinations by ``label``.  With ``--guidance w`` every one of them is
  sampled with classifier-free guidance, ``s_null + w (s_c - s_null)`` (``w = 1``: none).

16x16 because this machine has two CPU cores and no GPU: at 32x32 a U-Net of the same
recipe needs more steps than a CPU session affords (1200 steps gave blobs, not shapes).

Run (trains two models, about 10 and 30 min on one CPU thread; cached in ``--cache``)::

    python benchmarks/coind.py --task shapes --json --out benchmarks/results/coind_shapes.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import probcomp as pc
from probcomp import compose, datasets
from probcomp.inference import ReverseDiffusion
from probcomp.models import zoo

HELD_OUT = ((1, 2), (2, 2))  # (shape, colour): square and triangle in blue
SEEN = [(s, c) for s in range(3) for c in range(3) if (s, c) not in HELD_OUT]
REFERENCE = {"shape": 0, "color": 0}  # circle, red: seen, and so are its single swaps to the held-out ones
RECIPE = dict(
    network="unet",
    parameterisation="eps",
    base=16,
    mults=(1, 2),
    attributes={"shape": 3, "color": 3},
    p_drop=0.3,
    batch=32,
    lr=1e-3,
    ema=0.995,  # a short run: at the zoo's 0.999 the average would still hold initial weights
)


def train_model(lam: float, steps: int, cache: Path, seed: int, size: int) -> Any:
    name = f"shapes{size}-lam{lam:g}-steps{steps}-seed{seed}"
    path = cache / f"{name}.json"
    if not path.exists():
        recipe = zoo.Recipe(
            "shapes" if size == 32 else f"shapes-{size}",
            objective="coind" if lam > 0 else "eps",
            lam=lam,
            steps=steps,
            seed=seed,
            **RECIPE,
        )
        zoo.train_recipe(recipe, name, cache, quality=False, progress=False)
    return pc.models.load(str(path))


class Classifier(nn.Module):
    """A small CNN with one linear head per attribute: by default a shape head and a colour head
    (the seed's multi-head classifier, App. A.2); ``heads=(3,)`` gives a shape-only one."""

    def __init__(self, size: int, heads: Sequence[int] = (3, 3)) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.SiLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.SiLU(),
            nn.Conv2d(32, 32, 3, 2, 1), nn.SiLU(), nn.Flatten(),
            nn.Linear(32 * (size // 8) ** 2, 64), nn.SiLU(),
        )  # fmt: skip
        self.heads = tuple(heads)
        self.head = nn.Linear(64, sum(self.heads))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.head(self.body(x)).split(self.heads, 1))

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            logits = self(x.clamp(-1, 1))
        return tuple(z.argmax(1) for z in logits)


def train_classifier(steps: int, seed: int, size: int) -> tuple[Classifier, dict[str, float]]:
    """Trained on full-support data with light noise; accuracy measured on fresh full-support images."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 11)
    clf = Classifier(size)
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    for _ in range(steps):
        x, lab = datasets.shapes(64, g, size=size, held_out=())
        x = x + 0.1 * torch.rand(()) * torch.randn(x.shape, generator=g)
        s, c = clf(x)
        loss = nn.functional.cross_entropy(s, lab["shape"]) + nn.functional.cross_entropy(c, lab["color"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, lab = datasets.shapes(900, g, size=size, held_out=())
    s, c = clf.predict(x)
    held = torch.zeros(900, dtype=torch.bool)
    for a, b in HELD_OUT:
        held |= (lab["shape"] == a) & (lab["color"] == b)
    both = (s == lab["shape"]) & (c == lab["color"])
    return clf, {
        "shape_accuracy": round(float((s == lab["shape"]).double().mean()), 4),
        "color_accuracy": round(float((c == lab["color"]).double().mean()), 4),
        "both_held_out_combinations": round(float(both[held].double().mean()), 4),
    }


def jsd_bits(model: Any, n: int, seed: int, size: int, draws: int = 5) -> float:
    """Mean JSD (bits) between the implicit joint posterior and the product of its marginals."""
    g = torch.Generator().manual_seed(seed + 3)
    x, _ = datasets.shapes(n, g, size=size)
    return round(pc.metrics.ci_violation(model, x, draws=draws, generator=g)["mean"], 5)


def composed_factor(
    model: Any, how: str, values: dict[str, int], reference: dict[str, int], guidance: float = 1.0
) -> Any:
    """The score of the combination ``values`` asked for ``how``, ``s_c``.

    ``label``: the network's own joint condition; ``marginals``: Eq. 1 of Gaudi et al.
    2025, ``sum_i s(c_i) - (n - 1) s(null)``; ``joints``: their App. E.1, seen joints around
    ``reference``.  With ``guidance`` ``w != 1``, ``s_null + w (s_c - s_null)`` (Ho & Salimans 2022).
    """
    if how == "label":
        factor = model.condition(**values)
    else:
        factor = compose.attributes(model, values, reference=reference if how == "joints" else None)
    return factor if guidance == 1.0 else compose.guidance(factor, model, guidance - 1.0)


def factor_for(model: Any, how: str, shape: int, color: int, guidance: float = 1.0) -> Any:
    """The score asked for, ``s_c``; with ``guidance`` ``w != 1``, ``s_null + w (s_c - s_null)``."""
    return composed_factor(model, how, {"shape": shape, "color": color}, REFERENCE, guidance)


def draw(
    factor: Any,
    event_shape: tuple[int, ...],
    n: int,
    steps: int,
    seed: int,
    clip: tuple[float, float] | None = (-1.0, 1.0),
) -> tuple[torch.Tensor, dict]:
    """``n`` DDPM samples of ``factor`` (``steps`` levels, ``x0`` clipped to ``clip``) and their cost."""
    scene = pc.Scene()
    scene.observe("y", scene.control("x", event_shape), factor=factor)
    res = ReverseDiffusion(steps=steps, clip_x0=clip).run(scene, n, seed=seed)
    return res["x"], {"nfe": res.stats["nfe_total"], "seconds": round(res.stats["wall_time"], 1)}


def generate(
    model: Any, how: str, combo: tuple[int, int], n: int, steps: int, seed: int, guidance: float = 1.0
) -> tuple[Any, dict]:
    return draw(factor_for(model, how, *combo, guidance=guidance), model.event_shape, n, steps, seed)


def _draw(model: Any, how: str, combo: tuple[int, int], args: argparse.Namespace) -> tuple[Any, dict]:
    return generate(model, how, combo, args.shapes_samples, args.sample_steps, args.seed, args.guidance)


def conformity(clf: Classifier, x: torch.Tensor, combo: tuple[int, int]) -> float:
    s, c = clf.predict(x)
    return round(float(((s == combo[0]) & (c == combo[1])).double().mean()), 4)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    clf, clf_acc = train_classifier(args.classifier_steps, args.seed, args.shapes_size)
    out: dict[str, Any] = {
        "config": {
            "lam": args.shapes_lam,
            "steps": args.shapes_steps,
            "size": args.shapes_size,
            "samples": args.shapes_samples,
            "sample_steps": args.sample_steps,
            "guidance": args.guidance,
            "held_out": [list(h) for h in HELD_OUT],
            "reference": REFERENCE,
            "seed": args.seed,
        },
        "classifier": {
            **clf_acc,
            "steps": args.classifier_steps,
            "seconds": round(time.perf_counter() - t0, 1),
        },
        "models": {},
    }
    images = {}
    for lam in (0.0, args.shapes_lam):
        name = "vanilla" if lam == 0 else f"coind lam={lam:g}"
        model = train_model(lam, args.shapes_steps, args.cache, args.seed, args.shapes_size)
        row: dict[str, Any] = {"jsd_bits": jsd_bits(model, args.jsd_images, args.seed, args.shapes_size)}
        for how in ("label", "marginals", "joints"):
            per = {}
            for combo in HELD_OUT:
                x, cost = _draw(model, how, combo, args)
                per[f"{combo}"] = {"cs": conformity(clf, x, combo), **cost}
                images[(name, how, combo)] = x[:8]
            row[f"held_out_{how}"] = {
                "cs": round(sum(v["cs"] for v in per.values()) / len(per), 4),
                "per_combination": per,
            }
        seen = [conformity(clf, _draw(model, "label", c, args)[0], c) for c in SEEN[: args.seen_combinations]]
        row["seen_label_cs"] = round(sum(seen) / len(seen), 4)
        out["models"][name] = row
    if args.figure:
        figure(images, args.figure)
    return out


def figure(images: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(images)
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 1.1 * len(keys)))
    for ax, key in zip(axes, keys, strict=True):
        row = torch.cat(list(images[key]), 2)  # (3, S, 8 S)
        ax.imshow(((row.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy())
        ax.set_xticks([])
        ax.set_yticks([])
        name, how, combo = key
        ax.set_ylabel(
            f"{name}\n{how} {datasets.SHAPES[combo[0]]}", rotation=0, ha="right", va="center", fontsize=7
        )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--shapes-lam", type=float, default=1.0)
    ap.add_argument("--shapes-steps", type=int, default=3000)
    ap.add_argument("--shapes-size", type=int, default=16, choices=[16, 32], help="image side")
    ap.add_argument("--shapes-samples", type=int, default=32)
    ap.add_argument("--sample-steps", type=int, default=100)
    ap.add_argument(
        "--guidance", type=float, default=1.0, help="w: sample s_null + w (s_c - s_null); 1 = no guidance"
    )
    ap.add_argument("--classifier-steps", type=int, default=1500)
    ap.add_argument("--jsd-images", type=int, default=64)
    ap.add_argument("--seen-combinations", type=int, default=7)
    ap.add_argument("--figure", type=Path)

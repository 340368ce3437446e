"""The model zoo: shipped weights, and the recipes that regenerate them bit for bit.

``python -m probcomp.models.zoo list``         the shipped models with their quality numbers
``python -m probcomp.models.zoo show NAME``    one model's full config
``python -m probcomp.models.zoo train NAME``   retrain one entry from its seed (``--all`` for all)
``python -m probcomp.models.zoo evaluate NAME`` re-score an entry and store its quality numbers

Each recipe fixes data set, architecture, parameterisation, schedule, steps,
batch, learning rate, EMA and seed; training is deterministic on CPU, so the same
command rewrites the same weights.  After training, the model's own reverse-
diffusion samples (2000, 200 DDPM steps) are scored against exact data samples:
W2 next to the data-vs-data floor, stored in the config's ``quality`` field.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from probcomp import datasets, metrics
from probcomp import schedules as sched
from probcomp.errors import DataError, ProbcompError

from . import zoo_data
from .checkpoint import ZOO_DIR, load, read_config, save
from .energy import EnergyModel
from .networks import ResMLP, UNet
from .parameterisation import Preconditioned
from .training import train

__all__ = ["RECIPES", "Recipe", "evaluate", "list_models", "record_quality", "train_entry", "train_recipe"]


@dataclass(frozen=True)
class Recipe:
    """How a zoo entry is trained."""

    data: str
    parameterisation: str = "eps-precond"
    sigma_data: float = 0.5
    steps: int = 4000
    batch: int = 512
    lr: float = 1e-3
    ema: float = 0.995
    seed: int = 0
    hidden: int = 128
    blocks: int = 4
    attributes: dict[str, int] = field(default_factory=dict)
    continuous: dict[str, int] = field(default_factory=dict)
    p_drop: float = 0.1
    network: str = "resmlp"
    base: int = 24
    mults: tuple[int, ...] = (1, 2, 2)
    coords: bool = False
    spatial: dict[str, float] = field(default_factory=dict)
    point_sets: dict[str, float] = field(default_factory=dict)
    objective: str = "eps"
    lam: float = 0.0
    device: str = "cpu"
    notes: str = ""

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (2,) if self.data in _2D else zoo_data.event_shape(self.data)


_2D = (*datasets.DATASETS_2D, "coind-toy")

# the object models: U-Nets conditioned on a colour and a location drawn as a heat map
_OBJECT_UNET: dict[str, Any] = dict(
    parameterisation="eps",
    steps=4000,
    lr=5e-4,
    ema=0.999,
    attributes={"color": 6},
    continuous={"xy": 2},
    network="unet",
    coords=True,
    spatial={"xy": 0.1},
    device="cuda",
)

# the empty scene, one image: a short run suffices
_EMPTY_UNET: dict[str, Any] = dict(
    steps=2000, batch=128, lr=5e-4, ema=0.999, network="unet", coords=True, device="cuda"
)

RECIPES: dict[str, Recipe] = {
    "ring8": Recipe("ring8", notes="8 Gaussians, radius 0.5, std 0.03"),
    "ring8-energy": Recipe("ring8", "energy-norm", notes="ring8 with E = ||f||^2 / (2 sigma)"),
    "bar": Recipe("bar", notes="uniform on [-0.2, 0.2] x [-1, 1]"),
    "bar-energy": Recipe("bar", "energy-norm", notes="bar with E = ||f||^2 / (2 sigma)"),
    "left-bar": Recipe("left-bar", notes="uniform on [-0.6, -0.2] x [-1, 1]"),
    "right-bar": Recipe("right-bar", notes="uniform on [0.2, 0.6] x [-1, 1]"),
    "box-0.7": Recipe("box-0.7", notes="uniform on [-0.7, 0.7]^2"),
    "box-0.3": Recipe("box-0.3", notes="uniform on [-0.3, 0.3]^2"),
    # energy versions of the bars and boxes: mixtures and negations need log-density ratios
    "left-bar-energy": Recipe("left-bar", "energy-norm", notes="left-bar with E = ||f||^2 / (2 sigma)"),
    "right-bar-energy": Recipe("right-bar", "energy-norm", notes="right-bar with E = ||f||^2 / (2 sigma)"),
    "box-0.7-energy": Recipe("box-0.7", "energy-norm", notes="box-0.7 with E = ||f||^2 / (2 sigma)"),
    "box-0.3-energy": Recipe(
        "box-0.3",
        "energy-norm",
        steps=8000,
        notes="box-0.3 with E = ||f||^2 / (2 sigma); 8000 steps (at 4000: W2 2.7x the floor)",
    ),
    "coind-vanilla": Recipe(
        "coind-toy",
        attributes={"c1": 2, "c2": 2},
        notes="X = (C1, C2) + 0.2 N(0, I) with (+1, +1) held out; plain conditional training",
    ),
    "coind-lam10": Recipe(
        "coind-toy",
        attributes={"c1": 2, "c2": 2},
        objective="coind",
        lam=10.0,
        p_drop=0.3,
        notes="the coind-vanilla data, trained with COIND's CI term at lam = 10 (App. D) and dropout 0.3",
    ),
    "blob-xy": Recipe(
        "blob",
        batch=128,
        notes="one blob at a requested centre xy (continuous) and colour; 32x32 RGB",
        **_OBJECT_UNET,
    ),
    "blobs-composed": Recipe(
        "blobs-3-5",
        batch=64,
        p_drop=0.0,
        objective="composed",
        notes="3-5 objects, one (xy, colour) concept each, composed training (dissertation Eq. 5.5)",
        **_OBJECT_UNET,
    ),
    "blobs-composed-long": Recipe(
        "blobs-3-5",
        batch=64,
        p_drop=0.0,
        objective="composed",
        notes="blobs-composed trained 3x longer (12000 steps): does inversion gain from a better model?",
        **{**_OBJECT_UNET, "steps": 12000},
    ),
    "blobs-set": Recipe(
        "blobs-set",
        "eps",
        steps=4000,
        batch=64,
        lr=5e-4,
        ema=0.999,
        p_drop=0.0,
        network="unet",
        coords=True,
        point_sets={"xys": 0.1},
        device="cuda",
        notes="3-5 objects, one network conditioned on the whole set of centres (a heat map of all of "
        "them): the non-compositional generative classifier of dissertation Table 5.1",
    ),
    "blob-clutter": Recipe(
        "blob-clutter",
        batch=128,
        notes="variant (C) of the projective seed: a blob at xy among 0-4 other random objects; "
        "p_drop 0.3 per condition, so 9% of the batch trains the cluttered background (1-5 objects)",
        **{**_OBJECT_UNET, "p_drop": 0.3},
    ),
    "blob-empty": Recipe(
        "blob-empty",
        "eps",
        notes="the empty scene (black 32x32 images), a plain eps U-Net like the object models: the "
        "learned empty background of Bradley et al. 2025. Sampled alone it fails (x0 = (y - sigma eps) "
        "/ alpha multiplies its eps error by sigma / alpha, ~150 at t = 1), but composed with blob-xy its "
        "errors saturate like theirs",
        **_EMPTY_UNET,
    ),
    "blob-empty-precond": Recipe(
        "blob-empty",
        "eps-precond",
        sigma_data=1.0,
        notes="blob-empty with EDM preconditioning: its own samples are black (the eps model's are not), "
        "but its eps extrapolates linearly, like the exact Gaussian, and diverges under weight 1 - K",
        **_EMPTY_UNET,
    ),
    "blob-part": Recipe(
        "blob-part",
        "eps",
        steps=4000,
        batch=128,
        lr=5e-4,
        ema=0.999,
        attributes={"color": 6},
        network="unet",
        mults=(1, 2),
        device="cuda",
        notes="16x16 crops holding one blob, conditioned on its colour: the part model of whole + part",
    ),
    "texture-patch": Recipe(
        "texture-patch",
        "eps",
        steps=10000,
        batch=128,
        lr=5e-4,
        ema=0.999,
        network="unet",
        base=32,
        mults=(1, 2),
        device="cuda",
        notes="16x16 windows of smooth 64x64 periodic textures: the panorama patch model",
    ),
    "signal-window": Recipe(
        "signal-window",
        "eps-precond",
        sigma_data=1.0,
        steps=6000,
        notes="32-sample windows of smooth periodic 1-D signals: the 1-D panorama patch model",
    ),
}


def _data(recipe: Recipe) -> tuple[Any, Any]:
    """(training sampler, exact reference sampler) for a recipe."""
    if recipe.data not in _2D:
        image_draw = zoo_data.draw_fn(recipe.data)
        return image_draw, lambda n, g: image_draw(n, g)[0]
    if recipe.data == "coind-toy":

        def draw(n: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            x, c = datasets.coind_toy(n, g)
            return x, {"c1": c[:, 0], "c2": c[:, 1]}

        return draw, lambda n, g: datasets.coind_toy(n, g)[0]
    d = datasets.get(recipe.data)
    return d.sample, d.sample


def _build(recipe: Recipe, schedule: sched.Schedule) -> torch.nn.Module:
    torch.manual_seed(recipe.seed)
    attributes, continuous = recipe.attributes or None, recipe.continuous or None
    shape = recipe.event_shape
    if recipe.network == "unet":
        net: torch.nn.Module = UNet(
            shape[0],
            shape[-1],
            recipe.base,
            recipe.mults,
            coords=recipe.coords,
            spatial=recipe.spatial,
            point_sets=recipe.point_sets,
            attributes=attributes,
            continuous=continuous,
        )
    else:
        net = ResMLP(shape[0], recipe.hidden, recipe.blocks, attributes=attributes, continuous=continuous)
    if recipe.parameterisation.startswith("energy-"):
        return EnergyModel(net, recipe.parameterisation[len("energy-") :])
    if recipe.parameterisation == "eps-precond":
        return Preconditioned(net, schedule, recipe.sigma_data)
    return net


def evaluate(
    name_or_path: str,
    n: int | None = None,
    steps: int = 200,
    seed: int = 0,
    sampler: str = "ddpm",
    device: str = "cpu",
) -> dict:
    """W2 of a 2-D model's own reverse-diffusion samples against exact data, beside the floor.

    The floor is the W2 between two independent exact data sets of the same size
    (``n`` defaults to 2000; 256 for image and signal models).  Image and signal
    models are scored by :func:`probcomp.models.zoo_data.evaluate`.
    """
    from probcomp.inference import ReverseDiffusion
    from probcomp.scene import Scene

    factor = load(name_or_path)
    if factor.meta.get("data") not in _2D:
        return zoo_data.evaluate(factor, factor.meta["data"], n=n or 256, seed=seed, device=device)
    n = n or 2000
    recipe = RECIPES.get(factor.meta.get("recipe_name", ""))
    ref_sampler = _data(recipe)[1] if recipe else datasets.get(factor.meta["data"]).sample  # one of _2D
    g = torch.Generator().manual_seed(seed + 1)
    ref, ref2 = ref_sampler(n, g), ref_sampler(n, g)
    scene = Scene()
    scene.observe("y", scene.control("x", (2,)), factor=factor)
    t0 = time.perf_counter()
    res = ReverseDiffusion(steps=steps, sampler=sampler, schedule=factor.schedule).run(scene, n, seed=seed)
    return {
        "w2": round(metrics.w2(res["x"], ref), 4),
        "w2_floor": round(metrics.w2(ref2, ref), 4),
        "samples": n,
        f"{sampler}_steps": steps,
        "nfe": res.stats["nfe_total"],
        "sample_wall_time_s": round(time.perf_counter() - t0, 2),
    }


def train_entry(
    name: str,
    out_dir: Path = ZOO_DIR,
    progress: bool | None = None,
    device: str | None = None,
    state_dir: Path | None = None,
) -> Path:
    """Train zoo entry ``name`` from its recipe and write its checkpoint into ``out_dir``.

    ``device`` overrides the recipe's (image models were trained on CUDA; the data,
    times and noise are drawn on the CPU either way, so only floating-point
    rounding differs between devices).  With ``state_dir`` the training state is
    saved there every 500 steps and an interrupted run resumes from it.
    """
    if name not in RECIPES:
        raise DataError(f"unknown zoo entry {name!r}; recipes: {sorted(RECIPES)}")
    return train_recipe(RECIPES[name], name, out_dir, progress=progress, device=device, state_dir=state_dir)


def train_recipe(
    recipe: Recipe,
    name: str,
    out_dir: Path = ZOO_DIR,
    *,
    progress: bool | None = None,
    device: str | None = None,
    state_dir: Path | None = None,
    quality: bool = True,
) -> Path:
    """Train any :class:`Recipe` into checkpoint ``out_dir / name`` (``quality``: score it after)."""
    schedule = sched.linear()
    model = _build(recipe, schedule)
    device = device or recipe.device
    if device == "cuda" and not torch.cuda.is_available():
        raise DataError(f"recipe {name!r} trains on CUDA and none is available here; pass --device cpu")
    draw, _ = _data(recipe)
    res = train(
        model,
        draw,
        schedule=schedule,
        steps=recipe.steps,
        batch=recipe.batch,
        lr=recipe.lr,
        ema=recipe.ema,
        seed=recipe.seed,
        p_drop=recipe.p_drop,
        objective=recipe.objective,
        lam=recipe.lam,
        checkpoint=None if state_dir is None else Path(state_dir) / f"{name}.state.pt",
        progress=progress,
        device=device,
    )
    meta = {
        "recipe_name": name,
        "data": recipe.data,
        "recipe": asdict(recipe),
        "steps": res.steps,
        "final_loss": round(res.final_loss, 5),
        "train_wall_time_s": round(res.wall_time, 1),
        "train_device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "regenerate": f"python -m probcomp.models.zoo train {name}" if name in RECIPES else None,
    }
    path = save(out_dir / name, res.model, schedule=schedule, event_shape=recipe.event_shape, meta=meta)
    if quality:
        record_quality(path, device=device)
    return path


def record_quality(path: str | Path, device: str = "cpu") -> dict:
    """Score a checkpoint with :func:`evaluate` and store the numbers in its JSON ``quality``."""
    path = Path(read_config(path)["_path"])
    quality = evaluate(str(path), device=device)
    cfg = json.loads(path.read_text())
    cfg["quality"] = quality
    path.write_text(json.dumps(cfg, indent=1) + "\n")
    return quality


def list_models() -> list[dict[str, Any]]:
    """One summary row per shipped model."""
    rows = []
    for p in sorted(ZOO_DIR.glob("*.json"), key=lambda q: q.stem):
        cfg = read_config(p)
        q = cfg.get("quality", {})
        rows.append(
            {
                "name": cfg["name"],
                "data": cfg.get("data"),
                "parameterisation": cfg["parameterisation"],
                "conditioning": {
                    **cfg["architecture"].get("attributes", {}),
                    **cfg["architecture"].get("continuous", {}),
                    **{k: "point set" for k in cfg["architecture"].get("point_sets", {})},
                }
                or None,
                "steps": cfg.get("steps"),
                "final_loss": cfg.get("final_loss"),
                "w2": q.get("w2"),
                "w2_floor": q.get("w2_floor"),
                "quality": _headline(q),
                "train_wall_time_s": cfg.get("train_wall_time_s"),
                "train_device": cfg.get("train_device", "cpu"),
                "size_kb": round(
                    (p.parent / (p.name[: -len(".json")] + ".safetensors")).stat().st_size / 1024, 1
                ),
            }
        )
    return rows


def _headline(q: dict[str, Any]) -> str:
    """One line of a quality record: W2 / floor, sliced W2 / floor, or detector hit rate and error."""
    if "w2" in q:
        return f"W2 {q['w2']:.4f} (floor {q['w2_floor']:.4f})"
    if "sliced_w2" in q:
        return f"sliced W2 {q['sliced_w2']:.3f} (floor {q['sliced_w2_floor']:.3f}), std {q['pixel_std']:.3f}"
    if "pixel_rmse_to_empty" in q:
        rmse, objects = q["pixel_rmse_to_empty"], q["mean_objects_detected"]
        return f"own samples: RMSE to black {rmse:.3f}, {objects:.2f} objects"
    if "one_object" in q.get("generated", {}):  # the part model (no location condition)
        g = q["generated"]
        return f"one object {g['one_object']:.2f}, of the requested colour {g['color_accuracy']:.2f}"
    parts = []
    for key in ("generated", "generated_k3", "generated_k5"):
        if key in q:
            g, k = q[key], key.split("_")[-1] if "_" in key else "k1"
            parts.append(
                f"{k}: hit {g['hit_rate']:.2f}, count {g['count_accuracy']:.2f}, "
                f"err {g['position_error_px']:.2f}px, spurious {g['spurious_per_image']:.2f}"
            )
    return "; ".join(parts)


def format_rows(rows: list[dict[str, Any]]) -> str:
    w = max([4, *(len(r["name"]) for r in rows)])
    head = (
        f"{'name':<{w}} {'data':<14} {'param':<12} {'steps':>6} {'loss':>7} {'train s':>8} {'KB':>6}  quality"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['name']:<{w}} {r['data']:<14} {r['parameterisation']:<12} {r['steps']:>6} "
            f"{r['final_loss']:>7.4f} {r['train_wall_time_s']:>8} {r['size_kb']:>6}  {r['quality']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m probcomp.models.zoo", description="probcomp model zoo")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="shipped models and their quality").add_argument(
        "--json", action="store_true"
    )
    sub.add_parser("show", help="one model's config").add_argument("name")
    sub.add_parser("evaluate", help="re-score entries and store the quality numbers").add_argument(
        "names", nargs="+"
    )
    t = sub.add_parser("train", help="retrain entries from their recipes")
    t.add_argument("names", nargs="*")
    t.add_argument("--all", action="store_true")
    t.add_argument("--out", default=str(ZOO_DIR))
    t.add_argument("--device", default=None, help="override the recipe's device (cpu or cuda)")
    t.add_argument("--state-dir", default=None, help="save/resume the training state here")
    a = p.parse_args(argv)
    try:
        if a.cmd == "list":
            rows = list_models()
            print(json.dumps(rows, indent=1) if a.json else format_rows(rows))
        elif a.cmd == "show":
            cfg = read_config(a.name)
            cfg.pop("_path", None)
            print(json.dumps(cfg, indent=1))
        elif a.cmd == "evaluate":
            for n in a.names:
                print(n, json.dumps(record_quality(n)), flush=True)
        else:
            names = list(RECIPES) if a.all else a.names
            if not names:
                raise DataError("name the entries to train, or pass --all")
            for n in names:
                t0 = time.perf_counter()
                path = train_entry(n, Path(a.out), device=a.device, state_dir=a.state_dir)
                print(f"{n}: wrote {path} in {time.perf_counter() - t0:.0f}s", flush=True)
        return 0
    except ProbcompError as e:
        print(f"probcomp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

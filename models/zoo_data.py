r"""Training data and quality checks for the zoo's image and signal models.

Each data name maps to a seeded sampler ``draw(n, generator) -> (x, cond)``:

* ``blob`` -- one blob per 32x32 image; conditions ``xy`` (its centre, continuous)
  and ``color`` (palette index).  With both dropped the model is the unconditional
  single-object distribution (the "Bayes background" of Bradley et al. 2025).
* ``blob-clutter`` -- Bradley et al.'s variant (C): a blob at ``xy`` plus 0-4 other
  objects at random places (objects at least 7 px apart); dropping ``xy`` gives
  the cluttered background of 1-5 objects.
* ``blobs-3-5`` -- 3-5 objects 7 px apart, every object a concept ``(xy, color)``
  with a mask: data for composed training (dissertation Eq. 5.5).
* ``blobs-set`` -- the same scenes with one set-valued condition ``xys`` ``(n, 5, 2)``
  (NaN rows for absent objects): data for the non-compositional generative classifier.
* ``blob-empty`` -- the empty scene, black 32x32 images: the learned empty background.
* ``blob-part`` -- 16x16 crops holding one blob, condition ``color``: the part model.
* ``shapes`` -- one coloured shape per 32x32 image, conditions ``shape`` and ``color``
  (3 each), square and triangle in blue never shown: COIND's shape x colour task;
  ``shapes-16`` the same drawn at 16x16 (CPU-sized).
* ``texture-patch`` -- 16x16 windows cut at random from 64x64 smooth periodic
  textures (one channel, unit variance): the patch model of panoramas.
* ``signal-window`` -- 32-sample windows of smooth periodic 1-D signals.

Quality (:func:`evaluate`): object models are sampled with requested objects and
scored by the detector of :mod:`probcomp.detection` next to the same detector on
real data; texture and signal models by sliced W2 to real windows (next to the
floor of two real draws), their pixel standard deviation and the relative error of
their mean power spectrum.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from probcomp import datasets, metrics
from probcomp.detection import detect, score_detections
from probcomp.errors import DataError
from probcomp.scene import Scene

__all__ = ["IMAGE_DATA", "draw_fn", "evaluate", "event_shape"]

Draw = Callable[[int, torch.Generator], tuple[torch.Tensor, dict[str, torch.Tensor]]]
SEPARATION = 7.0  # px between object centres in multi-object scenes


def _blob(n: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, lab = datasets.blobs(n, g, num_objects=(1, 1))
    return x, {"xy": lab["xy"][:, 0], "color": lab["color"][:, 0]}


def _blob_clutter(n: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, lab = datasets.blobs(n, g, num_objects=(1, 5), min_separation=SEPARATION)
    return x, {"xy": lab["xy"][:, 0], "color": lab["color"][:, 0]}


def _blobs_3_5(n: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, lab = datasets.blobs(n, g, num_objects=(3, 5), min_separation=SEPARATION)
    return x, {"xy": lab["xy"], "color": lab["color"], "mask": lab["mask"]}


def _blobs_set(n: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, lab = datasets.blobs(n, g, num_objects=(3, 5), min_separation=SEPARATION)
    return x, {"xys": torch.where(lab["mask"][..., None], lab["xy"], float("nan"))}


def _blob_empty(n: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return torch.full((n, 3, 32, 32), -1.0), {}


def _blob_part(n: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, lab = datasets.blobs(n, g, size=16, num_objects=(1, 1), margin=0.25)
    return x, {"color": lab["color"][:, 0]}


def _shapes(n: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return datasets.shapes(n, g)  # square and triangle in blue held out


def _shapes_16(n: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return datasets.shapes(n, g, size=16)


def _windows(field: torch.Tensor, width: int, g: torch.Generator) -> torch.Tensor:
    """One random ``width``-wide window per row of ``field`` ``(n, [1, S,] S)``, periodic."""
    n, size = field.shape[0], field.shape[-1]
    ar = torch.arange(width)
    ox = (torch.randint(size, (n, 1), generator=g) + ar) % size
    if field.ndim == 2:
        return field.gather(1, ox)
    oy = (torch.randint(size, (n, 1), generator=g) + ar) % size
    rows = field[:, 0].gather(1, oy[:, :, None].expand(n, width, size))
    return rows.gather(2, ox[:, None, :].expand(n, width, width)).unsqueeze(1)


def _texture_patch(n: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return _windows(datasets.textures(n, g, size=64), 16, g), {}


def _signal_window(n: int, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return _windows(datasets.smooth_signals(n, g, length=256), 32, g), {}


IMAGE_DATA: dict[str, tuple[Draw, tuple[int, ...]]] = {
    "blob": (_blob, (3, 32, 32)),
    "blob-clutter": (_blob_clutter, (3, 32, 32)),
    "blobs-3-5": (_blobs_3_5, (3, 32, 32)),
    "blobs-set": (_blobs_set, (3, 32, 32)),
    "blob-empty": (_blob_empty, (3, 32, 32)),
    "blob-part": (_blob_part, (3, 16, 16)),
    "shapes": (_shapes, (3, 32, 32)),
    "shapes-16": (_shapes_16, (3, 16, 16)),
    "texture-patch": (_texture_patch, (1, 16, 16)),
    "signal-window": (_signal_window, (32,)),
}


def draw_fn(data: str) -> Draw:
    if data not in IMAGE_DATA:
        raise DataError(f"unknown image/signal data set {data!r}; known: {sorted(IMAGE_DATA)}")
    return IMAGE_DATA[data][0]


def event_shape(data: str) -> tuple[int, ...]:
    draw_fn(data)
    return IMAGE_DATA[data][1]


def _sample(factors: list[Any], n: int, steps: int, seed: int, device: str) -> torch.Tensor:
    """Reverse diffusion on the product of ``factors`` (each a bound NetworkFactor) over one image."""
    from probcomp.inference import ReverseDiffusion

    scene = Scene()
    x = scene.control("x", factors[0].event_shape)
    for k, f in enumerate(factors):
        scene.observe(f"obj{k}", x, factor=f)
    return ReverseDiffusion(steps=steps, schedule=factors[0].schedule, device=device).run(
        scene, n, seed=seed
    )["x"]


def _requests(data: str, n: int, g: torch.Generator, k: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Real images and their labels with exactly ``k`` objects (k = 1 for single-object sets)."""
    x, lab = datasets.blobs(n, g, num_objects=(k, k), min_separation=SEPARATION)
    return x, lab


def _spectrum(x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(2, x.ndim)) if x.ndim > 2 else (1,)
    return torch.fft.fftn(x - x.mean(dims, keepdim=True), dim=dims).abs().square().mean(0)


def evaluate(
    factor: Any, data: str, *, n: int = 256, steps: int = 100, seed: int = 0, device: str = "cpu"
) -> dict:
    """Quality record of an image or signal model trained on ``data`` (see the module docstring)."""
    g = torch.Generator().manual_seed(seed + 1)
    factor = factor.to(device)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"samples": n, "ddpm_steps": steps, "device": str(device)}
    if data in ("blob", "blob-clutter"):
        real, lab = _requests(data, n, g, 1)
        xy, col = lab["xy"][:, 0], lab["color"][:, 0]
        f = factor.condition(xy=xy.to(device), color=col.to(device))
        imgs = _sample([f], n, steps, seed, device)
        out["generated"] = score_detections(detect(imgs), xy, color=col)
        if data == "blob":
            out["real"] = score_detections(detect(real), xy, color=col)
        else:  # clutter: the requested object must be there; the others are random
            out["generated"]["mean_objects"] = round(sum(d.count for d in detect(imgs)) / n, 3)
    elif data in ("blobs-3-5", "blobs-set"):
        for k in (3, 5):
            real, lab = _requests(data, n, g, k)
            if data == "blobs-set":
                fs = [factor.condition(xys=lab["xy"].to(device))]
            else:
                fs = [
                    factor.condition(xy=lab["xy"][:, j].to(device), color=lab["color"][:, j].to(device))
                    for j in range(k)
                ]
            imgs = _sample(fs, n, steps, seed, device)
            out[f"generated_k{k}"] = score_detections(detect(imgs), lab["xy"], color=lab["color"])
            out[f"real_k{k}"] = score_detections(detect(real), lab["xy"], color=lab["color"])
    elif data == "blob-empty":
        imgs = _sample([factor], n, steps, seed, device).cpu()
        out["pixel_rmse_to_empty"] = round(float((imgs + 1).square().mean().sqrt()), 4)
        out["mean_objects_detected"] = round(sum(d.count for d in detect(imgs)) / n, 3)
    elif data == "blob-part":  # colour-conditioned, no location: one object of the requested colour?
        col = torch.randint(6, (n,), generator=g)
        imgs = _sample([factor.condition(color=col.to(device))], n, steps, seed, device)
        found = detect(imgs)
        one = [d.count == 1 for d in found]
        right = [d.count == 1 and int(d.color[0]) == int(c) for d, c in zip(found, col.tolist(), strict=True)]
        out["generated"] = {
            "images": n,
            "one_object": round(sum(one) / n, 4),
            "color_accuracy": round(sum(right) / max(sum(one), 1), 4),
            "mean_objects": round(sum(d.count for d in found) / n, 3),
        }
    else:
        draw = draw_fn(data)
        ref, ref2 = draw(n, g)[0], draw(n, g)[0]
        imgs = _sample([factor], n, steps, seed, device).cpu()
        flat = lambda v: v.reshape(v.shape[0], -1)  # noqa: E731
        out["sliced_w2"] = round(metrics.sliced_w2(flat(imgs), flat(ref)), 4)
        out["sliced_w2_floor"] = round(metrics.sliced_w2(flat(ref2), flat(ref)), 4)
        out["pixel_std"] = round(float(imgs.std()), 4)
        out["pixel_std_data"] = round(float(ref.std()), 4)
        s_gen, s_ref = _spectrum(imgs), _spectrum(ref)
        out["spectrum_rel_error"] = round(float((s_gen - s_ref).norm() / s_ref.norm()), 4)
        out["spectrum_rel_error_floor"] = round(float((_spectrum(ref2) - s_ref).norm() / s_ref.norm()), 4)
    out["sample_wall_time_s"] = round(time.perf_counter() - t0, 2)
    return out

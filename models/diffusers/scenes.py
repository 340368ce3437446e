r"""The three tasks of diffusion-based compositional optimisation as scenes on a latent pipeline.

Each builder returns a :class:`probcomp.Scene` whose controls are latents of a
:func:`~probcomp.models.from_diffusers` pipeline (Rombach et al. 2022) and whose observables
are views ``y_i = f_i(X)`` of them, each scored by the pipeline's U-Net with its own prompt
(a conditioned copy, so prompts share one network and its caches).  The target is the
bipartite network's ``sum_i w_i log p(y_i | prompt_i)``; :class:`~probcomp.inference.PerStepEM`
runs the per-step optimisation (a DDIM step of every observable, then gradient steps
on the controls, Eq. 15 / 29), and :class:`~probcomp.inference.ReverseDiffusion` /
:class:`~probcomp.inference.AnnealedMCMC` sample the composed score.

* :func:`panorama` -- one wide latent ``(C, h, W)``; windows of the U-Net's width at a
  stride are the observables, one prompt per window (the panorama task,
  §6.1 of "Compositional Generative Inference Using Diffusion-Based Optimization");
* :func:`background_object` -- a background latent and an object latent, and their masked
  composite, with three prompts (§6.2);
* :func:`whole_part` -- a whole latent and a crop of it (resized to the U-Net's size) with
  its own prompt, e.g. a body and its face (§6.3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from probcomp import ops
from probcomp.errors import SceneError
from probcomp.scene import Scene

from .factor import DiffusersFactor

__all__ = ["CropResize", "background_object", "box_mask", "panorama", "whole_part"]


def _check(factor: DiffusersFactor) -> tuple[int, int, int]:
    if not isinstance(factor, DiffusersFactor):
        raise SceneError(f"expected a factor from from_diffusers, got {type(factor).__name__}")
    c, h, w = factor.event_shape
    return int(c), int(h), int(w)


def panorama(factor: DiffusersFactor, prompts: Sequence[str], *, stride: int | None = None) -> Scene:
    """A latent ``x`` of width ``w + (k - 1) stride``; window ``i`` (width ``w``) is scored with prompt ``i``.

    Overlapping windows tie the prompts' regions together (the panorama task, §6.1 of
    "Compositional Generative Inference Using Diffusion-Based Optimization").
    """
    c, h, w = _check(factor)
    stride = w // 2 if stride is None else int(stride)
    if not prompts or not 0 < stride <= w:
        raise SceneError(f"panorama: need at least one prompt and 0 < stride <= {w}, got stride={stride}")
    sc = Scene()
    x = sc.control("x", (c, h, w + (len(prompts) - 1) * stride))
    for i, p in enumerate(prompts):
        sc.observe(f"window{i}", x, factor=factor.condition(prompt=p), fn=ops.window(i * stride, w, axis=-1))
    return sc


def box_mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """``(1, h, w)`` mask, 1 inside ``box = (top, left, height, width)``."""
    m = torch.zeros(1, *shape)
    top, left, hh, ww = box
    m[:, top : top + hh, left : left + ww] = 1.0
    return m


def background_object(
    factor: DiffusersFactor,
    background: str,
    obj: str,
    composite: str,
    *,
    box: tuple[int, int, int, int] | None = None,
) -> Scene:
    """Controls ``background`` and ``object``; ``composite = m * object + (1 - m) * background``.

    Each control is scored with its own prompt, and the composite with the third.
    """
    c, h, w = _check(factor)
    box = (h // 4, w // 4, h // 2, w // 2) if box is None else box
    sc = Scene()
    bg = sc.control("background", (c, h, w))
    ob = sc.control("object", (c, h, w))
    sc.observe("y_background", bg, factor=factor.condition(prompt=background))
    sc.observe("y_object", ob, factor=factor.condition(prompt=obj))
    sc.observe(
        "y_composite",
        bg,
        ob,
        factor=factor.condition(prompt=composite),
        fn=ops.composite(box_mask((h, w), box)),
    )
    return sc


class CropResize(ops.Op):
    """``f(x) = resize(x[..., top:top+hh, left:left+ww], (h, w))`` (bilinear, differentiable)."""

    arity = 1

    def __init__(self, box: tuple[int, int, int, int], size: tuple[int, int]) -> None:
        self.box, self.size = tuple(int(v) for v in box), tuple(int(v) for v in size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        top, left, hh, ww = self.box
        crop = x[..., top : top + hh, left : left + ww]
        if crop.shape[-2:] == self.size:
            return crop
        return F.interpolate(crop, size=self.size, mode="bilinear", align_corners=False)

    def __repr__(self) -> str:
        return f"crop{self.box}->{self.size}"


def whole_part(
    factor: DiffusersFactor, whole: str, part: str, *, box: tuple[int, int, int, int] | None = None
) -> Scene:
    """One latent scored whole with ``whole``, and its ``box`` crop (resized up) with ``part``."""
    c, h, w = _check(factor)
    box = (0, w // 4, h // 2, w // 2) if box is None else box
    sc = Scene()
    x = sc.control("x", (c, h, w))
    sc.observe("y_whole", x, factor=factor.condition(prompt=whole))
    sc.observe("y_part", x, factor=factor.condition(prompt=part), fn=CropResize(box, (h, w)))
    return sc

"""Pretrained diffusers models as probcomp factors (``pip install probcomp[diffusers]``).

:func:`from_diffusers` loads a local diffusers folder (a model folder with ``config.json``
and safetensors weights, or a pipeline folder with ``unet/``, ``scheduler/`` and optionally
``text_encoder/``, ``tokenizer/``, ``vae/``) or wraps built components, and returns a
:class:`DiffusersFactor` that every engine accepts.  :func:`pipeline_grid` gives the engine
settings that reproduce diffusers' own DDPM / DDIM timesteps.  Nothing is downloaded.

* :mod:`.factor` -- the factor, its conditions, decoding, :func:`pipeline_grid`;
* :mod:`.core` -- what conditioned copies share: networks, prompt cache, batching, precision;
* :mod:`.loading` -- local folders, safetensors only unless ``allow_pickle=True``;
* :mod:`.scenes` -- panorama, background + object and whole + part scenes on latents;
* :mod:`.decomposition` -- Decomp Diffusion with a pretrained U-Net as the denoiser
  (:func:`pretrained_decomposition`, dissertation Sec. 4.5.5);
* :mod:`.tiny` -- tiny models built from configs (tests, examples);
* :mod:`.train` -- training the zoo's ``shapes-unet`` with diffusers' own U-Net and scheduler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from probcomp.errors import FactorError

from .decomposition import LatentConditionedUNet, pretrained_decomposition
from .factor import PREDICTION_TYPES, Condition, DiffusersFactor, from_parts, pipeline_grid
from .loading import load_parts, resolve_source

__all__ = [
    "PREDICTION_TYPES",
    "Condition",
    "DiffusersFactor",
    "LatentConditionedUNet",
    "from_diffusers",
    "pipeline_grid",
    "pretrained_decomposition",
]


def from_diffusers(
    source: str | Path | torch.nn.Module,
    *,
    subfolder: str | None = None,
    scheduler: Any = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    name: str | None = None,
    text_encoder: Any = None,
    tokenizer: Any = None,
    vae: Any = None,
    null_class: int | None = None,
    event_shape: tuple[int, ...] | None = None,
    max_batch: int | None = None,
    autocast: torch.dtype | None = None,
    checkpointing: bool = False,
    allow_pickle: bool = False,
) -> DiffusersFactor:
    """A score factor from a local diffusers folder or a built diffusers model.

    Args:
        source: a folder (model or pipeline layout), the name of a diffusers folder in the
            zoo (``"shapes-unet"``), or a diffusers model object (then pass ``scheduler``).
        subfolder: a subfolder of ``source`` to load from.
        scheduler: a diffusers scheduler overriding the folder's (its ``alphas_cumprod`` is
            the schedule, its ``config.prediction_type`` the prediction).
        dtype: dtype of the weights (``torch_dtype``); the sampler's state keeps its own.
        device: where the networks run.
        name: the factor's name (default: the folder's name or the model class).
        text_encoder, tokenizer, vae: components for a model object (a folder brings its own).
        null_class: the class index of the unconditional model of a class-conditional U-Net
            (default: ``null_class`` of the folder's ``probcomp.json``, if any).
        event_shape: the control's shape when it differs from the U-Net's sample size.
        max_batch: evaluate at most this many samples per network call (same values).
        autocast: ``torch.float16`` or ``torch.bfloat16``: run the networks under autocast.
        checkpointing: recompute network activations in the backward pass.
        allow_pickle: accept a folder whose weights are a pickle (``.bin``) checkpoint.
    """
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise FactorError(
            f"from_diffusers needs the optional extra: pip install probcomp[diffusers] ({e})"
        ) from None
    opts: dict[str, Any] = {
        "null_class": null_class,
        "event_shape": event_shape,
        "device": device,
        "max_batch": max_batch,
        "autocast": autocast,
        "checkpointing": checkpointing,
    }
    if isinstance(source, torch.nn.Module):
        if dtype is not None:
            source = source.to(dtype)
        return from_parts(
            source,
            scheduler,
            name=name or type(source).__name__,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            vae=vae,
            **opts,
        )
    if not isinstance(source, (str, Path)):
        raise FactorError(
            f"from_diffusers: source must be a folder or a diffusers model, got {type(source).__name__}"
        )
    folder = resolve_source(source, subfolder)
    parts = load_parts(folder, allow_pickle=allow_pickle, dtype=dtype)
    return from_parts(
        parts.unet,
        scheduler if scheduler is not None else parts.scheduler,
        name=name or folder.name,
        text_encoder=parts.text_encoder if text_encoder is None else text_encoder,
        tokenizer=parts.tokenizer if tokenizer is None else tokenizer,
        vae=parts.vae if vae is None else vae,
        meta=parts.meta,
        **opts,
    )

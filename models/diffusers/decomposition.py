r"""Decomp Diffusion with a pretrained diffusers U-Net as the denoiser (dissertation Sec. 4.5.5).

The seed fine-tunes a pretrained text-to-image U-Net as the component denoiser, with the
encoder's latents in place of the text condition, and trains the encoder with it by the same
composed objective (Eq. 4.9).  Here the denoiser is a diffusers ``UNet2DModel``; a latent
``z_k`` enters where its class label did, as a vector added to the time embedding:

.. math:: e(z_k) = e_\varnothing + W z_k, \qquad W = 0 \text{ at the start},

with ``e_null`` the pretrained model's null-class embedding (zero for an unconditional model).
Started this way every component is exactly the pretrained model's unconditional prediction,
so with the mean reduction the composition starts as the pretrained model itself, and
fine-tuning moves away from it only as far as the latents earn (the zero-initialised
projection is ControlNet's device, Zhang et al. 2023).  The schedule and the prediction type
are the pretrained model's (its scheduler's ``alphas_cumprod`` and ``prediction_type``).

:func:`pretrained_decomposition` builds the model from a local diffusers folder or zoo name;
train it with :func:`probcomp.models.train` like any :class:`~probcomp.models.Decomposition`,
and save it with :func:`probcomp.models.save` (the U-Net is rebuilt from its config on
loading, no code is run).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from probcomp.errors import DataError, FactorError

from ..decomposition import Decomposition
from .factor import DiffusersFactor

__all__ = ["LatentConditionedUNet", "pretrained_decomposition"]

#: scheduler prediction types a Decomposition can train (``prediction="eps" | "x0"``)
_PREDICTIONS = {"eps": "eps", "x0": "x0"}


class _LatentEmbedding(nn.Module):
    """``e(z) = e_null + W z`` with ``W`` zero-initialised: the class embedding a latent replaces."""

    def __init__(self, null: torch.Tensor, latent: int) -> None:
        super().__init__()
        self.null = nn.Parameter(null.detach().clone())
        self.proj = nn.Linear(latent, null.shape[0], bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.null.to(z.dtype) + self.proj(z)


class LatentConditionedUNet(nn.Module):
    """A diffusers ``UNet2DModel`` conditioned on a latent ``(N, latent)`` through its class embedding.

    ``forward(y, model_time, {"z": z})`` returns the U-Net's output (eps or x0, as it was
    trained).  ``null_class`` names the class whose embedding starts ``e_null`` (the model's
    unconditional label); without one, or for an unconditional model, ``e_null = 0``.
    """

    def __init__(self, unet: Any, latent: int, null_class: int | None = None) -> None:
        super().__init__()
        cfg: Any = getattr(unet, "config", None)  # a diffusers model's FrozenDict config
        if cfg is None or getattr(cfg, "_class_name", type(unet).__name__) != "UNet2DModel":
            raise FactorError(
                f"a pretrained decomposition takes a diffusers UNet2DModel, got {type(unet).__name__}"
            )
        if cfg.get("class_embed_type") not in (None,):
            raise FactorError(
                f"the U-Net's class_embed_type is {cfg.get('class_embed_type')!r}; a latent replaces an "
                "embedding table (class_embed_type=None), so this U-Net is not supported"
            )
        dim = int(unet.time_embedding.linear_2.out_features)
        table = unet.class_embedding
        if isinstance(table, nn.Embedding) and null_class is not None:
            if not 0 <= null_class < table.num_embeddings:
                raise FactorError(
                    f"null_class {null_class} is out of range: the U-Net has {table.num_embeddings} classes"
                )
            null = table.weight[null_class]
        else:
            null = torch.zeros(dim)
        unet.class_embedding = _LatentEmbedding(null, latent)
        self.unet = unet
        self.config: dict[str, Any] = {
            "kind": "diffusers_unet",
            "latent": int(latent),
            "unet": {k: v for k, v in dict(cfg).items() if not k.startswith("_")},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LatentConditionedUNet:
        """The architecture of a saved model (weights are loaded afterwards); builds no code."""
        from diffusers import UNet2DModel  # pyright: ignore[reportPrivateImportUsage]

        unet = cast(nn.Module, UNet2DModel.from_config(dict(config["unet"])))
        return cls(unet, int(config["latent"]))

    def forward(
        self, y: torch.Tensor, model_time: torch.Tensor, cond: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        z = cond["z"]
        if z.shape[-1] != self.config["latent"]:
            raise DataError(
                f"the denoiser takes latents of {self.config['latent']} numbers, got {z.shape[-1]}"
            )
        return self.unet(y, model_time, class_labels=z).sample


def pretrained_decomposition(
    source: str | Path | DiffusersFactor,
    components: int = 4,
    latent: int = 16,
    *,
    width: int = 32,
    null_class: int | None = None,
) -> Decomposition:
    """A :class:`~probcomp.models.Decomposition` whose denoiser is a pretrained diffusers U-Net.

    Args:
        source: a local diffusers folder, a zoo name (``"shapes-unet"``) or a factor from
            :func:`probcomp.models.from_diffusers`; its U-Net is copied, the source is unchanged.
        components, latent: ``K`` and the dimension of each latent.
        width: the encoder's first width (the encoder is trained from scratch).
        null_class: the U-Net's unconditional class, whose embedding starts every latent's
            (default: the factor's own null class, e.g. the zoo model's recorded one).

    The reduction is the mean, so the untrained composition is the pretrained model.
    """
    from . import from_diffusers

    factor = source if isinstance(source, DiffusersFactor) else from_diffusers(source)
    core = factor.core
    if core.text_encoder is not None or core.vae is not None:
        raise FactorError(
            f"factor {factor.name!r}: a pretrained decomposition takes a pixel-space UNet2DModel "
            "without a text encoder or VAE"
        )
    if factor.prediction not in _PREDICTIONS:
        raise FactorError(
            f"factor {factor.name!r} predicts {factor.prediction!r}; a decomposition trains eps or x0 "
            "predictions (diffusers prediction_type 'epsilon' or 'sample')"
        )
    null = null_class if null_class is not None else core.null_class
    unet = copy.deepcopy(core.unet).float().train().requires_grad_(True)
    denoiser = LatentConditionedUNet(unet, latent, null)
    c, size = int(factor.event_shape[0]), int(factor.event_shape[-1])
    return Decomposition(
        components,
        latent,
        channels=c,
        size=size,
        width=width,
        prediction=_PREDICTIONS[factor.prediction],
        reduce="mean",
        schedule=factor.schedule,
        denoiser=denoiser,
    )

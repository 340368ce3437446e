"""Learned score factors (installed as ``probcomp.models``).

* :class:`ModelFactor` wraps any denoising network (eps, x0, v or score
  prediction, any continuous or discrete VP schedule) as a score factor;
  :class:`NetworkFactor` is a probcomp network with bindable conditions.
* :class:`ResMLP` -- the residual-MLP denoiser; :class:`EnergyModel` -- the
  energy parameterisation (``score = -grad E``).
* :func:`train` -- noise-matching training with EMA, dropout, resumable state,
  and the composed objective (dissertation Eq. 5.5).
* :func:`load` / :func:`save` -- safetensors + JSON checkpoints; :func:`load`
  also takes a zoo name (``pc.models.load("ring8")``); :func:`load_decomposition` reads a
  :class:`Decomposition` the same way.
* :class:`Decomposition` -- Decomp Diffusion (dissertation ch. 4): an encoder's ``K`` latents of
  an image, each a :class:`ComponentFactor`; :func:`recombination_scene` composes them.
* :class:`SlotVAE` -- Slot-VAE (dissertation ch. 3): slot attention (:class:`SlotAttention`) in a
  two-level VAE, the object-centric baseline; :func:`fit_slot_vae` trains it.
* :func:`from_diffusers` -- a local diffusers model or pipeline folder as a factor
  (optional extra ``probcomp[diffusers]``; imported on first use, never by ``import probcomp``).
"""

from typing import Any

if __name__ != "probcomp.models":  # the checkout's top-level folder, imported by its own name
    raise ImportError(
        f"this folder is installed as probcomp.models; import probcomp.models, not {__name__!r} "
        "(one module object per class)"
    )

from .checkpoint import load, load_decomposition, read_config, save
from .decomposition import ComponentFactor, Decomposition, recombination_scene
from .energy import EnergyModel
from .networks import ResMLP
from .parameterisation import PREDICTIONS, ModelFactor, NetworkFactor, Preconditioned, to_eps
from .slots import SlotAttention, SlotVAE, fit_slot_vae
from .training import TrainResult, train

__all__ = [
    "PREDICTIONS",
    "ComponentFactor",
    "Decomposition",
    "EnergyModel",
    "ModelFactor",
    "NetworkFactor",
    "Preconditioned",
    "ResMLP",
    "SlotAttention",
    "SlotVAE",
    "TrainResult",
    "fit_slot_vae",
    "from_diffusers",
    "load",
    "load_decomposition",
    "read_config",
    "recombination_scene",
    "save",
    "to_eps",
    "train",
]


def __getattr__(name: str) -> Any:
    if name == "from_diffusers":  # lazy: diffusers and transformers are optional
        from .diffusers import from_diffusers

        return from_diffusers
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

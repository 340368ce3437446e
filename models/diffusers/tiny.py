"""Tiny diffusers models built from configs, for tests and examples that download nothing.

Every builder draws its weights from a seeded generator (diffusers' default initialisation
leaves some output layers near zero, which would make tests of the conversions vacuous),
and :func:`save_pipeline` writes the folder layout of a diffusers pipeline: ``unet/``,
``scheduler/`` and optionally ``text_encoder/``, ``tokenizer/`` (a CLIP BPE tokenizer
over a character vocabulary written here) and ``vae/``, all weights as safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "randomise",
    "save_pipeline",
    "tiny_cond_unet",
    "tiny_scheduler",
    "tiny_text_encoder",
    "tiny_tokenizer",
    "tiny_unet",
    "tiny_vae",
]

VOCAB_CHARS = "abcdefghijklmnopqrstuvwxyz"

# The diffusers imports below carry "pyright: ignore[reportPrivateImportUsage]": the classes are
# diffusers' public top-level API (its lazy _import_structure), but its py.typed __init__ imports
# them for type checkers without re-exporting them (no "as" alias, no __all__).


def randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Add ``scale * N(0, 1)`` noise (seeded) to every parameter; returns ``module``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def tiny_unet(
    sample_size: int = 8, channels: int = 3, *, num_classes: int | None = None, seed: int = 0
) -> Any:
    """A two-level ``UNet2DModel`` (about 40k parameters), class-conditional with ``num_classes``."""
    from diffusers import UNet2DModel  # pyright: ignore[reportPrivateImportUsage]

    torch.manual_seed(seed)
    net = UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=num_classes,
    )
    return randomise(net, seed)


def tiny_cond_unet(
    sample_size: int = 8, channels: int = 4, *, cross_attention_dim: int = 16, seed: int = 0
) -> Any:
    """A two-level text-conditional ``UNet2DConditionModel`` with cross-attention."""
    from diffusers import UNet2DConditionModel  # pyright: ignore[reportPrivateImportUsage]

    torch.manual_seed(seed)
    net = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    return randomise(net, seed)


def _vocab() -> dict[str, int]:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in VOCAB_CHARS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return vocab


def tiny_tokenizer(folder: str | Path, max_length: int = 8) -> Any:
    """A ``CLIPTokenizer`` over single letters (vocabulary and merges written to ``folder``)."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(_vocab()))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)


def tiny_text_encoder(hidden_size: int = 16, max_length: int = 8, *, seed: int = 0) -> Any:
    """A one-layer ``CLIPTextModel`` over the vocabulary of :func:`tiny_tokenizer`."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=len(_vocab()),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=max_length,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return randomise(CLIPTextModel(cfg).eval(), seed, scale=0.5)


def tiny_vae(latent_channels: int = 4, *, scaling_factor: float = 0.5, seed: int = 0) -> Any:
    """A two-level ``AutoencoderKL``: 3-channel images to latents at half the resolution."""
    from diffusers import AutoencoderKL  # pyright: ignore[reportPrivateImportUsage]

    torch.manual_seed(seed)
    # diffusers annotates these Tuple[int] / Tuple[str] (one element) for tuples of any length
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(8, 16),  # pyright: ignore[reportArgumentType]
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),  # pyright: ignore[reportArgumentType]
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=scaling_factor,
    )
    return randomise(vae, seed, scale=0.05)


def tiny_scheduler(prediction_type: str = "epsilon", kind: str = "ddpm", **kw: Any) -> Any:
    """A diffusers DDPM or DDIM scheduler with the default linear betas (1000 steps)."""
    from diffusers import DDIMScheduler, DDPMScheduler  # pyright: ignore[reportPrivateImportUsage]

    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}[kind]
    return cls(prediction_type=prediction_type, **kw)


def save_pipeline(
    folder: str | Path,
    unet: Any,
    scheduler: Any,
    *,
    text_encoder: Any = None,
    tokenizer: Any = None,
    vae: Any = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a diffusers pipeline folder (``model_index.json`` and one subfolder per part)."""
    import diffusers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": "DiffusionPipeline", "_diffusers_version": diffusers.__version__}
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    index["unet"] = ["diffusers", type(unet).__name__]
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    if text_encoder is not None:
        text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(folder / "tokenizer")
        index["text_encoder"] = ["transformers", type(text_encoder).__name__]
        index["tokenizer"] = ["transformers", type(tokenizer).__name__]
    if vae is not None:
        vae.save_pretrained(folder / "vae", safe_serialization=True)
        index["vae"] = ["diffusers", type(vae).__name__]
    (folder / "model_index.json").write_text(json.dumps(index, indent=1) + "\n")
    if meta:
        (folder / "probcomp.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder

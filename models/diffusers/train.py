r"""Train the zoo's diffusers-format model: a class-conditional U-Net on coloured shapes.

``shapes-unet`` is a ``diffusers.UNet2DModel`` trained with diffusers' own ``DDPMScheduler``
(``squaredcos_cap_v2`` betas, 1000 steps, ``epsilon`` prediction) on 16x16 images of
:func:`probcomp.datasets.shapes` with every shape-colour combination shown.  Each image is
labelled with *one* attribute only: its shape (classes 0-2: circle, square, triangle) or its
colour (classes 3-5: red, green, blue), or with the null class 6 (20%).  So the network
learns ``p(x | shape)``, ``p(x | colour)`` and ``p(x)`` but never a joint label, and a joint
request can only come from composition (Liu et al. 2022, Eq. 8; Composable Diffusion's AND):

.. math:: \hat\epsilon(x \mid s \wedge c) = \hat\epsilon(x \mid s) + \hat\epsilon(x \mid c) - \hat\epsilon(x),

and NOT subtracts a term.  The loss is DDPM's ``E ||eps - eps_theta(sqrt(abar) x_0 +
sqrt(1 - abar) eps, tau, k)||^2`` (Ho et al. 2020, Eq. 14) with an EMA of the weights.

Run (about 12 minutes on one CPU thread)::

    python -m probcomp.models.diffusers.train --out models/zoo/shapes-unet
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from probcomp import datasets

__all__ = ["CLASSES", "NULL_CLASS", "build", "train"]

CLASSES = {"circle": 0, "square": 1, "triangle": 2, "red": 3, "green": 4, "blue": 5, "null": 6}
NULL_CLASS = 6


def build(size: int = 16) -> tuple[Any, Any]:
    """The untrained U-Net and the scheduler of ``shapes-unet``."""
    # public at diffusers' top level (lazily), but its py.typed __init__ does not re-export them for checkers
    from diffusers import DDPMScheduler, UNet2DModel  # pyright: ignore[reportPrivateImportUsage]

    unet = UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=len(CLASSES),
    )
    return unet, DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


def labels_for(lab: dict[str, torch.Tensor], g: torch.Generator, p_null: float = 0.2) -> torch.Tensor:
    """One attribute per image: the shape (0-2) or the colour (3-5) at random, or null (6)."""
    n = lab["shape"].shape[0]
    u = torch.rand(n, generator=g)
    k = torch.where(u < 0.5, lab["shape"], 3 + lab["color"])
    return torch.where(torch.rand(n, generator=g) < p_null, torch.full_like(k, NULL_CLASS), k)


def train(
    out: str | Path,
    *,
    steps: int = 4000,
    minutes: float = 14.0,
    batch: int = 48,
    lr: float = 1e-3,
    ema: float = 0.995,
    size: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Train and save a diffusers pipeline folder (``unet/``, ``scheduler/``, ``probcomp.json``)."""
    from .tiny import save_pipeline

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    unet, scheduler = build(size)
    avg = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    abar = scheduler.alphas_cumprod
    t0, done, losses = time.perf_counter(), 0, []
    for step in range(steps):
        if time.perf_counter() - t0 > 60 * minutes:
            break
        for group in opt.param_groups:  # linear warm-up, then cosine decay
            group["lr"] = (
                lr * min(1.0, (step + 1) / 200) * 0.5 * (1 + torch.cos(torch.tensor(step / steps * 3.1416)))
            )
        x0, lab = datasets.shapes(batch, g, size=size, held_out=())
        k = labels_for(lab, g)
        tau = torch.randint(0, len(abar), (batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = abar[tau].reshape(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = torch.nn.functional.mse_loss(unet(xt, tau, class_labels=k).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for p_avg, p in zip(avg.parameters(), unet.parameters(), strict=True):
                p_avg.lerp_(p, 1 - ema)
        losses.append(float(loss.detach()))
        done = step + 1
    wall = time.perf_counter() - t0
    meta = {
        "classes": CLASSES,
        "null_class": NULL_CLASS,
        "data": f"probcomp.datasets.shapes(size={size}, held_out=()), one attribute label per image",
        "training": {
            "steps": done,
            "batch": batch,
            "lr": lr,
            "ema": ema,
            "seed": seed,
            "final_loss_mean_last_200": round(sum(losses[-200:]) / max(1, len(losses[-200:])), 5),
            "wall_seconds": round(wall, 1),
            "threads": torch.get_num_threads(),
        },
    }
    save_pipeline(out, avg, scheduler, meta=meta)
    return meta


def main(argv: list[str] | None = None) -> int:
    assert __doc__ is not None  # the module's docstring (python -OO strips both)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "zoo" / "shapes-unet"))
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--minutes", type=float, default=14.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = train(args.out, steps=args.steps, minutes=args.minutes, seed=args.seed)
    print(json.dumps(meta["training"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Bring your own pretrained diffusers model
#
# Can a model trained outside probcomp, with diffusers' own `UNet2DModel` and scheduler, be
# composed like the zoo's models?  `pc.models.from_diffusers` reads a local diffusers folder
# (safetensors weights, local files only) and returns a score factor.  Its schedule is the
# scheduler's `alphas_cumprod`, its prediction type (`epsilon`, `sample`, `v_prediction`)
# goes through the parameterisation boundary, and conditions are bound with
# `factor.condition(...)`.  Composable Diffusion's AND / NOT (Liu et al. 2022) is then
# one line:
#
# `eps = eps_u + w (eps_a - eps_u) + w (eps_b - eps_u)` for *a AND b*, with `-w` for *NOT b*.
#
# The shipped `shapes-unet` was trained by `python -m probcomp.models.diffusers.train` on
# 16x16 coloured shapes.  Each image had *one* label: its shape, its colour, or none.
# So it never saw "red square", and a joint request can only come from composition.

# %%
import os

import matplotlib.pyplot as plt
import torch

import probcomp as pc
from probcomp import compose
from probcomp.inference import AnnealedMCMC, ReverseDiffusion
from probcomp.models.diffusers import pipeline_grid

torch.set_num_threads(1)
FAST = os.environ.get("PROBCOMP_FAST", "1") == "1"
N = 12 if FAST else 64
STEPS = 24 if FAST else 100

f = pc.models.from_diffusers("shapes-unet")
print(f, "| schedule:", f.schedule, "| prediction:", f.prediction)
print("classes:", f.core.classes, "| null class:", f.core.null_class)

# %% [markdown]
# ## The factor is diffusers' model, step for step
# `pipeline_grid` gives the engine the scheduler's own timesteps.  With the same initial and
# per-step noise, `ReverseDiffusion` then reproduces diffusers' `scheduler.step()` loop
# (here with a class label).  The test suite checks the same for DDPM and DDIM, and for all
# three prediction types.

# %%
square = f.condition(class_labels="square")
scene = pc.Scene()
scene.observe("img", scene.control("x", tuple(f.event_shape)), factor=square)
ours = ReverseDiffusion(sampler="ddpm", clip_x0=(-1, 1), **pipeline_grid(f, 10)).run(scene, 4, seed=0)["x"]

g = torch.Generator().manual_seed(0)
x = torch.randn((4, *f.event_shape), generator=g)
f.scheduler.set_timesteps(10)
label = torch.full((4,), f.core.classes["square"])
with torch.no_grad():
    for t in f.scheduler.timesteps:
        out = f.unet(x, t, class_labels=label).sample
        x = f.scheduler.step(out, t, x, generator=g).prev_sample
gap = float((ours - x).abs().max())
print(f"largest difference from diffusers' own loop: {gap:.2e}")
assert gap < 1e-4

# %% [markdown]
# ## AND and NOT of two attributes
# The conditioned copies share one network, so all the terms of all the particles go
# through the U-Net in **one** call per level, from the first level on: the compiled scene
# groups the terms of one model and evaluates them together.  The colour of a sample is read off its
# foreground pixels: the channel with the largest mean where the image is not black.


# %%
def colour_of(x: torch.Tensor) -> torch.Tensor:
    """0 red, 1 green, 2 blue: the brightest channel of the foreground."""
    x = x.clamp(-1, 1)
    fg = (x.max(1, keepdim=True).values > 0).float()
    mean = (x * fg).sum((2, 3)) / fg.sum((2, 3)).clamp(min=1)
    return mean.argmax(1)


def cls(name):
    return f.condition(class_labels=name)


W = 3.0
requests = {
    "square": compose.weighted([cls("square"), f], [W, 1 - W]),
    "square AND red": compose.weighted([cls("square"), cls("red"), f], [W, W, 1 - 2 * W]),
    "square AND blue": compose.weighted([cls("square"), cls("blue"), f], [W, W, 1 - 2 * W]),
    "square AND NOT red": compose.weighted([cls("square"), cls("red"), f], [W, -W, 1.0]),
}
engines = {
    "DDPM": ReverseDiffusion(steps=STEPS, clip_x0=(-1, 1)),
    "annealed ULA": AnnealedMCMC(kernel="ula", levels=STEPS // 3, steps_per_level=2),
}
samples, red_share = {}, {}
for rname, factor in requests.items():
    for ename, engine in engines.items():
        scene = pc.Scene()
        scene.observe("img", scene.control("x", tuple(f.event_shape)), factor=factor)
        before = f.unet_calls
        res = engine.run(scene, N, seed=1)
        calls = f.unet_calls - before
        c = colour_of(res["x"])
        samples[rname, ename] = res["x"]
        red_share[rname, ename] = float((c == 0).double().mean())
        blue = float((c == 2).double().mean())
        print(
            f"{rname:20s} {ename:13s} NFE/term {res.stats['nfe_total'] // len(list(factor.leaves())):3d}  "
            f"U-Net calls {calls:3d}  red {red_share[rname, ename]:.0%}  blue {blue:.0%}"
        )

for e in engines:
    assert red_share["square AND red", e] > red_share["square", e], e  # AND adds the colour
    assert red_share["square AND NOT red", e] < red_share["square AND red", e], e  # NOT removes it

# %% [markdown]
# ## Look at them

# %%
keys = list(samples)
fig, axes = plt.subplots(len(keys), 8, figsize=(8, len(keys)))
for i, k in enumerate(keys):
    for j in range(8):
        axes[i, j].imshow(((samples[k][j].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy())
        axes[i, j].axis("off")
    axes[i, 0].set_title(f"{k[0]} / {k[1]}", fontsize=7, loc="left")
fig.tight_layout()
fig.savefig("07_pretrained_diffusers.png", dpi=80)

# %% [markdown]
# ## The same code on Stable Diffusion, on a GPU
# Nothing here depends on the model's size.  On a machine with a GPU and a downloaded
# Stable Diffusion folder (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`;
# probcomp reads local files only and never downloads), the latent pipeline is loaded the
# same way.  The control is then a latent, scaled by `vae.config.scaling_factor` (Rombach
# et al. 2022), and the empty prompt is the unconditional term:
#
# ```python
# sd = pc.models.from_diffusers("/data/stable-diffusion-v1-5", device="cuda",
#                               autocast=torch.float16, max_batch=8)
# a, b = sd.condition(prompt="a red cube"), sd.condition(prompt="on a wooden table")
# both = compose.weighted([a, b, sd], [7.5, 7.5, 1 - 15.0])            # a AND b
# scene = pc.Scene()
# scene.observe("latent", scene.control("z", tuple(sd.event_shape)), factor=both)
# res = ReverseDiffusion(50, sampler="ddim", device="cuda").run(scene, 4, seed=0)
# images = sd.decode_result(res, "z")["image"]                          # (4, 3, 512, 512)
# ```
#
# `AnnealedMCMC(kernel="ula", device="cuda")` runs on the same scene.
# `benchmarks/diffusers_memory.py --folder ... --device cuda` measures memory and time per
# NFE against the batch size, and `benchmarks/diffusers_latent_scenes.py --folder ...` runs
# the panorama, background + object and whole + part tasks on it.
# `benchmarks/diffusers_composition.py` measures this tutorial's AND / NOT at full size,
# with a classifier that reads both shape and colour.

# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Decomposition and recombination: components learned without labels
#
# Decomp Diffusion (dissertation ch. 4) trains an encoder and one denoiser together: the
# encoder maps an image to `K` latents `z_1..z_K`, and the denoiser's `K` predictions,
# each conditioned on one latent, must together denoise the image (Eq. 4.9).  No label says
# what a component should hold; the low dimension of each latent makes them share the work.
# Each inferred latent is then a diffusion model of its own, a factor that scenes and engines
# accept, so components of one image reconstruct it and components of two images recombine.
#
# The zoo's `decomp-blobs` has `K = 4` latents of 16 numbers, predicts `x0` and averages its
# components (the seed's best configuration); it was trained for 8000 steps on one CPU core
# (about 90 minutes), on scenes of 2-3 blobs, by `benchmarks/decomposition.py`.  That benchmark
# also measures what is shown here, against Slot-VAE (`probcomp.models.SlotVAE`) and the
# ablations, and how the scores grow with training: the components only start to separate the
# objects after a few thousand steps.

# %%
import os

import matplotlib.pyplot as plt
import torch

import probcomp as pc
from probcomp.inference import ReverseDiffusion
from probcomp.models import recombination_scene

FAST = os.environ.get("PROBCOMP_FAST", "1") == "1"
STEPS = 10 if FAST else 50

model = pc.models.load_decomposition("decomp-blobs")
images, labels = pc.datasets.blobs(
    2, torch.Generator().manual_seed(11), num_objects=(2, 3), min_separation=6.0, masks=True
)
engine = ReverseDiffusion(steps=STEPS, sampler="ddim", clip_x0=(-1.0, 1.0))


def draw(factors, weights=None, n=1):
    """Images from the composition of ``factors`` (DDIM from fixed noise)."""
    return engine.run(recombination_scene(factors, weights), num_samples=n, seed=0)["x"]


# %% [markdown]
# ## Decompose, and show each component alone
#
# `model.decompose(x)` gives the `K` latents; `model.component(z)` binds one into a factor.
# With `reduce="mean"` a component alone is a full-strength denoiser (weight 1).

# %%
z = model.decompose(images[0])
print("latents:", tuple(z.shape))
alone = [draw([model.component(z[k])]) for k in range(model.components)]
reconstruction = draw(model.components_of(images[0]))
mse = float((reconstruction[0] - images[0]).square().mean())
print(f"reconstruction MSE from all {model.components} components: {mse:.4f}")
assert torch.isfinite(reconstruction).all()

# %% [markdown]
# ## Recombine with another image
#
# The component that paints the first object of image A (read off the components'
# predictions, `model.attributions`) joins the components of image B, less one of B's.
# The composition is a scene with one image control and the chosen components as
# observables; a weighted recombination is a weight.

# %%
attr = model.attributions(images)
owner_a = int(torch.einsum("khw,hw->k", attr[0], (labels["masks"][0, 0] > 0.5).float()).argmax())
owned_b = {
    int(torch.einsum("khw,hw->k", attr[1], (labels["masks"][1, j] > 0.5).float()).argmax())
    for j in range(int(labels["count"][1]))
}
drop = next((k for k in range(model.components) if k not in owned_b), model.components - 1)
kept_b = model.components_of(images[1], [k for k in range(model.components) if k != drop])
chosen = [model.component(z[owner_a], name="A's object"), *kept_b]
mixed = draw(chosen)
print(f"A's component {owner_a} with B's components except {drop}")

# %%
to_img = lambda v: ((v.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()  # noqa: E731
panels = [("image A", images[0]), ("image B", images[1]), ("A reconstructed", reconstruction[0])]
panels += [(f"component {k} alone", a[0]) for k, a in enumerate(alone)]
panels += [("A's object + B", mixed[0])]
fig, axes = plt.subplots(1, len(panels), figsize=(1.6 * len(panels), 2))
for ax, (title, im) in zip(axes, panels, strict=True):
    ax.imshow(to_img(im))
    ax.set_title(title, fontsize=7)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Other models, other denoisers
#
# Components of two models compose when their images have one shape: pass factors of both
# to `recombination_scene` (the benchmark puts the objects of this model on the background of
# one trained on coloured backgrounds).  `probcomp.models.diffusers.pretrained_decomposition`
# builds a Decomposition whose denoiser is a pretrained diffusers U-Net (Sec. 4.5.5); before
# fine-tuning, its composition is exactly the pretrained model, and `train` fine-tunes it with
# the encoder.

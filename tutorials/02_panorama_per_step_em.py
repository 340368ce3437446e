# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # A bipartite scene: a panorama from a patch model with PerStepEM
#
# The control is one wide signal `x`; the observables are overlapping windows of it,
# `y_j = x[16 j : 16 j + 32]`, each scored by the same patch model (the seed's panorama,
# §6.1).  `PerStepEM` takes each window's own DDIM step (Eq. 15) and then finds the `x`
# whose windows best match those steps (Eq. 29): the overlaps are fused by least squares.
# We compare it with independent windows laid side by side and with reverse diffusion on
# the summed window scores (`benchmarks/panorama.py` does this at full size).

# %%
import os

import torch

import probcomp as pc
from probcomp import ops
from probcomp.inference import PerStepEM, ReverseDiffusion

FAST = os.environ.get("PROBCOMP_FAST", "1") == "1"
N, STEPS = (128, 40) if FAST else (512, 100)

# the zoo's learned 32-sample window model (shipped weights)
patch = pc.models.load("signal-window")

# %% [markdown]
# ## Declaring the scene
# One control, three observables; `ops.window` is the observation function and all three
# share one factor object, so every engine scores them in one batched call.

# %%
scene = pc.Scene()
x = scene.control("x", shape=(64,))
for j in range(3):
    scene.observe(f"w{j}", x, factor=patch, fn=ops.window(16 * j, 32))
print(scene)

# %%
em = PerStepEM(STEPS, inner_steps=1).run(scene, N, seed=0)
rd = ReverseDiffusion(STEPS).run(scene, N, seed=0)
single = pc.Scene()
single.observe("w", single.control("x", shape=(32,)), factor=patch)
stitched = ReverseDiffusion(STEPS).run(single, 2 * N, seed=0)["x"].reshape(N, 64)
real = pc.datasets.smooth_signals(N, torch.Generator().manual_seed(1))[:, :64]


def jump(v: torch.Tensor, b: int) -> float:
    return float((v[:, b] - v[:, b - 1]).abs().mean())


typical = sum(jump(real, b) for b in range(1, 64)) / 63
for name, v in {"per-step EM": em["x"], "summed scores": rd["x"], "stitched": stitched}.items():
    print(
        f"{name:14s} jump at 32: {jump(v, 32) / typical:4.2f}x real, std {float(v.std()):.2f} "
        f"(real {float(real.std()):.2f}), panorama sliced W2 {pc.metrics.sliced_w2(v, real):.3f}"
    )
print(
    "real vs real sliced W2",
    round(
        pc.metrics.sliced_w2(pc.datasets.smooth_signals(N, torch.Generator().manual_seed(2))[:, :64], real), 3
    ),
)
assert jump(stitched, 32) > 2 * jump(em["x"], 32)
assert abs(float(em["x"].std()) - float(real.std())) < abs(float(rd["x"].std()) - float(real.std()))

# %% [markdown]
# Per-level diagnostics come with every result: here the EM objective before and after
# the solve at each level (`pc.plots.per_level(em)` draws them against `t`).

# %%
print({k: em.stats[k][-3:].numpy().round(5).tolist() for k in ("objective_before", "objective_after")})
fig = pc.plots.per_level(em, ["objective_before", "objective_after", "nfe_per_level"])
if not FAST:
    fig.savefig("panorama_levels.png")

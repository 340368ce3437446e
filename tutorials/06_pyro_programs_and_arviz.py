# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Scenes as Pyro programs, diagnostics in ArviZ
#
# A scene can be written as a plain Python function whose `probcomp.control` and
# `probcomp.observe` calls are Pyro sample sites.  Loops and helper functions work; the
# engines take the function itself.  Results convert to `arviz.InferenceData`, with the
# samples split into chains and the engine's per-level statistics as `sample_stats`.

# %%
import os

import arviz as az
import torch

import probcomp as pc
from probcomp.inference import AnnealedMCMC

FAST = os.environ.get("PROBCOMP_FAST", "1") == "1"
N, LEVELS = (400, 20) if FAST else (4000, 100)

ring = pc.models.load("ring8")
bar = pc.models.load("bar")


def ring_times_bar():
    x = pc.control("x", shape=(2,))
    pc.observe("ring", x, factor=ring)
    pc.observe("bar", x, factor=bar)


# %% [markdown]
# The program and the equivalent builder scene give the same samples for the same seed.

# %%
built = pc.Scene()
x = built.control("x", shape=(2,))
built.observe("ring", x, factor=ring)
built.observe("bar", x, factor=bar)
engine = AnnealedMCMC("hmc", 2, LEVELS)
a = engine.run(ring_times_bar, N, seed=0, num_chains=4)
b = engine.run(built, N, seed=0, num_chains=4)
assert torch.equal(a["x"], b["x"])
print(pc.scene_from_pyro(ring_times_bar))

# %% [markdown]
# ## Reading the run in ArviZ
# Four chains of independent particles: R-hat near 1 and an ESS near the number of draws
# say the particles are exchangeable; per-level acceptance and step size are there too.

# %%
idata = a.to_arviz()
summary = az.summary(idata, var_names=["x"])
print(summary)
print("acceptance per level:", idata.sample_stats["accept"].mean(("chain", "draw")).values.round(2))
assert (summary["r_hat"] < 1.05).all()

# %% [markdown]
# Observation functions come from the program itself: here a control seen through a sum
# and through a scaled copy, with an explicit Pyro likelihood on the second.

# %%
import pyro.distributions as dist  # noqa: E402


def two_controls():
    u = pc.control("u", 2, prior=dist.Normal(torch.zeros(2), 1.0))
    v = pc.control("v", 2)
    pc.observe("sum", u + v, factor=bar)
    pc.observe("scaled", 2 * v, factor=dist.Normal(torch.ones(2), 0.2).to_event(1))


scene = pc.scene_from_pyro(two_controls)
print({o: scene[o]["parents"] for o in scene.observables})
assert scene["scaled"]["parents"] == ("v",)

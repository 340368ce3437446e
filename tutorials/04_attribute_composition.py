# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # Attribute composition: a combination no training image shows
#
# COIND (Gaudi et al.) composes attribute-conditional scores,
# `s(x | c1, c2) = s(x | c1) + s(x | c2) - s(x)` (Eq. 1), to reach a combination never seen
# in training.  This tutorial checks that promise against exact scores, measures how far a
# learned model is from the conditional independence Eq. 1 assumes (App. A.1, Eq. 17),
# shows the sampler and composition that do reach the unseen corner, and reads the
# attributes of an unseen point backwards.  `benchmarks/coind.py` and
# `benchmarks/attribute_inference.py` measure the same at full size; tutorial 05 covers
# the other half of "generalising": more objects than any training image.

# %%
import os

import pyro.distributions as dist
import torch

import probcomp as pc
from probcomp import compose, datasets
from probcomp.factors import GaussianMixture
from probcomp.inference import ConceptInversion, ReverseDiffusion

FAST = os.environ.get("PROBCOMP_FAST", "1") == "1"
N = 500 if FAST else 2000

# %% [markdown]
# ## The attribute toy, with exact scores
# `X = (C1, C2) + 0.2 N(0, I)` with `C` in {-1, +1}^2; training never shows `(+1, +1)`.
# With the *exact* scores of the training data, `p(x | c1=+1)` is the one cluster at
# `(1, -1)` and `p(x | c2=+1)` the one at `(-1, 1)`, so Eq. 1 pulls toward the middle,
# not toward `(1, 1)`.  Composition can only reach the unseen corner if the model's
# attribute conditionals are *not* the training ones: factorised, with `x2` free given
# `c1`.  That is what COIND's conditional-independence term is meant to teach.

# %%
combos = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
seen = combos[:3]


def cluster_mix(rows):
    return GaussianMixture(rows, torch.full((len(rows),), 0.2))


exact = compose.weighted(
    [cluster_mix(seen[seen[:, 0] == 1]), cluster_mix(seen[seen[:, 1] == 1]), cluster_mix(seen)],
    [1.0, 1.0, -1.0],
)
scene = pc.Scene()
scene.observe("y", scene.control("x", (2,)), factor=exact)
x_exact = ReverseDiffusion(200).run(scene, N, seed=0)["x"]
inside = lambda x: float(((x - 1).norm(dim=1) < 0.6).double().mean())  # noqa: E731
print(
    f"exact training scores: {inside(x_exact):.1%} within 3 sigma of (1, 1); mean {x_exact.mean(0).tolist()}"
)
assert inside(x_exact) < 0.05

# %% [markdown]
# The zoo's `coind-vanilla` model, trained on the toy, behaves like its training data:

# %%
vanilla = pc.models.load("coind-vanilla")
scene = pc.Scene()
scene.observe("y", scene.control("x", (2,)), factor=compose.attributes(vanilla, {"c1": 1, "c2": 1}))
x_vanilla = ReverseDiffusion(200).run(scene, N, seed=0)["x"]
print(f"coind-vanilla: {inside(x_vanilla):.1%} within 3 sigma of (1, 1)")
assert inside(x_vanilla) < 0.05

# %% [markdown]
# ### How far from conditional independence?
# A conditional diffusion model is an implicit classifier: `p(c | x) ∝ exp(-L(x, c))`,
# with `L` its denoising loss under condition `c` (Eqs. 14-15).  Eq. 1 is right when the
# joint posterior over `(c1, c2)` is the product of the two marginal ones.
# `pc.metrics.ci_violation` measures the Jensen-Shannon divergence between the two
# (Eq. 17), in bits (0 = independent, at most 1), averaged over points.  The exact model
# of this partial-support data is not independent either: the held-out corner is the
# correlation.  COIND's training term (`train(..., objective="coind", lam=...)`) lowers the
# learned number about 9-fold (`benchmarks/coind.py`).


# %%
def ci_bits(model, n=500):
    """Eq. 17 on ``n`` training points; the points, then ``t`` and ``eps``, from one seeded generator."""
    g = torch.Generator().manual_seed(0)
    x_train, _ = datasets.coind_toy(n, g)
    return pc.metrics.ci_violation(model, x_train, generator=g)["mean"]


violation = ci_bits(vanilla)
print(f"coind-vanilla: CI violation {violation:.4f} bits")
assert 0.005 < violation < 0.2

# %% [markdown]
# ### Composing seen joints instead (the seed's App. E.1)
# Conditional independence makes `log p(x | c1, c2)` additive over the attributes, so
# `s(+1, +1) = s(+1, -1) + s(-1, +1) - s(-1, -1)`: three *seen* combinations.  Every term
# is now a conditional that training shows, and with exact scores the result is exactly
# the unseen cluster: the three noised Gaussians share one covariance at every noise
# level, so the combination of their linear scores is the score of `N((1, 1), 0.2^2 I)`.
# `compose.attributes(..., reference=)` builds it.

# %%
parallelogram = compose.weighted(
    [cluster_mix(seen[2:3]), cluster_mix(seen[1:2]), cluster_mix(seen[0:1])], [1, 1, -1]
)
scene = pc.Scene()
scene.observe("y", scene.control("x", (2,)), factor=parallelogram)
x_par = ReverseDiffusion(200).run(scene, N, seed=0)["x"]
print(f"exact seen joints: {inside(x_par):.1%} within 3 sigma of (1, 1); std {x_par.std(0).tolist()}")
assert inside(x_par) > 0.95

scene = pc.Scene()
joints = compose.attributes(vanilla, {"c1": 1, "c2": 1}, reference={"c1": 0, "c2": 0})
scene.observe("y", scene.control("x", (2,)), factor=joints)
x_joints = ReverseDiffusion(200).run(scene, N, seed=0)["x"]
print(f"coind-vanilla, seen joints: {inside(x_joints):.1%} within 3 sigma; mean {x_joints.mean(0).tolist()}")
assert inside(x_joints) > 5 * inside(x_vanilla) + 0.1

# %% [markdown]
# The learned version gets part of the way (about 40%; `benchmarks/coind.py` measures it
# for every model and sampler).  What is missing is extrapolation: near `(1, 1)` at low
# noise no training point of any seen combination ever lands, so each learned joint score
# there is the network's guess, and the guesses pull toward the middle of the square
# (the benchmark prints the composed denoiser's estimate per noise level).
#
# So use the learned scores only where they were trained.  At `t = 0.4` the noised
# clusters overlap and the composed denoiser is still right; stop the reverse chain there
# and finish with one draw from Tweedie's Gaussian for `p(x0 | x_t)`: mean
# `(x_t + sigma^2 g) / alpha`, covariance `(sigma / alpha)^2 (I + sigma^2 dg/dx)`, with the
# Jacobian of the composed score `g` by finite differences (`last_step="tweedie"`).
# For a Gaussian cluster this last step is exact at any stopping level.

# %%
stopped = ReverseDiffusion(200, t_min=0.4, last_step="tweedie").run(scene, N, seed=0)["x"]
print(
    f"coind-vanilla, seen joints, Tweedie stop at t = 0.4: {inside(stopped):.1%} within 3 sigma; "
    f"mean {stopped.mean(0).tolist()}, std {stopped.std(0).tolist()}"
)
assert inside(stopped) > 0.8 and ((stopped.std(0) - 0.2).abs() < 0.1).all()

# %% [markdown]
# ### What COIND's training term changes
# The zoo's `coind-lam10` is the same data and network trained with COIND's objective,
# `L_score + 10 L_CI` (App. D; `train(..., objective="coind", lam=10, p_uncond=0.3)`).
# Its CI violation is several times lower, and with the same stopped sampler its Eq. 1
# marginals now move toward the unseen corner, which the plain model's never do.  They
# stop short of it, though: the CI term pulls the joints toward the marginals, and the
# marginals of partial-support data lean toward the seen clusters.

# %%
coind = pc.models.load("coind-lam10")
coind_violation = ci_bits(coind)
stop = ReverseDiffusion(200, t_min=0.5, last_step="tweedie")
eq1 = {}
for name, model in (("coind-vanilla", vanilla), ("coind-lam10", coind)):
    scene = pc.Scene()
    scene.observe("y", scene.control("x", (2,)), factor=compose.attributes(model, {"c1": 1, "c2": 1}))
    eq1[name] = stop.run(scene, N, seed=0)["x"]
    mean = eq1[name].mean(0).tolist()
    print(f"{name}, Eq. 1 with the Tweedie stop: {inside(eq1[name]):.1%} within 3 sigma, mean {mean}")
print(f"CI violation: coind-vanilla {violation:.4f} bits, coind-lam10 {coind_violation:.4f} bits")
assert coind_violation < violation / 3
assert inside(eq1["coind-lam10"]) > inside(eq1["coind-vanilla"]) + 0.3
assert (eq1["coind-lam10"].mean(0) < 0.85).all()  # toward the corner, not at it

# %% [markdown]
# ## Reading attributes backwards
# Inference is kinder than generation.  Given a point from the unseen corner, which
# `(c1, c2)` produced it?  A generative classifier conditioned on both attributes at once
# never saw `c = (+1, +1)` and answers from an untrained corner of its conditioning; the
# composed one asks each attribute separately (three observables share the point, weights
# 1, 1, -1), and `ConceptInversion` enumerates the four answers exactly, evaluating each
# attribute term once per value.  `benchmarks/attribute_inference.py` measures both on
# many points.

# %%
point = torch.tensor([1.05, 0.9])


def attribute_scene(kind):
    s = pc.Scene()
    c1 = s.control("c1", (), prior=dist.Categorical(logits=torch.zeros(2)))
    c2 = s.control("c2", (), prior=dist.Categorical(logits=torch.zeros(2)))
    if kind == "joint":
        s.observe("x", value=point, factor=vanilla, condition={"c1": c1, "c2": c2})
    else:
        s.observe("x|c1", value=point, factor=vanilla, condition={"c1": c1})
        s.observe("x|c2", value=point, factor=vanilla, condition={"c2": c2})
        s.observe("x", value=point, factor=vanilla, weight=-1.0)
    return s


for kind in ("joint", "composed"):
    r = ConceptInversion(draws=64).run(attribute_scene(kind), seed=0)
    losses = r.stats["losses"].flatten().numpy().round(3)
    print(f"{kind:9s} -> (c1, c2) = ({int(r['c1'])}, {int(r['c2'])}), losses {losses}")
composed = ConceptInversion(draws=64).run(attribute_scene("composed"), seed=0)
assert (int(composed["c1"]), int(composed["c2"])) == (1, 1)

# %% [markdown]
# At full size: `python benchmarks/coind.py --json` (every training objective and sampler,
# with the CI violation, the share within 3 sigma, and the composed denoiser per noise
# level) and `python benchmarks/attribute_inference.py --json` (attributes read backwards
# on many points).

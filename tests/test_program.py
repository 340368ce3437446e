"""Scenes as Pyro programs: the program form and the builder form are the same scene."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import probcomp as pc
from probcomp import ops
from probcomp.factors import Gaussian, GaussianMixture
from probcomp.inference import AnnealedMCMC, PerStepEM, ReverseDiffusion

RING = GaussianMixture(
    0.5 * torch.stack([torch.cos(torch.arange(8) * 0.785), torch.sin(torch.arange(8) * 0.785)], 1),
    torch.full((8,), 0.05),
)
BAR = Gaussian(torch.zeros(2), torch.tensor([[0.01, 0.0], [0.0, 0.5]]))
PATCH = Gaussian(torch.zeros(32), pc.datasets.smooth_signal_covariance(32).float() + 1e-4 * torch.eye(32))


def product_program():
    x = pc.control("x", shape=(2,))
    pc.observe("ring", x, factor=RING)
    pc.observe("bar", x, factor=BAR)


def _window(x, j):  # a helper function: programs may call anything that broadcasts
    return x[..., 16 * j : 16 * j + 32]


def panorama_program(k=3):
    x = pc.control("x", shape=(32 + 16 * (k - 1),))
    for j in range(k):
        pc.observe(f"w{j}", _window(x, j), factor=PATCH)


def plated_panorama(k=3):
    x = pc.control("x", shape=(32 + 16 * (k - 1),))
    with pyro.plate("windows", k):  # vectorised: each element of the plate is one observable
        pc.observe("w", torch.stack([_window(x, j) for j in range(k)], -2), factor=PATCH)


def sequential_panorama(k=3):
    x = pc.control("x", shape=(32 + 16 * (k - 1),))
    for j in pyro.plate("windows", k):  # sequential plate: a loop
        pc.observe(f"w{j}", _window(x, j), factor=PATCH)


def test_plates_vectorised_and_sequential_equal_the_builder():
    sc = pc.Scene()
    x = sc.control("x", (64,))
    for j in range(3):
        sc.observe(f"w{j}", x, factor=PATCH, fn=ops.window(16 * j, 32))
    vec, seq = pc.scene_from_pyro(plated_panorama), pc.scene_from_pyro(sequential_panorama)
    assert vec.observables == ["w[0]", "w[1]", "w[2]"] and seq.observables == ["w0", "w1", "w2"]
    a = ReverseDiffusion(20).run(sc, 64, seed=1)["x"]
    assert torch.equal(a, ReverseDiffusion(20).run(seq, 64, seed=1)["x"])
    assert torch.allclose(a, ReverseDiffusion(20).run(vec, 64, seed=1)["x"], atol=1e-6)

    def objects():
        with pyro.plate("objects", 2):
            c = pc.control("c", shape=(2,), prior=dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pc.observe("sum", c.sum(-2), factor=BAR)

    scene = pc.scene_from_pyro(objects)
    assert tuple(scene["c"]["shape"]) == (2, 2)
    assert ReverseDiffusion(5).run(scene, 8, seed=0)["c"].shape == (8, 2, 2)


def test_product_program_and_builder_give_identical_samples():
    sc = pc.Scene()
    x = sc.control("x", (2,))
    sc.observe("ring", x, factor=RING)
    sc.observe("bar", x, factor=BAR)
    prog = pc.scene_from_pyro(product_program)
    assert set(prog.graph.edges) == set(sc.graph.edges)
    for eng in (ReverseDiffusion(30), AnnealedMCMC("hmc", 2, 10)):
        a, b = eng.run(sc, 200, seed=3)["x"], eng.run(product_program, 200, seed=3)["x"]
        assert torch.equal(a, b)


def test_panorama_program_with_loops_and_helpers_equals_the_builder():
    sc = pc.Scene()
    x = sc.control("x", (64,))
    for j in range(3):
        sc.observe(f"w{j}", x, factor=PATCH, fn=ops.window(16 * j, 32))
    prog = pc.scene_from_pyro(panorama_program, 3)
    assert set(prog.graph.edges) == set(sc.graph.edges)
    for eng in (ReverseDiffusion(20), PerStepEM(20, 1)):
        a, b = eng.run(sc, 64, seed=1)["x"], eng.run(prog, 64, seed=1)["x"]
        assert torch.equal(a, b)


def test_parents_are_found_and_explicit_distributions_and_priors_are_honoured():
    def program():
        a = pc.control("a", 2, prior=dist.Normal(torch.zeros(2), 0.1))
        b = pc.control("b", 2)
        pc.observe("sum", a + b, factor=BAR)
        pc.observe("b_only", 2 * b, factor=dist.Normal(torch.ones(2), 0.2).to_event(1), psi=0.5)

    sc = pc.scene_from_pyro(program)
    assert sc["sum"]["parents"] == ("a", "b") and sc["b_only"]["parents"] == ("b",)
    assert sc["b_only"]["psi"] == 0.5 and isinstance(sc["b_only"]["factor"], Gaussian)
    assert sc["a"]["prior_factor"] is not None
    built = pc.Scene()
    a_, b_ = built.control("a", 2, prior=dist.Normal(torch.zeros(2), 0.1)), built.control("b", 2)
    built.observe("sum", a_, b_, factor=BAR, fn=lambda u, v: u + v)
    built.observe(
        "b_only",
        b_,
        factor=pc.factors.explicit(dist.Normal(torch.ones(2), 0.2).to_event(1), (2,)),
        fn=lambda v: 2 * v,
        psi=0.5,
    )
    eng = AnnealedMCMC("hmc", 2, 10)
    for k in ("a", "b"):
        assert torch.equal(eng.run(sc, 100, seed=0)[k], eng.run(built, 100, seed=0)[k])


def test_bad_programs_get_clear_errors():
    def plain_site():
        x = pc.control("x", 2)
        pyro.sample("z", dist.Normal(0.0, 1.0))
        pc.observe("y", x, factor=BAR)

    with pytest.raises(pc.SceneError, match="'z' is neither"):
        pc.scene_from_pyro(plain_site)

    def unbatched():
        x = pc.control("x", (4,))
        pc.observe("y", x[0:2], factor=BAR)

    with pytest.raises(pc.SceneError, match="leading particle axis"):
        pc.scene_from_pyro(unbatched)

    def subsampled():
        x = pc.control("x", (64,))
        with pyro.plate("windows", 2, subsample_size=1):
            pc.observe("w", torch.stack([x[..., :32], x[..., 32:]], -2), factor=PATCH)

    with pytest.raises(pc.SceneError, match="subsampling"):
        pc.scene_from_pyro(subsampled)

    def wrong_plate_axis():
        x = pc.control("x", (64,))
        with pyro.plate("windows", 2):
            pc.observe("w", torch.stack([x[..., :32], x[..., 32:]], -1), factor=PATCH)

    with pytest.raises(pc.SceneError, match="plate's dimension must come first"):
        pc.scene_from_pyro(wrong_plate_axis)

    def no_observable():
        pc.control("x", 2)

    with pytest.raises(pc.SceneError, match="no probcomp.observe"):
        pc.scene_from_pyro(no_observable)

"""ConceptInversion against analytic conditional Gaussians, where the answer is known."""

import math

import pyro.distributions as dist
import pytest
import torch

import probcomp as pc
from probcomp.compiled_inversion import CompiledInversion
from probcomp.errors import SceneError, ShapeError
from probcomp.factors import ConditionalGaussian, Gaussian
from probcomp.inference import AnnealedMCMC, ConceptInversion

L = 24
GRID = torch.arange(L) + 0.5


def bump(c: torch.Tensor) -> torch.Tensor:
    """A bump of height 2 at position ``c * L`` (``c`` in [0, 1]), batched ``(N,) -> (N, L)``."""
    return 2.0 * torch.exp(-((GRID - c.reshape(-1, 1) * L) ** 2) / (2 * 1.5**2))


def bumps_scene(x: torch.Tensor, k: int) -> pc.Scene:
    """``k`` bumps over a Gaussian background: the projective composition, exactly N(sum bumps, 0.1^2)."""
    s = pc.Scene()
    obj = ConditionalGaussian((L,), std=0.1, mean_fn=bump)
    s.observe("background", value=x, factor=Gaussian(torch.zeros(L), 0.1), weight=1 - k)
    for j in range(k):
        c = s.control(f"c{j}", (), prior=dist.Uniform(0.0, 1.0))
        s.observe(f"bump{j}", value=x, factor=obj, condition=c)
    return s


@pytest.fixture(scope="module")
def two_bumps() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return bump(torch.tensor([0.25, 0.7])).sum(0) + 0.1 * torch.randn(L, generator=g)


def test_conditional_gaussian_is_exact():
    f = ConditionalGaussian((3,), std=0.5)
    y, c, t = torch.randn(4, 3), torch.randn(4, 3), 0.3
    a, s = f.schedule.alpha(torch.tensor(t)).float(), f.schedule.sigma(torch.tensor(t)).float()
    v = a**2 * 0.25 + s**2
    assert torch.allclose(f.eps_given(y, t, {"c": c}), s * (y - a * c) / v, atol=1e-6)
    bound = f.condition(c=c[0])
    assert torch.allclose(bound.score(y, t), -(y - a * c[0]) / v, atol=1e-6)
    assert torch.allclose(bound.eps(y, t), f.eps_given(y, t, {"c": c[:1].expand(4, 3)}), atol=1e-6)


def test_sgd_recovers_a_continuous_concept():
    x = torch.tensor([0.7, -1.2, 0.3])
    s = pc.Scene()
    s.observe("x", value=x, factor=ConditionalGaussian((3,), std=0.1), condition=s.control("c", (3,)))
    res = ConceptInversion(steps=300, restarts=4, lr=0.05).run(s, seed=0)
    assert (res["c"] - x).abs().max() < 0.05, res["c"]
    assert res.traces.shape == (4, 300) and res.stats["nfe_total"] > 0


def test_enumeration_recovers_discrete_concepts_at_m_times_k_cost():
    """Two one-label concepts over two shifted copies: the cached sums equal brute force."""
    x = torch.tensor([0.9, -1.1])
    s = pc.Scene()
    shift = lambda c: c.reshape(-1, 1).float() * torch.tensor([1.0, -1.0]) - 2.0  # noqa: E731
    f = ConditionalGaussian((2,), std=0.2, mean_fn=shift)
    for j in range(2):
        c = s.control(f"c{j}", (), prior=dist.Categorical(logits=torch.zeros(5)))
        s.observe(f"obs{j}", value=x, factor=f, condition=c, weight=0.5)
    eng = ConceptInversion(draws=16)
    res = eng.run(s, seed=3)
    # exact answer: the weighted eps of the two terms is that of a Gaussian at the mean of the shifts
    assert res.stats["method"] == "enumerate" and res.stats["configurations"] == 25
    assert res.stats["nfe_total"] == 16 * (5 + 5)  # M per observable, not M^K per configuration
    prob = CompiledInversion(s)
    draws = prob.draws(16, eng.t_range, torch.Generator().manual_seed(3))
    grid = torch.cartesian_prod(torch.arange(5), torch.arange(5))
    brute = prob.loss({"c0": grid[:, 0], "c1": grid[:, 1]}, draws).reshape(5, 5)
    assert torch.allclose(res.stats["losses"], brute, atol=1e-6)
    i, j = int(res["c0"]), int(res["c1"])
    mean = (shift(torch.tensor([i])) + shift(torch.tensor([j]))) / 2
    best = min(
        ((shift(torch.tensor([a])) + shift(torch.tensor([b]))) / 2 - x).norm()
        for a in range(5)
        for b in range(5)
    )
    assert float((mean - x).norm()) == pytest.approx(float(best), abs=1e-6)


def test_coordinate_search_beyond_max_configs(two_bumps):
    s = pc.Scene()
    obj = ConditionalGaussian((L,), std=0.1, mean_fn=bump)
    s.observe("background", value=two_bumps, factor=Gaussian(torch.zeros(L), 0.1), weight=-1)
    cand = torch.linspace(0.05, 0.95, 19)
    for j in range(2):
        s.observe(f"bump{j}", value=two_bumps, factor=obj, condition=s.control(f"c{j}", ()))
    res = ConceptInversion(max_configs=10, draws=16).run(s, seed=0, candidates={"c0": cand, "c1": cand})
    assert res.stats["method"] == "coordinate"
    found = sorted([float(res["c0"]), float(res["c1"])])
    assert found == pytest.approx([0.25, 0.7], abs=0.026), found


def test_restarts_find_both_bumps_and_choose_k(two_bumps):
    eng = ConceptInversion(steps=200, restarts=8, lr=0.02)
    res = eng.run(bumps_scene(two_bumps, 2), seed=0)
    found = sorted(float(res[f"c{j}"]) for j in range(2))
    assert found == pytest.approx([0.25, 0.7], abs=0.01), found
    assert int(torch.isfinite(res.restart_losses).sum()) == 1  # pruned down to one
    assert res.stats["pruned"][0] == {"step": 50, "alive": 4}
    chosen = eng.choose_k(lambda k: bumps_scene(two_bumps, k), 1, 4, seed=0)
    assert chosen.k == 2 and min(chosen.k_losses, key=chosen.k_losses.get) == 2
    assert chosen.k_losses[1] > 10 * chosen.k_losses[2] and chosen.k_losses[3] > 10 * chosen.k_losses[2]


def test_same_seed_same_result(two_bumps):
    eng = ConceptInversion(steps=30, restarts=3, prune_every=10)
    a, b = eng.run(bumps_scene(two_bumps, 2), seed=5), eng.run(bumps_scene(two_bumps, 2), seed=5)
    assert a.loss == b.loss and torch.equal(a.traces.nan_to_num(), b.traces.nan_to_num())


def test_network_conditions_relax_and_match_bound_factor():
    f = pc.models.load("coind-vanilla")
    y, t = torch.randn(5, 2), 0.4
    c1 = torch.tensor([0, 1, 1, 0, 1])
    assert torch.allclose(f.eps_given(y, t, {"c1": c1}), f.condition(c1=c1).eps(y, t), atol=1e-6)
    onehot = torch.nn.functional.one_hot(c1, 2).float()
    assert torch.allclose(f.eps_given(y, t, {"c1": onehot}), f.eps_given(y, t, {"c1": c1}), atol=1e-5)
    assert set(f.condition_names) == {"c1", "c2"}


def test_bad_input_gets_clear_errors(two_bumps):
    f = ConditionalGaussian((L,), std=0.1, mean_fn=bump)
    s = pc.Scene()
    c = s.control("c", ())
    with pytest.raises(ShapeError, match="value has shape"):
        s.observe("x", value=torch.zeros(L + 1), factor=f, condition=c)
    with pytest.raises(SceneError, match="K_min"):
        ConceptInversion().choose_k(lambda k: bumps_scene(two_bumps, k), 3, 2)
    s = pc.Scene()
    s.observe("x", value=two_bumps, factor=f, condition=s.control("c", ()))
    with pytest.raises(SceneError, match="no candidates"):
        ConceptInversion().run(s, candidates={"c": []})
    s = pc.Scene()
    s.observe("x", value=two_bumps, factor=f, condition={"position": s.control("c", ())})
    with pytest.raises(SceneError, match="no condition"):
        ConceptInversion().run(s)
    s = pc.Scene()
    s.observe("x", s.control("c", (L,)), factor=Gaussian(torch.zeros(L), 1.0))
    with pytest.raises(SceneError, match="infers the conditions"):
        ConceptInversion().run(s)
    s = pc.Scene()
    c = s.control("c", (), prior=dist.Categorical(logits=torch.zeros(3)))
    s.observe(
        "x", value=torch.zeros(1), factor=ConditionalGaussian((1,), mean_fn=lambda c: c[:, None]), condition=c
    )
    with pytest.raises(SceneError, match="discrete concepts"):
        AnnealedMCMC().run(s, 4)
    with pytest.raises(ShapeError, match="one label"):
        pc.Scene().control("c", (2,), prior=dist.Categorical(logits=torch.zeros(3)))
    with pytest.raises(SceneError, match="t_range"):
        ConceptInversion(t_range=(0.5, 0.2))
    with pytest.raises(SceneError, match="bounded prior"):
        s = pc.Scene()
        s.observe("x", value=two_bumps, factor=f, condition=s.control("c", ()))
        ConceptInversion(init="greedy", steps=2).run(s)
    assert math.isfinite(ConceptInversion(steps=2, restarts=1).run(bumps_scene(two_bumps, 1)).loss)


def test_greedy_start_needs_backfitting_under_a_weighted_background(two_bumps):
    """Placing one bump of two against a background of weight 1 - K is the wrong model, so plain
    matching pursuit misplaces; one backfitting sweep re-places each bump given the other."""

    def greedy(sweeps):
        eng = ConceptInversion(
            init="greedy", grid=24, greedy_sweeps=sweeps, restarts=1, steps=1, search_draws=8
        )
        return sorted(float(v) for v in eng.run(bumps_scene(two_bumps, 2), seed=0).concepts.values())

    assert greedy(0) != pytest.approx([0.25, 0.7], abs=0.03)
    assert greedy(1) == pytest.approx([0.25, 0.7], abs=1 / 48 + 1e-3)  # the nearest grid points


def test_loss_of_given_concepts_reproduces_the_run_and_ranks_the_truth(two_bumps):
    scene = bumps_scene(two_bumps, 2)
    eng = ConceptInversion(steps=60, restarts=4, lr=0.02, draws=16, t_range=(0.05, 0.9))
    res = eng.run(scene, seed=3)
    assert eng.loss(scene, res.concepts, seed=3) == pytest.approx(res.loss, rel=1e-6)
    truth = eng.loss(scene, {"c0": torch.tensor(0.25), "c1": torch.tensor(0.7)}, seed=3)
    wrong = eng.loss(scene, {"c0": torch.tensor(0.25), "c1": torch.tensor(0.26)}, seed=3)
    assert truth < wrong
    with pytest.raises(SceneError, match=r"missing \['c1'\]"):
        eng.loss(scene, {"c0": 0.25})
    with pytest.raises(SceneError, match="concept 'c1' has shape"):
        eng.loss(scene, {"c0": 0.25, "c1": torch.zeros(2)})


def test_relocation_moves_concepts_out_of_local_minima():
    """From one random start, descent often leaves a bump unexplained (two concepts share one,
    or one sits at the border); a relocation round re-places such a concept and finds it."""
    g = torch.Generator().manual_seed(1)
    truth = torch.tensor([0.2, 0.5, 0.8])
    x = bump(truth).sum(0) + 0.1 * torch.randn(L, generator=g)
    scene = bumps_scene(x, 3)

    def run(relocate, seed):
        eng = ConceptInversion(
            steps=60, restarts=1, lr=0.02, draws=16, t_range=(0.05, 0.9), grid=24, search_draws=8,
            relocate=relocate, relocate_steps=30,
        )  # fmt: skip
        res = eng.run(scene, seed=seed)
        found = torch.stack([res[f"c{j}"] for j in range(3)]).sort().values
        return res, eng, int(((found - truth).abs() > 0.05).sum())

    plain = [run(0, s)[2] for s in range(8)]
    moved = [run(1, s) for s in range(8)]
    assert sum(m > 0 for m in plain) >= 3, plain  # the local minima are real
    assert [m for _, _, m in moved] == [0] * 8
    stuck = next(s for s in range(8) if plain[s])
    res, eng, _ = moved[stuck]
    rounds = res.stats["relocations"]
    assert rounds and rounds[0]["accepted"] and rounds[0]["moved"]
    assert res.loss == pytest.approx(rounds[0]["loss"])
    assert float(res.restart_losses[res.stats["best_restart"]]) == res.loss
    assert eng.loss(scene, res.concepts, seed=stuck) == pytest.approx(res.loss)
    with pytest.raises(SceneError, match="relocate"):
        ConceptInversion(relocate=-1)

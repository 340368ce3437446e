"""Lift-score rejection (inference/lift.py) against closed forms and exact product samples."""

from __future__ import annotations

import math

import pytest
import torch

import probcomp as pc
from probcomp import metrics, targets
from probcomp.compiled import CompiledScene
from probcomp.errors import ConvergenceWarning, FactorError, NumericalError, SceneError, ScheduleError
from probcomp.inference import (
    LiftRejection,
    ReverseDiffusion,
    engine_names,
    estimate_lifts,
    exact_lifts,
    lift_filter,
    make_engine,
)


def _scene(**factors: pc.factors.ScoreFactor) -> pc.Scene:
    sc = pc.Scene()
    x = sc.control("x", (2,))
    for name, f in factors.items():
        sc.observe(name, x, factor=f)
    return sc


@pytest.fixture(scope="module")
def ring_bar() -> tuple[pc.Scene, pc.factors.GaussianMixture]:
    ring, bar, product = targets.analytic_ring_bar()
    return _scene(ring=ring, bar=bar), product


def _gauss_logpdf(y: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    z = (y.double() - mu) / sd
    return (-0.5 * z.square() - sd.log() - 0.5 * math.log(2 * math.pi)).sum(1)


MU, SD = torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor([0.3, 0.5], dtype=torch.float64)


def test_exact_lift_is_the_closed_form_log_ratio() -> None:
    g = pc.factors.Gaussian(MU, SD, name="g")
    compiled = CompiledScene(_scene(g=g))
    y = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    lift = exact_lifts(compiled, {"x": y})["g"]
    want = _gauss_logpdf(y, MU, SD) - _gauss_logpdf(y, torch.zeros(2, dtype=torch.float64), torch.ones(2))
    torch.testing.assert_close(lift, want, atol=1e-5, rtol=1e-5)


def test_fresh_elbo_estimate_matches_exact_lift_within_its_standard_error() -> None:
    g = pc.factors.Gaussian(MU, SD, name="g")
    compiled = CompiledScene(_scene(g=g))
    y = g.sample(200, torch.Generator().manual_seed(1))
    exact = exact_lifts(compiled, {"x": y})["g"]
    est = estimate_lifts(compiled, {"x": y}, levels=64, draws=16, generator=torch.Generator().manual_seed(2))
    z = (est.lifts["g"] - exact) / est.stderr["g"]
    # independent per particle: the z-scores are N(0, 1) up to the (tiny) quadrature bias
    assert abs(float(z.mean())) < 4 / math.sqrt(200)
    assert 0.8 < float(z.std()) < 1.2
    assert est.nfe == {"g": 64 * 16}
    assert compiled.nfe["g"] == 64 * 16


def test_fresh_estimate_on_the_sharp_ring_and_the_bar(ring_bar: tuple) -> None:
    scene, product = ring_bar
    compiled = CompiledScene(scene)
    x = {"x": product.sample(100, torch.Generator().manual_seed(3))}
    exact = exact_lifts(compiled, x)
    est = estimate_lifts(compiled, x, levels=64, draws=8, generator=torch.Generator().manual_seed(4))
    for key in ("ring", "bar"):
        diff = est.lifts[key] - exact[key]
        se = float(est.stderr[key].square().sum().sqrt()) / 100
        assert abs(float(diff.mean())) < 4 * se + 0.05, key


def test_a_standard_normal_factor_is_the_normal_reference() -> None:
    g = pc.factors.Gaussian(MU, SD, name="g")
    compiled = CompiledScene(_scene(g=g))
    y = {"x": g.sample(20, torch.Generator().manual_seed(5))}
    ref = pc.factors.Gaussian([0.0, 0.0], 1.0, name="N(0,I)")
    a = estimate_lifts(compiled, y, levels=8, generator=torch.Generator().manual_seed(6))
    b = estimate_lifts(compiled, y, levels=8, reference=ref, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a.lifts["g"], b.lifts["g"], atol=1e-4, rtol=1e-4)
    assert b.nfe["g"] == 16  # the reference factor's evaluations count
    torch.testing.assert_close(exact_lifts(compiled, y)["g"], exact_lifts(compiled, y, reference=ref)["g"])


def test_cached_lift_of_an_exact_chain_is_unbiased_on_average() -> None:
    g = pc.factors.Gaussian(MU, SD, name="g")
    scene = _scene(g=g)
    res = LiftRejection(200, threshold=-1e9).run(scene, 2000, seed=0)
    cached = res.particle_stats["lift[g]"]
    exact = exact_lifts(CompiledScene(scene), {"x": res["x"]})["g"]
    d = cached - exact
    # one path per particle: noisy (sd about 1.3 nats), and the 200-step chain leaves a small bias
    assert abs(float(d.mean())) < 4 * float(d.std()) / math.sqrt(d.numel()) + 0.15
    assert res.stats["acceptance_rate"] == 1.0
    assert res.stats["nfe_total"] == 200  # no evaluation beyond the chain's


def test_lift_rejection_removes_the_modes_the_product_empties(ring_bar: tuple) -> None:
    scene, product = ring_bar
    mass = product.weights.reshape(8, -1).sum(1)
    means = targets.ring_means()
    ref = product.sample(1000, torch.Generator().manual_seed(10))
    floor = metrics.w2(product.sample(1000, torch.Generator().manual_seed(11)), ref)
    ddpm = ReverseDiffusion(50).run(scene, 1000, seed=0)["x"]
    err_ddpm = float((metrics.mode_weights(ddpm, means) - mass).abs().max())
    for estimator in ("exact", "cached"):
        res = LiftRejection(50, estimator=estimator).run(scene, 1000, seed=0)
        w = metrics.mode_weights(res["x"], means)
        err = float((w - mass).abs().max())
        assert err < 0.06 and err < err_ddpm / 2, (estimator, err, err_ddpm)
        assert float(w[[1, 3, 5, 7]].sum()) < 0.03  # the diagonal modes (exact: 0.01)
        assert metrics.w2(res["x"], ref) < metrics.w2(ddpm, ref)
        assert metrics.w2(res["x"], ref) < 4 * floor + 0.05
        st = res.stats
        assert st["accepted"] >= 1000 and st["draws"] > 1000
        assert st["acceptance_rate"] == pytest.approx(st["accepted"] / st["draws"])
        assert st["nfe_per_draw"] == {"ring": 50, "bar": 50}
        assert st["nfe_total"] == pytest.approx(100 * st["draws"] / 1000)
        assert set(res.particle_stats) == {"lift[ring]", "lift[bar]"}
        assert bool((res.particle_stats["lift[bar]"] > 0).all())


def test_same_seed_same_result(ring_bar: tuple) -> None:
    scene, _ = ring_bar
    a = LiftRejection(20).run(scene, 200, seed=3)
    b = LiftRejection(20).run(scene, 200, seed=3)
    c = LiftRejection(20).run(scene, 200, seed=4)
    assert torch.equal(a["x"], b["x"]) and a.stats["draws"] == b.stats["draws"]
    assert not torch.equal(a["x"], c["x"])
    f1 = LiftRejection(20, estimator="fresh", levels=8).run(scene, 100, seed=3)
    f2 = LiftRejection(20, estimator="fresh", levels=8).run(scene, 100, seed=3)
    assert torch.equal(f1["x"], f2["x"])


def test_lift_filter_sets_rejected_weights_to_minus_infinity(ring_bar: tuple) -> None:
    scene, product = ring_bar
    compiled = CompiledScene(scene)
    x = {
        "x": torch.cat([product.sample(50, torch.Generator().manual_seed(0)), torch.tensor([[0.354, 0.354]])])
    }
    log_w = torch.randn(51, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = lift_filter(compiled, x, log_w)
    lifts = exact_lifts(compiled, x)
    keep = (lifts["ring"] > 0) & (lifts["bar"] > 0)
    assert torch.equal(out.keep, keep) and not bool(out.keep[-1])  # a diagonal mode is off the bar
    assert torch.equal(out.log_w[keep], log_w[keep]) and bool(torch.isneginf(out.log_w[~keep]).all())
    assert out.nfe == {"ring": 0, "bar": 0}  # analytic factors: exact lifts
    fresh = lift_filter(
        compiled, x, log_w, estimator="fresh", levels=16, generator=torch.Generator().manual_seed(2)
    )
    assert fresh.nfe == {"ring": 16, "bar": 16}
    assert float((fresh.keep == keep).double().mean()) > 0.9
    with pytest.raises(NumericalError, match="rejected all"):
        lift_filter(compiled, x, log_w, threshold=1e6)


def test_negated_terms_must_have_negative_lifts() -> None:
    a = pc.factors.Gaussian([0.0, 0.0], 0.5, name="a")
    b = pc.factors.Gaussian([0.6, 0.0], 0.5, name="b")
    sc = pc.Scene()
    x = sc.control("x", (2,))
    sc.observe("obs", x, factor=pc.compose.negation(a, b, 0.5))
    compiled = CompiledScene(sc)
    keys = [t.key for t in compiled.terms]
    neg = next(t for t in compiled.terms if t.weight < 0)
    pts = {"x": torch.tensor([[0.6, 0.0], [-0.6, 0.0]])}
    out = lift_filter(compiled, pts, terms=keys)
    lifts = exact_lifts(compiled, pts, terms=keys)
    assert bool(lifts[neg.key][0] > 0) and not bool(out.keep[0])  # inside b: negated, rejected
    assert bool(out.keep[1]) == bool(lifts[neg.key][1] < 0)


def test_registered_engine() -> None:
    assert "lift-rejection" in engine_names()
    eng = make_engine("lift-rejection", steps=10)
    assert isinstance(eng, LiftRejection) and eng.steps == 10


# Bad input -----------------------------------------------------------------------------------
class _ScoreOnly(pc.factors.ScoreFactor):
    def score(self, y: torch.Tensor, t: object) -> torch.Tensor:
        return -y


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reference": "uniform"}, FactorError, "reference"),
        ({"reference": 3}, FactorError, "reference"),
        ({"estimator": "magic"}, ScheduleError, "estimator"),
        ({"weighting": "x"}, ScheduleError, "weighting"),
        ({"threshold": math.nan}, ScheduleError, "threshold"),
        ({"threshold": "0"}, ScheduleError, "threshold"),
        ({"alpha": 1.5, "reference": "tempered"}, ScheduleError, "alpha"),
        ({"shortfall": "ignore"}, ScheduleError, "shortfall"),
        ({"max_draws": 0}, SceneError, "max_draws"),
        ({"levels": 1, "estimator": "fresh"}, ScheduleError, "levels"),
        ({"sampler": "ddim"}, ScheduleError, "estimator='cached'"),
        ({"estimator": "exact", "reference": "tempered"}, FactorError, "tempered"),
        ({"terms": "ring"}, SceneError, "terms"),
    ],
)
def test_bad_options_name_the_option(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        LiftRejection(10, **kwargs)


def test_bad_scene_input_is_refused(ring_bar: tuple) -> None:
    scene, _ = ring_bar
    with pytest.raises(SceneError, match=r"not score terms.*\['ring', 'bar'\]"):
        LiftRejection(10, terms=["ring", "nope"]).run(scene, 10)
    with pytest.raises(FactorError, match="event shape"):
        LiftRejection(10, reference=pc.factors.Gaussian([0.0, 0.0, 0.0], 1.0, name="3d")).run(scene, 10)
    score_only = _scene(s=_ScoreOnly((2,), name="score-only"))
    with pytest.raises(FactorError, match="normalised"):
        LiftRejection(10, estimator="exact").run(score_only, 10)
    compiled = CompiledScene(scene)
    with pytest.raises(SceneError, match="log_w"):
        lift_filter(compiled, {"x": torch.zeros(4, 2)}, torch.zeros(3))
    with pytest.raises(SceneError, match="controls"):
        lift_filter(compiled, {"y": torch.zeros(4, 2)})
    with pytest.raises(ScheduleError, match="t_min"):
        estimate_lifts(compiled, {"x": torch.zeros(4, 2)}, t_min=0.0)


def test_too_low_acceptance_raises_or_warns(ring_bar: tuple) -> None:
    scene, _ = ring_bar
    with pytest.raises(NumericalError, match="max_draws=300"):
        LiftRejection(20, estimator="exact", threshold=3.0, max_draws=300).run(scene, 200, seed=0)
    eng = LiftRejection(20, estimator="exact", threshold=2.6, max_draws=300, shortfall="warn")
    with pytest.warns(ConvergenceWarning, match="fewer than num_samples=200"):
        res = eng.run(scene, 200, seed=0)
    assert 0 < res.num_samples < 200 and res.stats["draws"] == 300

"""The compiled target: VJP pull-back, grouping, composite expansion, NFE, NaN detection."""

import pyro.distributions as dist
import pytest
import torch

import probcomp as pc
from probcomp import ops
from probcomp.factors import Gaussian, GaussianMixture


def test_pullback_equals_dense_jacobian(gen):
    """grad_X = sum_i w_i J_i^T s_i, checked against torch.autograd.functional.jacobian."""
    f1 = GaussianMixture(torch.randn(3, 3, generator=gen), [0.5, 0.7, 0.9], name="f1")
    f2 = Gaussian(torch.randn(4, generator=gen), 0.8, name="f2")
    a = torch.randn(4, 6, generator=gen)
    sc = pc.Scene()
    x = sc.control("x", (6,))
    z = sc.control("z", (6,))
    sc.observe("w", x, factor=f1, fn=ops.window(2, 3), weight=0.7)
    sc.observe("l", z, factor=f2, fn=ops.linear(a), weight=-0.4)
    sc.observe("c", x, z, factor=Gaussian(torch.zeros(6), 1.0), fn=ops.composite(torch.linspace(0, 1, 6)))
    sc.observe("u", x, factor=f2, fn=lambda v: torch.tanh(v[:, :4]) * 2.0)
    comp = pc.CompiledScene(sc)
    xs = {"x": torch.randn(5, 6, generator=gen), "z": torch.randn(5, 6, generator=gen)}
    t = 0.35
    got = comp.target(xs, t).grad

    def logp(xv, zv):
        xv, zv = xv[None], zv[None]
        return (
            0.7 * f1.log_prob_t(xv[:, 2:5], t)
            - 0.4 * f2.log_prob_t(zv @ a.T, t)
            + sc["c"]["factor"].log_prob_t(ops.composite(torch.linspace(0, 1, 6))(xv, zv), t)
            + f2.log_prob_t(torch.tanh(xv[:, :4]) * 2.0, t)
        ).sum()

    for i in range(5):
        gx, gz = torch.autograd.functional.jacobian(logp, (xs["x"][i], xs["z"][i]))
        torch.testing.assert_close(got["x"][i], gx, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got["z"][i], gz, atol=1e-5, rtol=1e-4)


def test_grouping_batches_shared_factors_without_changing_the_target(gen):
    patch = Gaussian(torch.zeros(4), 1.0, name="patch")
    sc = pc.Scene()
    x = sc.control("x", (10,))
    for i, s in enumerate((0, 3, 6)):
        sc.observe(f"win{i}", x, factor=patch, fn=ops.window(s, 4))
    grouped, single = pc.CompiledScene(sc), pc.CompiledScene(sc, group=False)
    assert len(grouped.groups) == 1 and len(single.groups) == 3
    xs = {"x": torch.randn(8, 10, generator=gen)}
    torch.testing.assert_close(grouped.target(xs, 0.5).grad["x"], single.target(xs, 0.5).grad["x"])
    assert grouped.calls == 1 and single.calls == 3
    assert grouped.nfe == {"win0": 1, "win1": 1, "win2": 1} == single.nfe


def test_composites_expand_into_weighted_terms(gen):
    a, b, c = (Gaussian(torch.randn(2, generator=gen), 1.0, name=n) for n in "abc")
    sc = pc.Scene()
    sc.observe("y", sc.control("x", 2), factor=pc.compose.projective(a, b, background=c), weight=2.0)
    comp = pc.CompiledScene(sc)
    assert [(t.factor.name, t.weight) for t in comp.terms] == [("c", -2.0), ("a", 2.0), ("b", 2.0)]
    xs = {"x": torch.randn(4, 2, generator=gen)}
    expect = 2.0 * (a.score(xs["x"], 0.2) + b.score(xs["x"], 0.2) - c.score(xs["x"], 0.2))
    torch.testing.assert_close(comp.target(xs, 0.2).grad["x"], expect)
    assert comp.nfe_total == 3


def test_log_target_with_energies_and_priors(gen):
    f = Gaussian([1.0, 0.0], 0.5)
    sc = pc.Scene()
    x = sc.control("x", 2, prior=dist.Normal(0.0, 2.0))
    sc.observe("y", x, factor=f, weight=0.5)
    comp = pc.CompiledScene(sc)
    assert comp.has_energy
    xs = {"x": torch.randn(3, 2, generator=gen)}
    out = comp.target(xs, 0.0, energy=True)
    prior = dist.Normal(0.0, 2.0).log_prob(xs["x"]).sum(-1)
    expect = 0.5 * f.log_prob(xs["x"]) + prior
    torch.testing.assert_close(out.log_p, expect.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.grad["x"], -xs["x"] / 4.0 + 0.5 * f.score(xs["x"], 0.0))


def test_nan_score_names_factor_and_level():
    class Broken(pc.factors.ScoreFactor):
        def score(self, y, t):
            return torch.where(torch.as_tensor(t) < 0.5, torch.nan, 0.0) * y

    sc = pc.Scene()
    sc.observe("y", sc.control("x", 2), factor=Broken((2,), name="broken-net"))
    from probcomp.inference import ReverseDiffusion

    with pytest.raises(pc.NumericalError, match=r"factor 'broken-net' \(observable 'y'\).*t=0\.4"):
        ReverseDiffusion(steps=10).run(sc, 4)


def test_state_validation():
    sc = pc.Scene()
    sc.observe("y", sc.control("x", 2), factor=Gaussian([0.0, 0.0], 1.0))
    comp = pc.CompiledScene(sc)
    with pytest.raises(pc.ShapeError, match="control 'x'"):
        comp.check_state({"x": torch.zeros(3, 5)})
    with pytest.raises(pc.SceneError, match="controls are"):
        comp.check_state({"q": torch.zeros(3, 2)})

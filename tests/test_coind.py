"""COIND: the conditional-independence residual, attribute composition, and the training objective."""

import pytest
import torch

import probcomp as pc
from probcomp import compose
from probcomp.errors import DataError, FactorError
from probcomp.factors import GaussianMixture
from probcomp.inference import ReverseDiffusion
from probcomp.models import NetworkFactor, ResMLP, train
from probcomp.models.training import _coind_ci

SCHED = pc.schedules.linear()
COMBOS = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])


class AnalyticAttributeModel(torch.nn.Module):
    """Exact ``eps(y, t | c1, c2)`` of ``X = (C1, C2) + 0.2 N(0, I)`` with combination weights ``w``.

    Attributes use 0/1 labels and the null token 2; every subset of attributes is the exact
    conditional of the mixture (a sub-mixture renormalised).
    """

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.config = {"attributes": {"c1": 2, "c2": 2}}
        self.w = w / w.sum()

    def forward(self, y: torch.Tensor, mt: torch.Tensor, cond: dict) -> torch.Tensor:
        t = SCHED.t_of_model_time(mt.double())
        out = torch.empty_like(y)
        labels = torch.stack([torch.as_tensor(cond.get(k, 2)).expand(y.shape[0]) for k in ("c1", "c2")], 1)
        for key in {tuple(v.tolist()) for v in labels}:
            rows = (labels == torch.tensor(key)).all(1)
            keep = self.w > 0
            for a, v in enumerate(key):
                if v != 2:
                    keep &= COMBOS[:, a] == 2 * v - 1
            f = GaussianMixture(COMBOS[keep], torch.full((int(keep.sum()),), 0.2), self.w[keep])
            out[rows] = f.eps(y[rows], t[rows]).to(y.dtype)
        return out


def _ci(w: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    n = 2000
    c = COMBOS[torch.multinomial(w / w.sum(), n, replacement=True, generator=g)]
    x = c + 0.2 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=torch.float64)
    y = SCHED.alpha(t)[:, None] * x + SCHED.sigma(t)[:, None] * torch.randn(
        n, 2, generator=g, dtype=torch.float64
    )
    labels = ((c + 1) / 2).long()
    cond = {"c1": labels[:, 0], "c2": labels[:, 1]}
    return _coind_ci(
        AnalyticAttributeModel(w), y, SCHED.model_time(t), SCHED.sigma(t), cond, {"c1": 2, "c2": 2}, g
    )


def test_ci_residual_vanishes_exactly_when_attributes_are_independent():
    independent = _ci(torch.tensor([0.3 * 0.6, 0.3 * 0.4, 0.7 * 0.6, 0.7 * 0.4]))
    held_out = _ci(torch.tensor([1.0, 1.0, 1.0, 0.0]))  # (+1, +1) never seen: the training correlation
    assert float(independent.max()) < 1e-12
    assert float(held_out.mean()) > 1e-2


def test_attribute_composition_weights_and_errors():
    model = pc.models.load("coind-vanilla")
    both = compose.attributes(model, {"c1": 1, "c2": 1})
    assert [w for _, w in both.leaves()] == [1.0, 1.0, -1.0]
    eq2 = compose.attributes(model, {"c1": 1, "c2": 1}, gamma=0.46)
    assert [w for _, w in eq2.leaves()] == pytest.approx([0.46, 1.0, -0.46])
    y = torch.randn(6, 2)
    want = model.condition(c1=1).score(y, 0.3) + model.condition(c2=1).score(y, 0.3) - model.score(y, 0.3)
    assert torch.allclose(both.score(y, 0.3), want, atol=1e-5)
    with pytest.raises(FactorError, match="no attribute"):
        compose.attributes(model, {"shape": 1})
    with pytest.raises(FactorError, match="gamma has 3 entries"):
        compose.attributes(model, {"c1": 1, "c2": 0}, gamma=[1.0, 1.0, 1.0])
    with pytest.raises(FactorError, match="conditional model"):
        compose.attributes(pc.factors.Gaussian([0.0, 0.0], 1.0), {"c1": 1})


def test_coind_objective_trains_and_refuses_single_attribute_networks():
    def draw(n, g):
        x, c = pc.datasets.coind_toy(n, g)
        return x, {"c1": c[:, 0], "c2": c[:, 1]}

    net = ResMLP(2, 32, 1, attributes={"c1": 2, "c2": 2})
    res = train(net, draw, steps=30, batch=64, objective="coind", lam=1.0, p_drop=0.3, progress=False)
    assert torch.isfinite(torch.tensor(res.losses)).all() and res.steps == 30
    with pytest.raises(DataError, match="two or more attributes"):
        train(ResMLP(2, 8, 1, attributes={"c1": 2}), draw, steps=1, objective="coind", lam=1.0)


def test_joint_composition_is_exact_at_the_held_out_corner():
    """App. E.1: ``s(+1,-1) + s(-1,+1) - s(-1,-1)`` is the exact score of the unseen (+1, +1) cluster."""
    model = NetworkFactor(AnalyticAttributeModel(torch.tensor([1.0, 1.0, 1.0, 0.0])), (2,), SCHED, name="toy")
    joints = compose.attributes(model, {"c1": 1, "c2": 1}, reference={"c1": 0, "c2": 0})
    marginals = compose.attributes(model, {"c1": 1, "c2": 1})
    assert [w for _, w in joints.leaves()] == [1.0, 1.0, -1.0]
    truth = GaussianMixture(torch.tensor([[1.0, 1.0]]), torch.tensor([0.2]), torch.tensor([1.0]))
    y = 1.5 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for t in (0.02, 0.3, 0.9):
        want = truth.score(y, t)
        assert torch.allclose(joints.score(y, t), want, rtol=1e-6, atol=1e-6)
        if t < 0.5:  # Eq. 1 on the data marginals is wrong wherever the clusters are resolved
            assert (marginals.score(y, t) - want).norm() > 0.1 * want.norm()
    scene = pc.Scene()
    scene.observe("y", scene.control("x", (2,)), factor=joints)
    x = ReverseDiffusion(steps=200).run(scene, 1000, seed=0)["x"]
    assert float(((x - 1.0).norm(dim=1) < 0.6).double().mean()) > 0.97
    assert torch.allclose(x.mean(0), torch.ones(2), atol=0.03)
    assert torch.allclose(x.std(0), torch.full((2,), 0.2), rtol=0.1)


def test_joint_composition_errors_name_the_attribute():
    model = pc.models.load("coind-vanilla")
    with pytest.raises(FactorError, match=r"no value for attribute\(s\) \['c2'\]"):
        compose.attributes(model, {"c1": 1, "c2": 1}, reference={"c1": 0})
    with pytest.raises(FactorError, match=r"no attribute\(s\) \['shape'\] \(in reference\)"):
        compose.attributes(model, {"c1": 1}, reference={"c1": 0, "shape": 1})


def test_ci_violation_is_zero_for_independent_attributes_and_names_bad_input():
    """COIND App. A.1, Eq. 17 on exact denoisers: additive losses give a product posterior exactly."""
    g = torch.Generator().manual_seed(1)
    x = COMBOS[torch.randint(4, (300,), generator=g)] + 0.2 * torch.randn(
        300, 2, generator=g, dtype=torch.float64
    )

    def violation(w):
        model = NetworkFactor(AnalyticAttributeModel(w), (2,), SCHED, name="exact")
        return pc.metrics.ci_violation(model, x, generator=torch.Generator().manual_seed(0))

    independent = violation(torch.tensor([0.3 * 0.6, 0.3 * 0.4, 0.7 * 0.6, 0.7 * 0.4]))
    held_out = violation(torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert set(independent) == {"c1,c2", "mean"} and independent["mean"] < 1e-9
    # the exact model of partial-support data; pinned, so that a sign, base or scale slip shows
    assert held_out["mean"] == pytest.approx(0.012550, rel=2e-3)
    model = NetworkFactor(AnalyticAttributeModel(torch.ones(4)), (2,), SCHED, name="exact")
    with pytest.raises(FactorError, match="at least two discrete attributes"):
        pc.metrics.ci_violation(model, x, {"c1": 2})
    with pytest.raises(FactorError, match=r"model 'exact' has no attribute\(s\) \['c3'\]"):
        pc.metrics.ci_violation(model, x, {"c1": 2, "c3": 2})
    with pytest.raises(pc.ShapeError, match=r"points of shape \(300, 1\)"):
        pc.metrics.ci_violation(model, x[:, :1])
    with pytest.raises(FactorError, match="t_range"):
        pc.metrics.ci_violation(model, x, t_range=(0.0, 0.5))
    with pytest.raises(FactorError, match=r"attribute 'c1' cannot have 3 classes \(the model has 2\)"):
        pc.metrics.ci_violation(model, x, {"c1": 3, "c2": 2})
    with pytest.raises(FactorError, match=r"has attribute\(s\) \['c1'\] bound already"):
        pc.metrics.ci_violation(model.condition(c1=1), x)

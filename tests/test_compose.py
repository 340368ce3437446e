import pytest
import torch

import probcomp as pc
from probcomp import compose
from probcomp import schedules as sched
from probcomp.factors import Gaussian, GaussianMixture


@pytest.fixture
def abc(gen):
    return [
        Gaussian(torch.randn(2, generator=gen, dtype=torch.float64), 0.5 + i, name=n)
        for i, n in enumerate("abc")
    ]


def test_linear_operators_are_weights(abc):
    a, b, c = abc
    assert [w for _, w in compose.product(a, b).terms] == [1.0, 1.0]
    assert [w for _, w in compose.weighted([a, b], [0.3, 2.0]).terms] == [0.3, 2.0]
    assert [(f.name, w) for f, w in compose.projective(a, b, background=c).terms] == [
        ("c", -1.0),
        ("a", 1.0),
        ("b", 1.0),
    ]
    assert [w for _, w in compose.guidance(a, b, 3.0).terms] == [4.0, -3.0]
    assert [w for _, w in compose.negation(a, b, 0.5).terms] == [1.0, -0.5]


def test_composite_score_and_energy_are_weighted_sums(abc, gen):
    a, b, c = abc
    y = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    g = compose.guidance(a, b, 2.0)
    torch.testing.assert_close(g.score(y, 0.3), 3 * a.score(y, 0.3) - 2 * b.score(y, 0.3))
    torch.testing.assert_close(g.energy(y, 0.3), 3 * a.energy(y, 0.3) - 2 * b.energy(y, 0.3))
    nested = compose.product(g, c)
    assert [w for _, w in nested.leaves()] == [3.0, -2.0, 1.0] and nested.cost == 3


def test_weighted_product_matches_exact_product_at_t0(abc, gen):
    a, b, _ = abc
    y = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    exact = pc.factors.exact_product([a, b], [0.5, 2.0])
    torch.testing.assert_close(compose.weighted([a, b], [0.5, 2.0]).score(y, 0.0), exact.score(y, 0.0))


def test_mixture_is_exact_at_every_t(gen):
    """The noised mixture is the mixture of noised factors (the forward process is linear)."""
    p = Gaussian([1.0, 0.0], 0.3)
    q = GaussianMixture([[-1.0, 0.5], [0.0, -1.0]], [0.2, 0.4], [0.5, 0.5])
    mix = compose.mixture([p, q], [0.25, 0.75])
    truth = GaussianMixture([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]], [0.3, 0.2, 0.4], [0.25, 0.375, 0.375])
    y = torch.randn(9, 2, generator=gen, dtype=torch.float64)
    for t in (0.0, 0.2, 0.8):
        torch.testing.assert_close(mix.score(y, t), truth.score(y, t))
        torch.testing.assert_close(mix.energy(y, t), truth.energy(y, t))
    assert mix.cost == 2


def test_mixture_across_schedules_uses_equal_snr(gen):
    p = Gaussian([1.0, 0.0], 0.3, schedule=sched.cosine())
    q = Gaussian([-1.0, 0.0], 0.3)
    mix = compose.mixture([p, q])
    truth = GaussianMixture([[1.0, 0.0], [-1.0, 0.0]], [0.3, 0.3], schedule=sched.cosine())
    assert mix.schedule == sched.cosine()  # a composed factor keeps its first part's clock
    y = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(mix.score(y, 0.4), truth.score(y, 0.4), atol=1e-8, rtol=1e-6)


def test_operator_errors(abc):
    a, _, _ = abc
    with pytest.raises(pc.FactorError, match="event shape"):
        compose.product(a, Gaussian(torch.zeros(3), 1.0))

    class ScoreOnly(pc.factors.ScoreFactor):
        def score(self, y, t):
            return -y

    with pytest.raises(pc.FactorError, match="mixture needs energies; factor 'so'"):
        compose.mixture([a, ScoreOnly((2,), name="so")])
    with pytest.raises(pc.FactorError, match="no energy"):
        compose.product(a, ScoreOnly((2,), name="so")).energy(torch.zeros(1, 2), 0.1)
    with pytest.raises(pc.FactorError, match="at least one factor"):
        compose.projective(background=a)

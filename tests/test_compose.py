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


def test_a_factor_repeated_in_nested_composites_is_one_leaf(abc, gen):
    """Guidance over Eq. 1 holds the unconditional factor twice; it is evaluated once."""
    a, b, c = abc
    guided = compose.guidance(compose.weighted([a, b, c], [1.0, 1.0, -1.0]), c, 2.0)
    assert [(f.name, w) for f, w in guided.leaves()] == [("a", 3.0), ("b", 3.0), ("c", -5.0)]
    assert guided.cost == 3
    y = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        guided.score(y, 0.3), 3 * a.score(y, 0.3) + 3 * b.score(y, 0.3) - 5 * c.score(y, 0.3)
    )
    sc = pc.Scene()
    sc.observe("y", sc.control("x", 2), factor=guided)
    assert len(pc.CompiledScene(sc).terms) == 3


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


def test_masked_projective_is_eq6_when_the_conditionals_factorise(gen):
    """Bradley et al. Def. 5.2: deltas already vanish off their masks, so masking removes nothing."""
    eye = torch.eye(5, dtype=torch.float64)
    fs = [Gaussian(eye[i], 0.1, name=f"p{i}") for i in (0, 2, 4)]
    pb = Gaussian(torch.zeros(5, dtype=torch.float64), 0.1, name="empty")
    masked = compose.projective(*fs, background=pb, masks=[eye[i] for i in (0, 2, 4)])
    plain = compose.projective(*fs, background=pb)
    assert isinstance(masked, compose.MaskedProjective) and not masked.has_energy and masked.cost == 4
    y = torch.randn(16, 5, generator=gen, dtype=torch.float64)
    filled = compose.projective(*fs, background=pb, masks=[eye[i] for i in (0, 2, 4)], fill=torch.zeros(5))
    for t in (0.05, 0.4, 0.9):
        torch.testing.assert_close(masked.score(y, t), plain.score(y, t), atol=1e-10, rtol=0)
        torch.testing.assert_close(filled.score(y, t), plain.score(y, t), atol=1e-10, rtol=0)


def test_masked_projective_keeps_each_delta_on_its_mask(gen):
    """Per-particle masks pick, coordinate by coordinate, one factor's score or the background's."""
    a, b, bg = (Gaussian(torch.randn(4, generator=gen, dtype=torch.float64), 0.3, name=n) for n in "abz")
    m_a = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.float64)  # one mask per particle
    m_b = torch.tensor([[0.0, 1, 0, 0], [0, 0, 0, 0.5]], dtype=torch.float64)
    comp = compose.projective(a, b, background=bg, masks=[m_a, m_b])
    y = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    s_a, s_b, s_z = a.score(y, 0.3), b.score(y, 0.3), bg.score(y, 0.3)
    torch.testing.assert_close(comp.score(y, 0.3), s_z + m_a * (s_a - s_z) + m_b * (s_b - s_z))
    # a stacked batch of the same particle set (two groups of 2) reuses the masks
    torch.testing.assert_close(comp.score(y.repeat(2, 1), 0.3), comp.score(y, 0.3).repeat(2, 1))
    with pytest.raises(pc.ShapeError, match="holds masks for 2 particles, but is evaluated on 3"):
        comp.score(torch.zeros(3, 4, dtype=torch.float64), 0.3)


def test_filled_inputs_make_each_delta_depend_on_its_own_coordinates_only(gen):
    """With ``fill`` a factor sees the noised background off its mask, whatever the state there."""
    cov = torch.tensor([[1.0, 0.8, 0.5], [0.8, 1.0, 0.3], [0.5, 0.3, 1.0]], dtype=torch.float64)
    a = Gaussian(torch.zeros(3, dtype=torch.float64), cov, name="a")  # correlated: not Def. 5.2
    bg = Gaussian(torch.zeros(3, dtype=torch.float64), 1.0, name="z")
    m = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    y = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    y_other = y.clone()
    y_other[:, 1:] += 2.0  # the state changes off the mask only
    plain = compose.projective(a, background=bg, masks=[m])
    filled = compose.projective(a, background=bg, masks=[m], fill=torch.zeros(3))
    assert not torch.allclose(plain.score(y, 0.3)[:, 0], plain.score(y_other, 0.3)[:, 0])
    torch.testing.assert_close(filled.score(y, 0.3)[:, 0], filled.score(y_other, 0.3)[:, 0])
    torch.testing.assert_close(filled.score(y, 0.3), filled.score(y, 0.3))  # a deterministic field
    off = filled.score(y, 0.3)[:, 1:]
    torch.testing.assert_close(off, bg.score(y, 0.3)[:, 1:])  # the background's score off the mask


def test_filled_input_is_the_noised_background_draw_off_the_mask(gen):
    """The documented completion ``m y + (1 - m)(alpha_t x_b + sigma_t z)``, ``z`` from ``fill_seed``."""
    cov = torch.tensor([[1.0, 0.8, 0.5], [0.8, 1.0, 0.3], [0.5, 0.3, 1.0]], dtype=torch.float64)
    a = Gaussian(torch.zeros(3, dtype=torch.float64), cov, name="a")
    bg = Gaussian(torch.zeros(3, dtype=torch.float64), 1.0, name="z")
    m = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)  # per particle
    x_b = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    comp = compose.MaskedProjective([a], bg, [m], fill=x_b, fill_seed=3)
    y = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    t = 0.4
    z = torch.randn((2, 3), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    alpha, sigma = float(bg.schedule.alpha(torch.tensor(t))), float(bg.schedule.sigma(torch.tensor(t)))
    y_a = m * y + (1 - m) * (alpha * x_b + sigma * z)
    expected = bg.score(y, t) + m * (a.score(y_a, t) - bg.score(y, t))
    torch.testing.assert_close(comp.score(y, t), expected)
    # two stacked copies of the particle set see the same completion (grouped calls)
    torch.testing.assert_close(comp.score(y.repeat(2, 1), t), expected.repeat(2, 1))


def test_masks_and_fill_broadcast_from_the_right():
    """A mask with fewer dimensions than the event is one for every particle."""
    a, bg = Gaussian(torch.ones(2, 3), 0.5, name="a"), Gaussian(torch.zeros(2, 3), 0.5, name="z")
    row = torch.tensor([1.0, 0.0, 1.0])
    short = compose.projective(a, background=bg, masks=[row], fill=torch.tensor(-1.0))
    full = compose.projective(a, background=bg, masks=[row.expand(2, 3)], fill=torch.full((2, 3), -1.0))
    y = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(short.score(y, 0.3), full.score(y, 0.3))


def test_cancelled_weights_leave_no_leaf(abc, gen):
    a, b, _ = abc
    assert [f.name for f, _ in compose.negation(compose.product(a, b), b, 1.0).leaves()] == ["a"]
    empty = compose.negation(a, a, 1.0)
    y = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    assert list(empty.leaves()) == [] and empty.cost == 0
    torch.testing.assert_close(empty.score(y, 0.2), torch.zeros_like(y))
    torch.testing.assert_close(empty.energy(y, 0.2), torch.zeros(3, dtype=torch.float64))


def test_masked_projective_errors(abc):
    a, b, c = abc
    with pytest.raises(pc.FactorError, match="2 factors but 1 masks"):
        compose.projective(a, b, background=c, masks=[torch.ones(2)])
    with pytest.raises(pc.FactorError, match="mask of factor 'b' has shape \\(3,\\)"):
        compose.projective(a, b, background=c, masks=[torch.tensor([1.0, 0.0]), torch.ones(3)])
    with pytest.raises(pc.FactorError, match="mask of factor 'a' must hold values in \\[0, 1\\]"):
        compose.projective(a, b, background=c, masks=[torch.tensor([2.0, 0.0]), torch.zeros(2)])
    with pytest.raises(pc.FactorError, match="mask of factor 'a' must be finite"):
        compose.projective(a, b, background=c, masks=[torch.tensor([float("nan"), 0.0]), torch.zeros(2)])
    with pytest.raises(pc.FactorError, match="fill is for 3 particles but the masks for 2"):
        compose.projective(a, b, background=c, masks=[torch.zeros(2, 2)] * 2, fill=torch.zeros(3, 2))
    with pytest.raises(pc.FactorError, match=r"masks of factors \['a', 'b'\] overlap"):
        compose.projective(a, b, background=c, masks=[torch.tensor([1.0, 0.0]), torch.tensor([0.5, 1.0])])
    with pytest.raises(pc.FactorError, match="different numbers of particles \\[2, 3\\]"):
        compose.projective(a, b, background=c, masks=[torch.zeros(2, 2), torch.zeros(3, 2)])
    with pytest.raises(pc.FactorError, match="event shape"):
        compose.projective(a, Gaussian(torch.zeros(3), 1.0), background=c, masks=[torch.ones(2)] * 2)
    with pytest.raises(pc.FactorError, match="fill has shape \\(3,\\)"):
        compose.projective(
            a, b, background=c, masks=[torch.tensor([1.0, 0.0]), torch.zeros(2)], fill=torch.zeros(3)
        )
    with pytest.raises(pc.FactorError, match="it needs masks="):
        compose.projective(a, b, background=c, fill=torch.zeros(2))


def test_location_masks_are_disjoint_cells_cut_to_a_disc():
    xy = torch.tensor([[[0.25, 0.5], [0.75, 0.5]], [[0.5, 0.5], [0.6, 0.5]]])
    m1, m2 = compose.location_masks(xy, size=16, radius=3.0)
    assert m1.shape == m2.shape == (2, 1, 16, 16)
    assert float((m1 + m2).max()) == 1.0  # disjoint
    # far apart: two discs of radius 3 px (32 pixel centres each: 8 per quadrant on this grid)
    assert int(m1[0].sum()) == int(m2[0].sum()) == 32
    # 1.6 px apart: the cells split at the bisector, each a half disc or less
    assert int(m1[1].sum()) + int(m2[1].sum()) < 2 * 32 and bool(m1[1, 0, 8, 7]) and bool(m2[1, 0, 8, 10])
    with pytest.raises(pc.FactorError, match="xy must have shape \\(N, K, 2\\)"):
        compose.location_masks(torch.zeros(3, 2), size=16, radius=3.0)
    with pytest.raises(pc.FactorError, match="radius must be positive"):
        compose.location_masks(xy, size=16, radius=0.0)

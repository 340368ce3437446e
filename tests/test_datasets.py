import math

import pytest
import torch

import probcomp as pc
from probcomp import datasets
from probcomp.errors import DataError


@pytest.mark.parametrize("name", sorted(datasets.DATASETS_2D))
def test_samples_lie_in_the_support_and_density_is_normalised(name, gen):
    d = datasets.get(name)
    x = d.sample(4000, gen)
    assert x.shape == (4000, 2)
    assert torch.isfinite(d.log_prob(x)).all()
    g = torch.linspace(-1.6, 1.6, 641, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    mass = d.log_prob(grid).exp().sum() * (g[1] - g[0]) ** 2
    assert float(mass) == pytest.approx(1.0, abs=0.02)
    torch.testing.assert_close(
        d.sample(50, torch.Generator().manual_seed(3)), d.sample(50, torch.Generator().manual_seed(3))
    )


def test_known_shapes(gen):
    bar = datasets.bar()
    x = bar.sample(20_000, gen)
    assert x[:, 0].abs().max() <= 0.2 and x[:, 1].abs().max() <= 1.0
    assert float(bar.log_prob(torch.tensor([[0.0, 0.0]]))) == pytest.approx(-math.log(0.8))
    assert float(bar.log_prob(torch.tensor([[0.3, 0.0]]))) == -math.inf
    ring = datasets.ring().sample(20_000, gen)
    assert float(ring.norm(dim=1).mean()) == pytest.approx(0.5, abs=0.01)
    rot = datasets.rectangles(rotated=True).sample(1000, gen)
    assert rot[:, 0].abs().max() <= 0.3  # the rotated pair is thin in x


def test_coind_toy_leaves_the_held_out_combination_out(gen):
    x, c = datasets.coind_toy(10_000, gen)
    assert not bool(((c[:, 0] == 1) & (c[:, 1] == 1)).any())
    assert len({tuple(r) for r in c.tolist()}) == 3
    means = torch.stack([x[(c == torch.tensor(k)).all(1)].mean(0) for k in ([0, 0], [0, 1], [1, 0])])
    torch.testing.assert_close(
        means, torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0]]), atol=0.02, rtol=0
    )
    with pytest.raises(pc.DataError, match="every attribute combination"):
        datasets.coind_toy(5, gen, held_out=[(-1, -1), (-1, 1), (1, -1), (1, 1)])


def test_unknown_dataset():
    with pytest.raises(pc.DataError, match="unknown data set 'moons'"):
        datasets.get("moons")


def test_blob_images_match_their_labels(gen):
    img, lab = datasets.blobs(16, gen, num_objects=(1, 3), shape="square", radius=2.0)
    assert img.shape == (16, 3, 32, 32) and img.min() >= -1 and img.max() <= 1
    assert torch.equal(lab["mask"].sum(1), lab["count"])
    assert lab["xy"].shape == (16, 3, 2) and lab["color"].shape == (16, 3)
    for i in range(16):
        last = int(lab["count"][i]) - 1  # painted last, so its centre pixel shows its colour
        x, y = (lab["xy"][i, last] * 32).long().tolist()
        rgb = (img[i, :, y, x] + 1) / 2
        torch.testing.assert_close(rgb, datasets.PALETTE[lab["color"][i, last]], atol=1e-5, rtol=0)
    a, _ = datasets.blobs(4, torch.Generator().manual_seed(1))
    b, _ = datasets.blobs(4, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(pc.DataError, match="num_objects"):
        datasets.blobs(2, gen, num_objects=(3, 2))


def test_smooth_signals_and_textures(gen):
    s = datasets.smooth_signals(8, gen, length=128)
    assert s.shape == (8, 128)
    torch.testing.assert_close(s.std(1), torch.ones(8), atol=1e-5, rtol=0)
    # smooth: neighbouring values are strongly correlated
    assert float((s[:, 1:] * s[:, :-1]).mean()) > 0.9
    t = datasets.textures(2, gen, size=32)
    assert t.shape == (2, 1, 32, 32)
    assert float((t[..., 1:, :] * t[..., :-1, :]).mean()) > 0.7


def test_blob_separation_is_respected(gen):
    _, lab = datasets.blobs(200, gen, num_objects=(5, 5), min_separation=7.0)
    d = (lab["xy"][:, :, None] - lab["xy"][:, None, :]).norm(dim=-1) * 32
    off = ~torch.eye(5, dtype=torch.bool)
    assert float(d[:, off].min()) >= 7.0
    with pytest.raises(DataError, match="cannot place"):
        datasets.blobs(4, gen, num_objects=(8, 8), min_separation=40.0)


def test_smooth_signal_covariance_matches_the_data():
    from probcomp import datasets

    x = datasets.smooth_signals(4000, torch.Generator().manual_seed(0), length=256)[:, :32]
    emp = torch.cov(x.T.double())
    exact = datasets.smooth_signal_covariance(32)
    assert float((emp - exact).abs().max()) < 0.04
    assert float(exact[0, 0]) == pytest.approx(1.09, abs=0.01) and float(exact[0, 31]) < 0.05


def test_shapes_hold_out_their_block_and_draw_what_they_say(gen):
    x, lab = datasets.shapes(600, gen)
    assert x.shape == (600, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    pairs = set(zip(lab["shape"].tolist(), lab["color"].tolist(), strict=True))
    assert pairs == {(s, c) for s in range(3) for c in range(3)} - {(1, 2), (2, 2)}
    on = (x > -1).any(1)  # the shape's pixels
    colour = (x.permute(0, 2, 3, 1)[on] + 1) / 2
    want = pc.datasets.PALETTE[lab["color"]].repeat_interleave(on.flatten(1).sum(1), 0)
    assert torch.allclose(colour, want, atol=1e-6)
    # fill of the bounding box: circle pi/4, square 1, triangle 1/2
    fill = []
    for img in on:
        rows, cols = img.any(1).nonzero(), img.any(0).nonzero()
        fill.append(img.sum() / ((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)))
    fill = torch.stack(fill)
    for s, (lo, hi) in enumerate([(0.7, 0.86), (0.95, 1.0), (0.4, 0.62)]):
        assert ((fill[lab["shape"] == s] > lo) & (fill[lab["shape"] == s] <= hi)).all(), s
    _, lab_full = datasets.shapes(300, gen, held_out=())
    assert len(set(zip(lab_full["shape"].tolist(), lab_full["color"].tolist(), strict=True))) == 9
    with pytest.raises(DataError, match="every shape-colour combination"):
        datasets.shapes(4, gen, held_out=[(s, c) for s in range(3) for c in range(3)])
    with pytest.raises(DataError, match=r"\(3, 0\)"):
        datasets.shapes(4, gen, held_out=[(3, 0)])

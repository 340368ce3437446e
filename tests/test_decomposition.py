"""Decomp Diffusion (models.decomposition): the composed objective, components as factors, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import probcomp as pc
from probcomp.compiled import CompiledScene
from probcomp.errors import DataError, ShapeError
from probcomp.inference import ReverseDiffusion
from probcomp.metrics import adjusted_rand_index
from probcomp.models import train
from probcomp.models.decomposition import Decomposition, recombination_scene


def _tiny(prediction: str = "x0", reduce: str = "mean", seed: int = 0, size: int = 8) -> Decomposition:
    torch.manual_seed(seed)
    m = Decomposition(
        3, 4, channels=3, size=size, base=8, mults=(1, 2), width=8, prediction=prediction, reduce=reduce
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the output conv is zero-initialised; random weights make the test see them
        for p in m.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return m.eval()


class _LinearEncoder(nn.Module):
    def __init__(self, dim: int, components: int, latent: int) -> None:
        super().__init__()
        self.components, self.latent = components, latent
        self.lin = nn.Linear(dim, components * latent, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1)).reshape(x.shape[0], self.components, self.latent)


class _LinearDecoder(nn.Module):
    """``x0_hat(y, t, z) = W z``: a denoiser that reads only its latent."""

    def __init__(self, latent: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape
        self.lin = nn.Linear(latent, int(torch.tensor(shape).prod()), bias=False)

    def forward(self, y: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.lin(cond["z"]).reshape(y.shape[0], *self.shape)


def test_composed_objective_recovers_the_known_minimiser() -> None:
    """Gaussian images with decreasing per-pixel variances, K = 2 two-dimensional latents and a
    shared linear denoiser that reads only its latent: the composed x0 (mean over components) is
    ``W (z_1 + z_2) / 2``, a rank-2 linear function of the image, so the minimiser of Eq. 4.9 is
    ``E[x0 | z]``, the projection onto the two highest-variance pixels (for every t, whatever the
    time weighting); training must find it."""
    shape = (1, 8, 8)
    std = torch.cat([torch.tensor([2.0, 1.5]), torch.linspace(0.3, 0.05, 62)])
    m = Decomposition(2, 2, channels=1, size=8, base=8, mults=(1,), width=8)
    m.encoder = _LinearEncoder(64, 2, 2)
    m.denoiser = _LinearDecoder(2, shape)  # type: ignore[assignment]

    def draw(n: int, g: torch.Generator) -> torch.Tensor:
        return (torch.randn(n, 64, generator=g) * std).reshape(n, *shape)

    res = train(m, draw, steps=1500, batch=256, lr=1e-2, ema=0, t_min=0.2, grad_clip=0, progress=False)
    x = draw(2000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = res.model.encoder(x)
        x0 = torch.stack([res.model.denoiser(x, torch.zeros(2000), {"z": z[:, k]}) for k in range(2)]).mean(0)
    want = torch.zeros_like(x).flatten(1)
    want[:, :2] = x.flatten(1)[:, :2]
    err = (x0.flatten(1) - want).square().sum(1).mean() / want.square().sum(1).mean()
    assert float(err) < 0.02, float(err)
    # and nothing is learned of the low-variance pixels (they are not in the bottleneck)
    assert float(x0.flatten(1)[:, 2:].square().mean()) < 0.05 * float(std[2] ** 2)


@pytest.mark.parametrize(("prediction", "reduce"), [("x0", "mean"), ("eps", "sum"), ("eps", "mean")])
def test_recombination_scene_equals_the_hand_summed_predictions(prediction: str, reduce: str) -> None:
    m = _tiny(prediction, reduce)
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    factors = m.components_of(a, [0, 2]) + m.components_of(b, [1])
    scene = recombination_scene(factors)
    compiled = CompiledScene(scene, m.schedule)  # engine time = the factors' own time
    x = torch.randn(5, 3, 8, 8, generator=g)
    t = 0.4
    got = compiled.target({"x": x}, t).grad["x"]
    za, zb = m.decompose(a), m.decompose(b)
    tt = torch.full((5,), t, dtype=torch.float64)
    al = m.schedule.alpha(tt).float().reshape(-1, 1, 1, 1)
    sg = m.schedule.sigma(tt).float().reshape(-1, 1, 1, 1)
    mt = m.schedule.model_time(tt).float()
    with torch.no_grad():
        eps = sum(m.component_eps(x, mt, z.expand(5, -1), al, sg) for z in (za[0], za[2], zb[1]))
    w = 1.0 if reduce == "sum" else 1 / 3
    torch.testing.assert_close(got, -w * eps / sg, rtol=1e-4, atol=1e-4)
    # the composed prediction the training objective uses is the same sum, over all K components
    with torch.no_grad():
        composed = m.composed_eps(x[:1], mt[:1], a[None], al[:1], sg[:1])
        hand = sum(m.component_eps(x[:1], mt[:1], za[k][None], al[:1], sg[:1]) for k in range(3))
    torch.testing.assert_close(composed, m.weights() * hand, rtol=1e-5, atol=1e-5)


def test_components_batch_into_one_call_and_weights_are_options() -> None:
    m = _tiny()
    factors = m.components_of(torch.zeros(3, 8, 8))
    compiled = CompiledScene(recombination_scene(factors))
    assert len(compiled.groups) == 1  # three components, one denoiser call per level
    scene = recombination_scene(factors, weights=[1.0, 0.5, 0.0])
    assert [scene[f"component_{i}"]["weight"] for i in range(3)] == [1.0, 0.5, 0.0]
    assert m.weights(2) == 0.5 and _tiny(reduce="sum").weights(2) == 1.0


def test_per_particle_latents_reconstruct_each_image() -> None:
    m = _tiny()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    batch = m.components_of(x)
    engine = ReverseDiffusion(steps=4, sampler="ddim", clip_x0=(-1.0, 1.0))
    joint = engine.run(recombination_scene(batch), num_samples=4, seed=0)["x"]
    one = engine.run(recombination_scene(m.components_of(x[2])), num_samples=4, seed=0)["x"]
    torch.testing.assert_close(joint[2], one[2], rtol=1e-4, atol=1e-4)


def test_bad_input_is_a_probcomp_error() -> None:
    m = _tiny()
    with pytest.raises(ShapeError, match=r"takes images \(N, 3, 8, 8\), got shape \(2, 3, 16, 16\)"):
        m.decompose(torch.zeros(2, 3, 16, 16))
    with pytest.raises(DataError, match="NaN"):
        m.decompose(torch.full((1, 3, 8, 8), float("nan")))
    with pytest.raises(DataError, match=r"component index 3 is out of range.*K = 3"):
        m.components_of(torch.zeros(3, 8, 8), [0, 3])
    with pytest.raises(ShapeError, match=r"latent has shape \(4,\)"):
        m.component(torch.zeros(5))
    other = Decomposition(2, 4, channels=3, size=16, base=8, mults=(1, 2), width=8)
    mixed = m.components_of(torch.zeros(3, 8, 8), [0]) + other.components_of(torch.zeros(3, 16, 16), [0])
    with pytest.raises(ShapeError, match="different image shapes"):
        recombination_scene(mixed)
    with pytest.raises(DataError, match="reduce"):
        Decomposition(2, 4, reduce="median")
    with pytest.raises(DataError, match="objective='decomposition'"):
        train(m, torch.zeros(4, 3, 8, 8), objective="eps", steps=1)


def test_training_is_seeded_and_checkpoints_round_trip(tmp_path) -> None:
    x, _ = pc.datasets.blobs(64, torch.Generator().manual_seed(0), size=8, num_objects=(1, 2), radius=1.0)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = Decomposition(2, 4, size=8, base=8, mults=(1, 2), width=8)
        runs.append(train(m, x, steps=5, batch=8, ema=0.5, progress=False))
    assert runs[0].losses == runs[1].losses
    model = runs[0].model
    path = pc.models.save(tmp_path / "d", model, schedule=model.schedule, event_shape=(3, 8, 8))
    back = pc.models.load_decomposition(path)
    with pytest.raises(DataError, match="load_decomposition"):
        pc.models.load(path)
    assert isinstance(back, Decomposition) and back.config == model.config
    torch.testing.assert_close(back.decompose(x[:3]), model.decompose(x[:3]))


def test_attributions_are_one_hot_over_components() -> None:
    m = _tiny()
    a = m.attributions(torch.rand(2, 3, 8, 8) * 2 - 1, draws=2)
    assert a.shape == (2, 3, 8, 8)
    torch.testing.assert_close(a.sum(1), torch.ones(2, 8, 8))


def test_blob_masks_composite_back_to_the_image() -> None:
    g = torch.Generator().manual_seed(4)
    x, lab = pc.datasets.blobs(6, g, num_objects=(2, 4), masks=True)
    rgb = pc.datasets.PALETTE[lab["color"]]  # (n, K, 3)
    rebuilt = (lab["masks"][:, :, None] * rgb[..., None, None]).sum(1) * 2 - 1
    torch.testing.assert_close((x + 1) / 2, (rebuilt + 1) / 2, rtol=1e-5, atol=1e-5)
    xg, lg = pc.datasets.blobs_global(6, torch.Generator().manual_seed(4), num_objects=(2, 4))
    corner_bare = lg["masks"].sum(1)[:, 0, 0] < 1e-3
    want = lg["background_rgb"] * lg["gain"][:, None]
    torch.testing.assert_close(
        ((xg[:, :, 0, 0] + 1) / 2)[corner_bare], want[corner_bare], rtol=1e-5, atol=1e-5
    )


def test_adjusted_rand_index_known_answers() -> None:
    def oh(labels: list[list[int]], k: int) -> torch.Tensor:
        return nn.functional.one_hot(torch.tensor([labels]), k).permute(0, 3, 1, 2)

    assert float(adjusted_rand_index(oh([[0, 0, 1, 1]], 3), oh([[2, 2, 0, 0]], 3))[0]) == 1.0  # relabelled
    assert float(adjusted_rand_index(oh([[0, 0, 1, 1]], 2), oh([[0, 1, 0, 1]], 2))[0]) == pytest.approx(-0.5)
    # Hubert & Arabie's index on [0, 0, 1, 1] against [0, 0, 1, 2]: 4/7
    assert float(adjusted_rand_index(oh([[0, 0, 1, 1]], 3), oh([[0, 0, 1, 2]], 3))[0]) == pytest.approx(4 / 7)
    fg = torch.tensor([[[True, True, False, False]]])
    assert float(adjusted_rand_index(oh([[0, 0, 1, 1]], 2), oh([[1, 1, 0, 1]], 2), foreground=fg)[0]) == 1.0
    with pytest.raises(ShapeError):
        adjusted_rand_index(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 3, 4))


def test_latents_are_standardised_whatever_the_encoder_weights():
    """Each latent has zero mean and unit variance over its coordinates, even for scaled-up weights."""
    torch.manual_seed(0)
    m = Decomposition(3, 8, base=8, mults=(1, 2), width=8)
    with torch.no_grad():
        m.encoder.out.weight.mul_(1e3)
    z = m.decompose(torch.rand(5, 3, 32, 32) * 2 - 1)
    assert z.shape == (5, 3, 8)
    assert torch.allclose(z.mean(-1), torch.zeros(5, 3), atol=1e-4)
    assert torch.allclose(z.var(-1, unbiased=False), torch.ones(5, 3), atol=1e-3)

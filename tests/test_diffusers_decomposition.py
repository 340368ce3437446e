"""Decomp Diffusion with a pretrained diffusers U-Net as its denoiser (dissertation Sec. 4.5.5)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from probcomp.errors import FactorError
from probcomp.inference import ReverseDiffusion
from probcomp.models import load_decomposition, recombination_scene, save, train
from probcomp.models.diffusers import from_diffusers, tiny
from probcomp.models.diffusers.decomposition import LatentConditionedUNet, pretrained_decomposition

torch.set_num_threads(1)


def _factor(tmp_path, prediction_type="epsilon", num_classes=None, null_class=None):
    folder = tmp_path / f"unet-{prediction_type}-{num_classes}"
    tiny.tiny_unet(num_classes=num_classes).save_pretrained(folder)
    tiny.tiny_scheduler(prediction_type).save_pretrained(folder)
    return from_diffusers(folder, null_class=null_class)


def _noised(model, x, t=0.4, seed=0):
    tt = torch.full((x.shape[0],), t, dtype=torch.float64)
    a = model.schedule.alpha(tt).float().reshape(-1, 1, 1, 1)
    s = model.schedule.sigma(tt).float().reshape(-1, 1, 1, 1)
    y = a * x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return y, model.schedule.model_time(tt).float(), a, s


@pytest.mark.parametrize(
    ("ptype", "classes", "null"), [("epsilon", None, None), ("sample", 3, 2), ("epsilon", 3, 2)]
)
def test_untrained_composition_is_the_pretrained_model(tmp_path, ptype, classes, null):
    """W = 0: every component is the U-Net's null-class prediction, so their mean is the model."""
    factor = _factor(tmp_path, ptype, classes, null)
    model = pretrained_decomposition(factor, components=3, latent=4, width=8)
    assert model.prediction == {"epsilon": "eps", "sample": "x0"}[ptype] and model.reduce == "mean"
    x = torch.rand(5, 3, 8, 8) * 2 - 1
    y, mt, a, s = _noised(model, x)
    with torch.no_grad():
        composed = model.composed_eps(y, mt, x, a, s)
    assert torch.allclose(composed, factor.eps(y, 0.4), atol=1e-5)


def test_recombination_through_the_engine_starts_as_the_pretrained_sampler(tmp_path):
    factor = _factor(tmp_path, "epsilon", 3, 2)
    model = pretrained_decomposition(factor, components=2, latent=4, width=8)
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    engine = ReverseDiffusion(steps=8, sampler="ddim")
    mixed = engine.run(recombination_scene(model.components_of(x)), num_samples=4, seed=3)["x"]
    plain = engine.run(recombination_scene([factor]), num_samples=4, seed=3)["x"]
    assert torch.allclose(mixed, plain, atol=1e-4)


def test_fine_tuning_is_seeded_leaves_the_source_alone_and_round_trips(tmp_path):
    factor = _factor(tmp_path, "epsilon", 3, 2)
    before = {k: v.clone() for k, v in factor.core.unet.state_dict().items()}
    data = torch.rand(64, 3, 8, 8) * 2 - 1
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = pretrained_decomposition(factor, components=2, latent=4, width=8)
        runs.append(train(model, data, steps=6, batch=8, lr=1e-2, ema=0, log_every=1, progress=False))
    assert runs[0].losses == runs[1].losses
    tuned = runs[0].model
    assert (
        float(tuned.denoiser.unet.class_embedding.proj.weight.detach().abs().max()) > 0
    )  # the latents are read now
    after = factor.core.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    path = save(tmp_path / "tuned", tuned, schedule=tuned.schedule, event_shape=(3, 8, 8))
    again = load_decomposition(path)
    y, mt, a, s = _noised(tuned, data[:3])
    with torch.no_grad():
        assert torch.equal(
            again.composed_eps(y, mt, data[:3], a, s), tuned.composed_eps(y, mt, data[:3], a, s)
        )


def test_pretrained_decomposition_bad_input(tmp_path):
    with pytest.raises(FactorError, match="v_prediction|'v'"):
        pretrained_decomposition(_factor(tmp_path, "v_prediction"), components=2, latent=4, width=8)
    with pytest.raises(FactorError, match="null_class 7 is out of range"):
        pretrained_decomposition(_factor(tmp_path, "epsilon", 3), components=2, latent=4, null_class=7)
    with pytest.raises(FactorError, match="UNet2DModel"):
        LatentConditionedUNet(torch.nn.Linear(2, 2), 4)

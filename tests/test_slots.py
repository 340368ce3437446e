"""Slot attention and Slot-VAE (probcomp.models.slots)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import distributions as D

from probcomp.errors import DataError, ShapeError
from probcomp.models.slots import SlotAttention, SlotVAE, fit_slot_vae, gaussian_kl
from probcomp.models.training import TrainResult

TINY = {"num_slots": 3, "size": 16, "dim": 16, "slot_latent": 8, "global_latent": 8, "hidden": 32}


def tiny(**kw) -> SlotVAE:
    torch.manual_seed(0)
    return SlotVAE(**{**TINY, "decoder_hidden": 16, **kw})


@pytest.fixture(autouse=True)
def one_thread():
    # these small convolutions gain nothing from a second thread, and two threads slow to a crawl
    # when another process holds a core
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def squares(m: int, seed: int = 0, size: int = 16, side: int = 4, fixed: bool = False) -> torch.Tensor:
    """``m`` images of two squares of two different colours on black, in [-1, 1]: at random
    places, or (``fixed``) one near the top-left and one near the bottom-right corner."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1], [-1, 1, 1], [1, -1, 1]])
    x = -torch.ones(m, 3, size, size)
    corners = [(size // 8, size // 8), (size - size // 8 - side, size - size // 8 - side)]
    for i in range(m):
        for j, c in enumerate(torch.randperm(len(palette), generator=g)[:2].tolist()):
            r, q = corners[j] if fixed else torch.randint(0, size - side + 1, (2,), generator=g).tolist()
            x[i, :, r : r + side, q : q + side] = palette[c][:, None, None]
    return x


def mse(model: SlotVAE, x: torch.Tensor) -> float:
    return float(model.encode(x, torch.Generator().manual_seed(0))["recon"].sub(x).square().mean())


# Slot attention ---------------------------------------------------------------------------
def test_slot_attention_is_equivariant_in_slots_and_invariant_in_inputs():
    torch.manual_seed(0)
    sa = SlotAttention(num_slots=4, dim=8, iters=3, hidden=16)
    inputs = torch.randn(2, 10, 8)
    init = sa.initial_slots(2, torch.Generator().manual_seed(1))
    slots, attn = sa(inputs, init)
    assert slots.shape == (2, 4, 8) and attn.shape == (2, 4, 10)
    perm = torch.tensor([2, 0, 3, 1])
    slots_p, attn_p = sa(inputs, init[:, perm])
    torch.testing.assert_close(slots_p, slots[:, perm], atol=1e-5, rtol=0)
    torch.testing.assert_close(attn_p, attn[:, perm], atol=1e-5, rtol=0)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(2))
    slots_i, attn_i = sa(inputs[:, order], init)
    torch.testing.assert_close(slots_i, slots, atol=1e-5, rtol=0)
    torch.testing.assert_close(attn_i, attn[:, :, order], atol=1e-5, rtol=0)
    # the slots moved away from their initial values, and different inputs give different slots
    assert (slots - init).abs().max() > 1e-2
    assert (sa(inputs + torch.randn(2, 10, 8), init)[0] - slots).abs().max() > 1e-3


def test_slot_attention_softmax_is_over_slots_and_sampling_is_seeded():
    torch.manual_seed(0)
    sa = SlotAttention(num_slots=5, dim=8, iters=2, hidden=16)
    inputs = torch.randn(3, 12, 8)
    slots, attn = sa(inputs, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(attn.sum(1), torch.ones(3, 12))  # every input shares one unit among slots
    assert not torch.allclose(attn.sum(2), torch.ones(3, 5))  # not normalised over the inputs
    again, _ = sa(inputs, generator=torch.Generator().manual_seed(4))
    assert torch.equal(slots, again)
    other, _ = sa(inputs, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(slots, other)
    # slots_init replaces the sampled start, with any number of slots
    init = sa.initial_slots(3, torch.Generator().manual_seed(4))
    assert torch.equal(sa(inputs, init)[0], slots)
    assert sa(inputs, init[:, :2])[0].shape == (3, 2, 8)
    with pytest.raises(ShapeError, match=r"\(N, P, 8\)"):
        sa(torch.randn(3, 12, 7))
    with pytest.raises(ShapeError, match="slots_init"):
        sa(inputs, torch.randn(2, 5, 8))


# Slot-VAE: structure ----------------------------------------------------------------------
def test_masks_sum_to_one_and_recon_is_the_mixture():
    model = tiny().eval()
    x = squares(4)
    out = model.encode(x, torch.Generator().manual_seed(0))
    assert out["z"].shape == (4, 3, 8)
    assert out["masks"].shape == (4, 3, 16, 16) and out["components"].shape == (4, 3, 3, 16, 16)
    assert out["recon"].shape == (4, 3, 16, 16) and out["attn"].shape == (4, 3, 256)
    torch.testing.assert_close(out["masks"].sum(1), torch.ones(4, 16, 16))
    torch.testing.assert_close(out["attn"].sum(1), torch.ones(4, 256))
    torch.testing.assert_close(out["recon"], (out["masks"][:, :, None] * out["components"]).sum(1))
    recon = model.decode(out["z"])[0]
    torch.testing.assert_close(recon, out["recon"])
    # the decoder is shared across slots: it takes any number of them
    assert model.decode(out["z"][:, :2])[1].shape == (4, 2, 16, 16)
    # deterministic given the generator
    assert torch.equal(model.encode(x, torch.Generator().manual_seed(0))["z"], out["z"])


def test_the_two_paths_share_slot_attention_and_its_initial_values():
    model = tiny()
    seen: list[torch.Tensor] = []
    forward = model.slot_attention.forward

    def spy(inputs, slots_init=None, generator=None):
        seen.append(slots_init)
        return forward(inputs, slots_init, generator)

    model.slot_attention.forward = spy  # type: ignore[method-assign]
    model.loss(squares(2), torch.Generator().manual_seed(0))
    assert len(seen) == 2 and seen[0] is not None
    assert torch.equal(seen[0], seen[1])


def test_default_model_shapes_config_and_size():
    torch.manual_seed(0)
    model = SlotVAE()
    assert sum(p.numel() for p in model.parameters()) < 400_000
    x = squares(2, size=32, side=6)
    out = model.loss(x, torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "recon", "kl_slots", "kl_global", "kl_aux", "mse"}
    assert out["loss"].ndim == 0 and out["loss"].requires_grad and torch.isfinite(out["loss"])
    assert all(float(out[k]) >= 0 for k in ("kl_slots", "kl_global", "kl_aux", "mse"))
    cfg = json.loads(json.dumps(model.config))
    assert cfg["kind"] == "slot_vae" and cfg["size"] == 32 and cfg["num_slots"] == 4
    rebuilt = SlotVAE(**{k: v for k, v in cfg.items() if k != "kind"})
    assert rebuilt.load_state_dict(model.state_dict()) is not None
    torch.testing.assert_close(
        rebuilt.encode(x, torch.Generator().manual_seed(3))["recon"],
        model.encode(x, torch.Generator().manual_seed(3))["recon"],
    )
    samples = model.sample(3, torch.Generator().manual_seed(0))
    assert samples.shape == (3, 3, 32, 32) and torch.isfinite(samples).all()
    assert torch.equal(samples, model.sample(3, torch.Generator().manual_seed(0)))


def test_loss_terms_match_their_definitions():
    model = tiny(beta_slots=0.5, beta_global=0.25, beta_aux=2.0)
    x = squares(3)
    out = model.loss(x, torch.Generator().manual_seed(0))
    expected = out["recon"] + 0.5 * out["kl_slots"] + 0.25 * out["kl_global"] + 2.0 * out["kl_aux"]
    torch.testing.assert_close(out["loss"].detach(), expected)
    # recon is the Gaussian NLL of the reconstruction summed over pixels: for sigma_x = 0.1,
    # sum (x - m)^2 / (2 sigma^2) + P log(sigma sqrt(2 pi)) with P = 3 * 16 * 16 and mse = mean (x - m)^2
    pixels = 3 * 16 * 16
    nll = out["mse"] * pixels / (2 * 0.1**2) + pixels * torch.log(torch.tensor(0.1 * (2 * torch.pi) ** 0.5))
    torch.testing.assert_close(out["recon"], nll, rtol=1e-4, atol=1e-2)


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu_q, mu_p = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    lv_q, lv_p = 2 * torch.randn(5, 7, generator=g), 2 * torch.randn(5, 7, generator=g)
    q = D.Normal(mu_q, (0.5 * lv_q).exp())
    p = D.Normal(mu_p, (0.5 * lv_p).exp())
    torch.testing.assert_close(
        gaussian_kl(mu_q, lv_q, mu_p, lv_p), D.kl_divergence(q, p), rtol=1e-5, atol=1e-5
    )
    std = D.Normal(torch.zeros(5, 7), torch.ones(5, 7))
    torch.testing.assert_close(gaussian_kl(mu_q, lv_q), D.kl_divergence(q, std), rtol=1e-5, atol=1e-5)
    assert float(gaussian_kl(mu_q, lv_q, mu_q, lv_q).abs().max()) < 1e-6


# Swapping ---------------------------------------------------------------------------------
def test_swap_all_slots_decodes_b_and_swap_none_reconstructs_a():
    model = tiny().eval()
    x_a, x_b = squares(3, seed=1), squares(3, seed=2)
    every = list(range(model.num_slots))
    z_b = model.encode(x_b, torch.Generator().manual_seed(7))["z"]
    swapped = model.swap(x_a, x_b, every, every, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(swapped, model.decode(z_b)[0])
    none = model.swap(x_a, x_b, [], [], generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(none, model.encode(x_a, torch.Generator().manual_seed(7))["recon"])
    # one slot swapped: that slot's latent is B's, the others A's
    z_a = model.encode(x_a, torch.Generator().manual_seed(7))["z"]
    mixed = z_a.clone()
    mixed[:, 1] = z_b[:, 2]
    one = model.swap(x_a, x_b, [1], [2], generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(one, model.decode(mixed)[0])
    assert not torch.allclose(one, none)


# Bad input --------------------------------------------------------------------------------
def test_bad_input_raises_probcomp_errors():
    model = tiny()
    x = squares(2)
    with pytest.raises(ShapeError, match=r"SlotVAE.* expects images \(N, 3, 16, 16\), got \(2, 3, 32, 32\)"):
        model.loss(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ShapeError, match=r"\(N, 3, 16, 16\)"):
        model.encode(torch.zeros(3, 16, 16))
    with pytest.raises(ShapeError, match=r"\(N, 3, 16, 16\)"):
        model.encode(torch.zeros(2, 1, 16, 16))
    with pytest.raises(DataError, match="slot index 3.*K = 3"):
        model.swap(x, x, [3], [0])
    with pytest.raises(DataError, match="slot index -1.*K = 3"):
        model.swap(x, x, [0], [-1])
    with pytest.raises(DataError, match="equal lengths"):
        model.swap(x, x, [0, 1], [0])
    with pytest.raises(DataError, match="more than once"):
        model.swap(x, x, [0, 0], [1, 2])
    with pytest.raises(ShapeError, match="same number of images"):
        model.swap(x, x[:1], [0], [0])
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        model.encode(bad)
    with pytest.raises(DataError, match="NaN"):
        model.loss(bad)
    with pytest.raises(DataError, match="floating-point"):
        model.encode(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ShapeError, match=r"\(N, K, 8\)"):
        model.decode(torch.zeros(2, 3, 5))
    with pytest.raises(DataError, match="num_slots"):
        SlotVAE(num_slots=0)
    with pytest.raises(ShapeError):
        fit_slot_vae(model, torch.zeros(4, 3, 8, 8), steps=1)
    with pytest.raises(DataError, match="NaN"):
        fit_slot_vae(model, bad, steps=1)


def test_non_finite_loss_names_the_step():
    model = tiny()
    with torch.no_grad():
        model.decoder.net[-1].bias.fill_(float("inf"))
    with pytest.raises(DataError, match="at step 0"):
        fit_slot_vae(model, squares(8), steps=3, batch=4)


# Training ---------------------------------------------------------------------------------
def _fit(seed: int, scramble: int = 0, **kw) -> TrainResult:
    model, data = tiny(), squares(32)
    torch.manual_seed(scramble)  # training must draw from its own seed only, not torch's global RNG
    return fit_slot_vae(model, data, steps=20, batch=8, lr=1e-3, warmup=5, seed=seed, log_every=5, **kw)


def test_training_is_deterministic_given_the_seed():
    a, b, c = _fit(0), _fit(0, scramble=1), _fit(1)
    assert isinstance(a, TrainResult) and a.steps == 20 and len(a.losses) == 4
    assert a.losses == b.losses
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.losses != c.losses
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_resuming_from_a_checkpoint_equals_one_run(tmp_path):
    path = tmp_path / "slot_vae.pt"
    once = _fit(0)
    model = tiny()
    data = squares(32)
    common = {"batch": 8, "lr": 1e-3, "warmup": 5, "seed": 0, "log_every": 5, "checkpoint": path}
    fit_slot_vae(model, data, steps=10, **common)
    assert path.exists()
    state = torch.load(path, weights_only=True)
    assert int(state["step"]) == 10
    resumed = fit_slot_vae(tiny(), data, steps=20, **common)  # a fresh model: the state comes from the file
    assert resumed.losses == once.losses
    s1, s2 = once.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    with pytest.raises(DataError, match=r"slot_vae\.pt.*at step 20, past the 15 steps"):
        fit_slot_vae(tiny(), data, steps=15, **common)  # a longer run is not a shorter one


@pytest.mark.parametrize("warmup", [0, 10])
def test_learning_rate_warms_up_linearly(warmup):
    # Adam's first step moves every parameter with a non-zero gradient by the learning rate
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit_slot_vae(model, squares(8), steps=1, batch=4, lr=1e-2, warmup=warmup)
    moved = max(float((v - before[k]).abs().max()) for k, v in model.state_dict().items())
    assert moved == pytest.approx(1e-2 / max(warmup, 1), rel=1e-3)


def test_training_reduces_the_reconstruction_error():
    """A few hundred steps learn the scene layout: the reconstruction beats the untrained model
    by far and the best constant colour too (it draws the squares' places).  Discovering the
    objects, one slot per square, takes thousands of steps and is not checked here."""
    data, test = squares(256, seed=0, fixed=True), squares(64, seed=1, fixed=True)
    constant = float((test - data.mean((0, 2, 3), keepdim=True)).square().mean())
    model = tiny()
    before = mse(model, test)
    result = fit_slot_vae(model, data, steps=250, batch=16, lr=2e-3, warmup=25, log_every=50)
    after = mse(model, test)
    assert result.losses[-1] < 0.6 * result.losses[0]
    assert after < 0.3 * before, (before, after)
    assert after < 0.8 * constant, (constant, after)

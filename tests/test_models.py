"""Networks, energy parameterisation, training, checkpoints (issue 3)."""

import json
import shutil
import warnings

import pytest
import torch

import probcomp as pc
from probcomp import schedules as sched
from probcomp.inference import ReverseDiffusion
from probcomp.models import EnergyModel, NetworkFactor, ResMLP, load, save, train
from probcomp.models.networks import UNet
from probcomp.models.training import _composed_eps


def _gauss_data(n, g):
    return torch.tensor([0.5, -0.3]) + torch.randn(n, 2, generator=g) * torch.tensor([0.3, 0.15])


def _tiny(**kw):
    torch.manual_seed(0)
    return ResMLP(2, hidden=64, blocks=2, **kw)


@pytest.mark.slow
def test_a_tiny_model_learns_a_gaussian():
    res = train(_tiny(), _gauss_data, steps=600, batch=256, lr=3e-3, ema=0.99, seed=0)
    f = NetworkFactor(res.model, (2,), sched.linear(), name="tiny")
    sc = pc.Scene()
    sc.observe("y", sc.control("x", 2), factor=f)
    xs = ReverseDiffusion(steps=100).run(sc, 4000, seed=0)["x"]
    torch.testing.assert_close(xs.mean(0), torch.tensor([0.5, -0.3]), atol=0.06, rtol=0)
    torch.testing.assert_close(xs.std(0), torch.tensor([0.3, 0.15]), atol=0.06, rtol=0)
    assert res.losses[-1] < res.losses[0]


def test_training_is_deterministic_and_resumable(tmp_path):
    a = train(_tiny(), _gauss_data, steps=40, batch=64, seed=3, log_every=10)
    b = train(_tiny(), _gauss_data, steps=40, batch=64, seed=3, log_every=10)
    for pa, pb in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    ck = tmp_path / "state.pt"
    train(_tiny(), _gauss_data, steps=20, batch=64, seed=3, log_every=10, checkpoint=ck, save_every=10)
    # a fresh model resumes from step 20 and ends where the uninterrupted run ended
    c = train(_tiny(), _gauss_data, steps=40, batch=64, seed=3, log_every=10, checkpoint=ck, save_every=10)
    for pa, pc_ in zip(a.model.state_dict().values(), c.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pc_)
    assert c.losses == a.losses
    # a state at step 40 is not a 30-step run: asking for fewer steps than it holds is refused
    with pytest.raises(pc.DataError, match=r"state\.pt.*at step 40, past the 30 steps"):
        train(_tiny(), _gauss_data, steps=30, batch=64, seed=3, checkpoint=ck)


@pytest.mark.parametrize("form", ["norm", "residual"])
def test_energy_score_is_minus_grad_energy(form):
    torch.set_default_dtype(torch.float64)
    try:
        f = NetworkFactor(EnergyModel(_tiny(), form), (2,), sched.linear(), name="e")
        y = torch.randn(6, 2)
        for t in (0.05, 0.5):
            yy = y.clone().requires_grad_(True)
            with torch.enable_grad():
                e = f.net.potential(yy, f.schedule.model_time(t).expand(6), None)
                (g,) = torch.autograd.grad(e.sum(), yy)
            sigma = float(f.schedule.sigma(t))
            torch.testing.assert_close(f.score(y, t), -g / sigma, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(f.energy(y, t), e.detach() / sigma, atol=1e-5, rtol=1e-5)
        assert f.has_energy
    finally:
        torch.set_default_dtype(torch.float32)


def test_energy_models_train():
    res = train(
        EnergyModel(_tiny(), "norm"),
        _gauss_data,
        steps=150,
        batch=128,
        lr=3e-3,
        seed=0,
        log_every=50,
        ema=0.9,  # the losses are what is tested; a short run needs a short EMA (no warning)
    )
    assert res.losses[-1] < 0.6 * res.losses[0]


@pytest.mark.slow
def test_null_token_dropout_gives_a_usable_unconditional_model():
    def data(n, g):
        c = torch.randint(2, (n,), generator=g)
        x = torch.stack([2.0 * c - 1.0, torch.zeros(n)], 1) + 0.15 * torch.randn(n, 2, generator=g)
        return x, {"c": c}

    res = train(_tiny(attributes={"c": 2}), data, steps=800, batch=256, lr=3e-3, ema=0.99, p_drop=0.3, seed=0)
    f = NetworkFactor(res.model, (2,), sched.linear(), name="cond")
    eng = ReverseDiffusion(steps=100)

    def sample(factor):
        sc = pc.Scene()
        sc.observe("y", sc.control("x", 2), factor=factor)
        return eng.run(sc, 2000, seed=1)["x"]

    assert float(sample(f.condition(c=0))[:, 0].mean()) == pytest.approx(-1.0, abs=0.1)
    assert float(sample(f.condition(c=1))[:, 0].mean()) == pytest.approx(1.0, abs=0.1)
    uncond = sample(f)[:, 0]  # null token: the mixture of both
    assert float((uncond > 0).float().mean()) == pytest.approx(0.5, abs=0.1)
    assert float(uncond.abs().mean()) == pytest.approx(1.0, abs=0.15)
    assert f.condition(c=1).name == "cond|c=1"
    with pytest.raises(pc.DataError, match="unknown condition"):
        f.condition(colour=1).eps(torch.zeros(2, 2), 0.5)


def test_composed_objective_sums_concepts_and_respects_the_mask():
    net = _tiny(continuous={"xy": 2})
    y, t = torch.randn(5, 2), torch.full((5,), 0.3)
    c = torch.rand(5, 3, 2)
    mask = torch.tensor([[True, True, False]] * 5)
    got = _composed_eps(net, y, t, {"xy": c, "mask": mask})
    expect = net(y, t, {"xy": c[:, 0]}) + net(y, t, {"xy": c[:, 1]})
    torch.testing.assert_close(got, expect)


def test_checkpoint_round_trip_and_tampering(tmp_path):
    model = EnergyModel(_tiny(attributes={"a": 3}), "residual")
    path = save(tmp_path / "m", model, schedule=sched.cosine(), event_shape=(2,), meta={"data": "test"})
    f = load(tmp_path / "m")
    assert f.schedule == sched.cosine() and f.is_energy and f.meta["data"] == "test"
    y = torch.randn(4, 2)
    ref = NetworkFactor(model, (2,), sched.cosine()).condition(a=1)
    assert torch.equal(f.condition(a=1).score(y, 0.4), ref.score(y, 0.4))
    assert torch.equal(load(str(path)).energy(y, 0.4), f.energy(y, 0.4))
    # dotted names are names, not suffixes
    dotted = save(tmp_path / "box-0.7", model, schedule=sched.cosine(), event_shape=(2,))
    assert dotted.name == "box-0.7.json"
    assert torch.equal(load(tmp_path / "box-0.7").energy(y, 0.4), load(dotted).energy(y, 0.4))
    weights = tmp_path / "m.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # flip bits in a weight
    weights.write_bytes(bytes(data))
    with pytest.raises(pc.DataError, match=r"m\.safetensors.*SHA-256"):
        load(tmp_path / "m")
    weights.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(pc.DataError, match="SHA-256"):
        load(tmp_path / "m")


def test_energy_checkpoint_keeps_trained_output_layer(tmp_path):
    model = EnergyModel(_tiny(), "norm")  # the norm form re-initialises the output layer for training
    save(tmp_path / "e", model, schedule=sched.linear(), event_shape=(2,))
    y = torch.randn(5, 2)
    ref = NetworkFactor(model, (2,), sched.linear())
    assert torch.equal(load(tmp_path / "e").score(y, 0.3), ref.score(y, 0.3))


def test_checkpoint_errors_name_the_file(tmp_path):
    save(tmp_path / "m", _tiny(), schedule=sched.linear(), event_shape=(2,))
    cfg = json.loads((tmp_path / "m.json").read_text())
    # architecture mismatch (with a checksum that matches, so only the shapes disagree)
    cfg["architecture"]["hidden"] = 32
    (tmp_path / "bad.json").write_text(json.dumps(cfg))
    shutil.copy(tmp_path / "m.safetensors", tmp_path / "bad.safetensors")
    with pytest.raises(pc.DataError, match=r"bad\.safetensors.*do not match the architecture"):
        load(tmp_path / "bad")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(pc.DataError, match=r"junk\.json.*not valid JSON"):
        load(tmp_path / "junk")
    cfg["architecture"]["kind"] = "os.system"
    (tmp_path / "evil.json").write_text(json.dumps(cfg))
    shutil.copy(tmp_path / "m.safetensors", tmp_path / "evil.safetensors")
    with pytest.raises(pc.DataError, match="unknown network kind 'os.system'"):
        load(tmp_path / "evil")
    with pytest.raises(pc.DataError, match="no checkpoint 'nothing-here'"):
        load("nothing-here")
    (tmp_path / "m.safetensors").unlink()
    with pytest.raises(pc.DataError, match=r"m\.safetensors.*missing"):
        load(tmp_path / "m")


def test_preconditioning_is_exact_for_gaussian_data_at_initialisation():
    """With F = 0 (zero-initialised output) the preconditioned eps is the exact eps of N(0, sd^2)."""
    from probcomp.models import Preconditioned

    sd = 0.4
    s = sched.linear()
    f = NetworkFactor(Preconditioned(_tiny(), s, sd), (2,), s)
    exact = pc.factors.Gaussian([0.0, 0.0], sd)
    y = torch.randn(7, 2)
    for t in (0.01, 0.3, 0.9, 1.0):
        torch.testing.assert_close(f.eps(y, t), exact.eps(y, t).float(), atol=1e-5, rtol=1e-5)


def test_preconditioned_checkpoint_round_trip(tmp_path):
    from probcomp.models import Preconditioned

    s = sched.linear_discrete(100)
    net = _tiny()
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    model = Preconditioned(net, s, 0.7)
    save(tmp_path / "p", model, schedule=s, event_shape=(2,))
    f = load(tmp_path / "p")
    assert f.meta["parameterisation"] == "eps-precond" and f.meta["sigma_data"] == 0.7
    y = torch.randn(3, 2)
    assert torch.equal(f.eps(y, 0.3), NetworkFactor(model, (2,), s).eps(y, 0.3))


def test_unet_shapes_conditioning_and_zero_init():
    from probcomp.models.networks import UNet, build

    torch.manual_seed(0)
    u = UNet(3, 16, 8, (1, 2), attributes={"color": 6}, continuous={"xy": 2})
    y, t = torch.randn(4, 3, 16, 16), torch.rand(4)
    assert torch.equal(u(y, t), torch.zeros_like(y))  # zero-initialised output
    torch.nn.init.normal_(u.out[-1].weight, std=0.1)
    a = u(y, t, {"color": torch.tensor(1), "xy": torch.rand(4, 2)})
    b = u(y, t, {"color": torch.tensor(2), "xy": torch.rand(4, 2)})
    assert a.shape == y.shape and not torch.allclose(a, b)
    clone = build(u.config)
    clone.load_state_dict(u.state_dict())
    assert torch.equal(clone(y, t), u(y, t))
    with pytest.raises(pc.DataError, match="not divisible"):
        UNet(3, 18, 8, (1, 2, 2))


def test_unet_trains_on_blob_images():
    from probcomp.models.networks import UNet

    torch.manual_seed(0)
    u = UNet(3, 16, 8, (1, 2))

    def data(n, g):
        return pc.datasets.blobs(n, g, size=16, num_objects=(1, 1), radius=2.0)[0]

    res = train(u, data, steps=30, batch=16, lr=2e-3, seed=0, log_every=10)
    assert res.losses[-1] < res.losses[0]


def test_spatial_condition_is_drawn_as_a_map_and_round_trips(tmp_path):
    net = UNet(3, 16, 8, (1, 2), continuous={"xy": 2}, coords=True, spatial={"xy": 0.1})
    xy = torch.tensor([[0.25, 0.75], [float("nan"), float("nan")]])
    y = torch.zeros(2, 3, 16, 16)
    hm = net._heatmap(xy, 0.1, y)
    assert hm.shape == (2, 1, 16, 16) and float(hm[1].abs().max()) == 0.0  # absent: no map
    peak = divmod(int(hm[0, 0].argmax()), 16)
    assert peak in {(11, 3), (12, 3), (11, 4), (12, 4)}  # row ~ y * 16, column ~ x * 16
    path = save(tmp_path / "m", net, schedule=pc.schedules.linear(), event_shape=(3, 16, 16))
    f = load(path)
    assert f.net.config["spatial"] == {"xy": 0.1}
    with pytest.raises(pc.DataError, match="spatial"):
        UNet(3, 16, 8, (1, 2), continuous={"v": 3}, spatial={"v": 0.1})


def test_point_set_condition_is_an_order_free_sum_of_bumps(tmp_path):
    torch.manual_seed(0)
    net = UNet(3, 16, 8, (1, 2), coords=True, point_sets={"xys": 0.1})
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    nan = float("nan")
    pts = torch.tensor([[[0.25, 0.75], [0.6, 0.3], [nan, nan]]])
    y, t = torch.randn(1, 3, 16, 16), torch.rand(1)
    one = net._heatmap(pts[0, :1], 0.1, y) + net._heatmap(pts[0, 1:2], 0.1, y)
    assert torch.allclose(net._set_heatmap("xys", pts, 0.1, y), one)  # NaN rows are absent
    out = net(y, t, {"xys": pts})
    assert torch.allclose(net(y, t, {"xys": pts[:, [2, 1, 0]]}), out, atol=1e-6)  # order-free
    assert not torch.allclose(net(y, t, {"xys": pts[:, :1]}), out)
    assert torch.equal(net(y, t), net(y, t, {"xys": pts[:, 2:]}))  # all absent = unconditional
    f = load(save(tmp_path / "gc", net, schedule=pc.schedules.linear(), event_shape=(3, 16, 16)))
    assert f.condition_names == ("xys",)
    assert torch.allclose(
        f.eps_given(y, 0.3, {"xys": pts}),
        f.net(y, f.schedule.model_time(torch.tensor([0.3])).float(), {"xys": pts}),
    )
    with pytest.raises(pc.DataError, match="point set 'xys'"):
        net(y, t, {"xys": torch.rand(1, 3, 3)})
    with pytest.raises(pc.DataError, match="point sets"):
        UNet(3, 16, 8, (1, 2), continuous={"xys": 2}, point_sets={"xys": 0.1})


def test_short_training_warns_when_the_ema_is_mostly_initial_weights():
    def draw(n, g):
        return torch.randn(n, 2, generator=g)

    with pytest.warns(UserWarning, match="still holds 82% of the untrained initial weights"):
        train(ResMLP(2, 8, 1), draw, steps=200, batch=8, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(ResMLP(2, 8, 1), draw, steps=200, batch=8, ema=0.9, progress=False)


class _Zero(torch.nn.Module):
    """Predicts eps = 0 whatever its input, so its loss is the (weighted) mean of eps^2."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, y, t, cond=None):
        return y * 0 + self.w


@pytest.mark.parametrize(
    ("gamma", "floor"), [(None, None), (5.0, None), (0.5, None), (5.0, 1.0), (None, 1.0)]
)
def test_snr_weighting_is_the_clamped_snr_over_snr(gamma, floor):
    """Each sample's eps loss is weighted by clip(SNR_t, floor, gamma) / SNR_t (min-SNR, Hang et al.
    2023; the floor is Salimans & Ho's 2022 truncated SNR)."""
    x = torch.zeros(1, 3)
    schedule = sched.cosine()
    res = train(
        _Zero(), lambda n, g: x.expand(n, -1), schedule=schedule, steps=1, batch=64, ema=0,
        seed=3, t_min=0.02, log_every=1, min_snr=gamma, snr_floor=floor, progress=False,
    )  # fmt: skip
    g = torch.Generator().manual_seed(3)  # the draws train makes: times, then noise
    t = 0.02 + 0.98 * torch.rand(64, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 3, generator=g)
    snr = (schedule.alpha(t) / schedule.sigma(t)).square().float()
    weight = torch.ones(64) if gamma is None and floor is None else snr.clamp(min=floor, max=gamma) / snr
    assert res.losses[0] == pytest.approx(float((eps.square().mean(1) * weight).mean()), rel=1e-5)
    if floor is not None:
        assert float(weight.max()) > 10  # the noisiest levels count more
    if gamma == 0.5:
        assert float(weight.max()) <= 1.0 and float(weight.min()) < 0.5  # the clean levels count less


def test_snr_weights_must_be_positive_and_ordered():
    with pytest.raises(pc.DataError, match="min_snr"):
        train(_Zero(), torch.zeros(8, 3), steps=1, batch=4, min_snr=0.0)
    with pytest.raises(pc.DataError, match="snr_floor=6.0 is above min_snr=5.0"):
        train(_Zero(), torch.zeros(8, 3), steps=1, batch=4, min_snr=5.0, snr_floor=6.0)


def test_linear_condition_is_read_without_fourier_features(tmp_path):
    """A learned latent enters through an MLP of its raw values: no Fourier buffer, and a round trip."""
    net = UNet(3, 8, 8, (1, 2), continuous={"z": 4}, broadcast=("z",), linear=("z",), coords=True)
    assert "cond._B_z" not in net.state_dict()
    y, t, z = torch.randn(2, 3, 8, 8), torch.rand(2) * 1000, torch.randn(2, 4)
    path = tmp_path / "lin"
    save(path, net, schedule=sched.linear(), event_shape=(3, 8, 8))
    again = load(path)
    assert torch.equal(again.net(y, t, {"z": z}), net(y, t, {"z": z}))
    with pytest.raises(pc.DataError, match="linear conditions"):
        UNet(3, 8, 8, (1, 2), continuous={"z": 4}, linear=("w",))

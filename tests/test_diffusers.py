"""The diffusers adapter against diffusers itself: tiny models built from configs, saved to
``tmp_path`` and loaded back through :func:`probcomp.models.from_diffusers` (nothing is
downloaded).  Ground truth is diffusers' own scheduler ``step()`` loop and pipelines with the
same initial and per-step noise, and the U-Net's raw output converted by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import diffusers

import probcomp as pc
from probcomp.errors import DataError, FactorError, ShapeError
from probcomp.inference import AnnealedMCMC, ConceptInversion, PerStepEM, ReverseDiffusion
from probcomp.models.diffusers import from_diffusers, pipeline_grid, tiny

torch.set_num_threads(1)

PTYPES = ["epsilon", "sample", "v_prediction"]
# Batched and separate network calls agree only to rounding, and float32 convolutions round
# differently by batch size and CPU (1e-4 on some CI machines): tests that compare the two run
# the weights in float64, where a wrong grouping still shows as an O(1) difference.
F64 = torch.float64


def model_folder(tmp_path, prediction_type="epsilon", kind="ddpm", num_classes=None, **sched_kw):
    folder = tmp_path / f"unet-{prediction_type}-{kind}-{num_classes}"
    tiny.tiny_unet(num_classes=num_classes).save_pretrained(folder)
    tiny.tiny_scheduler(prediction_type, kind, **sched_kw).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text_pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd-tiny")
    tok = tiny.tiny_tokenizer(folder / "tok-src")
    vae = tiny.tiny_vae()
    tiny.save_pipeline(
        folder,
        tiny.tiny_cond_unet(),
        tiny.tiny_scheduler(),
        text_encoder=tiny.tiny_text_encoder(),
        tokenizer=tok,
        vae=vae,
    )
    return folder


class Counter:
    """Counts forward passes of a module (a hook: the module itself is untouched)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.n = 0
        self.sizes: list[int] = []
        module.register_forward_hook(self)

    def __call__(self, module, args, kwargs_or_out, out=None) -> None:
        self.n += 1
        self.sizes.append(int(args[0].shape[0]) if args else -1)


def hand_eps(out, x, abar, ptype):
    a, s = math.sqrt(abar), math.sqrt(1 - abar)
    return {"epsilon": out, "sample": (x - a * out) / s, "v_prediction": s * x + a * out}[ptype]


def interpolated_abar(alphas_cumprod, tau):
    lo = math.floor(tau)
    lam = [math.log(float(alphas_cumprod[i]) / (1 - float(alphas_cumprod[i]))) for i in (lo, lo + 1)]
    return 1 / (1 + math.exp(-(lam[0] + (tau - lo) * (lam[1] - lam[0]))))


# Loading and the parameterisation --------------------------------------------------------------
@pytest.mark.parametrize("ptype", PTYPES)
def test_eps_is_the_unet_output_converted_by_hand_at_fractional_steps(tmp_path, ptype):
    f = from_diffusers(model_folder(tmp_path, ptype))
    assert (
        f.event_shape == (3, 8, 8)
        and f.prediction == {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}[ptype]
    )
    ac = f.scheduler.alphas_cumprod
    assert torch.equal(f.schedule.alphas_cumprod, ac.double())
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for t in (0.0, 0.3217, 0.75, 1.0):
        tau = t * (len(ac) - 1)
        with torch.no_grad():
            out = f.unet(x, torch.full((4,), tau), return_dict=False)[0]
        abar = float(ac[int(tau)]) if tau == int(tau) else interpolated_abar(ac, tau)
        want = hand_eps(out, x, abar, ptype)
        torch.testing.assert_close(f.eps(x, t), want, rtol=1e-4, atol=1e-4)
    # a fractional step is not the nearest integer step: the U-Net sees the float timestep
    with torch.no_grad():
        at_int = f.unet(x, torch.full((4,), 321.0), return_dict=False)[0]
    assert not torch.allclose(f.eps(x, 0.3217), hand_eps(at_int, x, float(ac[321]), ptype), atol=1e-4)


def _scheduler_loop(unet, scheduler, n, steps, seed, **step_kw):
    """diffusers' own sampling loop; returns every intermediate sample."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 3, 8, 8), generator=g)
    scheduler.set_timesteps(steps)
    xs = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(x, t).sample
            x = scheduler.step(out, t, x, generator=g, **step_kw).prev_sample
            xs.append(x)
    return xs


@pytest.mark.parametrize("ptype", PTYPES)
@pytest.mark.parametrize(("kind", "eta"), [("ddpm", 1.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_reverse_diffusion_reproduces_the_diffusers_scheduler_loop(tmp_path, ptype, kind, eta):
    """Same initial and per-step noise: every step of ReverseDiffusion equals scheduler.step()."""
    folder = model_folder(tmp_path, ptype, kind, clip_sample=False)
    f = from_diffusers(folder)
    steps, n = 10, 4
    step_kw = {"eta": eta} if kind == "ddim" else {}
    want = _scheduler_loop(f.unet, f.scheduler, n, steps, 7, **step_kw)
    got = []
    engine = ReverseDiffusion(
        sampler="ddim" if kind == "ddim" else "ddpm",
        eta=eta if kind == "ddim" else None,
        callback=lambda info: got.append(info["x"]["x"]),
        **pipeline_grid(f, steps),
    )
    sc = pc.Scene()
    sc.observe("img", sc.control("x", (3, 8, 8)), factor=f)
    res = engine.run(sc, n, seed=7)
    assert len(got) == len(want) == steps
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        scale = float(b.abs().max())
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(scale, 1.0), msg=f"step {k}")
    assert res.stats["nfe_total"] == steps


def test_timestep_map_hits_the_schedulers_integer_steps(tmp_path):
    f = from_diffusers(model_folder(tmp_path))
    seen: list[torch.Tensor] = []
    f.unet.register_forward_hook(lambda m, a, o: seen.append(a[1].clone()))
    sc = pc.Scene()
    sc.observe("img", sc.control("x", (3, 8, 8)), factor=f)
    ReverseDiffusion(**pipeline_grid(f, 20)).run(sc, 2, seed=0)
    f.scheduler.set_timesteps(20)
    assert torch.equal(torch.stack([s[0] for s in seen]), f.scheduler.timesteps.float())


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_reverse_diffusion_reproduces_the_diffusers_pipelines(tmp_path, kind):
    """DDPMPipeline / DDIMPipeline (clip_sample on) against ReverseDiffusion with clip_x0=(-1, 1)."""
    f = from_diffusers(model_folder(tmp_path, "epsilon", kind))
    steps, n = 8, 3
    if kind == "ddpm":
        pipe = diffusers.DDPMPipeline(unet=f.unet, scheduler=f.scheduler)
        out = pipe(
            batch_size=n,
            generator=torch.Generator().manual_seed(3),
            num_inference_steps=steps,
            output_type="np",
        )
        engine = ReverseDiffusion(sampler="ddpm", clip_x0=(-1, 1), **pipeline_grid(f, steps))
    else:
        pipe = diffusers.DDIMPipeline(unet=f.unet, scheduler=f.scheduler)
        out = pipe(
            batch_size=n,
            generator=torch.Generator().manual_seed(3),
            num_inference_steps=steps,
            eta=0.5,
            use_clipped_model_output=True,
            output_type="np",
        )
        engine = ReverseDiffusion(sampler="ddim", eta=0.5, clip_x0=(-1, 1), **pipeline_grid(f, steps))
    pipe.set_progress_bar_config(disable=True)
    want = torch.from_numpy(out.images).permute(0, 3, 1, 2) * 2 - 1
    sc = pc.Scene()
    sc.observe("img", sc.control("x", (3, 8, 8)), factor=f)
    got = engine.run(sc, n, seed=3)["x"]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_pickle_only_and_wrong_folders_are_refused_with_the_file_named(tmp_path):
    folder = model_folder(tmp_path)
    net = diffusers.UNet2DModel.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    pk = tmp_path / "pickled"
    net.save_pretrained(pk, safe_serialization=False)
    tiny.tiny_scheduler().save_pretrained(pk)
    with pytest.raises(DataError, match=r"diffusion_pytorch_model\.bin.*pickle.*allow_pickle=True") as e:
        from_diffusers(pk)
    assert "\n" not in str(e.value)
    f = from_diffusers(pk, allow_pickle=True)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(f.eps(x, 0.4), from_diffusers(folder).eps(x, 0.4))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*not a diffusers folder"):
        from_diffusers(tmp_path / "empty")
    with pytest.raises(DataError, match="no folder"):
        from_diffusers(tmp_path / "missing")
    (tmp_path / "pipe" / "unet").mkdir(parents=True)
    with pytest.raises(DataError, match="no scheduler/ subfolder"):
        from_diffusers(tmp_path / "pipe")
    lone = tmp_path / "lone"
    net.save_pretrained(lone)
    with pytest.raises(FactorError, match="'lone'.*no scheduler found"):
        from_diffusers(lone)


def test_bad_schedulers_and_prediction_types_name_the_factor(tmp_path):
    net = tiny.tiny_unet()
    with pytest.raises(FactorError, match="'mine'.*FlowMatchEulerDiscreteScheduler has no alphas_cumprod"):
        from_diffusers(net, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), name="mine")
    with pytest.raises(FactorError, match="'mine'.*unknown prediction_type 'flow'"):
        from_diffusers(net, scheduler=diffusers.DDPMScheduler(prediction_type="flow"), name="mine")
    f = from_diffusers(net, scheduler=diffusers.DDPMScheduler(), name="mine")
    assert f.name == "mine" and f.eps(torch.randn(1, 3, 8, 8), 0.5).shape == (1, 3, 8, 8)


def test_bad_conditions_and_shapes_are_clear_errors_naming_the_factor(tmp_path, text_pipeline):
    f = from_diffusers(model_folder(tmp_path), name="plain")
    with pytest.raises(FactorError, match="'plain' is not text-conditioned"):
        f.condition(prompt="a red cube")
    with pytest.raises(FactorError, match="'plain' is not class-conditional"):
        f.condition(class_labels=1)
    c = from_diffusers(model_folder(tmp_path, num_classes=4), name="cls")
    with pytest.raises(FactorError, match="'cls': class label 4 is out of range; the model has 4 classes"):
        c.condition(class_labels=4)
    with pytest.raises(FactorError, match="'cls' is class-conditional and declares no null class"):
        c.eps(torch.randn(1, 3, 8, 8), 0.5)
    with pytest.raises(FactorError, match="'cls' has no condition"):
        c.condition(colour=1)
    sd = from_diffusers(text_pipeline)
    with pytest.raises(FactorError, match="is not class-conditional"):
        sd.condition(class_labels=0)
    sc = pc.Scene()
    sc.observe("img", sc.control("x", (3, 16, 16)), factor=f)
    with pytest.raises(ShapeError, match=r"factor 'plain' has event shape \(3, 8, 8\)"):
        sc.validate()


# Conditions -----------------------------------------------------------------------------------
def test_class_labels_bind_like_the_zoos_conditions(tmp_path):
    folder = model_folder(tmp_path, num_classes=4)
    (folder / "probcomp.json").write_text(json.dumps({"null_class": 3, "classes": {"red": 0, "blue": 1}}))
    f = from_diffusers(folder)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        raw = {
            k: f.unet(x, torch.full((3,), 499.5), class_labels=torch.full((3,), k)).sample for k in range(4)
        }
    torch.testing.assert_close(f.condition(class_labels="blue").eps(x, 0.5), raw[1])
    torch.testing.assert_close(f.condition(class_labels=2).eps(x, 0.5), raw[2])
    torch.testing.assert_close(f.eps(x, 0.5), raw[3])  # the null class is the unconditional model
    per = f.eps_given(x, 0.5, {"class_labels": torch.tensor([0, 2, 1])})
    torch.testing.assert_close(per, torch.stack([raw[0][0], raw[2][1], raw[1][2]]))
    assert f.condition(class_labels=1).name.endswith("|class=1")


def test_prompts_use_the_pipelines_text_encoder_once_per_prompt(text_pipeline):
    f = from_diffusers(text_pipeline)
    x = torch.randn(2, 4, 8, 8)
    red = f.condition(prompt="a red cube")
    tok = f.core.tokenizer(
        ["a red cube"], padding="max_length", max_length=8, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        h = f.core.text_encoder(tok.input_ids)[0]
        want = f.unet(x, torch.full((2,), 299.7), encoder_hidden_states=h.expand(2, -1, -1)).sample
    enc = Counter(f.core.text_encoder)
    tau = 299.7 / 999
    torch.testing.assert_close(red.eps(x, tau), want, rtol=1e-5, atol=1e-5)
    red.eps(x * 2, tau)
    f.condition(prompt="a red cube").eps(x, 0.2)
    assert enc.n == 1
    f.eps(x, 0.2)  # the empty prompt is the unconditional term
    assert enc.n == 2 and set(f.core._prompts) == {"a red cube", ""}
    assert not torch.allclose(f.eps(x, tau), red.eps(x, tau))


# Composition: one U-Net call per level -------------------------------------------------------
def _and_not(f):
    return pc.compose.weighted(
        [f.condition(prompt="red"), f.condition(prompt="cube"), f.condition(prompt="blue"), f],
        [1.5, 1.5, -1.0, -1.0],
    )


def test_a_prompt_composition_makes_one_unet_call_per_level(text_pipeline):
    """AND / NOT of three prompts and the unconditional term: the compiled scene groups the four
    copies of one U-Net (their ``batch_key``) into one batched call per level, from the first level
    on, and the samples equal four separately loaded models'."""
    steps, n = 6, 3
    f = from_diffusers(text_pipeline, dtype=F64)
    calls = Counter(f.unet)
    sc = pc.Scene()
    sc.observe("latent", sc.control("z", (4, 8, 8)), factor=_and_not(f))
    comp = ReverseDiffusion(steps=steps).compile(sc)
    assert len(comp.terms) == 4 and len(comp.groups) == 1
    res = ReverseDiffusion(steps=steps, sampler="ddim").run(comp, n, seed=1)
    assert calls.n == steps and calls.sizes == [4 * n] * steps
    assert res.stats["nfe_total"] == 4 * steps
    # a second run: again exactly one call per level
    calls.n = 0
    again = ReverseDiffusion(steps=steps, sampler="ddim").run(comp, n, seed=1)
    assert calls.n == steps
    torch.testing.assert_close(again["z"], res["z"])
    # ground truth: four separate models (no shared core) make 4 calls per level, same samples
    copies = [from_diffusers(text_pipeline, dtype=F64) for _ in range(4)]
    sep = pc.compose.weighted(
        [
            copies[0].condition(prompt="red"),
            copies[1].condition(prompt="cube"),
            copies[2].condition(prompt="blue"),
            copies[3],
        ],
        [1.5, 1.5, -1.0, -1.0],
    )
    sc2 = pc.Scene()
    sc2.observe("latent", sc2.control("z", (4, 8, 8)), factor=sep)
    ref = ReverseDiffusion(steps=steps, sampler="ddim").run(sc2, n, seed=1)
    torch.testing.assert_close(res["z"], ref["z"], rtol=1e-5, atol=1e-5)
    assert sum(c.unet_calls for c in copies) == 4 * steps


def test_guidance_and_negation_share_the_unconditional_term(tmp_path):
    folder = model_folder(tmp_path, num_classes=3)
    f = from_diffusers(folder, null_class=2, dtype=F64)
    calls = Counter(f.unet)
    g = pc.compose.guidance(f.condition(class_labels=0), f, scale=3.0)
    neg = pc.compose.negation(g, f.condition(class_labels=1), scale=0.5)
    comp = pc.CompiledScene(_scene(neg))
    assert len(comp.terms) == 3  # the unconditional model appears once with weight -3
    x = {"x": torch.randn(2, 3, 8, 8)}
    for _ in range(2):
        comp.target(x, 0.4)
    x["x"] = x["x"] + 1
    calls.n = 0
    got = comp.target(x, 0.4).grad["x"]
    assert calls.n == 1 and calls.sizes[-1] == 3 * 2
    tf = comp.factor_time(f, 0.4)  # engine time in the model's own schedule
    want = 4.0 * f.condition(class_labels=0).score(x["x"], tf) - 3.0 * f.score(x["x"], tf)
    want = want - 0.5 * f.condition(class_labels=1).score(x["x"], tf)
    torch.testing.assert_close(got, want)


def _scene(factor, shape=(3, 8, 8)):
    sc = pc.Scene()
    sc.observe("y", sc.control("x", shape), factor=factor)
    return sc


# Memory and precision ----------------------------------------------------------------------------
def test_max_batch_changes_nothing_but_the_size_of_the_calls(text_pipeline):
    f = from_diffusers(text_pipeline)
    calls = Counter(f.unet)
    x = torch.randn(5, 4, 8, 8)
    full = f.condition(prompt="red").eps(x, 0.3)
    f.configure(max_batch=2)
    calls.sizes.clear()
    small = f.condition(prompt="red").eps(x, 0.3)
    assert calls.sizes == [2, 2, 1]
    torch.testing.assert_close(small, full, rtol=1e-5, atol=1e-5)  # (float rounding of batched kernels)
    res = {}
    for mb in (None, 3):
        f.configure(max_batch=mb)
        engine = ReverseDiffusion(sampler="ddim", **pipeline_grid(f, 4))
        res[mb] = engine.run(_scene(_and_not(f), (4, 8, 8)), 4, seed=2)["x"]
    scale = float(res[None].abs().max())
    torch.testing.assert_close(res[3], res[None], rtol=1e-4, atol=1e-4 * scale)
    with pytest.raises(FactorError, match="max_batch must be a positive integer"):
        f.configure(max_batch=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_stay_finite_and_close(tmp_path, dtype):
    folder = model_folder(tmp_path)
    ref = from_diffusers(folder)
    low = from_diffusers(folder, autocast=dtype)
    x = torch.randn(4, 3, 8, 8)
    e32, elow = ref.eps(x, 0.5), low.eps(x, 0.5)
    assert elow.dtype == torch.float32 and bool(torch.isfinite(elow).all())
    rel = float((elow - e32).norm() / e32.norm())
    assert rel < (0.05 if dtype == torch.bfloat16 else 0.01), rel
    kw = pipeline_grid(ref, 10)
    a = ReverseDiffusion(sampler="ddim", clip_x0=(-1, 1), **kw).run(_scene(ref), 4, seed=0)["x"]
    b = ReverseDiffusion(sampler="ddim", clip_x0=(-1, 1), **kw).run(_scene(low), 4, seed=0)["x"]
    assert b.dtype == torch.float32 and bool(torch.isfinite(b).all())
    assert float((a - b).abs().mean()) < 0.1
    with pytest.raises(FactorError, match="autocast must be"):
        from_diffusers(folder, autocast=torch.float64)


def test_low_precision_weights_keep_a_float32_state(tmp_path):
    folder = model_folder(tmp_path)
    ref, low = from_diffusers(folder), from_diffusers(folder, dtype=torch.bfloat16)
    assert low.unet.dtype == torch.bfloat16
    x = torch.randn(4, 3, 8, 8)
    e32, elow = ref.eps(x, 0.5), low.eps(x, 0.5)
    assert elow.dtype == torch.float32 and float((elow - e32).norm() / e32.norm()) < 0.05


def test_checkpointing_keeps_gradients_through_the_networks(text_pipeline):
    f = from_diffusers(text_pipeline)
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    (g0,) = torch.autograd.grad(f.decode(z).square().sum(), z)
    e0 = torch.autograd.grad(f.condition(prompt="red").eps(z, 0.5).square().sum(), z)[0]
    f.configure(checkpointing=True)
    (g1,) = torch.autograd.grad(f.decode(z).square().sum(), z)
    e1 = torch.autograd.grad(f.condition(prompt="red").eps(z, 0.5).square().sum(), z)[0]
    torch.testing.assert_close(g1, g0)
    torch.testing.assert_close(e1, e0)
    assert float(g0.abs().sum()) > 0 and float(e0.abs().sum()) > 0


# Latent pipelines and every engine -------------------------------------------------------------
def test_latent_pipeline_decodes_and_observes_pixels(text_pipeline):
    f = from_diffusers(text_pipeline)
    assert f.is_latent and f.event_shape == (4, 8, 8) and f.image_shape == (3, 16, 16)
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        want = f.vae.decode(z / f.vae.config.scaling_factor).sample
    torch.testing.assert_close(f.decode(z), want)
    torch.testing.assert_close(f.decoder(z), want)
    # an explicit pixel likelihood observes the latent control through the decoder
    target = torch.zeros(3, 16, 16)
    like = pc.factors.ExplicitFactor(
        lambda img: -((img - target) ** 2).sum((1, 2, 3)) / (2 * 0.5**2),
        event_shape=(3, 16, 16),
        name="pixels",
    )
    sc = pc.Scene()
    zc = sc.control("z", (4, 8, 8))
    sc.observe("latent", zc, factor=f.condition(prompt="red"))
    sc.observe("image", zc, factor=like, fn=f.decoder)
    res = ReverseDiffusion(steps=3).run(sc, 2, seed=0)
    out = f.decode_result(res, "z")
    assert out["image"].shape == (2, 3, 16, 16) and bool(torch.isfinite(out["image"]).all())
    again = f.decode_result(ReverseDiffusion(steps=3).run(sc, 2, seed=0), "z")
    assert torch.equal(out["image"], again["image"])
    plain = from_diffusers(text_pipeline, subfolder="unet")  # the scheduler from ../scheduler
    assert torch.equal(plain.schedule.alphas_cumprod, f.schedule.alphas_cumprod) and not plain.is_latent
    with pytest.raises(FactorError, match="has no VAE"):
        plain.decode(z)
    # an image-space score factor (a pixel U-Net) observes the latent through the decoder
    pixel = from_diffusers(
        tiny.tiny_unet(sample_size=16, seed=3), scheduler=tiny.tiny_scheduler(), name="pixel"
    )
    sc = pc.Scene()
    zc = sc.control("z", (4, 8, 8))
    sc.observe("latent", zc, factor=f)
    sc.observe("image", zc, factor=pixel, fn=f.decoder, weight=0.5)
    comp = pc.CompiledScene(sc)
    zs = {"z": torch.randn(2, 4, 8, 8)}
    got = comp.target(zs, 0.5).grad["z"]
    zg = zs["z"].clone().requires_grad_(True)
    img = f.decode(zg)
    (pull,) = torch.autograd.grad(
        img, zg, grad_outputs=pixel.score(img.detach(), comp.factor_time(pixel, 0.5))
    )
    want = f.score(zs["z"], comp.factor_time(f, 0.5)) + 0.5 * pull
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_corrupt_weights_are_a_data_error_naming_the_folder(tmp_path):
    folder = model_folder(tmp_path)
    w = folder / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(DataError, match=f"cannot load the model in '{folder}'"):
        from_diffusers(folder)


def test_every_engine_runs_on_a_diffusers_factor(tmp_path):
    folder = model_folder(tmp_path, num_classes=3)
    f = from_diffusers(folder, null_class=2)
    sc = _scene(pc.compose.guidance(f.condition(class_labels=0), f, scale=1.0))
    r1 = AnnealedMCMC(kernel="ula", levels=3, steps_per_level=2).run(sc, 2, seed=0)
    r2 = AnnealedMCMC(kernel="mala", levels=3, steps_per_level=2).run(sc, 2, seed=0)
    r3 = PerStepEM(steps=3, inner_steps=2).run(sc, 2, seed=0)
    for r in (r1, r2, r3):
        assert r["x"].shape == (2, 3, 8, 8) and bool(torch.isfinite(r["x"]).all())
    # concept inversion: which class label explains an image (enumeration over the labels)
    x0 = torch.zeros(3, 8, 8)
    s = pc.Scene()
    c = s.control("c", (), prior=torch.distributions.Categorical(logits=torch.zeros(2)))
    s.observe("img", value=x0, factor=f, condition=c)
    inv = ConceptInversion(draws=4).run(s, seed=0)
    assert int(inv["c"]) in (0, 1) and inv.stats["nfe"] == {"img": 4 * 2}


def test_same_seed_same_samples_and_no_import_of_diffusers_by_probcomp(tmp_path):
    import subprocess
    import sys

    code = "import sys, probcomp, probcomp.models as m; assert 'diffusers' not in sys.modules; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"
    f = from_diffusers(model_folder(tmp_path))
    a = ReverseDiffusion(steps=3).run(_scene(f), 2, seed=5)["x"]
    b = ReverseDiffusion(steps=3).run(_scene(f), 2, seed=5)["x"]
    assert torch.equal(a, b)


def test_score_many_joins_copies_at_different_inputs_in_one_call(text_pipeline):
    f = from_diffusers(text_pipeline)
    parts = [f.condition(prompt="red"), f.condition(prompt="blue"), f]
    ys = [torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    calls = Counter(f.unet)
    got = type(f).score_many(parts, ys, 0.3)
    assert calls.n == 1 and calls.sizes == [6]
    for p, y, s in zip(parts, ys, got, strict=True):
        torch.testing.assert_close(s, p.score(y, 0.3), rtol=1e-5, atol=1e-5)
    other = from_diffusers(text_pipeline)
    with pytest.raises(FactorError, match="copies of one model"):
        type(f).score_many([f, other], ys[:2], 0.3)


def test_score_many_takes_inputs_of_different_sizes(text_pipeline):
    f = from_diffusers(text_pipeline)
    parts = [f.condition(prompt="red"), f]
    ys = [torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(n)) for n in (2, 3)]
    calls = Counter(f.unet)
    got = type(f).score_many(parts, ys, 0.3)
    assert calls.n == 1 and calls.sizes == [5]
    for p, y, s in zip(parts, ys, got, strict=True):
        assert s.shape == y.shape
        torch.testing.assert_close(s, p.score(y, 0.3), rtol=1e-5, atol=1e-5)
    # per-particle times: one per row of every input (equal sizes), else a clear error
    t = torch.tensor([0.2, 0.7])
    same = type(f).score_many(parts, [ys[0], ys[0] + 1], t)
    torch.testing.assert_close(same[1], f.score(ys[0] + 1, t), rtol=1e-5, atol=1e-5)
    with pytest.raises(FactorError, match="one value per row of every input"):
        type(f).score_many(parts, ys, t)


def test_the_vae_runs_in_its_own_dtype(text_pipeline):
    f32 = from_diffusers(text_pipeline)
    low = from_diffusers(
        f32.unet.to(torch.bfloat16),
        scheduler=f32.scheduler,
        text_encoder=f32.core.text_encoder,
        tokenizer=f32.core.tokenizer,
        vae=tiny.tiny_vae(),
        name="bf16-unet",
    )
    assert low.unet.dtype == torch.bfloat16 and next(low.vae.parameters()).dtype == torch.float32
    z = torch.randn(2, 4, 8, 8)
    img = low.decode(z)
    assert img.dtype == torch.float32 and img.shape == (2, 3, 16, 16)
    torch.testing.assert_close(img, f32.decode(z))  # the same fp32 VAE
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    lat = low.encode(x)
    assert lat.dtype == torch.float32
    torch.testing.assert_close(lat, f32.encode(x))


def _prompt_and_class_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    net = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
        num_class_embeds=3,
    )
    return tiny.randomise(net, 0)


def test_a_unet_with_a_prompt_and_a_class_label_gets_both(text_pipeline):
    src = from_diffusers(text_pipeline)
    f = from_diffusers(
        _prompt_and_class_unet(),
        scheduler=src.scheduler,
        text_encoder=src.core.text_encoder,
        tokenizer=src.core.tokenizer,
        null_class=2,
        name="both",
    )
    x = torch.randn(3, 4, 8, 8)
    tau = 0.5 * 999
    h = {p: f.core.embed(p).expand(3, -1, -1) for p in ("", "red")}

    def raw(prompt, labels):
        with torch.no_grad():
            return f.unet(
                x, torch.full((3,), tau), encoder_hidden_states=h[prompt], class_labels=labels
            ).sample

    # the unconditional model is the empty prompt with the null class
    torch.testing.assert_close(f.eps(x, 0.5), raw("", torch.full((3,), 2)), rtol=1e-5, atol=1e-5)
    red = f.condition(prompt="red")
    labels = torch.tensor([0, 1, 2])
    per = red.eps_given(x, 0.5, {"class_labels": labels})
    torch.testing.assert_close(per, raw("red", labels), rtol=1e-5, atol=1e-5)
    per_u = f.eps_given(x, 0.5, {"class_labels": labels})
    torch.testing.assert_close(per_u, raw("", labels), rtol=1e-5, atol=1e-5)


def test_a_refused_configure_leaves_the_factor_as_it_was(text_pipeline):
    f = from_diffusers(text_pipeline)
    calls = Counter(f.unet)
    x = torch.randn(5, 4, 8, 8)
    f.configure(max_batch=2)
    before = f.eps(x, 0.3)
    for k, bad in enumerate(({"max_batch": 0}, {"max_batch": True}, {"autocast": torch.float64})):
        with pytest.raises(FactorError, match="must be"):
            f.configure(**bad)
        assert f.core.max_batch == 2 and f.core.autocast is None
        calls.sizes.clear()
        assert bool(torch.isfinite(f.eps(x + k + 1, 0.3)).all())  # a new input: a fresh call
        assert calls.sizes == [2, 2, 1]
    torch.testing.assert_close(f.eps(x, 0.3), before)
    with pytest.raises(FactorError, match="autocast must be"):
        f.configure(max_batch=3, autocast=torch.float64)  # nothing of a refused call is applied
    assert f.core.max_batch == 2


# The latent tasks of diffusion-based compositional optimisation (per-step optimisation) ---------
@pytest.mark.parametrize("task", ["panorama", "background_object", "whole_part"])
def test_latent_prompt_scenes_run_on_every_engine(text_pipeline, task):
    from probcomp.models.diffusers import scenes

    f = from_diffusers(text_pipeline, dtype=F64)
    build = {
        "panorama": lambda: scenes.panorama(f, ["a red sky", "a blue sea", "green hills"], stride=4),
        "background_object": lambda: scenes.background_object(f, "grass", "a cube", "a cube on grass"),
        "whole_part": lambda: scenes.whole_part(f, "a person", "a face"),
    }[task]
    shapes = {
        "panorama": {"x": (4, 8, 16)},
        "background_object": {"background": (4, 8, 8), "object": (4, 8, 8)},
        "whole_part": {"x": (4, 8, 8)},
    }[task]
    terms = {"panorama": 3, "background_object": 3, "whole_part": 2}[task]
    for engine, nfe in (
        (PerStepEM(steps=3, inner_steps=2), 3),
        (ReverseDiffusion(steps=3), 3),
        (AnnealedMCMC(kernel="ula", levels=2, steps_per_level=1), 4),
    ):
        a = engine.run(build(), 2, seed=4)
        b = engine.run(build(), 2, seed=4)
        assert {k: tuple(a[k].shape[1:]) for k in a.samples} == shapes
        assert a.stats["nfe_total"] == terms * nfe
        for k in a.samples:
            assert torch.equal(a[k], b[k]) and bool(torch.isfinite(a[k]).all())
    images = f.decode(a[next(iter(shapes))][:, :, :, :8])
    if task == "panorama":  # windows at different inputs, one prompt each: one call per level
        calls = Counter(f.unet)
        joined = ReverseDiffusion(steps=3).run(build(), 2, seed=4)
        assert calls.n == 3 and set(calls.sizes) == {3 * 2}
        calls.n = 0  # ground truth: every window in a call of its own, with its own prompt
        alone = ReverseDiffusion(steps=3, group=False).run(build(), 2, seed=4)
        assert calls.n == 3 * 3
        torch.testing.assert_close(joined["x"], alone["x"], rtol=1e-5, atol=1e-5)
        em = PerStepEM(steps=3, inner_steps=2).run(build(), 2, seed=4)["x"]  # per-observable scores
        em_alone = PerStepEM(steps=3, inner_steps=2, group=False).run(build(), 2, seed=4)["x"]
        torch.testing.assert_close(em, em_alone, rtol=1e-5, atol=1e-5)
    assert images.shape == (2, 3, 16, 16) and bool(torch.isfinite(images).all())


# The shipped diffusers-format model ---------------------------------------------------------------
ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo" / "shapes-unet"


def _red_share(x: torch.Tensor) -> float:
    x = x.clamp(-1, 1)
    fg = (x.max(1, keepdim=True).values > 0).float()
    mean = (x * fg).sum((2, 3)) / fg.sum((2, 3)).clamp(min=1)
    return float((mean.argmax(1) == 0).double().mean())


@pytest.mark.skipif(not ZOO.exists(), reason="the shipped shapes-unet folder is missing")
def test_the_shipped_model_composes_attributes_it_never_saw_together():
    """shapes-unet saw one attribute label per image; AND adds the colour, NOT removes it."""
    f = pc.models.from_diffusers("shapes-unet")
    assert f.event_shape == (3, 16, 16) and f.prediction == "eps" and f.core.null_class == 6
    assert f.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    sq, red = f.condition(class_labels="square"), f.condition(class_labels="red")
    share = {}
    for name, factor in {
        "square": pc.compose.weighted([sq, f], [3.0, -2.0]),
        "and": pc.compose.weighted([sq, red, f], [3.0, 3.0, -5.0]),
        "not": pc.compose.weighted([sq, red, f], [3.0, -3.0, 1.0]),
    }.items():
        share[name] = _red_share(
            ReverseDiffusion(steps=20, clip_x0=(-1, 1)).run(_scene(factor, (3, 16, 16)), 8)["x"]
        )
    assert share["and"] >= 0.75 and share["and"] > share["square"] and share["not"] <= 0.25, share


@pytest.mark.skipif(not ZOO.exists(), reason="the shipped shapes-unet folder is missing")
def test_concept_inversion_reads_the_attributes_of_an_image_through_the_shipped_model():
    """Enumerating class labels (eps_given with one label per draw) recovers shape and colour."""
    from probcomp import datasets

    f = pc.models.from_diffusers("shapes-unet")
    x, lab = datasets.shapes(6, torch.Generator().manual_seed(5), size=16, held_out=())
    for i in range(6):
        s = pc.Scene()
        c = s.control("c", (), prior=torch.distributions.Categorical(logits=torch.zeros(7)))
        s.observe("img", value=x[i], factor=f, condition=c)
        colour = ConceptInversion(draws=16).run(s, seed=0, candidates={"c": torch.tensor([3, 4, 5])})
        shape = ConceptInversion(draws=16).run(s, seed=0, candidates={"c": torch.tensor([0, 1, 2])})
        assert (int(shape["c"]), int(colour["c"]) - 3) == (int(lab["shape"][i]), int(lab["color"][i]))

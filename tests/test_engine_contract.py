"""The engine contract: user kernels run inside AnnealedMCMC, new engines plug into the CLI, one
module object per engine class, and the SMC layer against exact answers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import probcomp as pc
from probcomp.cli import main
from probcomp.factors import Gaussian
from probcomp.inference import AnnealedMCMC, DiffusionEngine, ReverseDiffusion, register, smc
from probcomp.inference.kernels import EnergyTest, Kernel, metropolis_select

ROOT = Path(__file__).resolve().parents[1]


class RandomWalkMetropolis(Kernel):
    """Random-walk Metropolis with an energy test: the user kernel of the docs, in 15 lines."""

    name = "rwm"
    target_accept = 0.3

    def __init__(self) -> None:
        super().__init__(metropolis=EnergyTest())

    def step(self, state, target, t, step_size, generator):
        z = torch.randn(state.x.shape, generator=generator, dtype=state.x.dtype)
        x1 = state.x + math.sqrt(2 * step_size) * z
        grad, log_p = target(x1, t)
        proposal = state.moved(x1, grad, log_p)
        log_a = self.metropolis.log_ratio(target, t, state, proposal)
        return metropolis_select(log_a, state, proposal, generator)


def _scene(factor):
    s = pc.Scene()
    s.observe("y", s.control("x", (2,)), factor=factor)
    return s


def test_a_user_kernel_samples_an_exact_gaussian_with_adaptation_and_stats():
    """The noised target of N(m, C) at the last level is N(a m, a^2 C + s^2 I): a user's random-walk
    kernel, adapted toward its own target acceptance, must reach those moments."""
    mean, cov = torch.tensor([1.0, -0.5]), torch.tensor([[0.5, 0.3], [0.3, 0.4]])
    f = Gaussian(mean, cov)
    eng = AnnealedMCMC(
        RandomWalkMetropolis(), 60, 4, t_max=0.05, t_min=0.01, reverse_step=False, resample=None
    )
    seen = []
    eng.callback = lambda info: seen.append(info["x"]["x"].clone())
    res = eng.run(_scene(f), 4000, seed=0)
    t = float(eng.ts[-2])
    a2, s2 = float(f.schedule.abar(t)), 1 - float(f.schedule.abar(t))
    x = seen[-1].double()
    torch.testing.assert_close(x.mean(0), math.sqrt(a2) * mean.double(), atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), a2 * cov.double() + s2 * torch.eye(2), atol=0.05, rtol=0)
    assert res.stats["kernel"] == "rwm" and res.stats["metropolis"] == "energy"
    assert abs(res.stats["accept_mean"] - 0.3) < 0.08  # adapted toward the kernel's own target
    assert res.stats["nfe_total"] == 60 * 4 + 4  # per particle: one score per step, one per level
    assert res.engine == "annealed-mcmc/rwm"


def test_a_user_kernel_is_refused_on_scenes_it_cannot_run():
    ring = pc.models.load("ring8")  # score only
    with pytest.raises(pc.FactorError, match="ring8"):
        AnnealedMCMC(RandomWalkMetropolis(), 1, 2).run(_scene(ring), 4)
    with pytest.raises(pc.ScheduleError, match="its own test"):
        AnnealedMCMC(RandomWalkMetropolis(), metropolis="energy")


class ShrinkToMean(DiffusionEngine):
    """A toy engine: DDIM with a score-scaled step (a subclass, a registry entry, nothing else)."""

    name = "toy-shrink"
    label = "ShrinkToMean"

    def run(self, scene, num_samples=1000, *, seed=0, num_chains=1):
        compiled = self.prepare(scene, num_samples)
        compiled.reset_counters()
        gen, seed = self.generator(seed)
        x = compiled.noise(num_samples, gen, dtype=self.dtype, device=self.device)
        start = time.perf_counter()
        with torch.no_grad():
            for lv in self.levels("toy"):
                g = compiled.target(x, lv.t).grad
                step = lv.reverse_step(0.0)
                x = {k: step(v, g[k], gen) for k, v in x.items()}
                self.notify(lv.i, lv.t, x)
        stats = self.base_stats(compiled, time.perf_counter() - start, seed)
        return pc.Result(x, stats, num_chains=num_chains, engine=self.name)


def test_a_new_engine_is_a_subclass_and_a_registry_entry_and_runs_from_the_cli(tmp_path, capsys):
    register("toy-shrink", lambda steps, steps_per_level, progress: ShrinkToMean(steps), "a toy")
    assert "toy-shrink" in pc.inference.engine_names()
    f = tmp_path / "scene.py"
    f.write_text(
        "import torch, probcomp as pc\n"
        "scene = pc.Scene()\n"
        "f = pc.factors.Gaussian(torch.tensor([2.0, -1.0]), 0.1)\n"
        "scene.observe('y', scene.control('x', (2,)), factor=f)\n"
    )
    assert main(["run", str(f), "--engine", "toy-shrink", "--samples", "64", "--steps", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["engine"] == "toy-shrink" and out["nfe_total"] == 20
    # deterministic DDIM on a narrow Gaussian: every particle lands near its mean
    assert max(abs(m - v) for m, v in zip(out["controls"]["x"]["mean"], [2.0, -1.0], strict=True)) < 0.05
    ddim = ReverseDiffusion(20, "ddim").run(pc.query.load_scene(f), 64, seed=0)["x"]
    toy = ShrinkToMean(20).run(pc.query.load_scene(f), 64, seed=0)["x"]
    assert torch.equal(ddim, toy)  # the same DDIM step through the shared contract


def test_every_engine_calls_back_with_one_level_info_record():
    seen = {}
    for eng in (ReverseDiffusion(3), AnnealedMCMC("mala", 1, 3), pc.inference.PerStepEM(3, 1)):
        eng.callback = lambda info, eng=eng: seen.setdefault(eng.name, []).append(info)
        eng.run(_scene(Gaussian(torch.zeros(2), 1.0)), 8, seed=0)
    for name, infos in seen.items():
        assert [i.i for i in infos] == [0, 1, 2], name
        assert all(isinstance(i, pc.inference.LevelInfo) and i.engine == name for i in infos)
        assert infos[0]["x"]["x"].shape == (8, 2)
    assert "x0_hat" in seen["reverse-diffusion"][0].values and "step_size" in seen["annealed-mcmc"][0].values


@pytest.mark.parametrize("seed", [1.5, "3", True, -1, 2**70])
def test_seeds_are_integers_in_range(seed):
    with pytest.raises(pc.SceneError, match="seed"):
        ReverseDiffusion(2).run(_scene(Gaussian(torch.zeros(2), 1.0)), 4, seed=seed)


def test_seed_none_draws_fresh_entropy_and_records_it():
    sc = _scene(Gaussian(torch.zeros(2), 1.0))
    a = ReverseDiffusion(2).run(sc, 4, seed=None)
    b = ReverseDiffusion(2).run(sc, 4, seed=a.stats["seed"])
    assert torch.equal(a["x"], b["x"])


@pytest.mark.parametrize("package", ["inference", "models"])
def test_the_top_level_folders_are_not_separate_packages(package):
    """From the checkout root, ``import inference`` would give a second module object of every
    engine class; it is refused, naming the import to use."""
    out = subprocess.run(
        [sys.executable, "-c", f"import {package}"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1 and f"import probcomp.{package}" in out.stderr


def test_resamplers_follow_the_weights():
    """Each resampler's ancestor counts are unbiased for N w_i (exact expectation over many draws),
    systematic within one of it every time."""
    w = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    log_w = w.log().repeat_interleave(25)  # 100 particles, four weight classes
    n = log_w.shape[0]
    expected = (w / 25 * n).repeat_interleave(25) / w.sum()  # N w_i per particle
    gen = torch.Generator().manual_seed(0)
    for name, fn in smc.RESAMPLERS.items():
        counts = torch.stack([torch.bincount(fn(log_w, gen), minlength=n).double() for _ in range(2000)])
        class_mean = counts.mean(0).reshape(4, 25).sum(1)
        torch.testing.assert_close(class_mean, expected.reshape(4, 25).sum(1), atol=0.5, rtol=0, msg=name)
        if name == "systematic":  # every particle's count is floor or ceil of N w_i
            assert float((counts - expected).abs().max()) < 1.0 + 1e-9, name
    assert smc.ess(torch.zeros(10)) == pytest.approx(10.0)
    assert smc.ess(torch.tensor([0.0, -math.inf, -math.inf])) == pytest.approx(1.0)
    with pytest.raises(pc.ScheduleError, match="resampling"):
        smc.resample(log_w, gen, "residual-ish")


def test_systematic_resampling_with_given_uniforms_is_reproducible_across_processes():
    """The uniforms can be drawn once and shared: the same (log-weights, u) give the same ancestors."""
    log_w = torch.randn(50, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    u = torch.tensor(0.37, dtype=torch.float64)
    a, b = smc.systematic(log_w, u=u), smc.systematic(log_w.clone(), u=u.clone())
    assert torch.equal(a, b)
    cdf = torch.cumsum(torch.softmax(log_w, 0), 0)
    points = (0.37 + torch.arange(50, dtype=torch.float64)) / 50
    assert all(cdf[i] >= p and (i == 0 or cdf[i - 1] < p) for i, p in zip(a.tolist(), points, strict=True))


def test_kernel_log_ratio_of_a_ddpm_step_is_the_gaussian_density_ratio():
    from probcomp.inference.steps import ReverseStep

    step = ReverseStep(0.8, 0.6, 0.9, math.sqrt(1 - 0.81), 1.0)
    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    x1 = step(x, g, gen)
    c, r = step.noise, (0.8 / 0.9) ** 2
    fwd = torch.distributions.Normal(step.mean(x, g), c).log_prob(x1).sum(1)
    bwd = torch.distributions.Normal(math.sqrt(r) * x1, math.sqrt(1 - r)).log_prob(x).sum(1)
    torch.testing.assert_close(smc.kernel_log_ratio(step, x, x1, g), (bwd - fwd).double(), atol=1e-4, rtol=0)


def test_import_probcomp_needs_none_of_the_optional_extras():
    """diffusers, transformers, ray and sphinx are extras: the core import must not load them."""
    code = (
        "import sys, probcomp, probcomp.inference, probcomp.models\n"
        "print(sorted(m for m in ('diffusers', 'transformers', 'ray', 'sphinx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr

"""Every engine's output on two fixed scenes, pinned bit for bit.

The pins in ``tests/data/engine_pins.safetensors`` were recorded before the engines were
rebuilt on one contract (the engine base, kernel objects, the SMC layer and the evaluation
interface of the compiled scene); the refactor must not change a single bit of any sample,
weight or counter.  Regenerate only for an intended change of numerics, with

    python tests/test_engine_pins.py --write
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pyro.distributions as dist
import pytest
import torch
from safetensors.torch import load_file, save_file

import probcomp as pc
from probcomp import ops, targets
from probcomp.factors import ConditionalGaussian, Gaussian, GaussianMixture
from probcomp.inference import AnnealedMCMC, ConceptInversion, PerStepEM, ReverseDiffusion

PINS = Path(__file__).parent / "data" / "engine_pins.safetensors"


class _ScoreOnly(pc.factors.ScoreFactor):
    """An analytic factor with its energy hidden."""

    def __init__(self, inner):
        super().__init__(inner.event_shape, inner.schedule, f"{inner.name}-score-only")
        self.inner = inner

    def score(self, y, t):
        return self.inner.score(y, t)


def ring_bar(score_only: bool = False) -> pc.Scene:
    """Scene A: the analytic 2-D ring x bar product, identity observations."""
    ring, bar, _ = targets.analytic_ring_bar()
    if score_only:
        ring, bar = _ScoreOnly(ring), _ScoreOnly(bar)
    s = pc.Scene()
    x = s.control("x", (2,))
    s.observe("ring", x, factor=ring)
    s.observe("bar", x, factor=bar)
    return s


def windows() -> pc.Scene:
    """Scene B: a 6-element signal seen through two overlapping windows and a linear map,
    one shared factor for both windows (one batched call), a prior and an explicit factor."""
    s = pc.Scene()
    x = s.control("x", (6,), prior=dist.Normal(torch.zeros(6), 2.0).to_event(1))
    z = s.control("z", (2,))
    win = GaussianMixture(
        torch.tensor([[0.5, -0.5, 0.0, 0.3], [-0.4, 0.2, 0.6, 0.0]]), torch.tensor([0.3, 0.4])
    )
    s.observe("left", x, fn=ops.window(0, 4), factor=win, psi=0.05)
    s.observe("right", x, fn=ops.window(2, 4), factor=win, psi=0.05)
    a = torch.tensor([[1.0, 0.0, 0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0, -0.5]])
    s.observe("proj", x, fn=ops.linear(a), factor=Gaussian(torch.tensor([0.2, -0.1]), 0.5), psi=0.05)
    s.observe("zobs", z, factor=Gaussian(torch.zeros(2), 0.7), weight=0.5)
    diff = ops.as_op(lambda x, z: x[:, :2] - z)
    s.observe(
        "zx", x, z, fn=diff, factor=pc.factors.ExplicitFactor(dist.Laplace(0.0, 0.5).expand([2]).to_event(1))
    )
    return s


def inversion_scene() -> pc.Scene:
    """Scene C: one continuous and one discrete concept over a conditional Gaussian."""
    x = torch.tensor([0.7, -1.2, 0.3])
    s = pc.Scene()
    s.observe("x", value=x, factor=ConditionalGaussian((3,), std=0.1), condition=s.control("c", (3,)))
    return s


def discrete_scene() -> pc.Scene:
    x = torch.tensor([0.9, -1.1])
    s = pc.Scene()
    shift = lambda c: c.reshape(-1, 1).float() * torch.tensor([1.0, -1.0]) - 2.0  # noqa: E731
    f = ConditionalGaussian((2,), std=0.2, mean_fn=shift)
    for j in range(2):
        c = s.control(f"c{j}", (), prior=dist.Categorical(logits=torch.zeros(5)))
        s.observe(f"obs{j}", value=x, factor=f, condition=c, weight=0.5)
    return s


def _sampler_cases():
    rd = {
        "ddpm": lambda: ReverseDiffusion(40),
        "ddim": lambda: ReverseDiffusion(40, "ddim", eta=0.5),
        "ddpm-tweedie": lambda: ReverseDiffusion(40, t_min=0.3, last_step="tweedie"),
        "ddpm-clip": lambda: ReverseDiffusion(40, clip_x0=(-1.0, 1.0)),
    }
    # the settings that were AnnealedMCMC's defaults when the pins were recorded
    old = dict(leapfrog_steps=3, resample=None, reverse_step=True, spacing="uniform", t_max=1.0, t_min=1e-3)

    def amc(kernel, k, levels, **kw):
        return lambda: AnnealedMCMC(kernel, k, levels, **{**old, **kw})

    mc = {
        "ula": amc("ula", 2, 20),
        "mala-score": amc("mala", 2, 20, metropolis="score"),
        "mala-energy": amc("mala", 2, 20),
        "uhmc": amc("uhmc", 2, 20),
        "hmc-energy-smc": amc("hmc", 2, 20, resample="ess"),
        "hmc-always-noreverse": amc("hmc", 2, 20, resample="always", reverse_step=False),
        "hmc-stepfn": amc("hmc", 2, 20, step_size=lambda t: 0.01, damping=1.0),
    }
    em = {
        "em-gn": lambda: PerStepEM(20, 3),
        "em-gn-lambdas": lambda: PerStepEM(20, 3, lambdas=True, eta=0.5),
        "em-adam": lambda: PerStepEM(20, 3, optimizer="adam", tol=1e-4),
    }
    for scene_name, scene in (("ringbar", ring_bar), ("windows", windows)):
        for name, make in {**rd, **mc}.items():
            if scene_name == "windows" and name == "ddpm-tweedie":
                continue
            yield f"{scene_name}/{name}", make, scene
        for name, make in em.items():
            if scene_name == "windows":
                yield f"{scene_name}/{name}", make, scene
    yield (
        "ringbar-score/hmc-smc",
        lambda: AnnealedMCMC(
            "hmc",
            2,
            20,
            leapfrog_steps=3,
            resample="ess",
            reverse_step=True,
            spacing="uniform",
            t_max=1.0,
            t_min=0.0,
        ),
        (lambda: ring_bar(True)),
    )
    yield "ringbar/em-gn", lambda: PerStepEM(20, 3), ring_bar


def _record() -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, make, scene in _sampler_cases():
        res = make().run(scene(), 64, seed=7)
        for k, v in res.samples.items():
            out[f"{key}/sample/{k}"] = v.contiguous()
        for k, v in res.particle_stats.items():
            out[f"{key}/particle/{k}"] = v.contiguous()
        out[f"{key}/nfe_total"] = torch.tensor(res.stats["nfe_total"])
        out[f"{key}/calls"] = torch.tensor(res.stats["calls"])
        for k in ("accept", "step_size", "ess", "resampled", "objective_after"):
            if k in res.stats:
                out[f"{key}/stats/{k}"] = torch.as_tensor(res.stats[k]).contiguous()
    inv = ConceptInversion(steps=60, restarts=4, lr=0.05, prune_every=20).run(inversion_scene(), seed=1)
    out["inversion/continuous/c"] = inv["c"].contiguous()
    out["inversion/continuous/traces"] = inv.traces.contiguous()
    out["inversion/continuous/loss"] = torch.tensor(inv.loss, dtype=torch.float64)
    inv = ConceptInversion(draws=16).run(discrete_scene(), seed=2)
    for k in ("c0", "c1"):
        out[f"inversion/discrete/{k}"] = torch.as_tensor(inv[k]).contiguous()
    out["inversion/discrete/losses"] = torch.as_tensor(inv.stats["losses"]).contiguous()
    return out


#: the engines' floating point made independent of the CPU: ATen's portable kernels instead of
#: the AVX2 / AVX-512 ones the machine would pick (they round transcendental functions and
#: reductions differently in the last bit), MKL's conditional-numerical-reproducibility mode,
#: and one thread
PORTABLE = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1"}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal, with NaN (a pruned restart's trace) equal to NaN."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    return torch.equal(a, b)


def _record_portably(path: Path) -> None:
    """Record the pins into ``path`` in a fresh interpreter with :data:`PORTABLE` set."""
    env = {**os.environ, **PORTABLE}
    subprocess.run([sys.executable, __file__, "--record", str(path)], check=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    path = tmp_path_factory.mktemp("pins") / "recorded.safetensors"
    _record_portably(path)
    return load_file(path)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_engine_reproduces_its_pinned_output_bit_for_bit(recorded):
    pins = load_file(PINS)
    assert set(recorded) == set(pins), sorted(set(recorded) ^ set(pins))
    changed = [k for k in pins if not _same(recorded[k], pins[k])]
    assert not changed, changed


if __name__ == "__main__":
    if sys.argv[1:2] == ["--record"] and len(sys.argv) == 3:
        torch.set_num_threads(1)
        warnings.simplefilter("ignore")
        save_file(_record(), sys.argv[2])
    elif sys.argv[1:] == ["--write"]:
        PINS.parent.mkdir(exist_ok=True)
        _record_portably(PINS)
        print(f"wrote {PINS}")
    else:
        raise SystemExit("usage: python tests/test_engine_pins.py --write")

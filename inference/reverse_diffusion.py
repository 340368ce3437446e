r"""Reverse diffusion (DDPM ancestral / DDIM) on the composed score of a scene.

The baseline of composable diffusion (Liu et al. 2022): the control variables
are treated as a diffusing variable whose score at engine time ``t`` is the
scene's composed gradient ``g = sum_i w_i J_i^T s_i(f_i(X), t)``
(:meth:`probcomp.compiled.CompiledScene.target`), and each step from ``t`` to
``s < t`` is the DDIM step of :class:`~probcomp.inference.steps.ReverseStep`.

The noisy levels run from ``t_max`` to ``t_min`` (default ``1e-3``) and the last step
goes to 0, returning the denoised estimate ``x0_hat``.  For a product of factors this samples
the product of the *noised* factors at every level, which is not the noised
product: the bias that annealed MCMC corrects (notes seed; Du et al. 2023).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from probcomp import schedules as sched
from probcomp.compiled import CompiledScene
from probcomp.errors import ScheduleError
from probcomp.results import Result
from probcomp.scene import Scene

from .steps import ReverseStep, check_clip, prepare

__all__ = ["ReverseDiffusion"]


class ReverseDiffusion:
    """DDPM / DDIM sampler over the control variables of a scene.

    Args:
        steps: number of reverse steps (= score evaluations per factor term).
        sampler: ``"ddpm"`` (ancestral, ``eta = 1``) or ``"ddim"`` (``eta`` below).
        eta: DDIM stochasticity in [0, 1]; 0 is the deterministic DDIM ODE step.
        schedule: the engine's noise schedule (factors are matched to it by log-SNR).
        t_max, t_min: the noisy levels are uniform from ``t_max`` to ``t_min``, then a last
            step to 0 (:func:`probcomp.schedules.time_grid`; ``t_min = 0``: uniform to 0).
        clip_x0: ``(lo, hi)``, the range of the data: each step's denoised estimate is clamped
            to it and the step's eps recomputed from it (:class:`~probcomp.inference.steps.ReverseStep`);
            for image models that predict plain eps (every control lies in that range).
        group: evaluate observables that share a factor in one batched call.
        dtype, device: of the particles.
        progress: show a tqdm bar over levels.
        callback: called after every step with a dict ``{i, t, x, x0_hat, grad}``.
    """

    name = "reverse-diffusion"

    def __init__(
        self,
        steps: int = 200,
        sampler: str = "ddpm",
        eta: float | None = None,
        *,
        schedule: sched.Schedule | None = None,
        t_max: float = 1.0,
        t_min: float = sched.DEFAULT_T_MIN,
        clip_x0: tuple[float, float] | None = None,
        group: bool = True,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        progress: bool = False,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if sampler not in ("ddpm", "ddim"):
            raise ScheduleError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        if eta is None:
            eta = 1.0 if sampler == "ddpm" else 0.0
        elif sampler == "ddpm" and eta != 1.0:
            raise ScheduleError("sampler='ddpm' is eta=1; use sampler='ddim' to choose eta")
        if not 0.0 <= eta <= 1.0:
            raise ScheduleError(f"eta must lie in [0, 1], got {eta}")
        self.ts = sched.time_grid(steps, t_max=t_max, t_min=t_min)
        self.steps, self.sampler, self.eta = steps, sampler, float(eta)
        self.schedule = schedule if schedule is not None else sched.linear()
        self.clip_x0 = check_clip(clip_x0)
        self.group, self.dtype, self.device = group, dtype, torch.device(device)
        self.progress, self.callback = progress, callback

    def compile(self, scene: Scene) -> CompiledScene:
        """Validate ``scene`` and build its batched target."""
        compiled = CompiledScene(scene, self.schedule, group=self.group)
        compiled.require_value_observables("ReverseDiffusion")
        return compiled

    def run(
        self,
        scene: Scene | CompiledScene,
        num_samples: int = 1000,
        *,
        seed: int = 0,
        num_chains: int = 1,
    ) -> Result:
        """Draw ``num_samples`` particles; same ``seed``, same samples."""
        compiled = prepare(self, scene, num_samples)
        compiled.reset_counters()
        gen = torch.Generator(self.device).manual_seed(int(seed))
        x = compiled.noise(num_samples, gen, dtype=self.dtype, device=self.device)
        lam = self.schedule.log_snr(self.ts)
        abar = torch.sigmoid(lam)
        alpha, sigma = abar.sqrt().tolist(), torch.sigmoid(-lam).sqrt().tolist()
        grad_norm = torch.empty(self.steps, num_samples, dtype=self.dtype)
        start = time.perf_counter()
        levels = tqdm(range(self.steps), desc="reverse diffusion", disable=not self.progress, leave=False)
        with torch.no_grad():
            for i in levels:
                t = float(self.ts[i])
                g = compiled.target(x, t, check=False).grad
                step = ReverseStep(alpha[i], sigma[i], alpha[i + 1], sigma[i + 1], self.eta, self.clip_x0)
                x0 = {k: step.x0(xk, g[k]) for k, xk in x.items()}
                new = {k: step(xk, g[k], gen) for k, xk in x.items()}
                sq = sum(gk.reshape(num_samples, -1).square().sum(1) for gk in g.values())
                grad_norm[i] = sq.sqrt().cpu()
                if not all(bool(torch.isfinite(v).all()) for v in new.values()):
                    compiled.diagnose(x, t, f"in the reverse step at t={t:.4g}")
                x = new
                if self.callback is not None:
                    self.callback({"i": i, "t": t, "x": x, "x0_hat": x0, "grad": g})
        wall = time.perf_counter() - start
        stats = {
            "nfe": dict(compiled.nfe),
            "nfe_total": compiled.nfe_total,
            "calls": compiled.calls,
            "wall_time": wall,
            "t": self.ts[:-1].clone(),
            "abar": abar[:-1].clone(),
            "sampler": self.sampler,
            "eta": self.eta,
            "steps": self.steps,
        }
        return Result(
            x,
            stats,
            {"grad_norm": grad_norm.T.contiguous()},
            num_chains=num_chains,
            engine=f"{self.name}/{self.sampler}",
        )

r"""Reverse diffusion (DDPM ancestral / DDIM) on the composed score of a scene.

The baseline of composable diffusion (Liu et al. 2022): the control variables
are treated as a diffusing variable whose score at engine time ``t`` is the
scene's composed gradient ``g = sum_i w_i J_i^T s_i(f_i(X), t)``
(:meth:`probcomp.compiled.CompiledScene.target`), and each step from ``t`` to
``s < t`` is the DDIM step of :class:`~probcomp.inference.steps.ReverseStep`.

The noisy levels run from ``t_max`` to ``t_min`` (default ``1e-3``) and the last step
goes to 0, returning the denoised estimate ``x0_hat``.  For a product of factors this samples
the product of the *noised* factors at every level, which is not the noised
product: the bias that annealed MCMC corrects (Du et al. 2023).

``last_step="tweedie"`` ends instead with a draw from the Gaussian of the first two
moments of ``p(x_0 | x_t)`` at ``t = t_min`` (Tweedie's formula and its second-order
form, Efron 2011; Boys et al. 2023):

.. math::
    \mathbb{E}[x_0 \mid x_t] = (x_t + \sigma_t^2 g) / \alpha_t, \qquad
    \mathrm{Cov}[x_0 \mid x_t] = (\sigma_t / \alpha_t)^2 \big(I + \sigma_t^2 \partial g / \partial x_t\big),

with the Jacobian of the composed score ``g`` taken by central differences (``2 D`` more
score evaluations per particle, ``D`` the control dimension; so for low-dimensional
controls).  It is exact when ``p(x_0 | x_t)`` is Gaussian (a Gaussian target, at any
``t_min``), and it lets a sampler stop at a noise level where learned scores are still
trustworthy: below it they extrapolate away from their training data (a composed unseen
attribute combination).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, cast

import torch

from probcomp.compiled import CompiledScene
from probcomp.errors import ScheduleError
from probcomp.results import Result
from probcomp.scene import Scene
from probcomp.validation import check_positive

from .base import DiffusionEngine, DiffusionOptions, register
from .steps import Packer, check_clip

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's from Python 3.11

__all__ = ["TWEEDIE_MAX_DIM", "ReverseDiffusion"]

TWEEDIE_MAX_DIM = 256  # last_step="tweedie": 2 x D score evaluations and a D x D eigensolve per particle


class ReverseDiffusion(DiffusionEngine):
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
        last_step: ``"mean"`` (default) returns ``x0_hat`` at ``t_min``; ``"tweedie"`` draws
            from the Gaussian with Tweedie's mean and covariance there (module docstring;
            controls of at most ``TWEEDIE_MAX_DIM`` elements per particle; with ``clip_x0``
            the draw is clamped to the range).
        group: evaluate observables that share a factor in one batched call.
        dtype, device: of the particles.
        progress: show a tqdm bar over levels.
        callback: called after every step with a :class:`~probcomp.inference.LevelInfo`
            holding ``i, t, x`` and ``x0_hat, grad``.
    """

    name = "reverse-diffusion"
    label = "ReverseDiffusion"
    levels_arg = "steps"

    def __init__(
        self,
        steps: int = 200,
        sampler: str = "ddpm",
        eta: float | None = None,
        *,
        clip_x0: tuple[float, float] | None = None,
        last_step: str = "mean",
        **options: Unpack[DiffusionOptions],
    ) -> None:
        if sampler not in ("ddpm", "ddim"):
            raise ScheduleError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        if eta is None:
            eta = 1.0 if sampler == "ddpm" else 0.0
        elif sampler == "ddpm" and eta != 1.0:
            raise ScheduleError("sampler='ddpm' is eta=1; use sampler='ddim' to choose eta")
        if not 0.0 <= check_positive("eta", eta, allow_zero=True) <= 1.0:
            raise ScheduleError(f"eta must lie in [0, 1], got {eta}")
        if last_step not in ("mean", "tweedie"):
            raise ScheduleError(f"last_step must be 'mean' or 'tweedie', got {last_step!r}")
        super().__init__(steps, **options)
        self.last_step = last_step
        self.steps, self.sampler, self.eta = steps, sampler, float(eta)
        self.clip_x0 = check_clip(clip_x0)

    def check_compiled(self, compiled: CompiledScene) -> None:
        """Refuse Tweedie's last step on controls too large for its Jacobian."""
        if self.last_step == "tweedie":
            dim = sum(math.prod(shape) for shape in compiled.shapes.values())
            if dim > TWEEDIE_MAX_DIM:
                sizes = ", ".join(f"{k!r}: {math.prod(v)}" for k, v in compiled.shapes.items())
                raise ScheduleError(
                    f"last_step='tweedie' takes the full Jacobian of the composed score, 2 x D score "
                    f"evaluations; the controls have D = {dim} elements ({sizes}), more than "
                    f"TWEEDIE_MAX_DIM = {TWEEDIE_MAX_DIM}; use last_step='mean'"
                )

    def run(
        self,
        scene: Scene | CompiledScene,
        num_samples: int = 1000,
        *,
        seed: Any = 0,
        num_chains: int = 1,
    ) -> Result:
        """Draw ``num_samples`` particles; same ``seed``, same samples."""
        compiled = self.prepare(scene, num_samples)
        compiled.reset_counters()
        gen, seed = self.generator(seed)
        x = compiled.noise(num_samples, gen, dtype=self.dtype, device=self.device)
        grad_norm = torch.empty(self.steps, num_samples, dtype=self.dtype)
        start = time.perf_counter()
        with torch.no_grad():
            for lv in self.levels("reverse diffusion"):
                i, t = lv.i, lv.t
                g = compiled.target(x, t, check=False).grad
                step = lv.reverse_step(self.eta, self.clip_x0)
                x0 = {k: step.x0(xk, g[k]) for k, xk in x.items()}
                if self.last_step == "tweedie" and i == self.steps - 1:
                    new = self._tweedie(compiled, x, t, g, lv.alpha, lv.sigma, gen)
                else:
                    new = {k: step(xk, g[k], gen) for k, xk in x.items()}
                # a tensor: a compiled scene has one control at least (not sum()'s start 0)
                sq = cast(torch.Tensor, sum(gk.reshape(num_samples, -1).square().sum(1) for gk in g.values()))
                grad_norm[i] = sq.sqrt().cpu()
                if not all(bool(torch.isfinite(v).all()) for v in new.values()):
                    compiled.diagnose(x, t, f"in the reverse step at t={t:.4g}")
                x = new
                self.guard(compiled, x, lv)
                self.notify(i, t, x, x0_hat=x0, grad=g)
        stats = {
            **self.base_stats(compiled, time.perf_counter() - start, seed),
            "abar": torch.sigmoid(self.schedule.log_snr(self.ts))[:-1].clone(),
            "sampler": self.sampler,
            "eta": self.eta,
            "steps": self.steps,
            "last_step": self.last_step,
        }
        return Result(
            x,
            stats,
            {"grad_norm": grad_norm.T.contiguous()},
            num_chains=num_chains,
            engine=f"{self.name}/{self.sampler}",
        )

    def _tweedie(
        self,
        compiled: CompiledScene,
        x: dict[str, torch.Tensor],
        t: float,
        g: dict[str, torch.Tensor],
        a_t: float,
        s_t: float,
        gen: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """A draw from ``N(E[x_0 | x_t], Cov[x_0 | x_t])`` (module docstring), per particle."""
        pack = Packer({k: v.shape[1:] for k, v in x.items()})
        flat = pack.pack(x)
        n, dim = flat.shape
        h = 1e-2 * s_t  # p_t varies on the scale sigma_t or slower
        jac = torch.empty(n, dim, dim, dtype=torch.float64, device=flat.device)
        for j in range(dim):  # column j of dg/dx by central differences
            e = torch.zeros(dim, dtype=flat.dtype, device=flat.device)
            e[j] = h
            up = pack.pack(compiled.target(pack.unpack(flat + e), t, check=False).grad)
            down = pack.pack(compiled.target(pack.unpack(flat - e), t, check=False).grad)
            jac[:, :, j] = (up - down).double() / (2 * h)
        mean = (flat.double() + s_t**2 * pack.pack(g).double()) / a_t
        eye = torch.eye(dim, dtype=torch.float64, device=flat.device)
        cov = (s_t / a_t) ** 2 * (eye + s_t**2 * jac)
        cov = 0.5 * (cov + cov.transpose(1, 2))  # the exact Jacobian of a score is symmetric
        evals, evecs = torch.linalg.eigh(cov)
        root = evecs * evals.clamp(min=0.0).sqrt()[:, None, :]  # learned scores can overshoot: PSD part
        z = torch.randn(n, dim, generator=gen, dtype=torch.float64, device=flat.device)
        out = (mean + torch.einsum("nij,nj->ni", root, z)).to(flat.dtype)
        if self.clip_x0 is not None:
            out = out.clamp(*self.clip_x0)
        return pack.unpack(out)


register(
    "ddpm",
    lambda steps, steps_per_level, progress: ReverseDiffusion(steps, "ddpm", progress=progress),
    "DDPM on the summed scores (the composable-diffusion baseline)",
)
register(
    "ddim",
    lambda steps, steps_per_level, progress: ReverseDiffusion(steps, "ddim", progress=progress),
    "deterministic DDIM on the summed scores",
)

r"""EM-style per-step optimisation ("Compositional Generative Inference Using Diffusion-Based
Optimization", §5, Eqs. 12-41).

Every observable is ``y_i = f_i(X) + N(0, psi_i^2 I)`` (Eq. 12) and its factor is a
diffusion model (learned or analytic).  At each level ``t -> s`` of a descending grid:

1. ``y_i^t = f_i(X^t)`` (the hard-EM choice of Eq. 21: ``argmax_y p(y | X^t)``);
2. the DDIM step of every observable's own model (Eq. 15; ``eta > 0``: stochastic DDIM,
   Eq. 14) gives ``y_i^s``, with the observable's eps scaled by an auxiliary step size
   ``lambda_i`` (Eq. 30):

   .. math:: \tilde y_i^s(\lambda_i) = \frac{\alpha_s}{\alpha_t}
             \big(y_i^t - \sigma_t \lambda_i \hat\epsilon_i\big)
             + \sqrt{\sigma_s^2 - c^2}\, \lambda_i \hat\epsilon_i + c z ;

3. ``X^s`` minimises (Eq. 29; with ``lambdas``, jointly with ``lambda``, Eq. 41)

   .. math:: \sum_i \frac{\|\tilde y_i^s(\lambda_i) - f_i(X)\|^2}{2\psi_i^2}
             + \rho \sum_i |\lambda_i - 1| + \sum_j w_j E_j(g_j(X), s),

   by ``inner_steps`` optimiser steps from ``X^t`` (warm start).  The last sum holds the
   scene's priors on controls and its explicit factors (:class:`~probcomp.factors.ExplicitFactor`
   observables), as energies at the new level ``s``: the objective is then a negative
   log-posterior, exact for those terms at ``s = 0``.

An observable's eps is its composed score's ``-sigma_t s`` (a composed factor on one
observable contributes the weighted sum of its leaves, the scene weight included);
``psi_i`` is the scene's ``observe(..., psi=...)``.  Each particle is optimised on its
own objective (the optimisers act elementwise on the summed objective, which is
separable over particles).

The default optimiser, ``"gauss-newton"``, divides the gradient by the diagonal of the
Gauss-Newton curvature ``sum_i diag(J_i^T J_i) / psi_i^2`` of the data term, estimated
per level with one Rademacher probe ``(J_i^T v)^2`` (exact whenever every output of
``f_i`` reads one input: identity, windows, masks, composites), so one step solves Eq. 29
exactly for such observations; controls no observable reads take plain gradient steps of
size ``lr``.  With ``lambdas`` it alternates with the exact proximal (soft-threshold)
update of each ``lambda_i``, the LASSO step of Eq. 41.  ``"adam"`` and ``"sgd"`` use
``lr`` (and ``lambda_lr``) instead.  With ``eta = 0`` (the paper's setting) the engine is a
deterministic map of the initial noise: a mode seeker, not a sampler.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from probcomp import ops
from probcomp.compiled import CompiledScene, Term, finite_or_raise
from probcomp.errors import NumericalError, SceneError, ScheduleError
from probcomp.results import Result
from probcomp.scene import Scene
from probcomp.validation import check_count, check_positive

from .base import DiffusionEngine, DiffusionOptions, LevelRecords, register
from .steps import ReverseStep, check_clip

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's from Python 3.11

__all__ = ["PerStepEM"]

OPTIMISERS = ("gauss-newton", "adam", "sgd")


@dataclass(frozen=True)
class _Observable:
    """An observable moved by DDIM: its observation function, noise scale and score terms."""

    name: str
    fn: ops.Op
    parents: tuple[str, ...]
    psi: float
    terms: tuple[Term, ...]


ENERGY_KINDS = ("prior", "explicit")  # terms that enter the objective as energies at the new level


class PerStepEM(DiffusionEngine):
    """Per-level DDIM step of every observable, then gradient steps on the controls.

    Args:
        steps: number of levels (each one eps evaluation per observable).
        inner_steps: gradient steps on ``X`` (and ``lambda``) per level.
        optimizer: ``"gauss-newton"`` (default; see the module docstring), ``"adam"`` or
            ``"sgd"``; ``lr`` the learning rate of the latter two (and of the
            Gauss-Newton steps on controls no observable reads).
        tol: stop a level's inner loop early once one step lowers the mean objective by
            less than ``tol`` times its value (``None``: always ``inner_steps``).
        lambdas: optimise one step size ``lambda_i`` per observable and particle (Eq. 30).
        lambda_l1: ``rho``, the strength of the L1 prior ``rho |lambda - 1|`` (Eq. 41).
        lambda_lr: learning rate of ``lambda`` (default: ``lr``).
        eta: DDIM stochasticity of the observables' steps (0: the paper's deterministic
            step, Eq. 15; 1: DDPM's ancestral noise).
        clip_x0: ``(lo, hi)``: each observable's denoised estimate is clamped to its data's
            range before its DDIM step (every observable's data lie in that range).
        schedule, t_max, t_min, dtype, device, progress: as in
            :class:`~probcomp.inference.ReverseDiffusion`.
        callback: called after every level with a :class:`~probcomp.inference.LevelInfo`
            holding ``i, t, x`` and ``objective, lambdas``.
    """

    name = "per-step-em"
    label = "PerStepEM"
    levels_arg = "steps"

    def __init__(
        self,
        steps: int = 100,
        inner_steps: int = 10,
        *,
        optimizer: str = "gauss-newton",
        lr: float = 0.05,
        tol: float | None = None,
        lambdas: bool = False,
        lambda_l1: float = 1.0,
        lambda_lr: float | None = None,
        eta: float = 0.0,
        clip_x0: tuple[float, float] | None = None,
        **options: Unpack[DiffusionOptions],
    ) -> None:
        inner_steps = check_count("inner_steps", inner_steps, 0)
        if optimizer not in OPTIMISERS:
            raise ScheduleError(f"optimizer must be one of {OPTIMISERS}, got {optimizer!r}")
        lr = check_positive("lr", lr)
        if lambda_lr is not None:
            lambda_lr = check_positive("lambda_lr", lambda_lr)
        lambda_l1 = check_positive("lambda_l1", lambda_l1, allow_zero=True)
        if not 0.0 <= check_positive("eta", eta, allow_zero=True) <= 1.0:
            raise ScheduleError(f"eta must lie in [0, 1], got {eta}")
        if tol is not None:
            tol = check_positive("tol", tol, allow_zero=True)
        super().__init__(steps, **options)
        self.steps, self.inner_steps = int(steps), int(inner_steps)
        self.optimizer, self.lr, self.tol = optimizer, float(lr), tol
        self.lambdas, self.lambda_l1 = bool(lambdas), float(lambda_l1)
        self.lambda_lr = float(lambda_lr) if lambda_lr is not None else self.lr
        self.eta = float(eta)
        self.clip_x0 = check_clip(clip_x0)

    # ------------------------------------------------------------------------------
    def check_compiled(self, compiled: CompiledScene) -> None:
        """The scene needs at least one diffusion observable."""
        if not self._observables(compiled):
            raise SceneError(
                "PerStepEM moves the controls through the DDIM steps of diffusion factors; the "
                "scene has only priors and explicit factors (use AnnealedMCMC or ReverseDiffusion)"
            )

    def _observables(self, compiled: CompiledScene) -> list[_Observable]:
        by_name: dict[str, list[Term]] = {}
        for term in compiled.terms:
            if term.kind == "score":
                by_name.setdefault(term.observable, []).append(term)
        scene = compiled.scene
        return [
            _Observable(n, ts[0].fn, ts[0].parents, float(scene[n]["psi"]), tuple(ts))
            for n, ts in by_name.items()
        ]

    def run(
        self, scene: Scene | CompiledScene, num_samples: int = 1000, *, seed: Any = 0, num_chains: int = 1
    ) -> Result:
        """Run the per-level EM loop from ``num_samples`` noise draws; same ``seed``, same result."""
        compiled = self.prepare(scene, num_samples)
        compiled.reset_counters()
        observables = self._observables(compiled)
        gen, seed = self.generator(seed)
        n = num_samples
        x = compiled.noise(n, gen, dtype=self.dtype, device=self.device)
        m = len(observables)
        rec = LevelRecords(
            "objective_before", "objective_after", "inner_steps", "nfe_per_level", "lambda_mean", "lambda_std"
        )
        objective = torch.zeros(n, dtype=torch.float64)
        lam = torch.ones(n, m, dtype=self.dtype, device=self.device)
        start = time.perf_counter()
        for lv in self.levels("per-step EM"):
            i, t, s = lv.i, lv.t, lv.next_t
            nfe0 = compiled.nfe_total
            step = lv.reverse_step(self.eta, self.clip_x0)
            with torch.no_grad():
                targets = self._ddim_targets(compiled, observables, x, t, step, gen)
            x_new, lam, obj_before, obj_after, used = self._solve(compiled, x, targets, observables, s)
            if not all(bool(torch.isfinite(v).all()) for v in x_new.values()):
                compiled.diagnose(
                    x, t, f"in the optimisation of level t={t:.4g} -> {s:.4g} (try a smaller lr)"
                )
            x = x_new
            self.guard(compiled, x, lv)
            objective = obj_after.double().cpu()
            rec.add(
                objective_before=float(obj_before.mean()),
                objective_after=float(obj_after.mean()),
                inner_steps=float(used),
                lambda_mean=float(lam.mean()),
                lambda_std=float(lam.std()) if lam.numel() > 1 else 0.0,
                nfe_per_level=float(compiled.nfe_total - nfe0),
            )
            self.notify(i, t, x, objective=obj_after, lambdas=lam)
        finite_or_raise(x, "at the end of PerStepEM")
        stats = {
            **self.base_stats(compiled, time.perf_counter() - start, seed),
            "steps": self.steps,
            "inner_steps_max": self.inner_steps,
            "optimizer": self.optimizer,
            "eta": self.eta,
            **rec.tensors(),
        }
        particle = {"objective": objective}
        if self.lambdas:
            particle["lambda"] = lam.detach().cpu()
        return Result(x, stats, particle, num_chains=num_chains, engine=self.name)

    # ------------------------------------------------------------------------------
    def _ddim_targets(
        self,
        compiled: CompiledScene,
        observables: list[_Observable],
        x: dict[str, torch.Tensor],
        t: float,
        step: ReverseStep,
        gen: torch.Generator,
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Per observable ``(base, direction, noise)``: ``y^s(lambda) = base + lambda direction + noise``
        (one batched score call per shared factor: :meth:`CompiledScene.observable_scores`)."""
        ys = {o.name: o.fn(*[x[p] for p in o.parents]) for o in observables}
        scores = compiled.observable_scores(x, t, values=ys)
        c = step.noise
        out_targets = []
        for o in observables:
            y, g = ys[o.name], scores[o.name]
            base = (step.a_s / step.a_t) * y
            direction = step.mean(y, g) - base
            noise = c * torch.randn(y.shape, generator=gen, dtype=y.dtype, device=y.device) if c > 0 else None
            out_targets.append((base, direction, noise))
        return out_targets

    def _objective(
        self,
        compiled: CompiledScene,
        x: dict[str, torch.Tensor],
        lam: torch.Tensor,
        targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
        observables: list[_Observable],
        s: float,
    ) -> torch.Tensor:
        """Eq. 41 per particle (Eq. 29 when ``lambda = 1`` is fixed), plus the energy terms at ``s``."""
        n = next(iter(x.values())).shape[0]
        total = torch.zeros(n, dtype=lam.dtype, device=lam.device)
        for k, (o, (base, direction, noise)) in enumerate(zip(observables, targets, strict=True)):
            y_target = base + lam[:, k].reshape(-1, *([1] * (base.ndim - 1))) * direction
            if noise is not None:
                y_target = y_target + noise
            r = (y_target - o.fn(*[x[p] for p in o.parents])).reshape(n, -1)
            total = total + r.square().sum(1) / (2 * o.psi**2)
        if self.lambdas:
            total = total + self.lambda_l1 * (lam - 1).abs().sum(1)
        return compiled.energy(x, s, kinds=ENERGY_KINDS, initial=total)

    def _solve(self, compiled, x0, targets, observables, s):
        """``inner_steps`` optimiser steps from ``x0``; returns ``(x, lambda, before, after, used)``."""
        x = {k: v.detach().clone().requires_grad_(True) for k, v in x0.items()}
        n = next(iter(x0.values())).shape[0]
        lam = torch.ones(
            n, len(observables), dtype=self.dtype, device=self.device, requires_grad=self.lambdas
        )

        def objective() -> torch.Tensor:
            return self._objective(compiled, x, lam, targets, observables, s)

        newton = self.optimizer == "gauss-newton"
        if newton:
            curv = self._curvature(compiled, x, observables, s)
            lam_curv = torch.stack(
                [
                    d.reshape(n, -1).square().sum(1) / o.psi**2
                    for o, (_, d, _) in zip(observables, targets, strict=True)
                ],
                1,
            )
        else:
            groups = [{"params": list(x.values()), "lr": self.lr}]
            if self.lambdas:
                groups.append({"params": [lam], "lr": self.lambda_lr})
            opt = torch.optim.Adam(groups) if self.optimizer == "adam" else torch.optim.SGD(groups)
        with torch.no_grad():
            before = objective()
        prev = float(before.mean())
        used = 0
        for used in range(1, self.inner_steps + 1):
            with torch.enable_grad():
                obj = objective()
                params = list(x.values()) + ([lam] if self.lambdas else [])
                grads = torch.autograd.grad(obj.sum(), params)
            with torch.no_grad():
                if newton:
                    steps = {
                        k: torch.where(curv[k] > 0, g / curv[k].clamp_min(1e-12), self.lr * g)
                        for k, g in zip(x, grads, strict=False)
                    }
                    self._backtrack(x, steps, obj.detach(), objective)
                    if self.lambdas:  # then the exact lambda step at the new X (Gauss-Seidel)
                        with torch.enable_grad():
                            (g_lam,) = torch.autograd.grad(objective().sum(), [lam])
                        self._prox_lambda(lam, g_lam, lam_curv)
                else:
                    for p, g in zip(params, grads, strict=True):
                        p.grad = g
                    opt.step()
            cur = float(obj.detach().mean())
            if self.tol is not None and used > 1 and prev - cur < self.tol * abs(cur):
                break
            prev = cur
        with torch.no_grad():
            after = objective()
        if not math.isfinite(float(after.mean())):
            raise NumericalError(
                f"the PerStepEM objective is not finite at level s={s:.4g} (try a smaller lr)"
            )
        return {k: v.detach() for k, v in x.items()}, lam.detach(), before.detach(), after.detach(), used

    @staticmethod
    def _backtrack(x, steps, obj0, objective, halvings: int = 12) -> None:
        """``x <- x - a * step`` with, per particle, the largest ``a`` in ``1, 1/2, 1/4, ...``
        that does not raise its objective (``a = 0`` if none does); in place."""
        n = obj0.shape[0]
        scale = torch.ones(n, dtype=obj0.dtype, device=obj0.device)
        start = {k: v.detach().clone() for k, v in x.items()}
        todo = torch.ones(n, dtype=torch.bool, device=obj0.device)

        def move() -> None:
            for k, v in x.items():
                v.copy_(start[k] - scale.reshape(-1, *([1] * (v.ndim - 1))).to(v.dtype) * steps[k])

        for _ in range(halvings + 1):
            move()
            new = objective()
            todo = todo & ~(torch.isfinite(new) & (new <= obj0 + 1e-7 * obj0.abs()))
            if not bool(todo.any()):
                return
            scale = torch.where(todo, scale / 2, scale)
        scale = torch.where(todo, torch.zeros_like(scale), scale)
        move()

    def _curvature(self, compiled, x, observables, s) -> dict[str, torch.Tensor]:
        """Diagonal curvature per control: ``sum_i (J_i^T v)^2 / psi_i^2`` (the data term's
        Gauss-Newton diagonal from one Rademacher probe ``v``, exact when every output of
        ``f_i`` reads one input) plus ``max(v * H v, 0)`` of the energy terms (Hutchinson)."""
        gen = torch.Generator(self.device).manual_seed(0)

        def probe(like: torch.Tensor) -> torch.Tensor:
            return torch.randint(0, 2, like.shape, generator=gen, device=like.device).to(like.dtype) * 2 - 1

        curv = {k: torch.zeros_like(v) for k, v in x.items()}
        if any(t.kind in ENERGY_KINDS for t in compiled.terms):
            names = list(x)
            with torch.enable_grad():
                e = compiled.energy(x, s, kinds=ENERGY_KINDS)
                grads = torch.autograd.grad(
                    e.sum(), [x[k] for k in names], create_graph=True, allow_unused=True
                )
                pairs = [(k, g, probe(x[k])) for k, g in zip(names, grads, strict=True) if g is not None]
                pairs = [(k, g, v) for k, g, v in pairs if g.requires_grad]
                if pairs:
                    dot = cast(torch.Tensor, sum((g * v).sum() for _, g, v in pairs))  # pairs is not empty
                    hv = torch.autograd.grad(dot, [x[k] for k, _, _ in pairs], allow_unused=True)
                    for (k, _, v), h in zip(pairs, hv, strict=True):
                        if h is not None:
                            curv[k] = curv[k] + (v * h.detach()).clamp_min(0)
        for o in observables:
            with torch.enable_grad():
                y = o.fn(*[x[p] for p in o.parents])
                v = probe(y)
                inputs = [x[p] for p in o.parents]
                vjp = torch.autograd.grad(y, inputs, grad_outputs=v, allow_unused=True)
            for p, g in zip(o.parents, vjp, strict=True):
                if g is not None:
                    curv[p] = curv[p] + g.detach().square() / o.psi**2
        return curv

    def _prox_lambda(self, lam: torch.Tensor, grad: torch.Tensor, curv: torch.Tensor) -> None:
        """Exact minimiser in each ``lambda_i`` of its quadratic plus ``rho |lambda - 1|`` (in place).

        ``grad`` is the gradient of the whole objective, L1 part included; the smooth part's
        gradient is recovered by removing ``rho sign(lambda - 1)``.
        """
        smooth = grad - self.lambda_l1 * torch.sign(lam - 1)
        h = curv.clamp_min(1e-12)
        unreg = lam - smooth / h - 1
        lam.copy_(1 + torch.sign(unreg) * (unreg.abs() - self.lambda_l1 / h).clamp_min(0))


register(
    "per-step-em",
    lambda steps, steps_per_level, progress: PerStepEM(steps, progress=progress),
    "per-level DDIM steps of every observable, then optimisation of the controls",
)

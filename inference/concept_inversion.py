r"""Inverse generative modelling: the concepts that explain an observation (dissertation ch. 5).

A scene for inversion gives data to its observables and makes the controls their
conditions: ``scene.observe("img", value=x, factor=model, condition={"xy": c1})``.
Observables that share one observed value compose by summing their weighted noise
predictions, and the concepts ``c`` are found by minimising the composed denoising
loss, the variational proxy for ``-log p(x | c^1..c^K)`` (Eq. 5.7):

.. math::
    L(c) = \mathbb E_{t, \epsilon}\, \frac1D \Big\| \epsilon - \sum_i w_i\,
    \hat\epsilon_i\big(\alpha_t x + \sigma_t \epsilon, t \mid c_{(i)}\big) \Big\|^2,

with ``t`` uniform on ``t_range`` of the factors' schedule and ``D`` the number of
elements of ``x`` (the seed's sum, divided by ``D`` so losses read the same at any
image size).  Several observed values add their losses.

* **All-discrete scenes** (controls with ``Categorical``-like priors): exhaustive
  enumeration (Alg. 4) under ``draws`` shared noise draws (common random numbers).
  Each observable is evaluated once per distinct value of *its own* conditions, and
  every configuration's sum is assembled from those, so the network cost is
  ``sum_i M^{|c_i|}`` -- ``M K`` for K one-label concepts -- instead of ``K M^K``.
  Above ``max_configs`` configurations, coordinate search (beam width 1, O(M K) per
  sweep; the seed's scalable alternative) replaces enumeration.
* **Continuous concepts**: Adam or SGD with one shared ``(t, eps)`` draw per step
  (Alg. 5) from ``restarts`` starts, pruning the worst ``1 - keep`` of the live
  restarts every ``prune_every`` steps by their mean loss since the last pruning
  (same draws for all, so the comparison is fair).  Discrete controls among them
  are set by coordinate search at every pruning and at the end.  The survivors are
  re-scored with ``draws`` shared draws and the best is returned.
* **Starts**: ``init="random"`` draws from the controls' priors (``N(0, I)`` where a
  control has none, as in Alg. 5); ``init="greedy"`` makes the first restart by
  matching pursuit with backfitting: concept observables are placed one at a time,
  each at the best point of a grid over its controls' bounded supports (times the
  discrete candidates, or with them relaxed to class probabilities and enumerated
  after) given those already placed and the unplaced ones left out of the sum; then
  ``greedy_sweeps`` passes re-place each observable given all the others.  The first
  pass scores a partial scene, which is the right model only when concept terms add
  up (composed training, Eq. 5.5); the backfitting passes score the whole scene, so
  they also repair starts under a weighted background (tested on the analytic
  projective scene).
* **Relocation** (``relocate``): after the descent, a backfitting sweep on the best
  restart: each concept observable's grid scan (on the search draws, the others at their
  refined places) gives its 4 best grid points, each refined off the grid by 10 optimiser
  steps on those draws, and the best of them replaces the current place only if it
  scores lower on all ``draws`` shared draws.  A short descent follows, and the round is
  kept only if the re-scored loss drops.  With the others refined, the residual shows the
  object no concept explains, which the start, scored with the others still on the grid,
  can miss (in object discovery: two concepts on one blob whose colours add up to its
  colour, and a blob nobody visits).
* **Scoring an answer**: :meth:`ConceptInversion.loss` gives ``L(c)`` of any concepts on
  the draws a run with the same seed re-scores on, e.g. to tell a search failure (the
  truth scores lower than the answer) from a model failure (it scores higher).
* **Choosing K** (Eq. 5.9, Alg. 6): :meth:`ConceptInversion.choose_k` inverts one
  scene per ``K`` and keeps the ``K`` whose minimised loss, re-scored on the same
  shared draws for every ``K``, is lowest.

Priors enter through their support and initialisation: a continuous control is
drawn from its prior and projected back into an interval support after each step;
the unweighted denoising loss is not on the log-likelihood scale, so the prior's
density is not added to it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.distributions import constraints
from tqdm.auto import tqdm

from probcomp.errors import FactorError, NumericalError, SceneError
from probcomp.scene import Scene

__all__ = ["ConceptInversion", "InversionResult"]


def _project(params: dict[str, torch.Tensor], boxes: dict[str, tuple | None]) -> None:
    """Clamp each parameter into its interval support (in place; ``None``: unbounded)."""
    with torch.no_grad():
        for n, box in boxes.items():
            if box is not None:
                params[n].copy_(torch.maximum(torch.minimum(params[n], box[1]), box[0]))


@dataclass
class InversionResult:
    """Inferred concepts with the record of how they were found.

    ``concepts`` holds the best value of every control (no particle axis);
    ``restart_concepts`` every restart's final value ``(R, ...)``; ``restart_losses``
    their re-scored losses (NaN for pruned restarts); ``traces`` ``(R, steps)`` the
    per-step loss of each restart (NaN once pruned); ``k_losses`` the minimised loss
    per ``K`` when ``K`` was chosen.  ``stats["relocations"]`` lists the relocation
    rounds: the observables moved, the re-scored loss, and whether the round was kept (the
    best restart's entries in ``restart_concepts`` and ``restart_losses`` are then the
    relocated ones).
    """

    concepts: dict[str, torch.Tensor]
    loss: float
    restart_concepts: dict[str, torch.Tensor] = field(default_factory=dict)
    restart_losses: torch.Tensor | None = None
    traces: torch.Tensor | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    k: int | None = None
    k_losses: dict[int, float] = field(default_factory=dict)
    per_k: dict[int, InversionResult] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.concepts:
            raise SceneError(f"unknown control {name!r}; inferred {sorted(self.concepts)}")
        return self.concepts[name]

    def __repr__(self) -> str:
        k = f", K={self.k}" if self.k is not None else ""
        return f"InversionResult(loss={self.loss:.5g}{k}, controls={sorted(self.concepts)})"


@dataclass(frozen=True)
class _Obs:
    name: str
    factor: Any
    weight: float
    keys: tuple[str, ...]  # factor condition names
    controls: tuple[str, ...]  # the controls bound to them


@dataclass(frozen=True)
class _Group:
    """Observables sharing one observed value: one loss term."""

    value: torch.Tensor
    schedule: Any
    obs: tuple[_Obs, ...]


class _Problem:
    """A scene read for inversion: groups of observables, controls, candidates, bounds."""

    def __init__(self, scene: Scene, candidates: dict[str, Any], dtype: torch.dtype, device: Any) -> None:
        if not isinstance(scene, Scene):
            raise SceneError(f"ConceptInversion needs a probcomp Scene, got {type(scene).__name__}")
        scene.validate()
        self.dtype, self.device = dtype, device
        self.controls = list(scene.controls)
        self.shapes = {n: scene[n]["shape"] for n in self.controls}
        self.priors = {n: scene[n]["prior"] for n in self.controls}
        unknown = set(candidates) - set(self.controls)
        if unknown:
            raise SceneError(f"candidates given for unknown controls {sorted(unknown)}")
        self.candidates: dict[str, torch.Tensor] = {}
        for n in self.controls:
            if n in candidates:
                c = torch.as_tensor(candidates[n])
                if c.ndim == 0 or c.shape[0] == 0:
                    raise SceneError(f"discrete control {n!r} has no candidates")
                if c.shape[1:] != self.shapes[n]:
                    raise SceneError(
                        f"candidates of control {n!r} have shape {tuple(c.shape[1:])}, "
                        f"the control has {tuple(self.shapes[n])}"
                    )
                self.candidates[n] = c
            elif scene[n].get("discrete"):
                self.candidates[n] = self.priors[n].enumerate_support(expand=False).reshape(-1)
        self.continuous = [n for n in self.controls if n not in self.candidates]
        self.discrete = [n for n in self.controls if n in self.candidates]
        groups: dict[int, list[_Obs]] = {}
        values: dict[int, torch.Tensor] = {}
        for name in scene.observables:
            d = scene[name]
            if d["value"] is None:
                raise SceneError(
                    f"observable {name!r} is y = f(controls); ConceptInversion infers the conditions "
                    "of observed data (declare it with value=... and condition=...)"
                )
            f = d["factor"]
            keys = tuple(d.get("condition_keys", d["condition"]))
            missing = set(keys) - set(f.condition_names)
            if missing:
                raise SceneError(
                    f"observable {name!r}: factor {f.name!r} has no condition(s) {sorted(missing)}; "
                    f"it takes {list(f.condition_names)}"
                )
            v = d["value"]
            gid = next((g for g, u in values.items() if u is v or torch.equal(u, v)), id(v))
            values.setdefault(gid, v)
            groups.setdefault(gid, []).append(_Obs(name, f, d["weight"], keys, tuple(d["condition"])))
        self.groups: list[_Group] = []
        for gid, obs in groups.items():
            sch = obs[0].factor.schedule
            other = [o.name for o in obs if o.factor.schedule != sch]
            if other:
                raise SceneError(
                    f"observables {[obs[0].name, *other]} score the same data with factors on different "
                    "schedules; one noised copy of the data cannot serve both"
                )
            self.groups.append(_Group(values[gid].to(dtype=dtype, device=device), sch, tuple(obs)))
        if not any(o.controls for g in self.groups for o in g.obs):
            raise SceneError("no observable is conditioned on a control: there is nothing to infer")

    # Draws and the loss ---------------------------------------------------------------
    def draws(self, n: int, t_range: tuple[float, float], gen: torch.Generator) -> list[tuple]:
        """``n`` shared ``(t, eps, x_t)`` draws per group."""
        out = []
        lo, hi = t_range
        for g in self.groups:
            t = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)
            eps = torch.randn((n, *g.value.shape), generator=gen, dtype=self.dtype).to(self.device)
            a = g.schedule.alpha(t).to(self.dtype).to(self.device).reshape(-1, *[1] * g.value.ndim)
            s = g.schedule.sigma(t).to(self.dtype).to(self.device).reshape(-1, *[1] * g.value.ndim)
            out.append((t, eps, a * g.value + s * eps))
        return out

    def term(
        self, o: _Obs, cond: dict[str, torch.Tensor], draw: tuple, batch: int, counter: list[int]
    ) -> torch.Tensor:
        """``w eps_hat(x_t, t | c)`` for ``C`` condition values and ``D`` draws: ``(C, D, *event)``."""
        t, _, xt = draw
        n_draw = t.shape[0]
        c = next(iter(cond.values())).shape[0] if cond else 1
        out = []
        for lo in range(0, c * n_draw, batch):
            idx = torch.arange(lo, min(lo + batch, c * n_draw))
            ci, di = idx // n_draw, idx % n_draw
            cc = {o.keys[j]: cond[o.controls[j]][ci] for j in range(len(o.keys))}
            e = o.factor.eps_given(xt[di], t[di], cc)
            counter[0] += idx.numel() * o.factor.cost
            out.append(e)
        e = torch.cat(out).reshape(c, n_draw, *xt.shape[1:])
        return e if o.weight == 1.0 else o.weight * e

    def predict(
        self,
        state: dict[str, torch.Tensor],
        draws: list[tuple],
        batch: int,
        counter: list[int],
        include: Callable[[_Obs], bool] = lambda o: True,
    ) -> list[torch.Tensor | float]:
        """Per group, ``sum_i w_i eps_hat_i`` over the included observables: ``(R, D, *event)``
        (``0.0`` where none is included); ``R`` is the number of particles in ``state``."""
        r = next(iter(state.values())).shape[0] if state else 1
        out: list[torch.Tensor | float] = []
        for g, draw in zip(self.groups, draws, strict=True):
            pred: torch.Tensor | float = 0.0
            for o in g.obs:
                if not include(o):
                    continue
                e = self.term(o, {c: state[c] for c in o.controls}, draw, batch, counter)
                pred = pred + (e.expand(r, *e.shape[1:]) if e.shape[0] == 1 else e)
            out.append(pred)
        return out

    def error(self, preds: list[torch.Tensor | float], draws: list[tuple]) -> torch.Tensor:
        """The loss per particle from the groups' predictions, averaged over draws and elements."""
        total = None
        for pred, draw in zip(preds, draws, strict=True):
            err = (draw[1][None] - pred).square().flatten(2).mean(2).mean(1)
            total = err if total is None else total + err
        if not bool(torch.isfinite(total).all()):
            raise NumericalError("the denoising loss is not finite (a factor returned NaN or inf)")
        return total

    def loss(self, state: dict[str, torch.Tensor], draws: list[tuple], batch: int, counter: list[int]):
        """Loss per particle ``(R,)``."""
        return self.error(self.predict(state, draws, batch, counter), draws)

    # Supports -------------------------------------------------------------------------
    def interval(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        p = self.priors[name]
        sup = getattr(p, "support", None) if p is not None else None
        while isinstance(sup, constraints.independent):
            sup = sup.base_constraint
        if isinstance(sup, (constraints.interval, constraints.half_open_interval)):
            lo = torch.as_tensor(sup.lower_bound, dtype=self.dtype).expand(self.shapes[name])
            hi = torch.as_tensor(sup.upper_bound, dtype=self.dtype).expand(self.shapes[name])
            return lo.to(self.device), hi.to(self.device)
        return None

    def init(self, name: str, r: int, gen: torch.Generator) -> torch.Tensor:
        p = self.priors[name]
        if p is None:
            v = torch.randn((r, *self.shapes[name]), generator=gen, dtype=self.dtype)
        else:
            box = self.interval(name)
            if box is not None:  # uniform inside the support, from the engine's generator
                u = torch.rand((r, *self.shapes[name]), generator=gen, dtype=self.dtype)
                v = box[0].cpu() + (box[1] - box[0]).cpu() * u
            else:
                with torch.random.fork_rng(devices=[]):  # seeded from the engine, global RNG untouched
                    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
                    v = p.sample((r,)).to(self.dtype).reshape(r, *self.shapes[name])
        return v.to(self.device)


class ConceptInversion:
    """Infer the conditions (concepts) of observed data; see the module docstring.

    Args:
        steps: gradient steps for continuous concepts (Alg. 5).
        restarts: ``R`` starting points (Alg. 5's multiple initialisation).
        lr: step size of the optimiser, in the concepts' units.
        optimizer: ``"adam"`` (default) or ``"sgd"``.
        lr_min: the step size decays from ``lr`` to ``lr_min * lr`` on a cosine: with one
            noise draw per step the gradient is noisy, and the decay averages it out.
        prune_every: steps between prunings; ``keep`` the fraction of live restarts kept
            each time, down to ``min_restarts``.
        draws: shared noise draws for enumeration and the final re-scoring.
        step_draws: draws per gradient step (1 in the seed).
        t_range: the noise levels ``t`` of the loss, in the factors' schedule time
            (the seed draws all of ``(0, 1]``).
        init: ``"random"`` or ``"greedy"`` (matching pursuit for the first restart).
        grid: points per dimension of the greedy grid.
        search_draws: how many of the shared draws score greedy placement and the
            coordinate search of discrete controls during the run.
        greedy_sweeps: backfitting passes of the greedy start (each observable re-placed
            given all the others).
        greedy_relax: scan the greedy grid with discrete controls relaxed to uniform class
            probabilities (factors that accept them, e.g. networks with attributes), then
            enumerate them at the chosen point: ``grid + M`` evaluations instead of ``grid x M``.
        relocate: relocation rounds after the descent (continuous scenes whose controls have
            bounded priors, which lay the grid): each concept observable of the best restart
            moves to the best of its grid's 4 best points, refined off the grid, if that beats
            its current place on the shared draws; ``relocate_steps`` optimiser steps
            (default ``steps // 2``) polish, and the round is kept only if the re-scored loss
            drops.  It takes concepts out of local minima (two on one object, one object
            never visited); see the module docstring.
        max_configs: largest all-discrete space enumerated exhaustively.
        sweeps: coordinate-search sweeps over discrete controls at each use during a continuous
            run (an all-discrete search sweeps until nothing changes, at most 10 times).
        batch: most network inputs per call.
    """

    def __init__(
        self,
        *,
        steps: int = 200,
        restarts: int = 8,
        lr: float = 0.02,
        optimizer: str = "adam",
        lr_min: float = 0.01,
        prune_every: int = 50,
        keep: float = 0.5,
        min_restarts: int = 1,
        draws: int = 32,
        step_draws: int = 1,
        t_range: tuple[float, float] = (1e-3, 1.0),
        init: str = "random",
        grid: int = 8,
        search_draws: int = 4,
        greedy_sweeps: int = 1,
        greedy_relax: bool = False,
        relocate: int = 0,
        relocate_steps: int | None = None,
        max_configs: int = 4096,
        sweeps: int = 1,
        batch: int = 256,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        progress: bool = False,
        callback: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> None:
        if optimizer not in ("adam", "sgd"):
            raise SceneError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if init not in ("random", "greedy"):
            raise SceneError(f"init must be 'random' or 'greedy', got {init!r}")
        for name, v in (("steps", steps), ("draws", draws), ("step_draws", step_draws), ("grid", grid)):
            if int(v) < 1:
                raise SceneError(f"{name} must be at least 1, got {v}")
        if int(restarts) < 1 or int(min_restarts) < 1 or int(prune_every) < 1 or int(batch) < 1:
            raise SceneError("restarts, min_restarts, prune_every and batch must be at least 1")
        if not (0 < keep <= 1):
            raise SceneError(f"keep must be in (0, 1], got {keep}")
        lo, hi = (float(v) for v in t_range)
        if not (0 < lo < hi <= 1):
            raise SceneError(f"t_range must satisfy 0 < low < high <= 1, got {t_range}")
        if not (lr > 0 and math.isfinite(lr)):
            raise SceneError(f"lr must be positive, got {lr}")
        self.steps, self.restarts, self.lr, self.optimizer = int(steps), int(restarts), float(lr), optimizer
        self.lr_min = float(lr_min)
        self.prune_every, self.keep, self.min_restarts = int(prune_every), float(keep), int(min_restarts)
        self.draws, self.step_draws, self.t_range = int(draws), int(step_draws), (lo, hi)
        self.search_draws, self.greedy_sweeps, self.greedy_relax = (
            int(search_draws),
            int(greedy_sweeps),
            bool(greedy_relax),
        )
        if int(relocate) < 0 or (relocate_steps is not None and int(relocate_steps) < 1):
            raise SceneError(
                f"relocate must be >= 0 and relocate_steps >= 1, got {relocate} and {relocate_steps}"
            )
        self.relocate, self.relocate_top = int(relocate), 4
        self.relocate_steps = max(1, int(steps) // 2) if relocate_steps is None else int(relocate_steps)
        self.init, self.grid, self.max_configs, self.sweeps = init, int(grid), int(max_configs), int(sweeps)
        self.batch, self.dtype, self.device = int(batch), dtype, torch.device(device)
        self.progress, self.callback = progress, callback

    # Public -------------------------------------------------------------------------
    def run(
        self, scene: Scene, *, seed: int = 0, candidates: dict[str, Any] | None = None
    ) -> InversionResult:
        """Infer every control of ``scene``; ``candidates`` overrides discrete supports by name."""
        t0 = time.perf_counter()
        prob = _Problem(scene, candidates or {}, self.dtype, self.device)
        gen = torch.Generator().manual_seed(int(seed))
        counter = [0]
        final_draws = prob.draws(self.draws, self.t_range, gen)
        if not prob.continuous:
            res = self._discrete(prob, final_draws, counter, gen)
        else:
            res = self._continuous(prob, final_draws, counter, gen)
        res.stats.update(nfe=counter[0], wall_time=round(time.perf_counter() - t0, 4), seed=int(seed))
        return res

    def loss(
        self,
        scene: Scene,
        concepts: dict[str, Any],
        *,
        seed: int = 0,
        candidates: dict[str, Any] | None = None,
    ) -> float:
        """The composed denoising loss ``L(c)`` (Eq. 5.7) of given ``concepts``.

        It is measured on the ``draws`` shared draws that :meth:`run` with the same
        ``seed`` re-scores its answer on, so ``loss(scene, run(scene, seed=s).concepts,
        seed=s)`` equals that run's ``loss``.  Compare an answer with the ground truth
        this way: a truth with a much lower loss means the search failed; a truth with
        a higher loss means the model prefers the wrong answer.
        """
        prob = _Problem(scene, candidates or {}, self.dtype, self.device)
        missing = [n for n in prob.controls if n not in concepts]
        unknown = sorted(set(concepts) - set(prob.controls))
        if missing or unknown:
            raise SceneError(f"loss needs a value for every control: missing {missing}, unknown {unknown}")
        state = {}
        for n in prob.controls:
            v = torch.as_tensor(concepts[n], device=self.device)
            if n in prob.continuous:
                v = v.to(self.dtype)
            if tuple(v.shape) != tuple(prob.shapes[n]):
                raise SceneError(
                    f"concept {n!r} has shape {tuple(v.shape)}, the control has {tuple(prob.shapes[n])}"
                )
            state[n] = v[None]
        draws = prob.draws(self.draws, self.t_range, torch.Generator().manual_seed(int(seed)))
        with torch.no_grad():
            return float(prob.loss(state, draws, self.batch, [0])[0])

    def choose_k(
        self,
        build: Callable[[int], Scene],
        k_min: int,
        k_max: int,
        *,
        seed: int = 0,
        candidates: Callable[[int], dict[str, Any]] | None = None,
    ) -> InversionResult:
        """Invert ``build(K)`` for every ``K`` in ``[k_min, k_max]``; keep the lowest loss (Eq. 5.9).

        Every ``K`` is run from the same seed, so its final losses are measured on the
        same shared draws and compare fairly.  The result is the chosen ``K``'s, with
        ``k`` and ``k_losses`` set and every run kept in ``per_k``.
        """
        k_min, k_max = int(k_min), int(k_max)
        if k_min < 1 or k_min > k_max:
            raise SceneError(f"need 1 <= K_min <= K_max, got K_min={k_min}, K_max={k_max}")
        runs = {
            k: self.run(build(k), seed=seed, candidates=candidates(k) if candidates else None)
            for k in range(k_min, k_max + 1)
        }
        best = min(runs, key=lambda k: runs[k].loss)
        out = runs[best]
        out.k, out.k_losses, out.per_k = best, {k: r.loss for k, r in runs.items()}, runs
        out.stats["nfe_all_k"] = sum(r.stats["nfe"] for r in runs.values())
        out.stats["wall_time_all_k"] = round(sum(r.stats["wall_time"] for r in runs.values()), 4)
        return out

    # Discrete -----------------------------------------------------------------------
    def _discrete(self, prob: _Problem, draws: list[tuple], counter: list[int], gen) -> InversionResult:
        names = prob.discrete
        sizes = [prob.candidates[n].shape[0] for n in names]
        total = math.prod(sizes)
        if total > self.max_configs:
            state = {
                n: prob.candidates[n][torch.randint(s, (1,), generator=gen)]
                for n, s in zip(names, sizes, strict=True)
            }
            state, _ = self._coordinate(prob, state, draws, counter, sweeps=max(self.sweeps, 10))
            loss = prob.loss(state, draws, self.batch, counter)
            return InversionResult(
                {n: v[0] for n, v in state.items()},
                float(loss[0]),
                dict(state),
                loss,
                None,
                {"method": "coordinate", "configurations": total},
            )
        losses = self._enumerate(prob, draws, counter)  # (M1, ..., Mn)
        flat = losses.reshape(-1)
        j = int(flat.argmin())
        idx = [int(i) for i in torch.unravel_index(torch.tensor(j), tuple(sizes))]
        concepts = {n: prob.candidates[n][i] for n, i in zip(names, idx, strict=True)}
        return InversionResult(
            concepts,
            float(flat[j]),
            {},
            None,
            None,
            {"method": "enumerate", "configurations": total, "losses": losses},
        )

    def _enumerate(self, prob: _Problem, draws: list[tuple], counter: list[int]) -> torch.Tensor:
        """Loss of every configuration of the discrete controls, from one evaluation per
        observable and distinct value of its own conditions."""
        names = prob.discrete
        sizes = tuple(prob.candidates[n].shape[0] for n in names)
        pos = {n: i for i, n in enumerate(names)}
        total = torch.zeros(sizes, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            for g, draw in zip(prob.groups, draws, strict=True):
                pred = torch.zeros((*[1] * len(sizes), *draw[1].shape), dtype=self.dtype, device=self.device)
                for o in g.obs:
                    own = sorted(set(o.controls), key=pos.get)
                    grids = (
                        torch.cartesian_prod(*[torch.arange(sizes[pos[c]]) for c in own]).reshape(
                            -1, len(own)
                        )
                        if own
                        else torch.zeros(1, 0, dtype=torch.long)
                    )
                    cond = {c: prob.candidates[c][grids[:, j]] for j, c in enumerate(own)}
                    e = prob.term(o, cond, draw, self.batch, counter)  # (C, D, *event)
                    shape = [sizes[pos[c]] if c in own else 1 for c in names]
                    pred = pred + e.reshape(*shape, *e.shape[1:])
                err = (draw[1] - pred).square().flatten(len(sizes) + 1).mean(-1).mean(-1)
                total = total + err
        return total

    def _coordinate(
        self, prob: _Problem, state: dict[str, torch.Tensor], draws, counter, sweeps: int | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Coordinate search over the discrete controls of every particle (beam width 1).

        For control ``n`` the terms that do not depend on ``n`` are evaluated once per
        particle and the others once per particle and candidate.
        """
        state = dict(state)
        r = next(iter(state.values())).shape[0]
        best = None
        with torch.no_grad():
            for _ in range(sweeps or self.sweeps):
                changed = False
                for n in prob.discrete:
                    cand = prob.candidates[n].to(self.device)
                    m = cand.shape[0]
                    base = prob.predict(state, draws, self.batch, counter, lambda o, n=n: n not in o.controls)
                    trial = {k: v.repeat_interleave(m, 0) for k, v in state.items()}
                    trial[n] = cand.repeat(r, *[1] * (cand.ndim - 1))
                    var = prob.predict(trial, draws, self.batch, counter, lambda o, n=n: n in o.controls)
                    preds = [
                        (b.repeat_interleave(m, 0) if isinstance(b, torch.Tensor) else b) + v
                        for b, v in zip(base, var, strict=True)
                    ]
                    loss = prob.error(preds, draws).reshape(r, m)
                    pick = loss.argmin(1)
                    new = cand[pick]
                    changed |= bool((new != state[n]).any())
                    state[n] = new
                    best = loss.gather(1, pick[:, None])[:, 0]
                if not changed:
                    break
        return state, best

    # Continuous ---------------------------------------------------------------------
    def _continuous(self, prob: _Problem, draws: list[tuple], counter: list[int], gen) -> InversionResult:
        r = self.restarts
        state = {n: prob.init(n, r, gen) for n in prob.continuous}
        for n in prob.discrete:
            state[n] = prob.candidates[n][torch.randint(prob.candidates[n].shape[0], (r,), generator=gen)]
            state[n] = state[n].to(self.device)
        if self.init == "greedy":
            first = self._greedy(prob, draws, counter)
            for n in state:
                state[n][0] = first[n]
        final, alive, traces, pruned_at = self._descend(
            prob, state, self.steps, draws, gen, counter, self.callback
        )
        idx = alive.nonzero()[:, 0]
        with torch.no_grad():
            scored = prob.loss(
                {n: v[idx.to(self.device)] for n, v in final.items()}, draws, self.batch, counter
            )
        losses = torch.full((r,), float("nan"), dtype=torch.float64)
        losses[idx] = scored.double().cpu()
        b = int(idx[int(scored.argmin())])
        moves = self._relocations(prob, final, losses, b, draws, gen, counter)
        return InversionResult(
            {n: v[b].cpu() for n, v in final.items()},
            float(losses[b]),
            {n: v.cpu() for n, v in final.items()},
            losses,
            traces,
            {
                "method": f"{self.optimizer} x {r} restarts"
                + (" (greedy first)" if self.init == "greedy" else "")
                + (f" + {self.relocate} relocation rounds" if self.relocate else ""),
                "pruned": pruned_at,
                "best_restart": b,
                "relocations": moves,
            },
        )

    def _descend(
        self,
        prob: _Problem,
        state: dict[str, torch.Tensor],
        steps: int,
        draws: list[tuple],
        gen: torch.Generator,
        counter: list[int],
        callback: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, list[dict[str, int]]]:
        """``steps`` optimiser steps from every particle of ``state`` (Alg. 5), one shared draw per
        step, with pruning and coordinate search of the discrete controls (on ``draws``): the final
        state, the live particles, the ``(R, steps)`` loss traces and the prunings."""
        state = {n: v.clone() for n, v in state.items()}
        r = next(iter(state.values())).shape[0]
        boxes = {n: prob.interval(n) for n in prob.continuous}
        alive = torch.ones(r, dtype=torch.bool)
        traces = torch.full((r, steps), float("nan"), dtype=torch.float64)
        params = {n: state[n].clone().requires_grad_(True) for n in prob.continuous}
        opt = (torch.optim.Adam if self.optimizer == "adam" else torch.optim.SGD)(
            list(params.values()), lr=self.lr
        )
        since = torch.zeros(r, dtype=torch.float64)
        pruned_at: list[dict[str, int]] = []
        bar = tqdm(range(steps), desc="concept inversion", disable=not self.progress, leave=False)
        for step in bar:
            idx = alive.nonzero()[:, 0].to(self.device)
            cur = {n: params[n][idx] for n in prob.continuous}
            cur.update({n: state[n][idx] for n in prob.discrete})
            sd = prob.draws(self.step_draws, self.t_range, gen)
            with torch.enable_grad():
                loss = prob.loss(cur, sd, self.batch, counter)
                grads = torch.autograd.grad(
                    loss.sum(), [params[n] for n in prob.continuous], allow_unused=True
                )
            for n, gr in zip(prob.continuous, grads, strict=True):
                if gr is None:
                    raise FactorError(
                        f"the loss has no gradient with respect to control {n!r}: its factor does not "
                        "differentiate through that condition"
                    )
                params[n].grad = gr
            for grp in opt.param_groups:  # cosine decay: averages out the one-draw gradient noise
                grp["lr"] = self.lr * (
                    self.lr_min + (1 - self.lr_min) * 0.5 * (1 + math.cos(math.pi * step / steps))
                )
            opt.step()
            _project(params, boxes)
            lv = loss.detach().double().cpu()
            traces[alive.nonzero()[:, 0], step] = lv
            since[alive] += lv
            last = step == steps - 1
            if (step + 1) % self.prune_every == 0 or last:
                if prob.discrete:
                    cur = {n: params[n].detach()[idx] for n in prob.continuous}
                    cur.update({n: state[n][idx] for n in prob.discrete})
                    new, _ = self._coordinate(prob, cur, self._sub(draws), counter)
                    for n in prob.discrete:
                        state[n][idx] = new[n]
                n_alive = int(alive.sum())
                n_keep = max(self.min_restarts, math.ceil(self.keep * n_alive))
                if not last and n_keep < n_alive:
                    live = alive.nonzero()[:, 0]
                    order = since[live].argsort()
                    alive[live[order[n_keep:]]] = False
                    pruned_at.append({"step": step + 1, "alive": n_keep})
                since.zero_()
            if callback is not None:
                callback(step, {"loss": lv, "alive": alive.clone()})
        final = {n: params[n].detach() for n in prob.continuous}
        final.update({n: state[n] for n in prob.discrete})
        return final, alive, traces, pruned_at

    def _sub(self, draws: list[tuple]) -> list[tuple]:
        k = self.search_draws
        return [(t[:k], e[:k], x[:k]) for t, e, x in draws]

    def _greedy(self, prob: _Problem, draws: list[tuple], counter: list[int]) -> dict[str, torch.Tensor]:
        """Matching pursuit with backfitting: place the concept observables one at a time on a
        grid given those already placed, then re-place each given all the others
        (``greedy_sweeps`` times); see the module docstring."""
        placed: dict[str, torch.Tensor] = {}
        sub = self._sub(draws)
        order = [o for g in prob.groups for o in g.obs if o.controls]
        fixed = {o.name for g in prob.groups for o in g.obs if not o.controls}
        for o in order:
            new = [c for c in dict.fromkeys(o.controls) if c not in placed]
            done = {p.name for p in order if set(p.controls) <= set(placed)} | fixed
            if new:
                placed.update(self._scan(prob, o, new, placed, done, sub, counter))
        for _ in range(self.greedy_sweeps):
            placed, _ = self._sweep(prob, placed, sub, counter)
        return {c: v[0] for c, v in placed.items()}

    def _sweep(
        self,
        prob: _Problem,
        state: dict[str, torch.Tensor],
        sub: list[tuple],
        counter: list[int],
        judge: list[tuple] | None = None,
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """One backfitting pass: re-place each concept observable's own controls on the grid given
        all the others at their ``state`` values (``(1, ...)`` tensors), scanning on the draws
        ``sub``.  With ``judge`` (draws) the ``relocate_top`` best grid points are refined off the
        grid and one moves the observable only if it beats the current place on ``judge``.
        Returns the state and the observables moved."""
        state = dict(state)
        order = [o for g in prob.groups for o in g.obs if o.controls]
        fixed = {o.name for g in prob.groups for o in g.obs if not o.controls}
        moved = []
        for o in order:
            own = [
                c for c in dict.fromkeys(o.controls) if all(c not in p.controls for p in order if p is not o)
            ]
            if not own:
                continue
            others = {k: v for k, v in state.items() if k not in own}
            done = {p.name for p in order if p is not o} | fixed
            pick = self._scan(
                prob, o, own, others, done, sub, counter, 1 if judge is None else self.relocate_top
            )
            if judge is not None:  # the grid's best points, refined off the grid, against the current place
                pick = self._refine(prob, o, pick, others, done, sub, counter)
                trial = {c: torch.cat([state[c], pick[c]]) for c in own}
                pick = self._best(prob, o, trial, others, done, judge, counter)
            if not all(torch.equal(pick[c], state[c]) for c in own):
                moved.append(o.name)
            state.update(pick)
        return state, moved

    def _refine(
        self,
        prob: _Problem,
        o: _Obs,
        pick: dict[str, torch.Tensor],
        placed: dict[str, torch.Tensor],
        done: set[str],
        sub: list[tuple],
        counter: list[int],
        steps: int = 10,
    ) -> dict[str, torch.Tensor]:
        """``steps`` optimiser steps on the continuous controls of each row of ``pick`` (observable
        ``o``), the others fixed at ``placed``, on the fixed draws ``sub``: a grid point is up to
        half a cell from the minimum it stands for, too far to compare it with a refined place."""
        cont = [c for c in pick if c in prob.continuous]
        if not cont:
            return pick
        n = next(iter(pick.values())).shape[0]
        placed = {k: v.expand(n, *v.shape[1:]) for k, v in placed.items()}
        with torch.no_grad():
            base = prob.predict(placed, sub, self.batch, counter, lambda p: p.name in done and p is not o)
        params = {c: pick[c].clone().requires_grad_(True) for c in cont}
        opt = (torch.optim.Adam if self.optimizer == "adam" else torch.optim.SGD)(
            list(params.values()), lr=self.lr
        )
        boxes = {c: prob.interval(c) for c in cont}
        for _ in range(steps):
            with torch.enable_grad():
                var = prob.predict({**placed, **pick, **params}, sub, self.batch, counter, lambda p: p is o)
                loss = prob.error([b + v for b, v in zip(base, var, strict=True)], sub).sum()
                grads = torch.autograd.grad(loss, list(params.values()))
            for p, g in zip(params.values(), grads, strict=True):
                p.grad = g
            opt.step()
            _project(params, boxes)
        return {**pick, **{c: p.detach() for c, p in params.items()}}

    def _relocations(
        self,
        prob: _Problem,
        final: dict[str, torch.Tensor],
        losses: torch.Tensor,
        b: int,
        draws: list[tuple],
        gen: torch.Generator,
        counter: list[int],
    ) -> list[dict[str, Any]]:
        """Up to ``relocate`` rounds on the best restart ``b`` (updated in place in ``final`` and
        ``losses``): a keep-if-better backfitting sweep over the grid, then ``relocate_steps``
        optimiser steps; the round is accepted if the re-scored loss on ``draws`` drops."""
        rounds: list[dict[str, Any]] = []
        for _ in range(self.relocate):
            best = {n: v[b : b + 1] for n, v in final.items()}
            state, moved = self._sweep(prob, best, self._sub(draws), counter, judge=draws)
            if not moved:
                break
            state = self._descend(prob, state, self.relocate_steps, draws, gen, counter)[0]
            with torch.no_grad():
                new = float(prob.loss(state, draws, self.batch, counter)[0])
            accepted = new < float(losses[b])
            rounds.append({"moved": moved, "loss": new, "accepted": accepted})
            if not accepted:
                break
            for n in final:
                final[n][b] = state[n][0]
            losses[b] = new
        return rounds

    def _scan(
        self,
        prob: _Problem,
        o: _Obs,
        names: list[str],
        placed: dict[str, torch.Tensor],
        done: set[str],
        sub: list[tuple],
        counter: list[int],
        top: int = 1,
    ) -> dict[str, torch.Tensor]:
        """The ``top`` best grid points (times discrete candidates) for controls ``names`` of
        observable ``o``, as ``(top, ...)`` tensors, with the observables in ``done`` at their
        ``placed`` values and the rest left out."""
        relaxed = [c for c in names if c in prob.candidates and self.greedy_relax]
        axes = []
        for c in names:
            if c in relaxed:
                m = prob.candidates[c].shape[0]
                if not torch.equal(prob.candidates[c].cpu().long(), torch.arange(m)):
                    raise SceneError(f"greedy_relax needs control {c!r}'s candidates to be 0..{m - 1}")
                axes.append(torch.full((1, m), 1.0 / m, dtype=self.dtype))  # uniform class probabilities
            elif c in prob.candidates:
                axes.append(prob.candidates[c].reshape(prob.candidates[c].shape[0], -1))
            else:
                box = prob.interval(c)
                if box is None:
                    raise SceneError(
                        f"init='greedy' and relocate need a bounded prior (e.g. Uniform) on control {c!r} "
                        "to lay a grid"
                    )
                lo, hi = box[0].reshape(-1).cpu(), box[1].reshape(-1).cpu()
                u = (torch.arange(self.grid, dtype=self.dtype) + 0.5) / self.grid
                pts = torch.cartesian_prod(*[lo[j] + (hi[j] - lo[j]) * u for j in range(lo.numel())])
                axes.append(pts.reshape(-1, lo.numel()))
        combo = torch.cartesian_prod(*[torch.arange(a.shape[0]) for a in axes]).reshape(-1, len(axes))
        trial = {}
        for j, c in enumerate(names):
            vals = axes[j][combo[:, j]]
            if c in prob.candidates and c not in relaxed:
                vals = prob.candidates[c][combo[:, j]]
            shape = vals.shape[1:] if c in relaxed else prob.shapes[c]
            trial[c] = vals.reshape(combo.shape[0], *shape).to(self.device)
        picks = self._best(prob, o, trial, placed, done, sub, counter, top)
        rows = []
        for j in range(next(iter(picks.values())).shape[0]):
            pick = {k: v[j : j + 1] for k, v in picks.items()}
            for c in relaxed:  # the discrete values at the chosen point, one control at a time
                m = prob.candidates[c].shape[0]
                trial = {k: v.expand(m, *v.shape[1:]) for k, v in pick.items()}
                trial[c] = prob.candidates[c].to(self.device)
                pick.update(self._best(prob, o, trial, placed, done, sub, counter))
            rows.append(pick)
        return {c: torch.cat([r[c] for r in rows]) for c in names}

    def _best(
        self,
        prob: _Problem,
        o: _Obs,
        trial: dict[str, torch.Tensor],
        placed: dict[str, torch.Tensor],
        done: set[str],
        sub: list[tuple],
        counter: list[int],
        top: int = 1,
    ) -> dict[str, torch.Tensor]:
        """The ``top`` entries of ``trial`` (``C`` candidate values) with the lowest loss, best first,
        as ``(top, ...)`` tensors."""
        n = next(iter(trial.values())).shape[0]
        full = {**{k: v.expand(n, *v.shape[1:]) for k, v in placed.items()}, **trial}
        with torch.no_grad():
            base = prob.predict(placed, sub, self.batch, counter, lambda p: p.name in done and p is not o)
            var = prob.predict(full, sub, self.batch, counter, lambda p: p is o)
            loss = prob.error([b + v for b, v in zip(base, var, strict=True)], sub)
        j = loss.argsort(stable=True)[: min(top, n)]
        return {c: v[j] for c, v in trial.items()}

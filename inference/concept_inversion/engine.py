"""The concept-inversion engine: configuration, the run, the loss of given concepts, choice of K."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch

from probcomp.compiled_inversion import CompiledInversion
from probcomp.errors import SceneError
from probcomp.results import Result
from probcomp.scene import Scene
from probcomp.validation import check_count, check_positive

from ..base import Engine, EngineOptions, seeded
from . import discrete
from .convergence import assess, line_search_drop, warn_if_unconverged
from .descent import descend
from .placement import greedy, relocate
from .search import _Search

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's from Python 3.11


class ConceptInversion(Engine):
    """Infer the conditions (concepts) of observed data; see the package docstring.

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
        step_draws: draws per gradient step (1 in Wang 2026, Alg. 5).
        t_range: the noise levels ``t`` of the loss, in the factors' schedule time
            (Wang 2026, Eq. 5.7, draws all of ``(0, 1]``).
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
            never visited); see the package docstring.
        max_configs: largest all-discrete space enumerated exhaustively.
        sweeps: coordinate-search sweeps over discrete controls at each use during a continuous
            run (an all-discrete search sweeps until nothing changes, at most 10 times).
        batch: most network inputs per call.
        dtype, device, progress: as in :class:`~probcomp.inference.base.Engine`.
        callback: called after every step of the descent with a
            :class:`~probcomp.inference.base.LevelInfo` (``t`` is ``None``; ``x`` every restart's
            concepts; values ``loss`` of the live restarts and ``alive``).
    """

    name = "concept-inversion"

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
        **options: Unpack[EngineOptions],
    ) -> None:
        super().__init__(**options)
        if optimizer not in ("adam", "sgd"):
            raise SceneError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if init not in ("random", "greedy"):
            raise SceneError(f"init must be 'random' or 'greedy', got {init!r}")
        counts = dict(
            steps=steps, draws=draws, step_draws=step_draws, grid=grid, restarts=restarts,
            min_restarts=min_restarts, prune_every=prune_every, batch=batch, search_draws=search_draws,
            max_configs=max_configs, sweeps=sweeps,
        )  # fmt: skip
        for name, v in counts.items():
            check_count(name, v, error=SceneError)
        check_count("greedy_sweeps", greedy_sweeps, 0, error=SceneError)
        check_count("relocate", relocate, 0, error=SceneError)
        if relocate_steps is not None:
            check_count("relocate_steps", relocate_steps, error=SceneError)
        if not (0 < check_positive("keep", keep) <= 1):
            raise SceneError(f"keep must be in (0, 1], got {keep}")
        try:
            lo, hi = (float(v) for v in t_range)
        except (TypeError, ValueError):
            raise SceneError(f"t_range must be a pair (low, high), got {t_range!r}") from None
        if not (0 < lo < hi <= 1):
            raise SceneError(f"t_range must satisfy 0 < low < high <= 1, got {t_range}")
        lr, lr_min = check_positive("lr", lr), check_positive("lr_min", lr_min, allow_zero=True)
        self.steps, self.restarts, self.lr, self.optimizer = int(steps), int(restarts), float(lr), optimizer
        self.lr_min = float(lr_min)
        self.prune_every, self.keep, self.min_restarts = int(prune_every), float(keep), int(min_restarts)
        self.draws, self.step_draws, self.t_range = int(draws), int(step_draws), (lo, hi)
        self.search_draws, self.greedy_sweeps = int(search_draws), int(greedy_sweeps)
        self.greedy_relax = bool(greedy_relax)
        self.relocate, self.relocate_top = int(relocate), 4
        self.relocate_steps = max(1, int(steps) // 2) if relocate_steps is None else int(relocate_steps)
        self.init, self.grid, self.max_configs, self.sweeps = init, int(grid), int(max_configs), int(sweeps)
        self.batch = int(batch)

    # Public -------------------------------------------------------------------------
    def compile(self, scene: Scene, candidates: dict[str, Any] | None = None) -> CompiledInversion:
        """``scene`` read for inversion at the engine's batch, dtype and device;
        ``candidates`` overrides discrete supports by name."""
        return CompiledInversion(scene, candidates, batch=self.batch, dtype=self.dtype, device=self.device)

    def _prepare(
        self, scene: Scene | CompiledInversion, candidates: dict[str, Any] | None
    ) -> CompiledInversion:
        if not isinstance(scene, CompiledInversion):
            return self.compile(scene, candidates)
        if candidates is not None:
            raise SceneError("candidates are fixed when the scene is compiled: pass them to compile()")
        if scene.dtype != self.dtype or scene.device != self.device:
            raise SceneError(
                f"the inversion was compiled for {scene.dtype} on {scene.device}, "
                f"the engine runs {self.dtype} on {self.device}"
            )
        return scene

    def run(
        self,
        scene: Scene | CompiledInversion,
        *,
        seed: Any = 0,
        candidates: dict[str, Any] | None = None,
    ) -> Result:
        """Infer every control of ``scene`` (a scene, or one compiled by :meth:`compile`);
        ``candidates`` overrides discrete supports by name.

        The result's ``point`` (``res[name]``, ``res.concepts``) is the answer and ``loss`` its
        loss on the shared draws; the samples are every restart's final value (the answer alone
        after enumeration), ``res.restart_losses`` their re-scored losses (NaN where pruned),
        ``res.traces`` the ``(R, steps)`` loss of each restart per step (NaN once pruned).
        ``stats["relocations"]`` lists the relocation rounds: the observables moved, the
        re-scored loss, and whether the round was kept (the best restart's sample and loss are
        then the relocated ones).
        """
        t0 = time.perf_counter()
        prob = self._prepare(scene, candidates)
        prob.reset_counters()
        gen, seed = seeded(seed, torch.device("cpu"))  # on the CPU whatever the device: same draws anywhere
        s = _Search(prob, self, gen, prob.draws(self.draws, self.t_range, gen))
        res = self._continuous(s) if prob.continuous else discrete.solve(s)
        res.stats.update(
            nfe=dict(prob.nfe),
            nfe_total=prob.nfe_total,
            calls=prob.calls,
            wall_time=round(time.perf_counter() - t0, 4),
            seed=seed,
        )
        return res

    def loss(
        self,
        scene: Scene | CompiledInversion,
        concepts: dict[str, Any],
        *,
        seed: Any = 0,
        candidates: dict[str, Any] | None = None,
    ) -> float:
        """The composed denoising loss ``L(c)`` (Wang 2026, Eq. 5.7) of given ``concepts``.

        It is measured on the ``draws`` shared draws that :meth:`run` with the same
        ``seed`` re-scores its answer on, so ``loss(scene, run(scene, seed=s).concepts,
        seed=s)`` equals that run's ``loss``.  Compare an answer with the ground truth
        this way: a truth with a much lower loss means the search failed; a truth with
        a higher loss means the model prefers the wrong answer.
        """
        prob = self._prepare(scene, candidates)
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
        draws = prob.draws(self.draws, self.t_range, seeded(seed, torch.device("cpu"))[0])
        with torch.no_grad():
            return float(prob.loss(state, draws)[0])

    def choose_k(
        self,
        build: Callable[[int], Scene],
        k_min: int,
        k_max: int,
        *,
        seed: Any = 0,
        candidates: Callable[[int], dict[str, Any]] | None = None,
    ) -> Result:
        """Invert ``build(K)`` for every ``K`` in ``[k_min, k_max]``; keep the lowest loss
        (Wang 2026, Eq. 5.9, Alg. 6).

        Every ``K`` is run from the same seed, so its final losses are measured on the
        same shared draws and compare fairly.  The result is the chosen ``K``'s, with
        ``stats["k"]`` and ``stats["k_losses"]`` set (``res.k``, ``res.k_losses``) and every
        run kept in ``res.per_k``.
        """
        k_min, k_max = (
            check_count("K_min", k_min, error=SceneError),
            check_count("K_max", k_max, error=SceneError),
        )
        if k_min < 1 or k_min > k_max:
            raise SceneError(f"need 1 <= K_min <= K_max, got K_min={k_min}, K_max={k_max}")
        runs = {
            k: self.run(build(k), seed=seed, candidates=candidates(k) if candidates else None)
            for k in range(k_min, k_max + 1)
        }
        best = min(runs, key=lambda k: cast(float, runs[k].loss))  # run() always sets the loss
        out = runs[best]
        out.stats["k"], out.stats["k_losses"] = best, {k: r.loss for k, r in runs.items()}
        out.per_k = runs
        out.stats["nfe_all_k"] = sum(r.stats["nfe_total"] for r in runs.values())
        out.stats["wall_time_all_k"] = round(sum(r.stats["wall_time"] for r in runs.values()), 4)
        return out

    # Continuous concepts --------------------------------------------------------------
    def _continuous(self, s: _Search) -> Result:
        """``restarts`` starts (the first greedy with ``init="greedy"``), the descent, the
        survivors re-scored on the shared draws, relocation rounds on the best."""
        prob, r = s.prob, self.restarts
        state = {n: prob.init(n, r, s.gen) for n in prob.continuous}
        for n in prob.discrete:
            state[n] = prob.candidates[n][torch.randint(prob.candidates[n].shape[0], (r,), generator=s.gen)]
            state[n] = state[n].to(self.device)
        if self.init == "greedy":
            first = greedy(s)
            for n in state:
                state[n][0] = first[n]
        final, alive, traces, pruned = descend(s, state, self.steps, report=True)
        idx = alive.nonzero()[:, 0]
        with torch.no_grad():
            scored = prob.loss({n: v[idx.to(self.device)] for n, v in final.items()}, s.draws)
        losses = torch.full((r,), float("nan"), dtype=torch.float64)
        losses[idx] = scored.double().cpu()
        b = int(idx[int(scored.argmin())])
        moves = relocate(s, final, losses, b)
        drop = line_search_drop(prob, {n: v[b : b + 1] for n, v in final.items()}, s.draws, self.lr)
        conv = assess(drop, losses)
        warn_if_unconverged(conv, steps=self.steps, restarts=r)
        method = (
            f"{self.optimizer} x {r} restarts"
            + (" (greedy first)" if self.init == "greedy" else "")
            + (f" + {self.relocate} relocation rounds" if self.relocate else "")
        )
        return Result(
            {n: v.cpu() for n, v in final.items()},
            {
                "method": method,
                "pruned": pruned,
                "best_restart": b,
                "relocations": moves,
                "converged": conv.converged,
                "convergence": conv.as_dict(),
            },
            {"loss": losses},
            engine=self.name,
            point={n: v[b].cpu() for n, v in final.items()},
            loss=float(losses[b]),
            traces=traces,
        )

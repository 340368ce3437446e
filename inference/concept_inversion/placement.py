"""Greedy placement and relocation of concept observables on a grid over their supports.

The start (``init="greedy"``) is matching pursuit with backfitting: each concept observable
is placed in turn at the best point of a grid (:meth:`_Slot.scan`) given those already
placed, then :func:`sweep` re-places each given all the others.  Relocation (:func:`relocate`)
is a keep-if-better sweep on the best restart after the descent, each observable's best
grid points refined off the grid (:meth:`_Slot.refine`) before they are compared with its
current place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from probcomp.compiled_inversion import Draws, InversionTerm, State
from probcomp.errors import SceneError

from .descent import descend
from .search import _Search


@dataclass
class _Slot:
    """Observable ``o`` to be placed: the observables named in ``done`` (other than ``o``) at
    their ``placed`` values (``(1, ...)`` tensors), the rest left out of the sum, all scored on
    ``draws``."""

    s: _Search
    o: InversionTerm
    placed: State
    done: set[str]
    draws: Draws

    def _fixed(self, placed: State) -> list[torch.Tensor | float]:
        """The prediction of the placed observables other than ``o``."""
        return self.s.prob.predict(placed, self.draws, lambda p: p.name in self.done and p is not self.o)

    def best(self, trial: State, top: int = 1) -> State:
        """The ``top`` entries of ``trial`` (``C`` values of ``o``'s controls) with the lowest
        loss, best first, as ``(top, ...)`` tensors."""
        prob = self.s.prob
        n = next(iter(trial.values())).shape[0]
        full = {**{k: v.expand(n, *v.shape[1:]) for k, v in self.placed.items()}, **trial}
        with torch.no_grad():
            base = self._fixed(self.placed)
            var = prob.predict(full, self.draws, lambda p: p is self.o)
            loss = prob.error([b + v for b, v in zip(base, var, strict=True)], self.draws)
        j = loss.argsort(stable=True)[: min(top, n)]
        return {c: v[j] for c, v in trial.items()}

    def scan(self, names: list[str], top: int = 1) -> State:
        """The ``top`` best points of a grid over the supports of ``o``'s controls ``names``
        (``grid`` points a dimension, times the discrete candidates, or with those relaxed to
        class probabilities and enumerated at each point after), as ``(top, ...)`` tensors."""
        prob, eng = self.s.prob, self.s.eng
        relaxed = [c for c in names if c in prob.candidates and eng.greedy_relax]
        axes = [self._axis(c, c in relaxed) for c in names]
        combo = torch.cartesian_prod(*[torch.arange(a.shape[0]) for a in axes]).reshape(-1, len(axes))
        trial = {}
        for j, c in enumerate(names):
            vals = axes[j][combo[:, j]]
            if c in prob.candidates and c not in relaxed:
                vals = prob.candidates[c][combo[:, j]]
            shape = vals.shape[1:] if c in relaxed else prob.shapes[c]
            trial[c] = vals.reshape(combo.shape[0], *shape).to(eng.device)
        picks = self.best(trial, top)
        rows = []
        for j in range(next(iter(picks.values())).shape[0]):
            pick = {k: v[j : j + 1] for k, v in picks.items()}
            for c in relaxed:  # the discrete values at the chosen point, one control at a time
                m = prob.candidates[c].shape[0]
                trial = {k: v.expand(m, *v.shape[1:]) for k, v in pick.items()}
                trial[c] = prob.candidates[c].to(eng.device)
                pick.update(self.best(trial))
            rows.append(pick)
        return {c: torch.cat([r[c] for r in rows]) for c in names}

    def _axis(self, c: str, relaxed: bool) -> torch.Tensor:
        """The grid's values of control ``c``, ``(points, ...)``."""
        prob, eng = self.s.prob, self.s.eng
        if relaxed:
            m = prob.candidates[c].shape[0]
            if not torch.equal(prob.candidates[c].cpu().long(), torch.arange(m)):
                raise SceneError(f"greedy_relax needs control {c!r}'s candidates to be 0..{m - 1}")
            return torch.full((1, m), 1.0 / m, dtype=eng.dtype)  # uniform class probabilities
        if c in prob.candidates:
            return prob.candidates[c].reshape(prob.candidates[c].shape[0], -1)
        box = prob.interval(c)
        if box is None:
            raise SceneError(
                f"init='greedy' and relocate need a bounded prior (e.g. Uniform) on control {c!r} "
                "to lay a grid"
            )
        lo, hi = box[0].reshape(-1).cpu(), box[1].reshape(-1).cpu()
        u = (torch.arange(eng.grid, dtype=eng.dtype) + 0.5) / eng.grid
        pts = torch.cartesian_prod(*[lo[j] + (hi[j] - lo[j]) * u for j in range(lo.numel())])
        return pts.reshape(-1, lo.numel())

    def refine(self, pick: State, steps: int = 10) -> State:
        """``steps`` optimiser steps on the continuous controls of each row of ``pick``, on the
        fixed ``draws``: a grid point is up to half a cell from the minimum it stands for, too
        far to compare it with a refined place."""
        prob, s = self.s.prob, self.s
        cont = [c for c in pick if c in prob.continuous]
        if not cont:
            return pick
        n = next(iter(pick.values())).shape[0]
        placed = {k: v.expand(n, *v.shape[1:]) for k, v in self.placed.items()}
        with torch.no_grad():
            base = self._fixed(placed)
        params = {c: pick[c].clone().requires_grad_(True) for c in cont}
        opt = s.optimizer(params)
        for _ in range(steps):
            with torch.enable_grad():
                var = prob.predict({**placed, **pick, **params}, self.draws, lambda p: p is self.o)
                loss = prob.error([b + v for b, v in zip(base, var, strict=True)], self.draws).sum()
                grads = torch.autograd.grad(loss, list(params.values()))
            s.step(opt, params, grads)
        return {**pick, **{c: p.detach() for c, p in params.items()}}


def _concept_terms(s: _Search) -> tuple[list[InversionTerm], set[str]]:
    """The observables conditioned on controls, in scene order, and the names of the others."""
    terms = s.prob.terms
    return [o for o in terms if o.controls], {o.name for o in terms if not o.controls}


def greedy(s: _Search) -> State:
    """The greedy start: each concept observable placed on the grid given those already placed
    (the unplaced left out), then ``greedy_sweeps`` backfitting sweeps; one value per control."""
    placed: State = {}
    order, fixed = _concept_terms(s)
    for o in order:
        new = [c for c in dict.fromkeys(o.controls) if c not in placed]
        done = {p.name for p in order if set(p.controls) <= set(placed)} | fixed
        if new:
            placed.update(_Slot(s, o, placed, done, s.sub).scan(new))
    for _ in range(s.eng.greedy_sweeps):
        placed, _ = sweep(s, placed)
    return {c: v[0] for c, v in placed.items()}


def sweep(s: _Search, state: State, *, judge: bool = False) -> tuple[State, list[str]]:
    """One backfitting pass: re-place each concept observable's own controls on the grid given
    all the others at their ``state`` values (``(1, ...)`` tensors), scanning on the search draws.
    With ``judge`` the ``relocate_top`` best grid points are refined off the grid, and one moves
    the observable only if it beats the current place on all the shared draws.  Returns the
    state and the observables moved."""
    state = dict(state)
    order, fixed = _concept_terms(s)
    moved = []
    for o in order:
        own = [c for c in dict.fromkeys(o.controls) if all(c not in p.controls for p in order if p is not o)]
        if not own:
            continue
        others = {k: v for k, v in state.items() if k not in own}
        slot = _Slot(s, o, others, {p.name for p in order if p is not o} | fixed, s.sub)
        pick = slot.scan(own, s.eng.relocate_top if judge else 1)
        if judge:  # the grid's best points, refined off the grid, against the current place
            pick = slot.refine(pick)
            trial = {c: torch.cat([state[c], pick[c]]) for c in own}
            pick = replace(slot, draws=s.draws).best(trial)
        if not all(torch.equal(pick[c], state[c]) for c in own):
            moved.append(o.name)
        state.update(pick)
    return state, moved


def relocate(s: _Search, final: State, losses: torch.Tensor, b: int) -> list[dict[str, Any]]:
    """Up to ``relocate`` rounds on the best restart ``b`` (updated in place in ``final`` and
    ``losses``): a keep-if-better backfitting sweep, then ``relocate_steps`` optimiser steps;
    the round is accepted if the re-scored loss on the shared draws drops."""
    rounds: list[dict[str, Any]] = []
    for _ in range(s.eng.relocate):
        best = {n: v[b : b + 1] for n, v in final.items()}
        state, moved = sweep(s, best, judge=True)
        if not moved:
            break
        state = descend(s, state, s.eng.relocate_steps).state
        with torch.no_grad():
            new = float(s.prob.loss(state, s.draws)[0])
        accepted = new < float(losses[b])
        rounds.append({"moved": moved, "loss": new, "accepted": accepted})
        if not accepted:
            break
        for n in final:
            final[n][b] = state[n][0]
        losses[b] = new
    return rounds

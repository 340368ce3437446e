"""Descent on continuous concepts: Adam or SGD from every restart, with pruning (Wang 2026, Alg. 5)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from probcomp.compiled_inversion import State
from probcomp.errors import FactorError

from .discrete import coordinate
from .search import _Search


class Descent(NamedTuple):
    """A descent's outcome: every particle's final ``state``, the ``alive`` ones ``(R,)``, the
    ``(R, steps)`` loss ``traces`` (NaN once pruned) and the prunings (step, restarts kept)."""

    state: State
    alive: torch.Tensor
    traces: torch.Tensor
    pruned: list[dict[str, int]]


def descend(s: _Search, state: State, steps: int, *, report: bool = False) -> Descent:
    """``steps`` optimiser steps from every particle of ``state`` (``(R, ...)`` per control).

    Each step draws ``step_draws`` fresh ``(t, eps)`` shared by all particles; the step size
    decays on a cosine from ``lr`` to ``lr_min * lr``.  Every ``prune_every`` steps (and at
    the end) the discrete controls are set by coordinate search on the search draws, and the
    worst ``1 - keep`` of the live particles (by their mean loss since the last pruning, on
    the same draws for all) are dropped, down to ``min_restarts``.  With ``report`` the
    engine's callback sees every step (``loss``, ``alive``).
    """
    prob, eng = s.prob, s.eng
    state = {n: v.clone() for n, v in state.items()}
    r = next(iter(state.values())).shape[0]
    alive = torch.ones(r, dtype=torch.bool)
    traces = torch.full((r, steps), float("nan"), dtype=torch.float64)
    params = {n: state[n].clone().requires_grad_(True) for n in prob.continuous}
    opt = s.optimizer(params)
    since = torch.zeros(r, dtype=torch.float64)
    pruned: list[dict[str, int]] = []
    for step in eng.bar(steps, "concept inversion"):
        idx = alive.nonzero()[:, 0].to(eng.device)
        cur = {n: params[n][idx] for n in prob.continuous}
        cur.update({n: state[n][idx] for n in prob.discrete})
        sd = prob.draws(eng.step_draws, eng.t_range, s.gen)
        with torch.enable_grad():
            loss = prob.loss(cur, sd)
            grads = torch.autograd.grad(loss.sum(), list(params.values()), allow_unused=True)
        for n, gr in zip(prob.continuous, grads, strict=True):
            if gr is None:
                raise FactorError(
                    f"the loss has no gradient with respect to control {n!r}: its factor does not "
                    "differentiate through that condition"
                )
        for grp in opt.param_groups:  # cosine decay: averages out the one-draw gradient noise
            grp["lr"] = eng.lr * (
                eng.lr_min + (1 - eng.lr_min) * 0.5 * (1 + math.cos(math.pi * step / steps))
            )
        s.step(opt, params, grads)
        lv = loss.detach().double().cpu()
        traces[alive.nonzero()[:, 0], step] = lv
        since[alive] += lv
        last = step == steps - 1
        if (step + 1) % eng.prune_every == 0 or last:
            if prob.discrete:
                cur = {n: params[n].detach()[idx] for n in prob.continuous}
                cur.update({n: state[n][idx] for n in prob.discrete})
                new = coordinate(s, cur, s.sub)
                for n in prob.discrete:
                    state[n][idx] = new[n]
            n_alive = int(alive.sum())
            n_keep = max(eng.min_restarts, math.ceil(eng.keep * n_alive))
            if not last and n_keep < n_alive:
                live = alive.nonzero()[:, 0]
                order = since[live].argsort()
                alive[live[order[n_keep:]]] = False
                pruned.append({"step": step + 1, "alive": n_keep})
            since.zero_()
        if report and eng.callback is not None:
            x = {n: params[n].detach().clone() for n in prob.continuous}
            x.update({n: state[n].clone() for n in prob.discrete})
            eng.notify(step, None, x, loss=lv, alive=alive.clone())
    final = {n: params[n].detach() for n in prob.continuous}
    final.update({n: state[n] for n in prob.discrete})
    return Descent(final, alive, traces, pruned)

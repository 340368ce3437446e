"""Discrete search: exhaustive enumeration (Wang 2026, Alg. 4) and coordinate search."""

from __future__ import annotations

import math

import torch

from probcomp.compiled_inversion import Draws, State
from probcomp.errors import NumericalError
from probcomp.results import Result

from .search import _Search


def solve(s: _Search) -> Result:
    """An all-discrete scene: enumerate up to ``max_configs`` configurations on the shared
    draws, coordinate search (from a random configuration) beyond."""
    prob, eng = s.prob, s.eng
    names = prob.discrete
    sizes = [prob.candidates[n].shape[0] for n in names]
    total = math.prod(sizes)
    if total > eng.max_configs:
        state = {
            n: prob.candidates[n][torch.randint(m, (1,), generator=s.gen)]
            for n, m in zip(names, sizes, strict=True)
        }
        state = coordinate(s, state, s.draws, sweeps=max(eng.sweeps, 10))
        with torch.no_grad():
            loss = prob.loss(state, s.draws)
        return Result(
            state,
            {"method": "coordinate", "configurations": total},
            {"loss": loss},
            engine=eng.name,
            point={n: v[0] for n, v in state.items()},
            loss=float(loss[0]),
        )
    losses = enumerate_losses(s)  # (M1, ..., Mn)
    flat = losses.reshape(-1)
    j = int(flat.argmin())
    idx = [int(i) for i in torch.unravel_index(torch.tensor(j), tuple(sizes))]
    concepts = {n: prob.candidates[n][i] for n, i in zip(names, idx, strict=True)}
    return Result(
        {n: v[None] for n, v in concepts.items()},
        {"method": "enumerate", "configurations": total, "losses": losses},
        engine=eng.name,
        point=concepts,
        loss=float(flat[j]),
    )


def enumerate_losses(s: _Search) -> torch.Tensor:
    """The loss of every configuration of the discrete controls on the shared draws,
    ``(M_1, ..., M_n)``, from one evaluation per observable and distinct value of its own
    conditions (``sum_i M^{|c_i|}`` network inputs per draw, not ``K M^K``)."""
    prob, eng = s.prob, s.eng
    names = prob.discrete
    sizes = tuple(prob.candidates[n].shape[0] for n in names)
    pos = {n: i for i, n in enumerate(names)}
    total = torch.zeros(sizes, dtype=eng.dtype, device=eng.device)
    with torch.no_grad():
        for g, draw in zip(prob.groups, s.draws, strict=True):
            pred = torch.zeros((*[1] * len(sizes), *draw.eps.shape), dtype=eng.dtype, device=eng.device)
            for o in g.terms:
                # solve() is for scenes without continuous controls, so every control is in pos
                own = sorted(set(o.controls), key=pos.__getitem__)
                grids = (
                    torch.cartesian_prod(*[torch.arange(sizes[pos[c]]) for c in own]).reshape(-1, len(own))
                    if own
                    else torch.zeros(1, 0, dtype=torch.long)
                )
                cond = {c: prob.candidates[c][grids[:, j]] for j, c in enumerate(own)}
                e = prob.term(o, cond, draw)  # (C, D, *event)
                shape = [sizes[pos[c]] if c in own else 1 for c in names]
                pred = pred + e.reshape(*shape, *e.shape[1:])
            err = (draw.eps - pred).square().flatten(len(sizes) + 1).mean(-1).mean(-1)
            total = total + err
    if not bool(torch.isfinite(total).all()):  # a NaN configuration must not win the argmin
        bad = int((~torch.isfinite(total)).sum())
        raise NumericalError(
            f"the denoising loss is not finite for {bad} of {total.numel()} configurations "
            "(a factor returned NaN or inf for some condition value)"
        )
    return total


def coordinate(s: _Search, state: State, draws: Draws, sweeps: int | None = None) -> State:
    """Coordinate search over the discrete controls of every particle of ``state`` (beam
    width 1) on ``draws``: ``sweeps`` sweeps (default the engine's), or fewer if one changes
    nothing.

    For control ``n`` the terms that do not depend on ``n`` are evaluated once per particle
    and the others once per particle and candidate.
    """
    prob = s.prob
    state = dict(state)
    r = next(iter(state.values())).shape[0]
    with torch.no_grad():
        for _ in range(sweeps or s.eng.sweeps):
            changed = False
            for n in prob.discrete:
                cand = prob.candidates[n].to(s.eng.device)
                m = cand.shape[0]
                base = prob.predict(state, draws, lambda o, n=n: n not in o.controls)
                trial = {k: v.repeat_interleave(m, 0) for k, v in state.items()}
                trial[n] = cand.repeat(r, *[1] * (cand.ndim - 1))
                var = prob.predict(trial, draws, lambda o, n=n: n in o.controls)
                preds = [
                    (b.repeat_interleave(m, 0) if isinstance(b, torch.Tensor) else b) + v
                    for b, v in zip(base, var, strict=True)
                ]
                loss = prob.error(preds, draws).reshape(r, m)
                pick = loss.argmin(1)
                new = cand[pick]
                changed |= bool((new != state[n]).any())
                state[n] = new
            if not changed:
                break
    return state

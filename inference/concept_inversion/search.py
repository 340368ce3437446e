"""The state one inversion threads through its searches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from probcomp.compiled_inversion import CompiledInversion, Draws, State

if TYPE_CHECKING:
    from .engine import ConceptInversion


@dataclass
class _Search:
    """One run: the compiled inversion (with its NFE counters), the engine's settings, the
    generator every random choice is drawn from, and the ``draws`` shared noise draws that
    enumeration, relocation and the final re-scoring use (their first ``search_draws``,
    :attr:`sub`, score greedy placement and the coordinate search during a descent)."""

    prob: CompiledInversion
    eng: ConceptInversion
    gen: torch.Generator
    draws: Draws
    sub: Draws = field(init=False)

    def __post_init__(self) -> None:
        self.sub = CompiledInversion.first(self.draws, self.eng.search_draws)

    def optimizer(self, params: State) -> torch.optim.Optimizer:
        """The engine's optimiser over ``params`` at its step size."""
        kind = torch.optim.Adam if self.eng.optimizer == "adam" else torch.optim.SGD
        return kind(list(params.values()), lr=self.eng.lr)

    def step(self, opt: torch.optim.Optimizer, params: State, grads: tuple) -> None:
        """Set the gradients, take one optimiser step and project back into the supports."""
        for p, g in zip(params.values(), grads, strict=True):
            p.grad = g
        opt.step()
        self.prob.project(params)

"""Terms of a compiled scene: one weighted factor evaluation each, their kinds and their counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import ops
from .factors import ScoreFactor

__all__ = ["TERM_KINDS", "EvaluationCounter", "Target", "Term", "batch_key"]

TERM_KINDS = ("prior", "explicit", "score")


@dataclass(frozen=True)
class Term:
    """One weighted factor evaluation: ``w * log p(fn(*parents))``.

    ``kind`` is ``"prior"`` (a control's prior), ``"explicit"`` (an
    :class:`~probcomp.factors.ExplicitFactor`: a density at ``t = 0``) or ``"score"``.
    """

    key: str
    observable: str
    factor: ScoreFactor
    weight: float
    fn: ops.Op
    parents: tuple[str, ...]
    kind: str = "score"


class EvaluationCounter:
    """Network evaluations (NFE) per term or observable, and the number of batched factor calls.

    NFE counts evaluations per particle: a factor call on ``N`` particles adds the
    factor's ``cost`` (its leaves' network calls) to each term it scores.
    """

    nfe: dict[str, int]
    calls: int

    def reset_counters(self) -> None:
        self.nfe = {k: 0 for k in self.nfe}
        self.calls = 0

    @property
    def nfe_total(self) -> int:
        return sum(self.nfe.values())


class Target(NamedTuple):
    """Gradient of the scene's log-target per control, and the log-target if asked for."""

    grad: dict[str, torch.Tensor]
    log_p: torch.Tensor | None


def batch_key(factor: ScoreFactor) -> int:
    """Terms whose factors share this key are scored in one batched call: the factor object
    itself, or the ``batch_key`` of factors that are copies of one network (``score_many``)."""
    key = getattr(factor, "batch_key", None)
    return key if isinstance(key, int) and hasattr(type(factor), "score_many") else id(factor)

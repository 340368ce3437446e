"""What a compiled scene says when a run goes wrong: the factor, observable and level at fault."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from .errors import NumericalError
from .terms import Term

if TYPE_CHECKING:
    from . import schedules as sched
    from .compiled import Target

__all__ = ["Diagnostics", "finite_or_raise"]


class Diagnostics:
    """Diagnosis methods of :class:`~probcomp.compiled.CompiledScene` (a mixin: they use its
    terms, schedule, observation and target methods)."""

    if TYPE_CHECKING:  # provided by CompiledScene
        terms: tuple[Term, ...]
        schedule: sched.Schedule

        def observe(self, term: Term, parents: list[torch.Tensor]) -> torch.Tensor: ...

        def factor_time(self, factor: Any, t: Any) -> Any: ...

        def target(
            self, x: dict[str, torch.Tensor], t: Any, *, energy: bool = False, check: bool = True
        ) -> Target: ...

    @staticmethod
    def _names(group: tuple[Term, ...]) -> str:
        return ", ".join(repr(term.key) for term in group)

    @staticmethod
    def _level(t: Any) -> float:
        return float(t) if not isinstance(t, torch.Tensor) or t.numel() == 1 else float(t.max())

    def dominant_term(self, x: dict[str, torch.Tensor], t: Any) -> tuple[Term, float]:
        """The term whose weighted score ``|w s(f(X), t)|`` is largest on average over the
        particles of ``x``, and that mean norm (diagnostics of a diverged run; not counted)."""
        best: tuple[Term, float] | None = None
        with torch.no_grad():
            for term in self.terms:
                y = self.observe(term, [x[p] for p in term.parents])
                score = term.factor.score(y, self.factor_time(term.factor, t))
                norm = float(
                    (term.weight * score).reshape(y.shape[0], -1).norm(dim=1).nan_to_num(math.inf).mean()
                )
                if best is None or norm > best[1]:
                    best = (term, norm)
        assert best is not None
        return best

    def diagnose(self, x: dict[str, torch.Tensor], t: Any, where: str) -> None:
        """Find why a step from state ``x`` at time ``t`` went non-finite; always raises.

        Re-evaluates the target with per-factor checks, so the error names the
        factor whose score is not finite; if every score is finite, the state
        itself diverged (e.g. a step too large for the score's scale).
        """
        finite_or_raise(x, f"before {where}")
        self.target(x, t, check=True)
        raise NumericalError(
            f"the state became non-finite {where} although every factor's score was finite "
            "(the update diverged; try more steps)"
        )

    def _check_finite(self, s: torch.Tensor, e: torch.Tensor | None, group: tuple[Term, ...], t: Any) -> None:
        bad = not bool(torch.isfinite(s).all())
        what = "score"
        if not bad and e is not None and not bool(torch.isfinite(e).all()):
            bad, what = True, "energy"
        if bad:
            tv = self._level(t)
            raise NumericalError(
                f"{what} of factor {group[0].factor.name!r} (observable {self._names(group)}) is not "
                f"finite at noise level t={tv:.4g} (log-SNR {float(self.schedule.log_snr(tv)):.3g})"
            )


def finite_or_raise(x: dict[str, torch.Tensor], where: str) -> None:
    """Raise :class:`NumericalError` if any control state is not finite."""
    for k, v in x.items():
        if not bool(torch.isfinite(v).all()):
            raise NumericalError(f"state of control {k!r} is not finite {where}")

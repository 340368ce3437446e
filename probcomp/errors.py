"""probcomp exceptions.

Every error a user can trigger by writing a scene, passing data or loading a
file is one of these, and its message names the variable, factor, file or
noise level at fault.  The CLI prints them as one line and exits with code 2.
"""

from __future__ import annotations

__all__ = [
    "BatchError",
    "ConvergenceWarning",
    "DataError",
    "FactorError",
    "NumericalError",
    "ProbcompError",
    "SceneError",
    "ScheduleError",
    "ShapeError",
    "first_line",
]


class ProbcompError(Exception):
    """Base class of every error probcomp raises on purpose."""


class SceneError(ProbcompError, ValueError):
    """A scene is malformed: unknown or duplicate names, a non-bipartite edge, an empty scene."""


class ShapeError(SceneError):
    """A tensor or an observation function has the wrong shape for its variable or factor."""


class FactorError(ProbcompError, ValueError):
    """A factor was constructed or used with invalid arguments (e.g. a non-PD covariance)."""


class NumericalError(ProbcompError, FloatingPointError):
    """A score, energy or state became NaN or infinite; the message names the factor and level."""


class ScheduleError(ProbcompError, ValueError):
    """A noise schedule or time grid is invalid."""


class DataError(ProbcompError, ValueError):
    """A data set, checkpoint or training input is invalid; the message names the file or set."""


class ConvergenceWarning(UserWarning):
    """An optimiser stopped before it converged (its loss still falling, its restarts disagreeing);
    the result carries the diagnostics (``res.stats["convergence"]``)."""


class BatchError(ProbcompError, RuntimeError):
    """A batch could not run: Ray missing or unreachable, an item that cannot be sent to a
    worker, an item whose function failed (the message names it), a record file of another run."""


def first_line(e: BaseException | str) -> str:
    """The first non-empty line of an exception's message (or of a message): what a one-line
    probcomp error quotes of a cause that runs to many lines (torch's do)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else ""

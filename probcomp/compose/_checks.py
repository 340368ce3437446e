"""Argument checks shared by the composition operators."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import FactorError
from ..factors.base import ScoreFactor


def check_same_event(factors: Sequence[ScoreFactor], op: str) -> torch.Size:
    """The common event shape of ``factors``, or a :class:`FactorError` naming ``op``."""
    if not factors:
        raise FactorError(f"{op} needs at least one factor")
    for f in factors:
        if not isinstance(f, ScoreFactor):
            raise FactorError(f"{op}: {f!r} is not a probcomp factor")
    shape = factors[0].event_shape
    for f in factors[1:]:
        if f.event_shape != shape:
            raise FactorError(
                f"{op}: factor {f.name!r} has event shape {tuple(f.event_shape)}, but "
                f"{factors[0].name!r} has {tuple(shape)}"
            )
    return shape

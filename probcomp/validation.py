"""Checks at the public boundary, one function per kind of argument.

Each raises a probcomp error whose one-line message names the argument (and the
variable, factor or engine it belongs to) and what was expected, so that bad input
never reaches torch.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence
from typing import Any

import torch

from .errors import SceneError, ScheduleError, ShapeError

__all__ = [
    "MAX_PARTICLE_ELEMENTS",
    "check_count",
    "check_device",
    "check_dtype",
    "check_positive",
    "check_seed",
    "check_shape",
]

SEED_MAX = 2**63
#: the most particle elements (particles x control elements) an engine allocates at once
MAX_PARTICLE_ELEMENTS = 2**34


def check_count(name: str, v: Any, low: int = 1, *, error: type[Exception] = ScheduleError) -> int:
    """``v`` as an int ``>= low`` (bools, floats and strings refused, even ``2.0``)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise error(f"{name} must be an integer >= {low}, got {v!r}")
    if int(v) < low:
        raise error(f"{name} must be an integer >= {low}, got {v}")
    return int(v)


def check_positive(name: str, v: Any, *, allow_zero: bool = False) -> float:
    """``v`` as a finite float ``> 0`` (``>= 0`` with ``allow_zero``)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ScheduleError(f"{name} must be a positive number, got {v!r}")
    f = float(v)
    if not math.isfinite(f) or f < 0 or (f == 0 and not allow_zero):
        raise ScheduleError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {v!r}")
    return f


def check_seed(seed: Any) -> int:
    """``seed`` as an int in ``[0, 2**63)``; ``None`` draws fresh entropy (engines record it)."""
    if seed is None:
        return int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(time.time_ns())))
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise SceneError(f"seed must be an integer (or None for fresh entropy), got {seed!r}")
    if not 0 <= int(seed) < SEED_MAX:
        raise SceneError(f"seed must lie in [0, 2**63), got {seed}")
    return int(seed)


def check_dtype(dtype: Any, who: str) -> torch.dtype:
    """A floating torch dtype (particles and scores are real)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ScheduleError(
            f"{who}: dtype must be a floating torch dtype (torch.float32, ...), got {dtype!r}"
        )
    return dtype


def check_device(device: Any, who: str) -> torch.device:
    """A torch device that exists on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ScheduleError(f"{who}: device {device!r} is not a torch device ({e})") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if dev.type == "cuda" and (dev.index or 0) >= count:
        raise ScheduleError(
            f"{who}: device {device!r} is not available (this machine has {count} CUDA devices)"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ScheduleError(f"{who}: device {device!r} is not available on this machine")
    return dev


def check_shape(shape: Any, who: str) -> torch.Size:
    """A shape: a tuple (or list, or torch.Size) of non-negative ints, or one int."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, torch.Size)):
        raise ShapeError(f"{who}: shape must be a tuple of non-negative integers, got {shape!r}")
    dims = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or int(d) < 0:
            raise ShapeError(f"{who}: shape must be a tuple of non-negative integers, got {shape!r}")
        dims.append(int(d))
    return torch.Size(dims)

"""Observation functions ``y_i = f_i(PA(y_i))``.

Every function takes its parents as *batched* tensors ``(N, *shape)`` and
returns ``(N, *event_shape)``; it must be differentiable, since engines pull
scores back to the controls with one vector-Jacobian product per observable.
Axis arguments count *event* axes: ``axis=0`` is the first axis of one sample,
``axis=-1`` the last.  Any plain callable with this convention is accepted as ``fn``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from .errors import ShapeError

__all__ = ["Op", "as_op", "composite", "identity", "linear", "window"]


class Op:
    """A named, differentiable observation function of ``arity`` parents."""

    arity: int | None = None  # None: any number
    is_identity: bool = False

    def __call__(self, *parents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return type(self).__name__.lower()


class _Identity(Op):
    arity = 1
    is_identity = True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __repr__(self) -> str:
        return "identity"


identity = _Identity()
"""``f(x) = x``."""


def _batch_dim(axis: int) -> int:
    """Tensor dimension of event axis ``axis`` in a batched tensor."""
    return axis + 1 if axis >= 0 else axis


class Window(Op):
    """Crop ``x[..., start:start+size, ...]`` along one or several event axes."""

    arity = 1

    def __init__(self, start: Sequence[int], size: Sequence[int], axis: Sequence[int]) -> None:
        if not (len(start) == len(size) == len(axis)):
            raise ShapeError(f"window: start {start}, size {size} and axis {axis} must have equal lengths")
        if len(set(axis)) != len(axis):
            raise ShapeError(f"window: repeated axis in {axis}")
        if any(s < 0 for s in start) or any(s <= 0 for s in size):
            raise ShapeError(f"window: starts must be >= 0 and sizes > 0, got {start}, {size}")
        self.start, self.size, self.axis = tuple(start), tuple(size), tuple(axis)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for st, sz, ax in zip(self.start, self.size, self.axis, strict=True):
            dim = _batch_dim(ax)
            if not (-x.ndim < dim < x.ndim) or dim == 0 or dim == -x.ndim:
                raise ShapeError(f"window: axis {ax} out of range for event shape {tuple(x.shape[1:])}")
            if st + sz > x.shape[dim]:
                raise ShapeError(
                    f"window: [{st}, {st + sz}) exceeds length {x.shape[dim]} of event axis {ax}"
                )
            x = x.narrow(dim, st, sz)
        return x

    def __repr__(self) -> str:
        return f"window(start={self.start}, size={self.size}, axis={self.axis})"


def window(start: int | Sequence[int], size: int | Sequence[int], axis: int | Sequence[int] = -1) -> Window:
    """Crop of ``size`` values from ``start`` along ``axis`` (tuples crop several axes)."""
    tup = lambda v: (int(v),) if isinstance(v, int) else tuple(int(u) for u in v)  # noqa: E731
    return Window(tup(start), tup(size), tup(axis))


class Paste(Op):
    """``(1 - m) * background + m * object``: background region of one parent, object of the other.

    Built by :func:`composite`.  The compositional scene generation task of
    *Compositional Generative Inference Using Diffusion-Based Optimization* (§6.2):
    ``y_3`` keeps ``x_1`` outside the object box and ``x_2`` inside it.  ``mask`` is 1
    on the object region (values in [0, 1], soft masks allowed) and broadcasts against
    one sample's shape.  (Not :class:`probcomp.compose.Composite`, which sums scores.)
    """

    arity = 2

    def __init__(self, mask: Any) -> None:
        m = torch.as_tensor(mask, dtype=torch.get_default_dtype())
        if not torch.all((m >= 0) & (m <= 1)):
            raise ShapeError("composite: mask values must lie in [0, 1]")
        self.mask = m

    def __call__(self, background: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
        if background.shape != obj.shape:
            raise ShapeError(
                f"composite: parents have shapes {tuple(background.shape[1:])} and "
                f"{tuple(obj.shape[1:])}; they must match"
            )
        m = self.mask.to(dtype=background.dtype, device=background.device)
        try:
            return background + m * (obj - background)
        except RuntimeError:
            raise ShapeError(
                f"composite: mask of shape {tuple(m.shape)} does not broadcast to "
                f"{tuple(background.shape[1:])}"
            ) from None

    def __repr__(self) -> str:
        return f"composite(mask={tuple(self.mask.shape)})"


def composite(mask: Any) -> Paste:
    """Masked composite of two parents (background, object): a :class:`Paste`."""
    return Paste(mask)


class Linear(Op):
    """``y = A vec(x)``: a ``(m, n)`` matrix on the flattened sample, output ``(m,)``."""

    arity = 1

    def __init__(self, a: Any) -> None:
        a = torch.as_tensor(a, dtype=torch.get_default_dtype())
        if a.ndim != 2:
            raise ShapeError(f"linear: A must be a matrix, got shape {tuple(a.shape)}")
        self.a = a

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.a.shape[1]:
            raise ShapeError(
                f"linear: A has {self.a.shape[1]} columns but a sample of shape "
                f"{tuple(x.shape[1:])} has {flat.shape[1]} values"
            )
        return flat @ self.a.to(dtype=x.dtype, device=x.device).T

    def __repr__(self) -> str:
        return f"linear({tuple(self.a.shape)})"


def linear(a: Any) -> Linear:
    """Linear map by the matrix ``a`` on the flattened parent."""
    return Linear(a)


class Fn(Op):
    """A user callable, kept with a readable name."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn

    def __call__(self, *parents: torch.Tensor) -> torch.Tensor:
        return self.fn(*parents)

    def __repr__(self) -> str:
        return getattr(self.fn, "__name__", type(self.fn).__name__)


def as_op(fn: Any) -> Op:
    """Wrap a plain callable as an :class:`Op` (ops pass through)."""
    if isinstance(fn, Op):
        return fn
    if not callable(fn):
        raise ShapeError(f"observation function must be callable, got {type(fn).__name__}")
    return Fn(cast("Callable[..., torch.Tensor]", fn))  # a user function, documented to return a tensor

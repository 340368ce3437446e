"""The factor interface every engine sees.

A factor carries what is known of ``p(y)`` for one observable.  Engines only
ever ask a factor for the *noised* score at a noise level of the factor's own
schedule (the compiled scene maps the engine's time there by matching log-SNR):

* ``score(y, t) = grad_y log p_t(y)``, with ``p_t`` the VP-noised density;
* ``eps(y, t) = -sigma(t) * score(y, t)``, the noise prediction of a diffusion model;
* ``energy(y, t) = -log p_t(y)`` up to a constant, where the factor has one.

``y`` is batched: shape ``(N, *event_shape)``.  ``t`` is a float, a 0-d tensor,
or a tensor of shape ``(N,)`` (one time per particle).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from .. import schedules as sched
from ..errors import FactorError, ShapeError
from ..validation import check_shape

__all__ = ["ExplicitFactor", "ScoreFactor", "as_time", "check_event", "check_output", "event_shape_of"]


def as_time(t: Any, y: torch.Tensor) -> torch.Tensor:
    """``t`` as a tensor on ``y``'s device, shaped to broadcast against the batch ``(N, 1)``."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.ndim == 0:
        return t.reshape(1, 1)
    if t.ndim == 1 and t.shape[0] in (1, y.shape[0]):
        return t.reshape(-1, 1)
    raise ShapeError(f"time must be a scalar or one value per particle ({y.shape[0]}), got {tuple(t.shape)}")


def check_event(y: torch.Tensor, event_shape: torch.Size, who: str) -> None:
    """Raise a :class:`ShapeError` naming ``who`` unless ``y`` is ``(N, *event_shape)``."""
    if y.ndim != len(event_shape) + 1 or y.shape[1:] != event_shape:
        raise ShapeError(
            f"{who} expects a batch of shape (N, {', '.join(map(str, event_shape))}), got {tuple(y.shape)}"
        )


def check_output(out: Any, y: torch.Tensor, who: str, what: str = "score") -> torch.Tensor:
    """``out`` unless it is not a tensor of ``y``'s shape: then a one-line :class:`ShapeError`.

    ``score`` and ``eps`` return one vector per particle, exactly ``y.shape``; an output that
    merely broadcasts against ``y`` (``(N, 1)`` for ``(N, 2)``) is refused rather than summed
    into a wrong field.  ``who`` names the factor (``"factor 'ring8'"``), ``what`` the method.
    """
    if not isinstance(out, torch.Tensor):
        raise ShapeError(
            f"{who}: {what} returned {type(out).__name__}, expected a tensor of shape {tuple(y.shape)}"
        )
    if out.shape != y.shape:
        raise ShapeError(
            f"{who}: {what} returned shape {tuple(out.shape)} for a batch of shape {tuple(y.shape)}; "
            "it must return one value per entry of the batch (the same shape)"
        )
    return out


def event_shape_of(event_shape: Any, who: str) -> torch.Size:
    """A factor's event shape: a tuple of positive ints (or one int), else a :class:`FactorError`."""
    try:
        shape = check_shape(event_shape, who)
    except ShapeError:
        raise FactorError(
            f"{who}: event_shape must be a tuple of positive integers, got {event_shape!r}"
        ) from None
    if any(s == 0 for s in shape):
        raise FactorError(f"{who}: event_shape must be positive, got {tuple(shape)}")
    return shape


class ScoreFactor:
    """Base class of factors: a noised score, its eps form, and optionally an energy.

    Subclasses override :meth:`score` or :meth:`eps` (each defaults to the other)
    and may override :meth:`energy`.  ``cost`` is the number of model evaluations
    one call makes, used for NFE accounting.
    """

    cost: int = 1
    #: names of the conditions :meth:`eps_given` accepts (empty: an unconditional factor)
    condition_names: tuple[str, ...] = ()
    #: whether the score and energy come from a trained network (approximations, whose energy
    #: differences between distant regions are not to be trusted) rather than from formulas
    learned: bool = False

    def __init__(
        self,
        event_shape: Sequence[int],
        schedule: sched.Schedule | None = None,
        name: str | None = None,
    ) -> None:
        self.event_shape = event_shape_of(event_shape, name or type(self).__name__)
        self.schedule = schedule if schedule is not None else sched.linear()
        self.name = name or type(self).__name__

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.score is ScoreFactor.score and cls.eps is ScoreFactor.eps:
            # Abstract intermediate classes are allowed; the check runs on use.
            cls._abstract = True
        else:
            cls._abstract = False

    # The two interchangeable forms --------------------------------------------------
    def score(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        """``grad_y log p_t(y) = -eps(y, t) / sigma(t)``."""
        self._require_impl()
        sigma = self._scale(self.schedule.sigma, t, y)
        return -check_output(self.eps(y, t), y, f"factor {self.name!r}", "eps") / sigma

    def eps(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        """``eps_hat(y, t) = -sigma(t) score(y, t)``."""
        self._require_impl()
        sigma = self._scale(self.schedule.sigma, t, y)
        return -sigma * check_output(self.score(y, t), y, f"factor {self.name!r}", "score")

    def energy(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        """``E(y, t) = -log p_t(y) + const`` per particle, shape ``(N,)``."""
        raise FactorError(f"factor {self.name!r} has no energy")

    def eps_given(self, y: torch.Tensor, t: Any, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """``eps_hat(y, t | c)`` with one condition per particle, differentiable in ``c``.

        ``cond`` maps names in :attr:`condition_names` to tensors ``(N, ...)``.  This
        is what concept inversion differentiates; unconditional factors ignore an
        empty ``cond`` and refuse any other.
        """
        if cond:
            raise FactorError(f"factor {self.name!r} takes no conditions, got {sorted(cond)}")
        return self.eps(y, t)

    @property
    def has_energy(self) -> bool:
        return type(self).energy is not ScoreFactor.energy

    def score_and_energy(self, y: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Both at once; subclasses that share work between them override this."""
        return self.score(y, t), self.energy(y, t)

    # Helpers --------------------------------------------------------------------------
    def _require_impl(self) -> None:
        if getattr(type(self), "_abstract", False):
            raise FactorError(f"{type(self).__name__} must override score() or eps()")

    def _scale(self, fn: Callable[[Any], torch.Tensor], t: Any, y: torch.Tensor) -> torch.Tensor:
        """Evaluate a schedule quantity at ``t`` shaped to broadcast over ``y``."""
        v = fn(as_time(t, y)).to(dtype=y.dtype, device=y.device)
        return v.reshape(v.shape[0], *([1] * (y.ndim - 1)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, event_shape={tuple(self.event_shape)})"


ScoreFactor._abstract = True


class ExplicitFactor(ScoreFactor):
    r"""A factor known by its clean log-density: a Pyro distribution or a callable.

    It is exact at ``t = 0``, where it acts as a constraint or likelihood.  Along
    the noise path engines need ``p_t``, which is not available in closed form
    for a general density; probcomp uses the *tempered rescaling*

    .. math::  \log p_t(y) \approx \bar\alpha_t \log p(y / \alpha_t),
               \qquad s_t(y) = \alpha_t \nabla \log p(y/\alpha_t),

    which equals the clean factor at ``t = 0`` and fades out as ``t -> 1``, where
    every noised density is ``N(0, I)`` and the score factors already supply that.
    Gaussian distributions have an exact noised form: :func:`probcomp.factors.explicit`
    turns ``Normal`` / ``MultivariateNormal`` into an analytic :class:`Gaussian`
    instead, so priors of that kind are exact at every level.
    """

    def __init__(
        self,
        log_prob: Any,
        event_shape: Sequence[int] | None = None,
        *,
        schedule: sched.Schedule | None = None,
        name: str | None = None,
    ) -> None:
        self.distribution = None
        if hasattr(log_prob, "log_prob") and hasattr(log_prob, "event_shape"):
            d = log_prob
            shape = tuple(d.batch_shape) + tuple(d.event_shape)
            if event_shape is not None and tuple(event_shape) != shape:
                d = _expand_to(d, tuple(event_shape), name or "explicit factor")
                shape = tuple(event_shape)
            elif len(d.batch_shape):
                d = d.to_event(len(d.batch_shape))
            self.distribution = d
            fn = d.log_prob
            event_shape = shape
        elif callable(log_prob):
            if event_shape is None:
                raise FactorError("an explicit factor built from a callable needs event_shape")
            # a user log-density, documented to return one value per particle (log_prob checks the shape)
            fn = cast("Callable[[torch.Tensor], torch.Tensor]", log_prob)
        else:
            raise FactorError(
                f"ExplicitFactor needs a pyro distribution or a log-density callable, "
                f"got {type(log_prob).__name__}"
            )
        super().__init__(event_shape, schedule, name or "explicit")
        self._log_prob = fn

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """Clean log-density ``log p(y)``, shape ``(N,)``."""
        check_event(y, self.event_shape, f"factor {self.name!r}")
        lp = self._log_prob(y)
        if lp.shape != y.shape[:1]:
            raise ShapeError(
                f"log-density of factor {self.name!r} returned shape {tuple(lp.shape)}, "
                f"expected one value per particle ({y.shape[0]},)"
            )
        return lp

    def energy(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        alpha = self._scale(self.schedule.alpha, t, y)
        abar = (alpha**2).reshape(-1)
        return -abar * self.log_prob(y / alpha)

    def score(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        alpha = self._scale(self.schedule.alpha, t, y)
        with torch.enable_grad():
            u = (y / alpha).detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.log_prob(u).sum(), u)
        return alpha * g


def _expand_to(d: Any, shape: tuple[int, ...], who: str) -> Any:
    """Broadcast a Pyro distribution to exactly ``shape`` (batch + event), event-summing it."""
    full = tuple(d.batch_shape) + tuple(d.event_shape)
    ne = len(d.event_shape)
    try:
        batch = shape[: len(shape) - ne] if ne else shape
        if ne and tuple(shape[len(shape) - ne :]) != tuple(d.event_shape):
            raise ValueError
        d = d.expand(torch.Size(batch))
    except (ValueError, RuntimeError):
        raise ShapeError(f"{who}: distribution of shape {full} cannot be broadcast to {shape}") from None
    return d.to_event(len(batch)) if len(batch) else d

r"""The parameterisation boundary: any denoising network as a :class:`ScoreFactor`.

A diffusion model predicts one of ``eps``, ``x0``, ``v`` or the ``score`` at its
own training time (continuous ``t`` or a fractional discrete step, see
:meth:`probcomp.schedules.Schedule.model_time`).  With ``y = alpha x0 + sigma eps``:

* ``eps``   -- used as is;
* ``x0``    -- ``eps = (y - alpha x0_hat) / sigma``;
* ``v``     -- ``v = alpha eps - sigma x0`` (Salimans & Ho 2022), so ``eps = sigma y + alpha v``;
* ``score`` -- ``eps = -sigma s``.

Engines never branch on the prediction type: this module is the only place
that converts, and each conversion is tested on an analytic Gaussian.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from probcomp import schedules as sched
from probcomp.errors import FactorError, ShapeError
from probcomp.factors import ScoreFactor, as_time, check_event

__all__ = ["PREDICTIONS", "ModelFactor", "to_eps"]

PREDICTIONS = ("eps", "x0", "v", "score")


def to_eps(prediction: str, out: torch.Tensor, y: torch.Tensor, alpha: Any, sigma: Any) -> torch.Tensor:
    """Convert a network output of kind ``prediction`` at ``(alpha, sigma)`` to ``eps_hat``."""
    if prediction == "eps":
        return out
    if prediction == "x0":
        return (y - alpha * out) / sigma
    if prediction == "v":
        return sigma * y + alpha * out
    if prediction == "score":
        return -sigma * out
    raise FactorError(f"unknown prediction type {prediction!r}; expected one of {PREDICTIONS}")


class ModelFactor(ScoreFactor):
    """Wrap ``model(y, model_time) -> prediction`` as a factor.

    Args:
        model: a callable (e.g. a ``torch.nn.Module``) taking a batch ``(N, *event_shape)``
            and a ``(N,)`` tensor of model times.
        event_shape: shape of one sample.
        schedule: the schedule the model was trained with.
        prediction: what the model outputs: ``eps``, ``x0``, ``v`` or ``score``.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        event_shape: Sequence[int],
        schedule: sched.Schedule,
        prediction: str = "eps",
        *,
        name: str | None = None,
    ) -> None:
        if prediction not in PREDICTIONS:
            raise FactorError(f"unknown prediction type {prediction!r}; expected one of {PREDICTIONS}")
        super().__init__(event_shape, schedule, name or getattr(model, "__name__", "model"))
        self.model = model
        self.prediction = prediction

    def eps(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        check_event(y, self.event_shape, f"factor {self.name!r}")
        tt = as_time(t, y)
        mt = self.schedule.model_time(tt).reshape(-1).to(dtype=y.dtype, device=y.device)
        out = self.model(y, mt.expand(y.shape[0]))
        if out.shape != y.shape:
            raise ShapeError(
                f"model of factor {self.name!r} returned shape {tuple(out.shape)} for input {tuple(y.shape)}"
            )
        alpha = self._scale(self.schedule.alpha, t, y)
        sigma = self._scale(self.schedule.sigma, t, y)
        return to_eps(self.prediction, out, y, alpha, sigma)

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
from typing import TYPE_CHECKING, Any, cast

import torch

from probcomp import schedules as sched
from probcomp.errors import FactorError
from probcomp.factors import ScoreFactor, as_time, check_event, check_output

if TYPE_CHECKING:
    from .energy import EnergyModel

__all__ = ["PREDICTIONS", "ModelFactor", "NetworkFactor", "Preconditioned", "to_eps"]

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
    """Wrap ``model(y, model_time) -> prediction`` as a factor (a :attr:`learned` one).

    Args:
        model: a callable (e.g. a ``torch.nn.Module``) taking a batch ``(N, *event_shape)``
            and a ``(N,)`` tensor of model times.
        event_shape: shape of one sample.
        schedule: the schedule the model was trained with.
        prediction: what the model outputs: ``eps``, ``x0``, ``v`` or ``score``.
    """

    learned = True

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
        out = check_output(self._predict(y, mt.expand(y.shape[0])), y, f"factor {self.name!r}", "its model")
        alpha = self._scale(self.schedule.alpha, t, y)
        sigma = self._scale(self.schedule.sigma, t, y)
        return to_eps(self.prediction, out, y, alpha, sigma)

    def _predict(self, y: torch.Tensor, model_time: torch.Tensor) -> torch.Tensor:
        """The raw network output at the model's own time (subclasses bind conditions here)."""
        return self.model(y, model_time)


class NetworkFactor(ModelFactor):
    """A trained network (eps-predicting or :class:`~probcomp.models.energy.EnergyModel`) as a factor.

    Conditions are bound with :meth:`condition`, e.g. ``factor.condition(color=2)``
    or ``factor.condition(xy=torch.tensor([0.3, 0.7]))``; unbound attributes use
    their null token.  ``meta`` carries the checkpoint's config (data, steps, loss).
    """

    def __init__(
        self,
        net: torch.nn.Module,
        event_shape: Sequence[int],
        schedule: sched.Schedule,
        *,
        cond: dict[str, Any] | None = None,
        name: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(net, event_shape, schedule, "eps", name=name or "network")
        _check_network_event(net, self.event_shape, self.name)
        self.net = net.eval()
        self.cond = dict(cond or {})
        self.meta = dict(meta or {})

    @property
    def is_energy(self) -> bool:
        from .energy import EnergyModel

        return isinstance(self.net, EnergyModel)

    @property
    def has_energy(self) -> bool:
        return self.is_energy

    def _predict(self, y: torch.Tensor, model_time: torch.Tensor) -> torch.Tensor:
        if self.is_energy:
            return self.net(y, model_time, self.cond).detach()
        with torch.no_grad():
            return self.net(y, model_time, self.cond)

    @property
    def condition_names(self) -> tuple[str, ...]:  # type: ignore[override]
        cfg = getattr(self.net, "config", {}) or {}
        return (*cfg.get("attributes", {}), *cfg.get("continuous", {}), *cfg.get("point_sets", {}))

    def eps_given(self, y: torch.Tensor, t: Any, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """``eps_hat(y, t | c)`` with per-particle conditions, differentiable in them.

        ``cond`` is merged over the bound conditions.  A discrete attribute may be
        given relaxed, as probabilities ``(N, n_classes)`` that mix its class
        embeddings (dissertation Alg. 7).
        """
        check_event(y, self.event_shape, f"factor {self.name!r}")
        unknown = set(cond) - set(self.condition_names)
        if unknown:
            raise FactorError(
                f"factor {self.name!r} has no condition(s) {sorted(unknown)}; it takes "
                f"{list(self.condition_names)}"
            )
        mt = self.schedule.model_time(as_time(t, y)).reshape(-1).to(dtype=y.dtype, device=y.device)
        out = self.net(y, mt.expand(y.shape[0]), {**self.cond, **cond})
        return check_output(out, y, f"factor {self.name!r}", "its model")

    def energy(self, y: torch.Tensor, t: Any) -> torch.Tensor:
        """``E = g(y, t) / sigma(t)`` (see :mod:`probcomp.models.energy`)."""
        if not self.is_energy:
            raise FactorError(f"factor {self.name!r} predicts eps and has no energy")
        check_event(y, self.event_shape, f"factor {self.name!r}")
        mt = self.schedule.model_time(as_time(t, y)).reshape(-1).to(dtype=y.dtype, device=y.device)
        net = cast("EnergyModel", self.net)  # is_energy
        with torch.no_grad():
            g = net.potential(y, mt.expand(y.shape[0]), self.cond)
        return g / self._scale(self.schedule.sigma, t, y).reshape(-1)

    def to(self, device: str | torch.device) -> NetworkFactor:
        """Move the network (shared by every conditioned copy) to ``device``; returns ``self``."""
        self.net.to(device)
        return self

    def condition(self, **cond: Any) -> NetworkFactor:
        """The same network with conditions bound (merged over those already bound)."""
        merged = {**self.cond, **cond}
        label = ",".join(f"{k}={_short(v)}" for k, v in cond.items())
        return NetworkFactor(
            self.net,
            self.event_shape,
            self.schedule,
            cond=merged,
            name=f"{self.name}|{label}",
            meta=self.meta,
        )


def _check_network_event(net: Any, event_shape: torch.Size, name: str) -> None:
    """A :class:`FactorError` if a probcomp network (by its config) takes another event shape."""
    from .networks import event_shape_for

    cfg = getattr(net, "config", None) or getattr(getattr(net, "net", None), "config", None)
    if not isinstance(cfg, dict):
        return
    try:
        want = event_shape_for(cfg)
    except (KeyError, TypeError, ValueError):
        return
    if want is not None and want != tuple(event_shape):
        raise FactorError(
            f"factor {name!r}: event_shape {tuple(event_shape)} does not match its network "
            f"(a {cfg.get('kind')} taking {want})"
        )


def _short(v: Any) -> str:
    t = torch.as_tensor(v)
    return (
        str(t.item()) if t.numel() == 1 else "[" + ",".join(f"{float(u):.3g}" for u in t.flatten()[:4]) + "]"
    )


class Preconditioned(torch.nn.Module):
    r"""EDM-style preconditioning of an eps network for VP diffusion (Karras et al. 2022, Table 1).

    With ``v = alpha^2 sigma_d^2 + sigma^2`` (the variance of ``y_t`` for data of
    standard deviation ``sigma_d``),

    .. math:: \hat\epsilon = \frac{\sigma}{v} y + \frac{\alpha \sigma_d}{\sqrt v} F(y / \sqrt v, t),

    which is exact with ``F = 0`` for Gaussian data of variance ``sigma_d^2`` and
    shrinks the network's share of the output by ``alpha`` at high noise.  That
    matters for deterministic samplers: DDIM integrates eps errors with weight
    ``d(sigma / alpha)``, which is about 150 at ``t = 1`` of the linear schedule.
    """

    def __init__(self, net: torch.nn.Module, schedule: sched.Schedule, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.net, self.schedule, self.sigma_data = net, schedule, float(sigma_data)

    @property
    def config(self) -> dict[str, Any]:
        return cast("dict[str, Any]", self.net.config)  # a probcomp network's (a dict attribute)

    def forward(self, y: torch.Tensor, model_time: torch.Tensor, cond: Any = None) -> torch.Tensor:
        t = self.schedule.t_of_model_time(model_time.detach().cpu())
        shape = (-1, *([1] * (y.ndim - 1)))
        a = self.schedule.alpha(t).to(dtype=y.dtype, device=y.device).reshape(shape)
        s = self.schedule.sigma(t).to(dtype=y.dtype, device=y.device).reshape(shape)
        v = (a * self.sigma_data) ** 2 + s**2
        return s / v * y + a * self.sigma_data / v.sqrt() * self.net(y / v.sqrt(), model_time, cond)

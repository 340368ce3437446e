"""Variance-preserving noise schedules and noise-level matching.

Convention: ``y_t = sqrt(abar(t)) y_0 + sqrt(1 - abar(t)) eps`` with
continuous ``t`` in [0, 1], ``t = 0`` clean.  Every schedule is described by its
log signal-to-noise ratio ``log_snr(t) = log(abar / (1 - abar))``, which is
monotone decreasing in ``t``; ``abar = sigmoid(log_snr)``.

Two factors trained with different schedules are composed *at the same noise
level*, i.e. at the same log-SNR: :func:`match` maps the engine's time to a
factor's own time through ``log_snr``.  Because the VP scaling
``alpha = sqrt(sigmoid(log_snr))`` is a function of log-SNR alone, the noised
variable handed to every factor is the same tensor.

Discrete-trained schedules (DDPM's ``alphas_cumprod``) are made continuous by
interpolating log-SNR linearly between integer steps; their ``model_time`` is
the fractional step index the network was trained on.

All schedule arithmetic is done in float64 on the CPU; callers cast the few
scalars they need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ScheduleError

TimeLike = float | torch.Tensor

__all__ = [
    "DEFAULT_T_MIN",
    "SPACINGS",
    "CosineSchedule",
    "DiscreteSchedule",
    "LinearSchedule",
    "Schedule",
    "cosine",
    "cosine_discrete",
    "discrete",
    "from_config",
    "linear",
    "linear_discrete",
    "match",
    "time_grid",
]


def _as_t(t: TimeLike) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64, device="cpu")


class Schedule:
    """A VP noise schedule, defined by ``log_snr(t)`` on ``t`` in [0, 1]."""

    name: str = "schedule"

    def log_snr(self, t: TimeLike) -> torch.Tensor:
        raise NotImplementedError

    def t_of_log_snr(self, lam: TimeLike) -> torch.Tensor:
        """Inverse of :meth:`log_snr`, clamped to the schedule's range of noise levels."""
        raise NotImplementedError

    def model_time(self, t: TimeLike) -> torch.Tensor:
        """The time value the model was trained with (``t`` itself for continuous schedules)."""
        return _as_t(t)

    def t_of_model_time(self, model_time: TimeLike) -> torch.Tensor:
        """Inverse of :meth:`model_time`."""
        return _as_t(model_time)

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    # Derived quantities ---------------------------------------------------------------
    def abar(self, t: TimeLike) -> torch.Tensor:
        """Signal fraction ``abar(t) = sigmoid(log_snr(t))``."""
        return torch.sigmoid(self.log_snr(t))

    def alpha(self, t: TimeLike) -> torch.Tensor:
        """Signal scale ``sqrt(abar(t))``."""
        return torch.sigmoid(self.log_snr(t)).sqrt()

    def sigma(self, t: TimeLike) -> torch.Tensor:
        """Noise scale ``sqrt(1 - abar(t)) = sqrt(sigmoid(-log_snr))`` (no cancellation near t=0)."""
        return torch.sigmoid(-self.log_snr(t)).sqrt()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "kind")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, Schedule) and self.config() == other.config())

    def __hash__(self) -> int:
        return hash(repr(self))


@dataclass(eq=False, repr=False)
class LinearSchedule(Schedule):
    """Continuous DDPM / VP-SDE schedule, ``beta(t) = beta_min + t (beta_max - beta_min)``.

    ``abar(t) = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2))`` (Song et al. 2021).
    With the defaults ``abar(1) = 4.3e-5``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    name: str = field(default="linear", init=False)

    def __post_init__(self) -> None:
        if not (0 <= self.beta_min < self.beta_max):
            raise ScheduleError(
                f"linear schedule needs 0 <= beta_min < beta_max, got {self.beta_min}, {self.beta_max}"
            )

    def _integral(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def log_snr(self, t: TimeLike) -> torch.Tensor:
        t = _as_t(t).clamp(0.0, 1.0)
        # log(abar / (1 - abar)) = -log(exp(B) - 1) with B the integral of beta.
        return -torch.log(torch.expm1(self._integral(t)))

    def t_of_log_snr(self, lam: TimeLike) -> torch.Tensor:
        lam = _as_t(lam)
        b = torch.nn.functional.softplus(-lam)  # integral of beta at the wanted level
        d = self.beta_max - self.beta_min
        t = (-self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * d * b)) / d
        return t.clamp(0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"kind": "linear", "beta_min": self.beta_min, "beta_max": self.beta_max}


@dataclass(eq=False, repr=False)
class CosineSchedule(Schedule):
    """Continuous cosine schedule (Nichol & Dhariwal 2021).

    ``abar(t) = f(t) / f(0)``, ``f(t) = cos^2(pi/2 (t + s) / (1 + s))``, with ``abar``
    clamped below at ``abar_min`` so that ``t = 1`` stays a finite noise level.
    """

    s: float = 0.008
    abar_min: float = 1e-5
    name: str = field(default="cosine", init=False)

    def __post_init__(self) -> None:
        if self.s < 0 or not (0 < self.abar_min < 1):
            raise ScheduleError(f"cosine schedule needs s >= 0 and 0 < abar_min < 1, got {self}")

    def _f(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(0.5 * math.pi * (t + self.s) / (1.0 + self.s)) ** 2

    def log_snr(self, t: TimeLike) -> torch.Tensor:
        t = _as_t(t).clamp(0.0, 1.0)
        abar = (self._f(t) / self._f(torch.zeros((), dtype=torch.float64))).clamp(self.abar_min, 1.0)
        return torch.log(abar) - torch.log1p(-abar)

    def t_of_log_snr(self, lam: TimeLike) -> torch.Tensor:
        abar = torch.sigmoid(_as_t(lam)).clamp(self.abar_min, 1.0)
        c = torch.sqrt(abar * self._f(torch.zeros((), dtype=torch.float64))).clamp(max=1.0)
        t = torch.arccos(c) * 2.0 / math.pi * (1.0 + self.s) - self.s
        return t.clamp(0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"kind": "cosine", "s": self.s, "abar_min": self.abar_min}


class DiscreteSchedule(Schedule):
    """A schedule given by a discrete ``alphas_cumprod`` table of ``n`` training steps.

    Step ``i`` (0-based, 0 least noisy) sits at ``t = i / (n - 1)``; log-SNR is
    interpolated linearly in between.  ``model_time(t)`` is the fractional step
    index ``t (n - 1)`` that the network was trained on.  Noise levels outside
    the table's range clamp to its ends (a discrete model has no cleaner step
    than its first one).
    """

    name = "discrete"

    def __init__(self, alphas_cumprod: Any, *, label: str = "discrete") -> None:
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if a.numel() < 2:
            raise ScheduleError("a discrete schedule needs at least 2 steps")
        if not torch.all((a > 0) & (a < 1)):
            raise ScheduleError("alphas_cumprod must lie strictly between 0 and 1")
        if not torch.all(a[1:] < a[:-1]):
            raise ScheduleError("alphas_cumprod must be strictly decreasing")
        self.alphas_cumprod = a
        self.label = label
        self._lam = torch.log(a) - torch.log1p(-a)  # decreasing in the step index

    @property
    def num_steps(self) -> int:
        return self.alphas_cumprod.numel()

    def log_snr(self, t: TimeLike) -> torch.Tensor:
        u = _as_t(t).clamp(0.0, 1.0) * (self.num_steps - 1)
        lo = u.floor().long().clamp(max=self.num_steps - 2)
        frac = u - lo
        return self._lam[lo] * (1 - frac) + self._lam[lo + 1] * frac

    def t_of_log_snr(self, lam: TimeLike) -> torch.Tensor:
        lam = _as_t(lam).clamp(self._lam[-1], self._lam[0])
        inc = self._lam.flip(0)  # increasing
        j = torch.searchsorted(inc, lam.reshape(-1), right=True).clamp(1, self.num_steps - 1)
        lo_val, hi_val = inc[j - 1], inc[j]
        frac = ((lam.reshape(-1) - lo_val) / (hi_val - lo_val)).clamp(0.0, 1.0)
        idx_inc = (j - 1) + frac  # fractional index in the increasing table
        u = (self.num_steps - 1) - idx_inc
        return (u / (self.num_steps - 1)).reshape(lam.shape)

    def model_time(self, t: TimeLike) -> torch.Tensor:
        return _as_t(t).clamp(0.0, 1.0) * (self.num_steps - 1)

    def t_of_model_time(self, model_time: TimeLike) -> torch.Tensor:
        return _as_t(model_time) / (self.num_steps - 1)

    def config(self) -> dict[str, Any]:
        return {"kind": "discrete", "label": self.label, "alphas_cumprod": self.alphas_cumprod.tolist()}

    def __repr__(self) -> str:
        return f"DiscreteSchedule({self.label!r}, n={self.num_steps})"

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, DiscreteSchedule) and torch.equal(self.alphas_cumprod, other.alphas_cumprod)
        )

    def __hash__(self) -> int:
        return hash((self.num_steps, float(self.alphas_cumprod[0]), float(self.alphas_cumprod[-1])))


def linear(beta_min: float = 0.1, beta_max: float = 20.0) -> LinearSchedule:
    """Continuous linear (DDPM / VP-SDE) schedule."""
    return LinearSchedule(beta_min, beta_max)


def cosine(s: float = 0.008, abar_min: float = 1e-5) -> CosineSchedule:
    """Continuous cosine schedule."""
    return CosineSchedule(s, abar_min)


def linear_discrete(n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteSchedule:
    """DDPM's discrete linear schedule: ``beta_i`` evenly spaced, ``abar_i = prod (1 - beta_j)``."""
    betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    return DiscreteSchedule(torch.cumprod(1 - betas, 0), label=f"linear-{n}")


def cosine_discrete(n: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DiscreteSchedule:
    """Improved-DDPM's discrete cosine schedule with betas clipped at ``max_beta``."""
    i = torch.arange(n + 1, dtype=torch.float64) / n
    f = torch.cos(0.5 * math.pi * (i + s) / (1 + s)) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return DiscreteSchedule(torch.cumprod(1 - betas, 0), label=f"cosine-{n}")


def discrete(alphas_cumprod: Any, label: str = "discrete") -> DiscreteSchedule:
    """A schedule from any ``alphas_cumprod`` table."""
    return DiscreteSchedule(alphas_cumprod, label=label)


def from_config(cfg: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.config` (plain JSON data, no code)."""
    kind = cfg.get("kind")
    if kind == "linear":
        return LinearSchedule(float(cfg["beta_min"]), float(cfg["beta_max"]))
    if kind == "cosine":
        return CosineSchedule(float(cfg["s"]), float(cfg["abar_min"]))
    if kind == "discrete":
        return DiscreteSchedule(cfg["alphas_cumprod"], label=str(cfg.get("label", "discrete")))
    raise ScheduleError(f"unknown schedule kind {kind!r} in config {sorted(cfg)}")


def match(t: TimeLike, source: Schedule, target: Schedule) -> torch.Tensor:
    """The time in ``target`` with the same log-SNR as time ``t`` in ``source``."""
    if source == target:
        return _as_t(t)
    return target.t_of_log_snr(source.log_snr(t))


DEFAULT_T_MIN = 1e-3
"""The engines' last noisy level.  At ``t = 1 / steps`` (a uniform grid to 0) the noise of
the linear schedule is ``sigma ~ 0.045`` at 100 steps, wider than fine structure of many
targets (the ring's modes have std 0.03), and Tweedie's final denoising step then narrows
every mode (to std 0.017 there); ending the noisy levels at ``1e-3`` (``sigma ~ 0.01``)
keeps the width."""


SPACINGS = ("uniform", "log-snr")
"""How :func:`time_grid` places the noisy levels between ``t_max`` and ``t_min``."""


def time_grid(
    steps: int,
    *,
    t_max: float = 1.0,
    t_min: float = DEFAULT_T_MIN,
    spacing: str = "uniform",
    schedule: Schedule | None = None,
) -> torch.Tensor:
    r"""``steps + 1`` descending times: ``steps`` noisy levels, then 0.

    With ``t_min > 0`` the levels run from ``t_max`` to ``t_min`` and the last step goes from
    ``t_min`` to 0 (Tweedie's denoised estimate); with ``t_min = 0`` the grid is uniform from
    ``t_max`` to 0 (the last level is ``t_max / steps``).  ``spacing`` places the levels:

    * ``"uniform"`` -- uniform in ``t`` (the DDPM grid);
    * ``"log-snr"`` -- uniform in the log-SNR ``lambda(t)`` of ``schedule`` (default
      :func:`linear`), so that every level changes the noise by the same factor
      ``sigma^2 / alpha^2``.  A uniform grid in ``t`` spends its levels at high noise and
      makes the last intervals the widest in ``lambda``; annealed importance weights, whose
      variance grows with each interval's change of the target (Neal 2001, Sec. 3), need
      the opposite, and at a few dozen levels this spacing keeps them usable.
    """
    if steps < 1:
        raise ScheduleError(f"need at least one step, got steps={steps}")
    if not (0.0 <= t_min < 1.0 and 0.0 < t_max <= 1.0) or (steps > 1 and t_min >= t_max):
        raise ScheduleError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    if spacing not in SPACINGS:
        raise ScheduleError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if spacing == "log-snr" and t_min == 0.0 and steps > 1:
        raise ScheduleError("spacing='log-snr' needs t_min > 0 (the log-SNR is infinite at t = 0)")
    if t_min == 0.0 or steps == 1:  # (one step: straight from t_max to 0)
        return torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64)
    if spacing == "log-snr":
        sch = schedule if schedule is not None else linear()
        lam = torch.linspace(float(sch.log_snr(t_max)), float(sch.log_snr(t_min)), steps, dtype=torch.float64)
        levels = sch.t_of_log_snr(lam).to(torch.float64)
        levels[0], levels[-1] = t_max, t_min  # exact ends, whatever the inverse's round-off
    else:
        levels = torch.linspace(t_max, t_min, steps, dtype=torch.float64)
    return torch.cat([levels, levels.new_zeros(1)])

r"""The reverse-diffusion step shared by the engines, and the flat particle layout of kernels.

One DDIM step from ``t`` to ``s < t`` on a composed score ``g`` (Song et al.
2021, Eq. 12; ``eta = 1`` is DDPM's ancestral step):

.. math::
    \hat\epsilon = -\sigma_t g, \qquad \hat x_0 = (x + \sigma_t^2 g) / \alpha_t, \\
    c = \eta \sqrt{\tfrac{\sigma_s^2}{\sigma_t^2}\big(1 - \tfrac{\bar\alpha_t}{\bar\alpha_s}\big)}, \qquad
    x_s = \alpha_s \hat x_0 + \sqrt{\sigma_s^2 - c^2}\, \hat\epsilon + c z.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from probcomp.errors import ScheduleError

__all__ = ["Packer", "ReverseStep", "check_clip", "ddim_step"]

Num = float | torch.Tensor


@dataclass(frozen=True)
class ReverseStep:
    """Coefficients of one DDIM/DDPM step from ``t`` to ``s``: ``x_s = mean_x x + mean_g g + noise z``.

    With ``clip = (lo, hi)`` the denoised estimate is clamped to the data's range
    before the step, and the step's eps is the one that estimate implies,
    ``(x - alpha_t clamp(x0_hat)) / sigma_t`` (the ``clip_denoised`` of Ho et al.'s
    DDPM sampler): a plain eps network's error at high noise reaches ``x0_hat``
    multiplied by ``sigma_t / alpha_t``, and deterministic DDIM integrates it.
    """

    a_t: float
    s_t: float
    a_s: float
    s_s: float
    eta: float
    clip: tuple[float, float] | None = None

    @property
    def noise(self) -> float:
        """``c``: the standard deviation of the step's fresh noise."""
        if self.eta == 0 or self.s_s == 0:
            return 0.0
        return self.eta * (self.s_s**2 / self.s_t**2 * (1.0 - (self.a_t / self.a_s) ** 2)) ** 0.5

    def x0(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Tweedie's denoised estimate ``(x + sigma_t^2 g) / alpha_t`` (clamped with ``clip``)."""
        x0 = (x + self.s_t**2 * g) / self.a_t
        return x0 if self.clip is None else x0.clamp(*self.clip)

    @property
    def keep(self) -> float:
        """``sqrt(sigma_s^2 - c^2)``: the share of the predicted noise the step keeps."""
        return max(self.s_s**2 - self.noise**2, 0.0) ** 0.5

    def coefficients(self) -> tuple[float, float, float, float, float]:
        """``(alpha_t, sigma_t, alpha_s, keep, c)``, the numbers of :func:`ddim_step` (no clip)."""
        return self.a_t, self.s_t, self.a_s, self.keep, self.noise

    def mean(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The deterministic part ``alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat``."""
        if self.clip is None:
            return ddim_step(x, g, self.a_t, self.s_t, self.a_s, self.keep)
        x0 = self.x0(x, g)
        return self.a_s * x0 + self.keep * (x - self.a_t * x0) / self.s_t

    def __call__(self, x: torch.Tensor, g: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        out = self.mean(x, g)
        c = self.noise
        if c > 0:
            out = out + c * torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
        return out


def ddim_step(x: torch.Tensor, g: torch.Tensor, a_t: Num, s_t: Num, a_s: Num, keep: Num) -> torch.Tensor:
    """``alpha_s (x + sigma_t^2 g) / alpha_t - keep sigma_t g``: the step's mean without a clip,
    with its coefficients as numbers or as 0-d tensors (inside a compiled graph)."""
    return a_s * ((x + s_t**2 * g) / a_t) - keep * s_t * g


def check_clip(clip: Any) -> tuple[float, float] | None:
    """``None`` or a validated ``(lo, hi)`` with ``lo < hi``."""
    if clip is None:
        return None
    try:
        lo, hi = (float(v) for v in clip)
    except (TypeError, ValueError):
        raise ScheduleError(f"clip_x0 must be None or a pair (lo, hi), got {clip!r}") from None
    if not lo < hi:
        raise ScheduleError(f"clip_x0 must have lo < hi, got {clip!r}")
    return lo, hi


class Packer:
    """Flatten a state dict ``{name: (N, *shape)}`` into one ``(N, D)`` tensor and back."""

    def __init__(self, shapes: dict[str, torch.Size]) -> None:
        self.names = list(shapes)
        self.shapes = [torch.Size(s) for s in shapes.values()]
        self.sizes = [s.numel() for s in self.shapes]

    def pack(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([x[k].reshape(x[k].shape[0], -1) for k in self.names], 1)

    def unpack(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(v, self.sizes, dim=1)
        return {k: p.reshape(v.shape[0], *s) for k, p, s in zip(self.names, parts, self.shapes, strict=True)}

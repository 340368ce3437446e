r"""Slot-VAE: object-centric scene generation with slot attention in a two-level hierarchical VAE.

Slot-VAE (Wang, Liu & Dauwels 2023, "Slot-VAE: object-centric scene generation with slot
attention", ICML; dissertation ch. 3) explains an image ``x`` with a global scene latent
``z^g`` and ``K`` object latents ``z^s_1..z^s_K`` generated from it (Eq. 3.1):

.. math:: p_\theta(x) = \iint p_\theta(x \mid z^s_{1:K})\, p_\theta(z^s_{1:K} \mid z^g)\, p_\theta(z^g)
          \, dz^s_{1:K}\, dz^g, \qquad
          p_\theta(z^s_{1:K} \mid z^g) = \prod_k p_\theta(z^s_k \mid z^g), \quad p(z^g) = N(0, I).

Each object latent is decoded, by one spatial broadcast decoder shared across slots (Watters
et al. 2019), into a component mean ``mu_k`` and a mask logit; the masks ``pi_k`` are a
softmax over the slots, so they sum to one at every pixel, and the likelihood is Gaussian with
a fixed ``sigma_x`` (Eq. 3.3):

.. math:: p_\theta(x_{ij} \mid z^s_{1:K})
          = N\Big(\sum_k \pi_{ijk}(z^s_{1:K})\, \mu_{ijk}(z^s_k),\ \sigma_x^2\Big).

The posterior factorises as ``q(z^g | x) prod_k q(z^s_k | x)`` (Eq. 3.4), all diagonal
Gaussians, and training maximises the ELBO (Eq. 3.5) plus an auxiliary term that pulls each
object posterior towards an independent standard normal (Eq. 3.6), in total Eq. 3.7:

.. math:: \mathcal L = E_{q(z^s | x)}[\log p_\theta(x \mid z^s_{1:K})]
          - D_{KL}[q(z^s_{1:K} \mid x) \,\|\, p_\theta(z^s_{1:K} \mid z^g)]
          - D_{KL}[q(z^g \mid x) \,\|\, p(z^g)],

.. math:: \mathcal L_{aux} = -D_{KL}\Big[q(z^s_{1:K} \mid x) \,\Big\|\, \prod_k N(0, I)\Big], \qquad
          \tilde{\mathcal L} = \mathcal L + \mathcal L_{aux}.

:meth:`SlotVAE.loss` minimises ``-tilde L`` per image, with weights ``beta_slots``,
``beta_global`` and ``beta_aux`` on the three KL terms (the seed uses a small weight on the
global KL, e.g. 0.01, App. 3.6.4); the inner expectation over ``q(z^g | x)`` is one
reparameterised draw.

**Two paths, one slot-attention module.**  A CNN with a soft position embedding maps ``x`` to
a feature map ``f_x``.  On the posterior path slot attention (Locatello et al. 2020,
:class:`SlotAttention`) clusters ``f_x`` into slots ``s'_k`` and an MLP gives ``q(z^s_k | x)``.
On the prior path an MLP encodes ``f_x`` into ``q(z^g | x)``, a decoder turns ``z^g`` back into
a feature map ``f`` (the same position embedding added), and the *same* slot-attention module,
started from the *same* initial slot values, gives slots ``s_k`` and (through a second MLP
head of the same form) ``p(z^s_k | z^g)``.  Slot attention returns an unordered set: the order
of its outputs follows the random initial slots.  The KL of Eq. 3.5 pairs the ``k``-th
posterior slot with the ``k``-th prior slot, so the two orders must agree; sharing the
weights and the initial values makes slot ``k`` of ``f_x`` and slot ``k`` of ``f`` compete
from the same starting point for similar features, so they tend to describe the same object
(Section 3.3.3; the seed's ablations without weight or initial-value sharing generate much
worse scenes, Table 3.3).

The network is the appendix architecture (Section 3.6.3) scaled down to train on a CPU: a
3-layer CNN backbone, one slot-attention module of width ``dim``, an average-pooled 3-layer
MLP for ``z^g``, an up-sampling CNN from ``z^g`` to ``f``, and a full-resolution spatial
broadcast decoder.  Images are ``(N, C, size, size)`` with values in [-1, 1].  Train it with
:func:`fit_slot_vae` (Adam with a linear learning-rate warm-up, which the seed and Locatello
et al. find important for object discovery).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from probcomp.errors import DataError, ShapeError

from .training import TrainResult, _descend, _quiet, _resume, _save_state

__all__ = ["SlotAttention", "SlotVAE", "fit_slot_vae", "gaussian_kl"]

# log-variances are clamped to this range, so exp() of them stays finite in float32
LOGVAR_RANGE = (-10.0, 10.0)


def _positive_int(who: str, label: str, v: Any, minimum: int = 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise DataError(f"{who}: {label} must be an integer >= {minimum}, got {v!r}")
    return v


def _randn(shape: Sequence[int], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise, drawn on the generator's device (the CPU for a seeded CPU generator)
    and moved to ``like``'s device and dtype, so a seed gives the same numbers on every device."""
    if generator is None:
        return torch.randn(tuple(shape), device=like.device, dtype=like.dtype)
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=like.dtype).to(
        like.device
    )


def gaussian_kl(
    mu_q: torch.Tensor,
    logvar_q: torch.Tensor,
    mu_p: torch.Tensor | None = None,
    logvar_p: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Elementwise KL divergence between diagonal Gaussians, in closed form:

    .. math:: D_{KL}[N(\mu_q, \sigma_q^2) \,\|\, N(\mu_p, \sigma_p^2)]
              = \tfrac12 \Big(\log\frac{\sigma_p^2}{\sigma_q^2}
              + \frac{\sigma_q^2 + (\mu_q - \mu_p)^2}{\sigma_p^2} - 1\Big),

    with ``N(0, 1)`` as ``p`` when ``mu_p`` and ``logvar_p`` are left out.  Sum the result over
    the latent dimensions for the KL of the multivariate diagonal Gaussians.
    """
    mu_p = torch.zeros_like(mu_q) if mu_p is None else mu_p
    logvar_p = torch.zeros_like(logvar_q) if logvar_p is None else logvar_p
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).square()) / logvar_p.exp() - 1.0)


class SlotAttention(nn.Module):
    r"""Slot attention (Locatello et al. 2020, "Object-centric learning with slot attention").

    ``K`` slots of width ``D`` start from a learned Gaussian,
    ``s_k ~ N(mu, diag(exp(log_sigma))^2)``, and compete for the ``P`` inputs ``f_1..f_P`` over
    ``iters`` rounds.  With layer-normalised inputs and slots and linear maps ``k, q, v`` (no
    bias), each round computes

    .. math:: a_{kp} = \frac{\exp(M_{kp})}{\sum_{l=1}^K \exp(M_{lp})}, \qquad
              M_{kp} = \frac{q(s_k) \cdot k(f_p)}{\sqrt D},

    a softmax over the *slots* (the slots compete for each input), then the weighted mean of
    the values with the attention normalised over the *inputs*,

    .. math:: u_k = \sum_p W_{kp}\, v(f_p), \qquad W_{kp} = \frac{a_{kp} + \epsilon}
              {\sum_{p'} (a_{kp'} + \epsilon)},

    and the update ``s_k <- GRU(u_k, s_k)`` followed by a residual MLP,
    ``s_k <- s_k + MLP(LayerNorm(s_k))``.  Every step treats the slots alike, so the module is
    permutation-equivariant in its slots and, through the sums over ``p``, invariant to the
    order of its inputs.

    ``forward(inputs (N, P, D), slots_init=None, generator=None) -> (slots (N, K, D), attn
    (N, K, P))``: ``attn`` is the last round's ``a``, which sums to one over the slots at every
    input.  Given ``slots_init`` ``(N, K', D)`` (any number of slots ``K'``) the module starts
    from it instead of sampling; that is how :class:`SlotVAE` shares initial values between
    its two paths.
    """

    def __init__(
        self, num_slots: int, dim: int, iters: int = 3, hidden: int = 128, eps: float = 1e-8
    ) -> None:
        super().__init__()
        who = "SlotAttention"
        self.num_slots = _positive_int(who, "num_slots", num_slots)
        self.dim = _positive_int(who, "dim", dim)
        self.iters = _positive_int(who, "iters", iters)
        _positive_int(who, "hidden", hidden)
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise DataError(f"{who}: eps must be a non-negative number, got {eps!r}")
        self.eps = float(eps)
        bound = math.sqrt(6.0 / (1 + dim))  # Glorot-uniform bound of a (1, dim) parameter
        self.mu = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.log_sigma = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.norm_inputs = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def initial_slots(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """``n`` sets of ``K`` initial slots ``mu + exp(log_sigma) * eps`` ``(n, K, D)``, with ``eps``
        drawn from ``generator`` (on its device, then moved to ``device``)."""
        _positive_int("SlotAttention.initial_slots", "n", n, minimum=0)
        like = self.mu.detach().to(device=device, dtype=dtype)
        noise = _randn((n, self.num_slots, self.dim), generator, like)
        return self.mu.to(like) + self.log_sigma.to(like).exp() * noise

    def forward(
        self,
        inputs: torch.Tensor,
        slots_init: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != 3 or inputs.shape[-1] != self.dim:
            got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ShapeError(f"SlotAttention expects inputs (N, P, {self.dim}), got {got}")
        n, d = inputs.shape[0], self.dim
        if slots_init is None:
            slots = self.initial_slots(n, generator, inputs.device, inputs.dtype)
        else:
            if (
                not isinstance(slots_init, torch.Tensor)
                or slots_init.ndim != 3
                or slots_init.shape[0] != n
                or slots_init.shape[2] != d
            ):
                got = tuple(slots_init.shape) if isinstance(slots_init, torch.Tensor) else type(slots_init)
                raise ShapeError(
                    f"SlotAttention: slots_init must be ({n}, K, {d}) for these inputs, got {got}"
                )
            slots = slots_init.to(inputs)
        x = self.norm_inputs(inputs)
        keys, values = self.to_k(x), self.to_v(x)  # (N, P, D)
        attn = inputs.new_zeros(n, slots.shape[1], inputs.shape[1])
        for _ in range(self.iters):
            previous = slots
            queries = self.to_q(self.norm_slots(slots))  # (N, K, D)
            logits = queries @ keys.transpose(1, 2) / math.sqrt(d)  # (N, K, P)
            attn = logits.softmax(dim=1)  # competition: normalised over the slots
            weights = attn + self.eps
            weights = weights / weights.sum(dim=2, keepdim=True)  # weighted mean over the inputs
            updates = weights @ values  # (N, K, D)
            slots = self.gru(updates.reshape(-1, d), previous.reshape(-1, d)).reshape(n, -1, d)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots, attn


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, out))


def _gaussian(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a head's output into a mean and a clamped log-variance."""
    mu, logvar = params.chunk(2, dim=-1)
    return mu, logvar.clamp(*LOGVAR_RANGE)


class _GlobalDecoder(nn.Module):
    """``z^g`` to a ``(dim, size, size)`` feature map: an MLP to a 4x4 map, then nearest-neighbour
    up-sampling by factors of two (the last step to ``size``), each followed by a 3x3 convolution."""

    def __init__(self, latent: int, dim: int, hidden: int, size: int) -> None:
        super().__init__()
        self.dim = dim
        self.inp = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, dim * 16), nn.ReLU())
        self.sizes: list[int] = []
        s = 4
        while s < size:
            s = min(2 * s, size)
            self.sizes.append(s)
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1) for _ in self.sizes)
        self.out = nn.Conv2d(dim, dim, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.inp(z).reshape(z.shape[0], self.dim, 4, 4)
        for s, conv in zip(self.sizes, self.convs, strict=True):
            h = F.relu(conv(F.interpolate(h, size=(s, s), mode="nearest")))
        return self.out(h)


class _BroadcastDecoder(nn.Module):
    """Spatial broadcast decoder (Watters et al. 2019): a latent tiled over the image grid and
    concatenated with the pixel coordinates in [-1, 1], three 3x3 convolutions and a 1x1 output
    of ``channels`` component values and one mask logit."""

    def __init__(self, latent: int, channels: int, size: int, hidden: int) -> None:
        super().__init__()
        lin = torch.linspace(-1.0, 1.0, size)
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        self.register_buffer("coords", torch.stack([xx, yy])[None], persistent=False)  # (1, 2, H, W)
        self.net = nn.Sequential(
            nn.Conv2d(latent + 2, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels + 1, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(M, latent) -> (M, channels + 1, H, W)``."""
        coords = cast(torch.Tensor, self.coords)  # a buffer
        h, w = coords.shape[-2:]
        tiled = z[:, :, None, None].expand(-1, -1, h, w)
        return self.net(torch.cat([tiled, coords.to(z).expand(z.shape[0], -1, -1, -1)], 1))


class SlotVAE(nn.Module):
    """Slot-VAE (module docstring): slot attention inside a two-level hierarchical VAE.

    Args:
        num_slots: ``K``, the number of slots (object latents) per image.
        channels, size: the images, ``(channels, size, size)`` with values in [-1, 1]
            (``size >= 4``; 32 and 16 are the tested sizes).
        dim: width of the feature maps and of the slots.
        slot_latent, global_latent: dimensions of each ``z^s_k`` and of ``z^g``.
        hidden: width of the CNN backbone, the MLPs and the slot-attention MLP.
        iters: slot-attention rounds.
        sigma_x: the fixed standard deviation of the pixel likelihood (Eq. 3.3).
        beta_slots, beta_global, beta_aux: weights of ``KL(q(z^s|x) || p(z^s|z^g))``,
            ``KL(q(z^g|x) || N(0, I))`` and ``KL(q(z^s|x) || N(0, I))`` (Eqs. 3.5-3.7).
        decoder_hidden: width of the spatial broadcast decoder (it runs once per slot at full
            resolution, the largest cost of a training step).

    The posterior head ``posterior_head`` (``s'_k -> q(z^s_k | x)``) and the prior head
    ``prior_head`` (``s_k -> p(z^s_k | z^g)``) are two MLPs of the same form; the slot-attention
    module ``slot_attention``, the position embedding and the per-position feature MLP are
    shared by the two paths.
    """

    def __init__(
        self,
        num_slots: int = 4,
        channels: int = 3,
        size: int = 32,
        dim: int = 32,
        slot_latent: int = 16,
        global_latent: int = 16,
        hidden: int = 64,
        iters: int = 3,
        sigma_x: float = 0.1,
        beta_slots: float = 1.0,
        beta_global: float = 1.0,
        beta_aux: float = 1.0,
        decoder_hidden: int = 32,
    ) -> None:
        super().__init__()
        who = "SlotVAE"
        for label, v in (
            ("num_slots", num_slots),
            ("channels", channels),
            ("dim", dim),
            ("slot_latent", slot_latent),
            ("global_latent", global_latent),
            ("hidden", hidden),
            ("iters", iters),
            ("decoder_hidden", decoder_hidden),
        ):
            _positive_int(who, label, v)
        _positive_int(who, "size", size, minimum=4)
        if not (isinstance(sigma_x, (int, float)) and math.isfinite(sigma_x) and sigma_x > 0):
            raise DataError(f"{who}: sigma_x must be a positive number, got {sigma_x!r}")
        for label, b in (("beta_slots", beta_slots), ("beta_global", beta_global), ("beta_aux", beta_aux)):
            if not (isinstance(b, (int, float)) and math.isfinite(b) and b >= 0):
                raise DataError(f"{who}: {label} must be a non-negative number, got {b!r}")
        self.config: dict[str, Any] = {
            "kind": "slot_vae",
            "num_slots": num_slots,
            "channels": channels,
            "size": size,
            "dim": dim,
            "slot_latent": slot_latent,
            "global_latent": global_latent,
            "hidden": hidden,
            "iters": iters,
            "sigma_x": float(sigma_x),
            "beta_slots": float(beta_slots),
            "beta_global": float(beta_global),
            "beta_aux": float(beta_aux),
            "decoder_hidden": decoder_hidden,
        }
        lin = torch.linspace(0.0, 1.0, size)
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        grid = torch.stack([xx, 1 - xx, yy, 1 - yy], -1).reshape(size * size, 4)  # (H*W, 4)
        self.register_buffer("grid", grid, persistent=False)
        self.backbone = nn.Sequential(
            nn.Conv2d(channels, hidden, 5, padding=2),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, dim, 3, padding=1),
        )
        self.position = nn.Linear(4, dim)  # soft position embedding, shared by both paths
        self.feature_mlp = nn.Sequential(nn.LayerNorm(dim), _mlp(dim, hidden, dim))
        self.slot_attention = SlotAttention(num_slots, dim, iters, hidden=hidden)
        self.posterior_head = _mlp(dim, hidden, 2 * slot_latent)
        self.prior_head = _mlp(dim, hidden, 2 * slot_latent)
        self.global_encoder = nn.Sequential(
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(16 * dim, hidden),
            nn.ReLU(),
            _mlp(hidden, hidden, 2 * global_latent),
        )
        self.global_decoder = _GlobalDecoder(global_latent, dim, hidden, size)
        self.decoder = _BroadcastDecoder(slot_latent, channels, size, decoder_hidden)
        for module in self.modules():
            # He initialisation of the ReLU CNNs: with torch's default (variance 1 / (3 fan_in)) the
            # image signal shrinks at every layer and drowns in the position embedding, so the slots
            # start blind to the image and training stalls at the mean image
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
                nn.init.zeros_(cast(torch.Tensor, module.bias))

    # Shapes and checks ----------------------------------------------------------------
    @property
    def num_slots(self) -> int:
        return int(self.config["num_slots"])

    @property
    def slot_latent(self) -> int:
        return int(self.config["slot_latent"])

    @property
    def global_latent(self) -> int:
        return int(self.config["global_latent"])

    @property
    def event_shape(self) -> torch.Size:
        c, n = self.config["channels"], self.config["size"]
        return torch.Size((c, n, n))

    def _like(self) -> torch.Tensor:
        return next(self.parameters())

    def _check_images(self, x: Any, who: str = "SlotVAE") -> torch.Tensor:
        shape = ", ".join(map(str, self.event_shape))
        if not isinstance(x, torch.Tensor):
            raise DataError(f"{who} expects images as a tensor (N, {shape}), got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1:] != self.event_shape or x.shape[0] < 1:
            raise ShapeError(f"{who} expects images (N, {shape}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise DataError(f"{who} expects floating-point images in [-1, 1], got dtype {x.dtype}")
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise DataError(f"{who}: the images hold {bad} NaN or infinite value(s)")
        p = self._like()
        return x.to(p.device, p.dtype)

    def _check_latents(self, z: Any, who: str) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise DataError(f"{who}: slot latents must be a floating-point tensor, got {type(z).__name__}")
        if z.ndim != 3 or z.shape[2] != self.slot_latent or z.shape[0] < 1 or z.shape[1] < 1:
            raise ShapeError(f"{who} expects slot latents (N, K, {self.slot_latent}), got {tuple(z.shape)}")
        if not bool(torch.isfinite(z).all()):
            raise DataError(f"{who}: the slot latents hold NaN or infinite values")
        p = self._like()
        return z.to(p.device, p.dtype)

    def _check_slots(self, which: Any, label: str) -> list[int]:
        if isinstance(which, (str, bytes)) or not isinstance(which, Sequence):
            raise DataError(
                f"SlotVAE.swap: {label} must be a list of slot indices, got {type(which).__name__}"
            )
        out = []
        for k in which:
            if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < self.num_slots:
                raise DataError(
                    f"SlotVAE.swap: slot index {k!r} in {label} is out of range: this model has "
                    f"K = {self.num_slots} slots, numbered 0..{self.num_slots - 1}"
                )
            out.append(k)
        return out

    # The two paths --------------------------------------------------------------------
    def _embed(self, h: torch.Tensor) -> torch.Tensor:
        """A ``(N, dim, H, W)`` map plus the soft position embedding, flattened and passed through
        the per-position feature MLP: ``(N, H*W, dim)``."""
        grid = cast(torch.Tensor, self.grid)  # a buffer
        h = h.flatten(2).transpose(1, 2) + self.position(grid.to(h))
        return self.feature_mlp(h)

    def _as_map(self, f: torch.Tensor) -> torch.Tensor:
        size = int(self.config["size"])
        return f.transpose(1, 2).reshape(f.shape[0], -1, size, size)

    def _posterior(
        self, x: torch.Tensor, init: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q(z^s_k | x)`` and ``q(z^g | x)``: their means and log-variances, the attention and ``f_x``."""
        f_x = self._embed(self.backbone(x))
        slots, attn = self.slot_attention(f_x, init)
        mu_q, logvar_q = _gaussian(self.posterior_head(slots))
        mu_g, logvar_g = _gaussian(self.global_encoder(self._as_map(f_x)))
        return mu_q, logvar_q, mu_g, logvar_g, attn, f_x

    def _prior(self, z_g: torch.Tensor, init: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``p(z^s_k | z^g)``: the feature map ``f`` of ``z^g`` through the shared slot attention
        from the initial slots ``init``, then the prior head."""
        slots, _ = self.slot_attention(self._embed(self.global_decoder(z_g)), init)
        return _gaussian(self.prior_head(slots))

    def _decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, k = z.shape[:2]
        c = int(self.config["channels"])
        out = self.decoder(z.reshape(n * k, -1))
        out = out.reshape(n, k, c + 1, *out.shape[-2:])
        components, masks = out[:, :, :c], out[:, :, c].softmax(dim=1)
        recon = (masks[:, :, None] * components).sum(1)
        return recon, masks, components

    # Training -------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The negative Slot-VAE objective ``-(ELBO + L_aux)`` (Eqs. 3.5-3.7), averaged over images.

        Returns a dict of scalars: ``loss`` (the weighted objective to minimise, with its graph),
        and, detached, ``recon`` (the Gaussian negative log-likelihood with fixed ``sigma_x``,
        summed over pixels), ``kl_slots`` (``KL(q(z^s|x) || p(z^s|z^g))`` summed over slots),
        ``kl_global`` (``KL(q(z^g|x) || N(0, I))``), ``kl_aux`` (``KL(q(z^s|x) || N(0, I))``)
        and ``mse`` (pixel mean squared error of the reconstruction mean).  ``generator`` draws
        the initial slots, then ``z^g``, then ``z^s`` (reparameterised).
        """
        x = self._check_images(x, "SlotVAE.loss")
        n = x.shape[0]
        init = self.slot_attention.initial_slots(n, generator, x.device, x.dtype)
        mu_q, logvar_q, mu_g, logvar_g, _, _ = self._posterior(x, init)
        z_g = mu_g + (0.5 * logvar_g).exp() * _randn(mu_g.shape, generator, mu_g)
        mu_p, logvar_p = self._prior(z_g, init)
        z = mu_q + (0.5 * logvar_q).exp() * _randn(mu_q.shape, generator, mu_q)
        recon, _, _ = self._decode(z)
        sigma = float(self.config["sigma_x"])
        pixels = x[0].numel()
        nll = (x - recon).square().flatten(1).sum(1) / (2 * sigma**2) + pixels * (
            math.log(sigma) + 0.5 * math.log(2 * math.pi)
        )
        kl_slots = gaussian_kl(mu_q, logvar_q, mu_p, logvar_p).sum((1, 2))
        kl_global = gaussian_kl(mu_g, logvar_g).sum(1)
        kl_aux = gaussian_kl(mu_q, logvar_q).sum((1, 2))
        cfg = self.config
        total = nll + cfg["beta_slots"] * kl_slots + cfg["beta_global"] * kl_global + cfg["beta_aux"] * kl_aux
        return {
            "loss": total.mean(),
            "recon": nll.mean().detach(),
            "kl_slots": kl_slots.mean().detach(),
            "kl_global": kl_global.mean().detach(),
            "kl_aux": kl_aux.mean().detach(),
            "mse": (x - recon).square().mean().detach(),
        }

    # Evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def encode(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        slots_init: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The posterior means of the slot latents and their decoding.

        Returns ``z`` ``(N, K, slot_latent)`` (means of ``q(z^s_k | x)``), ``masks`` ``(N, K, H, W)``,
        ``components`` ``(N, K, C, H, W)``, ``recon`` ``(N, C, H, W)`` (``sum_k masks * components``)
        and ``attn`` ``(N, K, H*W)``.  The initial slots are ``slots_init`` or drawn from
        ``generator`` (the first draw), so the result is a function of the images and the seed.
        """
        x = self._check_images(x, "SlotVAE.encode")
        if slots_init is None:
            init = self.slot_attention.initial_slots(x.shape[0], generator, x.device, x.dtype)
        else:
            init = slots_init
        mu_q, _, _, _, attn, _ = self._posterior(x, init)
        recon, masks, components = self._decode(mu_q)
        return {"z": mu_q, "masks": masks, "components": components, "recon": recon, "attn": attn}

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Slot latents ``(N, K, slot_latent)`` (any number of slots ``K``) to ``(recon (N, C, H, W),
        masks (N, K, H, W), components (N, K, C, H, W))``, with ``recon = sum_k masks_k components_k``."""
        return self._decode(self._check_latents(z, "SlotVAE.decode"))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images from the prior: ``z^g ~ N(0, I)``, slots from ``z^g`` (initial slots drawn
        first, then ``z^g``, then ``z^s_k ~ p(z^s_k | z^g)``), decoded to the mixture means."""
        _positive_int("SlotVAE.sample", "n", n)
        like = self._like()
        init = self.slot_attention.initial_slots(n, generator, like.device, like.dtype)
        z_g = _randn((n, self.global_latent), generator, like)
        mu_p, logvar_p = self._prior(z_g, init)
        z = mu_p + (0.5 * logvar_p).exp() * _randn(mu_p.shape, generator, mu_p)
        return self._decode(z)[0]

    @torch.no_grad()
    def swap(
        self,
        x_a: torch.Tensor,
        x_b: torch.Tensor,
        slots_a: Sequence[int],
        slots_b: Sequence[int],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Recombination by swapping: image A with its slots ``slots_a`` replaced by B's slots ``slots_b``.

        Both batches are encoded (posterior means) from the same initial slots, drawn once from
        ``generator``; slot ``slots_a[i]`` of each image of A takes the latent of slot
        ``slots_b[i]`` of the matching image of B, and the result is decoded to ``(N, C, H, W)``.
        With no slots swapped this is ``encode(x_a, generator)["recon"]``; with every slot of A
        replaced by B's in order it is the decoding of ``encode(x_b, generator)["z"]``.
        """
        slots_a = self._check_slots(slots_a, "slots_a")
        slots_b = self._check_slots(slots_b, "slots_b")
        if len(slots_a) != len(slots_b):
            raise DataError(
                "SlotVAE.swap: slots_a and slots_b must have equal lengths, "
                f"got {len(slots_a)} and {len(slots_b)}"
            )
        if len(set(slots_a)) != len(slots_a):
            raise DataError(f"SlotVAE.swap: slots_a lists a slot more than once: {slots_a}")
        x_a = self._check_images(x_a, "SlotVAE.swap")
        x_b = self._check_images(x_b, "SlotVAE.swap")
        if x_a.shape[0] != x_b.shape[0]:
            raise ShapeError(
                f"SlotVAE.swap: x_a and x_b must hold the same number of images, got {x_a.shape[0]} "
                f"and {x_b.shape[0]}"
            )
        init = self.slot_attention.initial_slots(x_a.shape[0], generator, x_a.device, x_a.dtype)
        z = self.encode(x_a, slots_init=init)["z"].clone()
        z_b = self.encode(x_b, slots_init=init)["z"]
        if slots_a:
            z[:, slots_a] = z_b[:, slots_b]
        return self._decode(z)[0]


def _image_sampler(data: Any, model: SlotVAE) -> Callable[[int, torch.Generator], torch.Tensor]:
    """Normalise ``data`` to ``draw(n, generator) -> x``: an ``(M, C, H, W)`` tensor is sampled
    with replacement; a sampler may return ``x`` or ``(x, labels)`` (labels ignored)."""
    if callable(data):

        def draw(n: int, g: torch.Generator) -> torch.Tensor:
            out: Any = data(n, g)
            return out[0] if isinstance(out, (tuple, list)) else out

        return draw
    if not isinstance(data, torch.Tensor):
        raise DataError(
            f"fit_slot_vae: data must be an (M, C, H, W) tensor or a sampler draw(n, generator), "
            f"got {type(data).__name__}"
        )
    data = model._check_images(data, "fit_slot_vae").detach().cpu()

    def draw_tensor(n: int, g: torch.Generator) -> torch.Tensor:
        return data[torch.randint(data.shape[0], (n,), generator=g)]

    return draw_tensor


def fit_slot_vae(
    model: SlotVAE,
    data: Any,
    *,
    steps: int = 2000,
    batch: int = 64,
    lr: float = 4e-4,
    warmup: int = 500,
    seed: int = 0,
    grad_clip: float = 1.0,
    log_every: int = 100,
    progress: bool | None = None,
    checkpoint: str | Path | None = None,
    save_every: int = 500,
) -> TrainResult:
    """Train a :class:`SlotVAE` on ``data`` by minimising :meth:`SlotVAE.loss` with Adam.

    Args:
        model: the model; trained in place and returned as ``result.model``.
        data: an ``(M, C, H, W)`` tensor in [-1, 1] (batches drawn with replacement), or a
            sampler ``draw(n, generator) -> x`` or ``-> (x, labels)``.
        steps, batch, lr: Adam steps, batch size, peak learning rate.
        warmup: steps of linear learning-rate warm-up, ``lr * min(1, (step + 1) / warmup)``
            (0 disables it).
        seed: seeds the batches, the initial slots and the reparameterisation noise (all drawn
            on the CPU); with a fixed seed CPU training is deterministic.
        grad_clip: the gradient-norm clip (0 disables it).
        log_every: ``result.losses`` holds the mean loss of every ``log_every`` steps.
        progress: show a tqdm bar; by default only on an interactive terminal outside CI.
        checkpoint: a file for the resumable training state (``torch.save`` of tensors only,
            read back with ``weights_only=True``), written every ``save_every`` steps and at the
            end; training resumes from it.

    A non-finite loss raises :class:`~probcomp.errors.DataError` naming the step.
    """
    if not isinstance(model, SlotVAE):
        raise DataError(f"fit_slot_vae trains a probcomp.models.SlotVAE, got {type(model).__name__}")
    counts = {"steps": steps, "batch": batch, "log_every": log_every, "save_every": save_every}
    for label, v in counts.items():
        _positive_int("fit_slot_vae", label, v)
    _positive_int("fit_slot_vae", "warmup", warmup, minimum=0)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise DataError(f"fit_slot_vae: lr must be a positive number, got {lr!r}")
    draw = _image_sampler(data, model)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    result = TrainResult(model)
    path = Path(checkpoint) if checkpoint is not None else None
    start_step = 0
    if path is not None and path.exists():  # the model doubles as the "EMA" of the shared state format
        start_step = _resume(path, model, model, opt, gen, result, steps)
    model.train()
    t0 = time.perf_counter()
    running, count = 0.0, 0
    bar = tqdm(
        range(start_step, steps), desc="Slot-VAE", disable=_quiet() if progress is None else not progress
    )
    for step in bar:
        x = draw(batch, gen)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) if warmup else lr
        loss = model.loss(x, generator=gen)["loss"]
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DataError(f"fit_slot_vae: the training loss became {value} at step {step}; lower lr={lr}")
        _descend(opt, loss, model, grad_clip)
        running += value
        count += 1
        if count == log_every or step == steps - 1:
            result.losses.append(running / count)
            bar.set_postfix(loss=f"{result.losses[-1]:.1f}")
            running, count = 0.0, 0
        if path is not None and ((step + 1) % save_every == 0 or step == steps - 1):
            _save_state(path, step + 1, model, model, opt, gen, result, time.perf_counter() - t0)
    result.steps = steps
    result.wall_time += time.perf_counter() - t0
    model.eval()
    return result

r"""Decomp Diffusion: unsupervised decomposition of images into composable diffusion models.

An encoder maps an image to ``K`` low-dimensional latents, ``z_1..z_K = Enc_phi(x)``, and
one denoiser ``eps_theta(x_t, t, z)`` is trained so that its ``K`` conditioned
predictions together denoise the image (Su, Du et al. 2024, "Compositional image
decomposition with diffusion models"; dissertation ch. 4, Eq. 4.9 and Alg. 1):

.. math:: L(\theta, \phi) = E_{x, t, \epsilon}
          \Big\| \epsilon - \sum_k w_k\, \epsilon_\theta(\alpha_t x + \sigma_t \epsilon, t, z_k) \Big\|^2,
          \qquad z_{1:K} = \mathrm{Enc}_\phi(x).

The low dimension of each ``z_k`` is the information bottleneck that makes the
components split the image between them.  Two choices the seed leaves open are options:

* ``reduce``: ``"sum"`` (``w_k = 1``, Eq. 4.9) or ``"mean"`` (``w_k = 1 / K``, the seed's
  implementation, "averaging the model outputs", App. 4); with ``"mean"`` every component
  on its own is a full-strength denoiser, so a component shown alone is the factor with
  weight 1 and any ``k`` chosen components compose with weights ``1 / k``;
* ``prediction``: ``"eps"`` or ``"x0"`` -- the network predicts the clean image and its eps
  is ``(x_t - alpha_t x0_hat) / sigma_t``, so the loss still regresses eps (Table 4.3:
  predicting ``x0`` reconstructs better).  The defaults are the seed's best row:
  ``prediction="x0"``, ``reduce="mean"``.

Every inferred ``z_k`` binds into a :class:`ComponentFactor`, a score factor the scene,
the composition operators and every engine accept.  Recombination (Alg. 2) is a scene
with one image control and the chosen components as observables
(:func:`recombination_scene`): components of one image reconstruct it, components of two
images recombine them, and components of two models trained on different data compose
across models (Section 4.5.4); a weighted recombination is a weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from probcomp import schedules as sched
from probcomp.errors import DataError, FactorError, ShapeError
from probcomp.factors import as_time, check_event
from probcomp.scene import Scene

from .networks import UNet, _groups
from .parameterisation import ModelFactor, to_eps

__all__ = ["REDUCTIONS", "ComponentFactor", "Decomposition", "Encoder", "recombination_scene"]

REDUCTIONS = ("sum", "mean")


class Encoder(nn.Module):
    """A residual CNN from an image to ``K`` latents ``(N, K, latent)``.

    A convolution (with CoordConv position channels), then one residual block per
    resolution with stride-2 down-sampling and doubling width between them, then a linear
    map of the flattened features to ``K * latent`` numbers (the seed's latent encoder,
    App. 4, scaled to 32 px).  Each latent is then standardised over its coordinates (a layer
    norm without gain): without it, training drifted the latents to magnitudes in the hundreds,
    where the denoiser cannot read them.
    """

    _coords: torch.Tensor

    def __init__(self, channels: int, size: int, components: int, latent: int, width: int = 32) -> None:
        super().__init__()
        if size % 8:
            raise DataError(f"Encoder: image size {size} is not divisible by 8")
        self.components, self.latent = components, latent
        grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
        gy, gx = torch.meshgrid(grid, grid, indexing="ij")
        self.register_buffer("_coords", torch.stack([gx, gy])[None], persistent=False)
        self.inp = nn.Conv2d(channels + 2, width, 3, padding=1)
        blocks, chans = [], width
        for _ in range(3):
            blocks += [
                nn.GroupNorm(_groups(chans), chans),
                nn.SiLU(),
                nn.Conv2d(chans, 2 * chans, 3, stride=2, padding=1),
            ]
            chans *= 2
        self.body = nn.Sequential(*blocks)
        self.res = nn.ModuleList(
            [nn.Conv2d(width * 2**i, width * 2 ** (i + 1), 1, stride=2) for i in range(3)]
        )
        self.out = nn.Linear(chans * (size // 8) ** 2, components * latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(torch.cat([x, self._coords.to(x.dtype).expand(x.shape[0], -1, -1, -1)], 1))
        for i, skip in enumerate(self.res):
            h = skip(h) + self.body[3 * i : 3 * i + 3](h)
        z = self.out(h.flatten(1)).reshape(x.shape[0], self.components, self.latent)
        return nn.functional.layer_norm(z, (self.latent,))


class Decomposition(nn.Module):
    """An encoder and a latent-conditioned denoiser trained with the composed objective.

    Args:
        components: ``K``, the number of latents per image (``K = 1`` is the seed's
            single-component ablation).
        latent: the dimension of each latent (the bottleneck).
        channels, size: the images, ``(channels, size, size)`` with values in [-1, 1].
        base, mults: width of the denoiser (a :class:`~probcomp.models.networks.UNet` with
            CoordConv, each latent given as a continuous condition and tiled over the image).
        width: the encoder's first width.
        prediction: ``"x0"`` (default) or ``"eps"``.
        reduce: ``"mean"`` (default) or ``"sum"`` (module docstring).
        schedule: the noise schedule trained on (a config dict or a schedule; cosine by default,
            as in the seed).
        denoiser: a network ``denoiser(y, model_time, {"z": z})`` to use instead of the U-Net
            (``base`` and ``mults`` are then unused), with a JSON ``config`` that rebuilds it: a
            pretrained diffusers U-Net (:func:`probcomp.models.diffusers.pretrained_decomposition`,
            dissertation Sec. 4.5.5), or such a config read from a checkpoint.

    Train it with :func:`probcomp.models.train` and ``objective="decomposition"``.
    """

    meta: dict[str, Any]  # a loaded checkpoint's config (data, steps, recipe)

    def __init__(
        self,
        components: int = 4,
        latent: int = 16,
        *,
        channels: int = 3,
        size: int = 32,
        base: int = 24,
        mults: Sequence[int] = (1, 2, 2),
        width: int = 32,
        prediction: str = "x0",
        reduce: str = "mean",
        schedule: sched.Schedule | dict[str, Any] | None = None,
        denoiser: nn.Module | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.meta = {}
        if prediction not in ("x0", "eps"):
            raise DataError(f"Decomposition: prediction must be 'x0' or 'eps', got {prediction!r}")
        if reduce not in REDUCTIONS:
            raise DataError(f"Decomposition: reduce must be one of {REDUCTIONS}, got {reduce!r}")
        for label, v in (("components", components), ("latent", latent), ("channels", channels)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DataError(f"Decomposition: {label} must be a positive integer, got {v!r}")
        schedule = sched.cosine() if schedule is None else schedule
        self.schedule = schedule if isinstance(schedule, sched.Schedule) else sched.from_config(schedule)
        self.config: dict[str, Any] = {
            "kind": "decomposition",
            "components": components,
            "latent": latent,
            "channels": channels,
            "size": size,
            "base": base,
            "mults": [int(m) for m in mults],
            "width": width,
            "prediction": prediction,
            "reduce": reduce,
            "schedule": self.schedule.config(),
        }
        self.encoder = Encoder(channels, size, components, latent, width)
        if denoiser is not None:  # a pretrained network (Sec. 4.5.5), or its config from a checkpoint
            self.denoiser: nn.Module = _denoiser(denoiser, latent)
            self.config["denoiser"] = self.denoiser.config
            return
        self.denoiser = UNet(
            channels,
            size,
            base,
            tuple(mults),
            continuous={"z": latent},
            coords=True,
            broadcast=("z",),
            linear=("z",),
        )

    # Shapes and checks ----------------------------------------------------------------
    @property
    def components(self) -> int:
        return int(self.config["components"])

    @property
    def latent(self) -> int:
        return int(self.config["latent"])

    @property
    def prediction(self) -> str:
        return str(self.config["prediction"])

    @property
    def reduce(self) -> str:
        return str(self.config["reduce"])

    @property
    def event_shape(self) -> torch.Size:
        c, n = self.config["channels"], self.config["size"]
        return torch.Size((c, n, n))

    def _check_images(self, x: Any, who: str = "decompose") -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise DataError(f"Decomposition.{who}: images must be a tensor, got {type(x).__name__}")
        if x.ndim == len(self.event_shape):
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != self.event_shape:
            raise ShapeError(
                f"Decomposition.{who}: the model takes images (N, {', '.join(map(str, self.event_shape))}), "
                f"got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise DataError(f"Decomposition.{who}: images must be floating point in [-1, 1], got {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"Decomposition.{who}: the images contain NaN or inf")
        return x

    def _check_latents(self, z: Any, who: str) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise DataError(f"{who}: a latent must be a floating-point tensor, got {type(z).__name__}")
        if z.ndim not in (1, 2) or z.shape[-1] != self.latent:
            raise ShapeError(
                f"{who}: a latent has shape ({self.latent},) or (N, {self.latent}), got {tuple(z.shape)}"
            )
        if not bool(torch.isfinite(z).all()):
            raise DataError(f"{who}: the latent contains NaN or inf")
        return z

    # The model ------------------------------------------------------------------------
    def weights(self, k: int | None = None) -> float:
        """The weight of each of ``k`` composed components (``K`` by default): 1 or ``1 / k``."""
        k = self.components if k is None else k
        return 1.0 if self.reduce == "sum" else 1.0 / k

    def component_eps(
        self, y: torch.Tensor, model_time: torch.Tensor, z: torch.Tensor, alpha: Any, sigma: Any
    ) -> torch.Tensor:
        """``eps_theta(y, t, z)`` of one component per row (``z`` ``(N, latent)``)."""
        return to_eps(self.prediction, self.denoiser(y, model_time, {"z": z}), y, alpha, sigma)

    def composed_eps(
        self, y: torch.Tensor, model_time: torch.Tensor, x: torch.Tensor, alpha: Any, sigma: Any
    ) -> torch.Tensor:
        """``sum_k w_k eps_theta(y, t, z_k)`` with ``z = Enc(x)``: the prediction Eq. 4.9 trains."""
        z = self.encoder(x)
        n, k = z.shape[:2]
        a, s = (
            v.repeat_interleave(k, 0) if isinstance(v, torch.Tensor) and v.ndim else v for v in (alpha, sigma)
        )
        eps = self.component_eps(
            y.repeat_interleave(k, 0), model_time.repeat_interleave(k, 0), z.reshape(n * k, -1), a, s
        )
        return self.weights() * eps.reshape(n, k, *y.shape[1:]).sum(1)

    def decompose(self, x: torch.Tensor) -> torch.Tensor:
        """The ``K`` latents of each image, ``(N, K, latent)``; one image gives ``(K, latent)``."""
        single = isinstance(x, torch.Tensor) and x.ndim == len(self.event_shape)
        x = self._check_images(x)
        p = next(self.parameters())
        with torch.no_grad():
            z = self.encoder(x.to(p.device, p.dtype))
        return z[0] if single else z

    def component(self, z: torch.Tensor, *, name: str | None = None) -> ComponentFactor:
        """The factor of one latent ``(latent,)``, or of one latent per particle ``(N, latent)``."""
        return ComponentFactor(self, self._check_latents(z, "Decomposition.component"), name=name)

    def components_of(self, x: torch.Tensor, which: Sequence[int] | None = None) -> list[ComponentFactor]:
        """The factors of components ``which`` (all by default) of an image, or of a batch of images.

        With a batch ``(N, C, H, W)`` each factor holds one latent per particle: a scene run
        with ``num_samples=N`` and no resampling (``ReverseDiffusion``) draws particle ``i``
        from image ``i``'s components.
        """
        z = self.decompose(x)
        batch = z.ndim == 3
        chosen = list(range(self.components)) if which is None else self._check_indices(which)
        return [self.component(z[:, k] if batch else z[k], name=f"component {k}") for k in chosen]

    def attributions(self, x: torch.Tensor, *, t: float = 0.5, draws: int = 4, seed: int = 0) -> torch.Tensor:
        """Which component explains each pixel: ``(N, K, H, W)``, one-hot over ``K``.

        The image is noised to level ``t`` (``draws`` noise draws, seeded) and each component's
        own clean-image estimate ``x0_k = (x_t - sigma eps_k / w) / alpha`` is formed, with ``eps_k``
        scaled to full strength (``w`` the reduction weight of ``K`` components).  A pixel belongs
        to the component whose estimate departs most from the components' mean there (summed over
        channels and draws): the component that paints it.
        """
        x = self._check_images(x, "attributions")
        p = next(self.parameters())
        x = x.to(p.device, p.dtype)
        z = self.decompose(x)
        n, k = z.shape[:2]
        tt = torch.full((n * k,), float(t), dtype=torch.float64)
        alpha = self.schedule.alpha(tt).to(x.dtype).reshape(-1, 1, 1, 1)
        sigma = self.schedule.sigma(tt).to(x.dtype).reshape(-1, 1, 1, 1)
        mt = self.schedule.model_time(tt).to(x.dtype)
        g = torch.Generator().manual_seed(seed)
        score = torch.zeros(n, k, *x.shape[-2:], dtype=x.dtype)
        with torch.no_grad():
            for _ in range(draws):
                eps = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
                y = (alpha[:n] * x + sigma[:n] * eps).repeat_interleave(k, 0)
                e = self.component_eps(y, mt, z.reshape(n * k, -1), alpha, sigma) * (self.weights() * k)
                x0 = ((y - sigma * e) / alpha).reshape(n, k, *x.shape[1:])
                score += (x0 - x0.mean(1, keepdim=True)).abs().sum(2).cpu()
        return nn.functional.one_hot(score.argmax(1), k).permute(0, 3, 1, 2).to(x.dtype)

    def _check_indices(self, which: Sequence[int]) -> list[int]:
        out = []
        for k in which:
            if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < self.components:
                raise DataError(
                    f"component index {k!r} is out of range: this model has K = {self.components} "
                    f"components, numbered 0..{self.components - 1}"
                )
            out.append(k)
        return out


def _denoiser(denoiser: nn.Module | dict[str, Any], latent: int) -> nn.Module:
    if isinstance(denoiser, dict):  # a checkpoint's config: only known kinds are built, no code runs
        if denoiser.get("kind") != "diffusers_unet":
            raise DataError(f"Decomposition: unknown denoiser kind {denoiser.get('kind')!r}")
        from .diffusers.decomposition import LatentConditionedUNet

        denoiser = LatentConditionedUNet.from_config(denoiser)
    cfg = getattr(denoiser, "config", None)
    if not isinstance(cfg, dict) or "kind" not in cfg:
        raise DataError("Decomposition: a denoiser needs a JSON config dict with a 'kind' (to be saved)")
    if cfg.get("latent", latent) != latent:
        raise ShapeError(
            f"Decomposition: the denoiser takes latents of {cfg['latent']} numbers, not {latent}"
        )
    return denoiser


class ComponentFactor(ModelFactor):
    """One inferred component ``eps_theta(y, t, z_k)`` of a :class:`Decomposition` as a score factor.

    Copies of one model share a :attr:`batch_key`, so a compiled scene evaluates all the
    components of a recombination in one denoiser call per level (:meth:`score_many`).
    """

    def __init__(self, model: Decomposition, z: torch.Tensor, *, name: str | None = None) -> None:
        super().__init__(model.denoiser, model.event_shape, model.schedule, model.prediction, name=name)
        self.decomposition = model
        self.z = z.detach()

    @property
    def batch_key(self) -> int:
        """Factors with equal keys are evaluated together by :meth:`score_many`."""
        return id(self.decomposition)

    def _latents(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        z = self.z.to(device, dtype)
        if z.ndim == 2 and z.shape[0] not in (1, n):
            raise ShapeError(
                f"factor {self.name!r} holds one latent per particle for {z.shape[0]} particles, "
                f"got a batch of {n}"
            )
        return z.reshape(-1, z.shape[-1]).expand(n, -1)

    def _predict(self, y: torch.Tensor, model_time: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.decomposition.denoiser(
                y, model_time, {"z": self._latents(y.shape[0], y.device, y.dtype)}
            )

    @staticmethod
    def score_many(
        factors: Sequence[ComponentFactor], ys: Sequence[torch.Tensor], t: Any
    ) -> list[torch.Tensor]:
        """Scores of components of one model, each at its own input, in one denoiser call."""
        if not factors or len({f.batch_key for f in factors}) != 1 or len(factors) != len(ys):
            raise FactorError("score_many needs one input per factor, all components of one model")
        f0 = factors[0]
        for f, y in zip(factors, ys, strict=True):
            check_event(y, f.event_shape, f"factor {f.name!r}")
        y = torch.cat(list(ys))
        sizes = [v.shape[0] for v in ys]
        tt = torch.cat([as_time(t, v).expand(v.shape[0], 1) for v in ys])
        mt = f0.schedule.model_time(tt).reshape(-1).to(dtype=y.dtype, device=y.device)
        z = torch.cat([f._latents(n, y.device, y.dtype) for f, n in zip(factors, sizes, strict=True)])
        shape = (-1, *([1] * (y.ndim - 1)))
        alpha = f0.schedule.alpha(tt.reshape(-1)).to(y.dtype).to(y.device).reshape(shape)
        sigma = f0.schedule.sigma(tt.reshape(-1)).to(y.dtype).to(y.device).reshape(shape)
        with torch.no_grad():
            eps = f0.decomposition.component_eps(y, mt, z, alpha, sigma)
        return list(torch.split(-eps / sigma, sizes))


def recombination_scene(
    factors: Sequence[ModelFactor], weights: Sequence[float] | float | None = None, *, name: str = "x"
) -> Scene:
    """A scene with one image control ``name`` observed by each component factor (Alg. 2).

    ``weights`` default to each factor's model's reduction (1 for ``"sum"``, ``1 / k`` for
    ``"mean"`` over the ``k`` factors given); a number gives every factor that weight.
    Components of different models compose when their images have one shape.
    """
    factors = list(factors)
    if not factors:
        raise DataError("recombination_scene needs at least one component factor")
    shapes = {tuple(f.event_shape) for f in factors}
    if len(shapes) > 1:
        listed = ", ".join(f"{f.name!r}: {tuple(f.event_shape)}" for f in factors)
        raise ShapeError(f"cannot recombine components of models with different image shapes ({listed})")
    if weights is None:
        w = [_default_weight(f, len(factors)) for f in factors]
    elif isinstance(weights, (int, float)):
        w = [float(weights)] * len(factors)
    else:
        w = [float(v) for v in weights]
        if len(w) != len(factors):
            raise DataError(f"recombination_scene: {len(w)} weights for {len(factors)} factors")
    scene = Scene()
    x = scene.control(name, shape=tuple(factors[0].event_shape))
    for i, (f, wi) in enumerate(zip(factors, w, strict=True)):
        scene.observe(f"component_{i}", x, factor=f, weight=wi)
    return scene


def _default_weight(factor: ModelFactor, k: int) -> float:
    model = getattr(factor, "decomposition", None)
    return model.weights(k) if isinstance(model, Decomposition) else 1.0

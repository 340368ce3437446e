r"""A diffusers U-Net (optionally with a text encoder and a VAE) as a probcomp score factor.

A diffusers scheduler defines ``abar_tau`` for integer training steps ``tau = 0..T-1`` and the
network predicts, at ``x_tau = sqrt(abar_tau) x_0 + sqrt(1 - abar_tau) eps``,

* ``epsilon``      -- ``eps`` (Ho et al. 2020);
* ``sample``       -- ``x_0``;
* ``v_prediction`` -- ``v = sqrt(abar) eps - sqrt(1 - abar) x_0`` (Salimans & Ho 2022).

The factor's schedule is the discrete ``alphas_cumprod`` table (log-SNR interpolated between
steps); its model time is the fractional step ``tau = t (T - 1)``, handed to the U-Net as a
float timestep (the sinusoidal embedding is defined for real ``tau``); the output is converted
to ``eps_hat`` by :func:`probcomp.models.to_eps`, the one place that converts predictions.

**Conditions.**  ``factor.condition(prompt="a red cube")`` or ``factor.condition(class_labels=3)``
returns a copy that shares the network, the text encoder and the prompt-embedding cache
(each prompt is encoded once).  The unconditional model of a text pipeline is the empty
prompt, as in classifier-free guidance (Ho & Salimans 2022); a class-conditional model's is
its null class when it declares one.  Composable Diffusion's AND / NOT (Liu et al. 2022),
``eps = eps_u + sum_i w_i (eps_{c_i} - eps_u)``, is then
``compose.weighted([f.condition(prompt=a), f.condition(prompt=b), f], [w_a, w_b, 1 - w_a - w_b])``.

**Batching of conditioned copies.**  A compiled scene (:class:`probcomp.CompiledScene`, what
every engine runs) groups the terms whose factors share a :attr:`DiffusersFactor.batch_key`
(copies of one model) and evaluates each group with :meth:`DiffusersFactor.score_many`, every
copy on its own rows, from the first level on: a composition of ``k`` prompts costs one U-Net
call per level, and the values are those of separate calls.  The same joins copies at
*different* inputs (a panorama's windows, one prompt each).  Outside a compiled scene (a
:class:`~probcomp.compose.Composite` called directly), copies called at the same input
``(y, tau)`` in a *round* are still joined: the first call of a condition in a round also
evaluates the conditions that shared its previous round and keeps their outputs for the calls
that follow, so only the first round (which discovers the ``k``) makes one call per term.
``max_batch`` splits every call into micro-batches of at
most that many samples (the same values, less memory); ``autocast`` runs the networks in
float16 / bfloat16 while the sampler's state stays float32; ``checkpointing`` recomputes the
networks' activations in the backward pass when gradients flow through them (an observation
through the VAE decoder, or a differentiable ``eps``).

**Latent pipelines** (Rombach et al. 2022).  With a ``vae`` the control lives in the latent
space, ``z = s E(x)`` with ``s = vae.config.scaling_factor``; :meth:`DiffusersFactor.decode`
gives ``D(z / s)`` and :attr:`DiffusersFactor.decoder` is the same map as an observation
function, so a pixel-space factor or likelihood can observe a latent control.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal, cast

import torch

from probcomp import ops
from probcomp import schedules as sched
from probcomp.errors import FactorError, ShapeError
from probcomp.factors import as_time, check_event
from probcomp.results import Result

from ..parameterisation import ModelFactor, to_eps
from .core import PREDICTION_TYPES, Condition, _Core

__all__ = ["PREDICTION_TYPES", "Condition", "DiffusersFactor", "pipeline_grid"]

CLEAN_ABAR = 1.0 - 2.0**-50
"""The signal fraction of the clean level prepended by :func:`pipeline_grid` (``sigma = 3e-8``)."""


class _Decoder(ops.Op):
    """``f(z) = D(z / s)``: a latent control seen in pixel space (differentiable)."""

    arity = 1

    def __init__(self, core: _Core) -> None:
        self.core = core

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.core.decode(z)

    def __repr__(self) -> str:
        return f"decode({self.core.name})"


class DiffusersFactor(ModelFactor):
    """A diffusers U-Net as a score factor; build it with :func:`probcomp.models.from_diffusers`.

    ``eps(y, t)`` evaluates the U-Net at the fractional step ``tau = t (T - 1)`` of the model's own
    schedule and converts its prediction to ``eps_hat`` (module docstring).  Conditioned copies
    (:meth:`condition`) share one :class:`_Core`, which batches them.
    """

    def __init__(self, core: _Core, cond: Condition, *, name: str) -> None:
        # ModelFactor's model(y, model_time) is never called: _predict (below) goes through the core
        model = cast("Callable[[torch.Tensor, torch.Tensor], torch.Tensor]", core.run)
        super().__init__(model, core.event_shape, core.schedule, core.prediction, name=name)
        self.core, self.cond = core, cond

    # Components ---------------------------------------------------------------------------
    @property
    def unet(self) -> torch.nn.Module:
        return self.core.unet

    @property
    def scheduler(self) -> Any:
        return self.core.scheduler

    @property
    def vae(self) -> Any:
        return self.core.vae

    @property
    def is_latent(self) -> bool:
        return self.core.vae is not None

    @property
    def condition_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("class_labels",) if self.core.num_classes is not None else ()

    # The score ----------------------------------------------------------------------------
    def _predict(self, y: torch.Tensor, model_time: torch.Tensor) -> torch.Tensor:
        return self.core.predict(self.cond, y, model_time)

    def eps_given(self, y: torch.Tensor, t: Any, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """``eps_hat(y, t | c)`` with one class label per particle (``cond = {"class_labels": (N,)}``)."""
        if not cond:
            return self.eps(y, t)
        unknown = set(cond) - set(self.condition_names)
        if unknown:
            raise FactorError(
                f"factor {self.name!r} has no condition(s) {sorted(unknown)}; "
                f"it takes {list(self.condition_names)}"
            )
        check_event(y, self.event_shape, f"factor {self.name!r}")
        labels = torch.as_tensor(cond["class_labels"])
        if labels.is_floating_point() or labels.shape != y.shape[:1]:
            raise FactorError(
                f"factor {self.name!r}: class_labels must be integers, one per particle ({y.shape[0]},), "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )
        num_classes = self.core.num_classes
        assert num_classes is not None  # class_labels is a condition name only then (checked above)
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.numel():
            self.core.check_label(int(bad[0]))
        tt = as_time(t, y)
        mt = self.schedule.model_time(tt).reshape(-1).to(dtype=y.dtype, device=y.device).expand(y.shape[0])
        # the bound condition's other inputs (a prompt's embedding), then one label per particle
        kw = self.core._kwargs([replace(self.cond, class_label=0)], y.shape[0])
        kw["class_labels"] = labels.to(device=self.core.device, dtype=torch.long)
        out = self.core.run(y, mt, kw)
        return to_eps(
            self.prediction,
            out,
            y,
            self._scale(self.schedule.alpha, t, y),
            self._scale(self.schedule.sigma, t, y),
        )

    @property
    def batch_key(self) -> int:
        """Factors with equal keys can be evaluated together by :meth:`score_many`."""
        return id(self.core)

    @staticmethod
    def score_many(
        factors: Sequence[DiffusersFactor], ys: Sequence[torch.Tensor], t: Any
    ) -> list[torch.Tensor]:
        """Scores of copies of one model, each at its own input, in one U-Net call.

        A compiled scene groups the terms whose factors share a :attr:`batch_key` and calls this
        once per group and level (from the first level on), each copy on its own input; the
        inputs may differ (a panorama's windows, one prompt each) and have different sizes.  A
        time is a scalar or one value per row of every input.
        """
        if not factors or len({f.batch_key for f in factors}) != 1 or len(factors) != len(ys):
            raise FactorError("score_many needs one input per factor, all copies of one model")
        core, f0 = factors[0].core, factors[0]
        for f, y in zip(factors, ys, strict=True):
            check_event(y, f.event_shape, f"factor {f.name!r}")
        y = torch.cat(list(ys))
        sizes = [v.shape[0] for v in ys]
        t0 = torch.as_tensor(t, dtype=torch.float64)
        if t0.ndim == 1 and t0.shape[0] != 1 and any(n != t0.shape[0] for n in sizes):
            raise FactorError(
                f"score_many: a per-particle time ({t0.shape[0]},) must have one value per row of every "
                f"input, but the inputs have {sizes} rows; pass a scalar time or inputs of equal size"
            )
        # one time per row of the joined batch: each input's own, whatever its size
        per = [as_time(t, v) for v in ys]
        tt = torch.cat([v.expand(n, 1) if v.shape[0] == 1 else v for v, n in zip(per, sizes, strict=True)])
        mt = f0.schedule.model_time(tt).reshape(-1).to(dtype=y.dtype, device=y.device)
        kw: dict[str, list[torch.Tensor]] = {}
        for f, n in zip(factors, sizes, strict=True):
            for k, v in core._kwargs([f.cond], n).items():
                kw.setdefault(k, []).append(v)
        with torch.no_grad():
            out = core.run(y, mt, {k: torch.cat(v) for k, v in kw.items()})
        alpha = f0._scale(f0.schedule.alpha, tt.reshape(-1), y)
        sigma = f0._scale(f0.schedule.sigma, tt.reshape(-1), y)
        score = -to_eps(f0.prediction, out, y, alpha, sigma) / sigma
        return list(torch.split(score, sizes))

    # Conditions ---------------------------------------------------------------------------
    def condition(self, **cond: Any) -> DiffusersFactor:
        """A copy with ``prompt=`` and / or ``class_labels=`` bound, sharing the networks and caches."""
        c = self.core.bind(self.cond, **cond)
        base = self.name.split("|")[0]
        return DiffusersFactor(self.core, c, name=f"{base}|{c.label()}" if c.label() else base)

    # Options ------------------------------------------------------------------------------
    def configure(
        self,
        *,
        max_batch: int | Literal["keep"] | None = "keep",
        autocast: torch.dtype | Literal["keep"] | None = "keep",
        checkpointing: bool | None = None,
    ) -> DiffusersFactor:
        """Set micro-batching, autocast and activation checkpointing (shared by all copies); returns self."""
        core = self.core
        mb = core.max_batch if max_batch == "keep" else max_batch
        ac = core.autocast if autocast == "keep" else autocast
        core.check_options(mb, ac)  # validate first: a refused setting leaves the factor as it was
        core.max_batch, core.autocast = mb, ac
        if checkpointing is not None:
            core.checkpointing = bool(checkpointing)
        core.reset()
        return self

    def to(self, device: str | torch.device) -> DiffusersFactor:
        """Move the networks (shared by every copy) to ``device``; returns ``self``."""
        for m in (self.core.unet, self.core.text_encoder, self.core.vae):
            if m is not None:
                m.to(device)
        self.core._prompts = {k: v.to(device) for k, v in self.core._prompts.items()}
        self.core.reset()
        return self

    @property
    def unet_calls(self) -> int:
        """Batched U-Net evaluations so far (all copies together)."""
        return self.core.unet_calls

    # Latent space ---------------------------------------------------------------------------
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``D(z / s)`` of latents ``z`` ``(N, *event_shape)`` (differentiable)."""
        check_event(z, self.event_shape, f"factor {self.name!r}")
        return self.core.decode(z)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``s * mean(E(x))`` of images ``x`` ``(N, C, H, W)`` in [-1, 1]."""
        return self.core.encode(x)

    @property
    def decoder(self) -> ops.Op:
        """:meth:`decode` as an observation function, ``scene.observe(..., fn=factor.decoder)``."""
        self.core.require_vae()
        return _Decoder(self.core)

    @property
    def image_shape(self) -> torch.Size:
        """Shape of one decoded image (the event shape itself for a pixel-space model)."""
        if self.core.vae is None:
            return self.event_shape
        cfg = self.core.vae.config
        f = 2 ** (len(cfg.block_out_channels) - 1)
        return torch.Size((int(cfg.out_channels), self.event_shape[1] * f, self.event_shape[2] * f))

    def decode_result(self, res: Result, control: str = "x", name: str = "image") -> Result:
        """``res`` with the decoded images of latent control ``control`` added as ``res[name]``."""
        z = res[control]
        with torch.no_grad():
            img = self.decode(z)
        return Result(
            {**res.samples, name: img},
            res.stats,
            res.particle_stats,
            num_chains=res.num_chains,
            engine=res.engine,
        )


def pipeline_grid(source: DiffusersFactor | Any, num_inference_steps: int) -> dict[str, Any]:
    r"""Engine settings under which ``ReverseDiffusion`` takes diffusers' own timesteps.

    diffusers' DDPM (Ho et al. 2020) and DDIM (Song et al. 2021, Eq. 12) schedulers step from
    ``tau_k`` to ``tau_k - T / n`` and end at the clean level (``abar = 1``, DDPM's ``one`` and
    DDIM's ``set_alpha_to_one``).  This returns
    ``schedule`` (the model's ``alphas_cumprod`` with a clean level ``abar = 1 - 2^-50``
    prepended, so engine time ``t = (tau + 1) / T`` is step ``tau``), ``steps``, ``t_max`` and
    ``t_min``: ``ReverseDiffusion(**pipeline_grid(f, n), sampler=...)`` evaluates the U-Net at
    exactly ``scheduler.set_timesteps(n)``'s timesteps.  The last step lands at ``sigma = 3e-8``
    instead of 0 (an offset of ``3e-8 eps_hat``).
    """
    scheduler = source.scheduler if isinstance(source, DiffusersFactor) else source
    from .loading import check_scheduler

    abar, _ = check_scheduler(scheduler, getattr(source, "name", type(scheduler).__name__))
    if getattr(scheduler.config, "set_alpha_to_one", True) is False:
        raise FactorError("pipeline_grid: the scheduler's last step ends at abar_0, not the clean level")
    n_train = len(abar)
    s = type(scheduler).from_config(scheduler.config)
    s.set_timesteps(int(num_inference_steps))
    taus = [int(v) for v in s.timesteps]
    stride = n_train // int(num_inference_steps)
    if any(a - b != stride for a, b in itertools.pairwise(taus)) or taus[-1] - stride >= 0:
        raise FactorError(
            f"pipeline_grid: timesteps {taus[:3]}... are not evenly spaced by {stride} down to the clean "
            "level "
            "(use timestep_spacing='leading')"
        )
    table = torch.cat([torch.tensor([CLEAN_ABAR], dtype=torch.float64), torch.as_tensor(abar).double().cpu()])
    return {
        "schedule": sched.discrete(table, label=f"diffusers-{n_train}+clean"),
        "steps": len(taus),
        "t_max": (taus[0] + 1) / n_train,
        "t_min": (taus[-1] + 1) / n_train,
    }


def from_parts(
    unet: Any,
    scheduler: Any,
    *,
    name: str,
    text_encoder: Any = None,
    tokenizer: Any = None,
    vae: Any = None,
    meta: dict[str, Any] | None = None,
    null_class: int | None = None,
    event_shape: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    max_batch: int | None = None,
    autocast: torch.dtype | None = None,
    checkpointing: bool = False,
) -> DiffusersFactor:
    """The unconditional (or null-class) factor of already-built diffusers components."""
    if not isinstance(unet, torch.nn.Module) or not hasattr(unet, "config"):
        raise FactorError(
            f"factor {name!r}: expected a diffusers model (a torch module with .config), "
            f"got {type(unet).__name__}"
        )
    for attr in ("in_channels", "sample_size"):
        if event_shape is None and getattr(unet.config, attr, None) is None:
            raise FactorError(f"factor {name!r}: the model config has no {attr}; pass event_shape=")
    if device is not None:
        for m in (unet, text_encoder, vae):
            if m is not None:
                m.to(device)
    core = _Core(
        unet,
        scheduler,
        name=name,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        vae=vae,
        meta=meta,
        null_class=null_class,
        event_shape=event_shape,
        max_batch=max_batch,
        autocast=autocast,
        checkpointing=checkpointing,
    )
    if vae is not None and core.event_shape[0] != int(vae.config.latent_channels):
        raise ShapeError(
            f"factor {name!r}: the U-Net takes {core.event_shape[0]} channels but the VAE's latents have "
            f"{vae.config.latent_channels}"
        )
    if any(s <= 0 or not math.isfinite(s) for s in core.event_shape):
        raise FactorError(f"factor {name!r}: bad event shape {tuple(core.event_shape)}")
    return DiffusersFactor(core, core.base_condition(), name=name)

"""The state conditioned copies of one diffusers model share: networks, caches, batching.

A *round* is one evaluation point ``(y, tau)``.  The first call of a condition in a round
evaluates, besides that condition, the conditions that shared its previous round, stacked
along the batch axis in one U-Net call, and keeps their outputs for the calls that follow
(see :mod:`probcomp.models.diffusers.factor`).  A prefetched condition that is not called
in the round drops out of the plan, so a pattern that changes costs at most one round of
extra work, and copies called at different inputs (a panorama's windows) prefetch nothing.
Micro-batching (``max_batch``), autocast and activation checkpointing are applied here,
around every network call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.utils.checkpoint

from probcomp import schedules as sched
from probcomp.errors import FactorError, ScheduleError

__all__ = ["PREDICTION_TYPES", "Condition"]

PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
"""diffusers' ``prediction_type`` names and the parameterisation boundary's."""

_OWN: Any = object()  # check_options' default: the core's current setting


@dataclass(frozen=True)
class Condition:
    """What one conditioned copy binds: a prompt, a class label, or neither."""

    prompt: str | None = None
    class_label: int | None = None

    def label(self) -> str:
        parts = []
        if self.prompt is not None:
            parts.append(f"prompt={self.prompt!r}")
        if self.class_label is not None:
            parts.append(f"class={self.class_label}")
        return ",".join(parts)


@dataclass
class _Round:
    """Outputs computed at one input ``(y, tau)``, and the conditions called there."""

    y: torch.Tensor
    tau: torch.Tensor
    out: dict[Condition, torch.Tensor] = field(default_factory=dict)
    called: list[Condition] = field(default_factory=list)

    def matches(self, y: torch.Tensor, tau: torch.Tensor) -> bool:
        return (
            y.shape == self.y.shape
            and y.dtype == self.y.dtype
            and y.device == self.y.device
            and torch.equal(tau, self.tau)
            and torch.equal(y, self.y)
        )


class _Core:
    """What every conditioned copy of one model shares: networks, caches, options, counters."""

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler: Any,
        *,
        name: str,
        text_encoder: Any = None,
        tokenizer: Any = None,
        vae: Any = None,
        meta: dict[str, Any] | None = None,
        null_class: int | None = None,
        event_shape: Sequence[int] | None = None,
        max_batch: int | None = None,
        autocast: torch.dtype | None = None,
        checkpointing: bool = False,
    ) -> None:
        from .loading import check_scheduler

        self.unet = unet.eval().requires_grad_(False)
        self.scheduler, self.name = scheduler, name
        self.text_encoder = None if text_encoder is None else text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.vae = None if vae is None else vae.eval().requires_grad_(False)
        self.meta = dict(meta or {})
        abar, ptype = check_scheduler(scheduler, name)
        if ptype not in PREDICTION_TYPES:
            raise FactorError(
                f"factor {name!r}: unknown prediction_type {ptype!r} in the scheduler config; "
                f"expected one of {sorted(PREDICTION_TYPES)}"
            )
        self.prediction = PREDICTION_TYPES[ptype]
        try:
            self.schedule = sched.discrete(
                torch.as_tensor(abar).double().cpu(), label=f"diffusers-{len(abar)}"
            )
        except ScheduleError as e:
            raise FactorError(
                f"factor {name!r}: the scheduler's alphas_cumprod is not a VP schedule: {e}"
            ) from None
        # a diffusers model's config (for an nn.Module attribute the checker would say Tensor | Module)
        cfg: Any = unet.config
        self.text = getattr(cfg, "cross_attention_dim", None) is not None
        self.num_classes: int | None = getattr(cfg, "num_class_embeds", None)
        if null_class is None:
            null_class = self.meta.get("null_class")
        self.classes: dict[str, int] = {str(k): int(v) for k, v in (self.meta.get("classes") or {}).items()}
        if event_shape is None:
            size = cfg.sample_size
            hw = (size, size) if isinstance(size, int) else tuple(size)
            event_shape = (cfg.in_channels, *hw)
        self.event_shape = torch.Size(int(s) for s in event_shape)
        self.null_class = None if null_class is None else self.check_label(int(null_class))
        self.scaling_factor = None if vae is None else float(vae.config.scaling_factor)
        self.max_batch, self.autocast, self.checkpointing = max_batch, autocast, bool(checkpointing)
        self.check_options()
        self._prompts: dict[str, torch.Tensor] = {}
        self._round: _Round | None = None
        self._plan: dict[Condition, list[Condition]] = {}  # cond -> the conds of its last round
        self.unet_calls = 0  # batched evaluations (a micro-batched one counts once)

    # Options ----------------------------------------------------------------------------
    def check_options(self, max_batch: Any = _OWN, autocast: Any = _OWN) -> None:
        """Raise unless ``max_batch`` and ``autocast`` (default: the current ones) are valid."""
        max_batch = self.max_batch if max_batch is _OWN else max_batch
        autocast = self.autocast if autocast is _OWN else autocast
        if max_batch is not None and (isinstance(max_batch, bool) or int(max_batch) < 1):
            raise FactorError(
                f"factor {self.name!r}: max_batch must be a positive integer, got {max_batch!r}"
            )
        if autocast not in (None, torch.float16, torch.bfloat16):
            raise FactorError(
                f"factor {self.name!r}: autocast must be None, torch.float16 or torch.bfloat16, "
                f"got {autocast!r}"
            )

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # Conditions ---------------------------------------------------------------------------
    def check_label(self, k: Any) -> int:
        if self.num_classes is None:
            raise FactorError(
                f"factor {self.name!r} is not class-conditional (its U-Net has no class embedding); "
                "it takes no class_labels"
            )
        if isinstance(k, str):
            if k not in self.classes:
                raise FactorError(
                    f"factor {self.name!r} has no class {k!r}; its classes are {sorted(self.classes)}"
                )
            k = self.classes[k]
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.num_classes:
            raise FactorError(
                f"factor {self.name!r}: class label {k!r} is out of range; the model has "
                f"{self.num_classes} classes (0..{self.num_classes - 1})"
            )
        return k

    def base_condition(self) -> Condition:
        if self.text:  # (a U-Net that takes both keeps its null class with the empty prompt)
            return Condition(prompt="", class_label=self.null_class)
        return Condition(class_label=self.null_class)

    def bind(self, cond: Condition, **kw: Any) -> Condition:
        unknown = set(kw) - {"prompt", "class_labels"}
        if unknown:
            raise FactorError(
                f"factor {self.name!r} has no condition(s) {sorted(unknown)}; it takes prompt, class_labels"
            )
        prompt, label = cond.prompt, cond.class_label
        if "prompt" in kw:
            if not self.text:
                raise FactorError(
                    f"factor {self.name!r} is not text-conditioned (its U-Net takes no "
                    "encoder_hidden_states); "
                    "it takes no prompt"
                )
            if not isinstance(kw["prompt"], str):
                raise FactorError(
                    f"factor {self.name!r}: prompt must be a string, got {type(kw['prompt']).__name__}"
                )
            prompt = kw["prompt"]
        if "class_labels" in kw:
            v = kw["class_labels"]
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = int(v.item())
            label = self.check_label(v)
        return Condition(prompt=prompt, class_label=label)

    def embed(self, prompt: str) -> torch.Tensor:
        """The text encoder's last hidden states ``(1, L, D)`` for ``prompt``, computed once."""
        if prompt not in self._prompts:
            if self.text_encoder is None or self.tokenizer is None:
                raise FactorError(
                    f"factor {self.name!r} is text-conditioned but has no text encoder and tokenizer "
                    "(load a pipeline folder with text_encoder/ and tokenizer/)"
                )
            tok = self.tokenizer(
                [prompt],
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            dev = next(self.text_encoder.parameters()).device
            with torch.no_grad():
                h = self.text_encoder(tok.input_ids.to(dev))[0]
            self._prompts[prompt] = h.to(device=self.device, dtype=self.dtype)
        return self._prompts[prompt]

    def _kwargs(self, conds: Sequence[Condition], n: int) -> dict[str, torch.Tensor]:
        kw: dict[str, torch.Tensor] = {}
        if self.text:
            kw["encoder_hidden_states"] = torch.cat(
                [self.embed("" if c.prompt is None else c.prompt).expand(n, -1, -1) for c in conds]
            )
        if self.num_classes is not None:
            missing = [c for c in conds if c.class_label is None]
            if missing:
                raise FactorError(
                    f"factor {self.name!r} is class-conditional and declares no null class; bind a class "
                    "with .condition(class_labels=k) (or pass null_class= to from_diffusers)"
                )
            kw["class_labels"] = torch.cat(
                [
                    # every condition has a label: checked just above
                    torch.full((n,), int(cast(int, c.class_label)), dtype=torch.long, device=self.device)
                    for c in conds
                ]
            )
        return kw

    # Network calls -----------------------------------------------------------------------
    def _autocast(self) -> Any:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def run(self, y: torch.Tensor, tau: torch.Tensor, kw: dict[str, torch.Tensor]) -> torch.Tensor:
        """The raw U-Net output at ``(y, tau)`` (``(B, ...)``), micro-batched, in ``y``'s dtype and device."""
        self.unet_calls += 1
        n = y.shape[0]
        step = n if self.max_batch is None else int(self.max_batch)
        grad = torch.is_grad_enabled() and y.requires_grad
        outs = []
        for lo in range(0, n, step):
            sl = slice(lo, min(lo + step, n))
            yc = y[sl].to(device=self.device, dtype=self.dtype)
            tc = tau[sl].to(device=self.device, dtype=torch.float32)
            kc = {k: v[sl] for k, v in kw.items()}

            def f(yc: torch.Tensor, tc: torch.Tensor = tc, kc: dict[str, torch.Tensor] = kc) -> torch.Tensor:
                with self._autocast():
                    return self.unet(yc, tc, **kc, return_dict=False)[0]

            o = (
                torch.utils.checkpoint.checkpoint(f, yc, use_reentrant=False)
                if grad and self.checkpointing
                else f(yc)
            )
            outs.append(o.to(device=y.device, dtype=y.dtype))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def predict(self, cond: Condition, y: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """The output for ``cond`` at ``(y, tau)``, batched with the round's sibling conditions."""
        if torch.is_grad_enabled() and y.requires_grad:  # a differentiable call: no sharing
            return self.run(y, tau, self._kwargs([cond], y.shape[0]))
        with torch.no_grad():
            r = self._round
            if r is None or not r.matches(y, tau):
                if r is not None:
                    for c in r.called:  # (prefetched but unused conditions drop out)
                        self._plan[c] = list(r.called)
                r = self._round = _Round(y.detach().clone(), tau.detach().clone())
            if cond not in r.out:
                todo = [cond, *(c for c in self._plan.get(cond, ()) if c != cond and c not in r.out)]
                n = y.shape[0]
                ys = y.repeat(len(todo), *([1] * (y.ndim - 1))) if len(todo) > 1 else y
                out = self.run(ys, tau.repeat(len(todo)), self._kwargs(todo, n))
                for k, c in enumerate(todo):
                    r.out[c] = out[k * n : (k + 1) * n]
            if cond not in r.called:
                r.called.append(cond)
            return r.out[cond].clone()  # (callers may write into what they get)

    def reset(self) -> None:
        """Forget the cached round and the learned batch plan."""
        self._round, self._plan = None, {}

    # The VAE -----------------------------------------------------------------------------
    def require_vae(self) -> Any:
        if self.vae is None:
            raise FactorError(
                f"factor {self.name!r} has no VAE (not a latent pipeline); there is nothing to decode"
            )
        return self.vae

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        vae = self.require_vae()
        scale = self.scaling_factor
        assert scale is not None  # __init__ sets it with the VAE
        n = z.shape[0]
        step = n if self.max_batch is None else int(self.max_batch)
        grad = torch.is_grad_enabled() and z.requires_grad
        p = next(vae.parameters())  # the VAE runs in its own dtype and device, not the U-Net's
        outs = []
        for lo in range(0, n, step):
            zc = z[lo : lo + step].to(device=p.device, dtype=p.dtype) / scale

            def f(zc: torch.Tensor) -> torch.Tensor:
                with self._autocast():
                    return vae.decode(zc, return_dict=False)[0]

            o = (
                torch.utils.checkpoint.checkpoint(f, zc, use_reentrant=False)
                if grad and self.checkpointing
                else f(zc)
            )
            outs.append(o.to(device=z.device, dtype=z.dtype))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        vae = self.require_vae()
        p = next(vae.parameters())  # the VAE's own dtype and device
        with torch.no_grad():
            d = vae.encode(x.to(device=p.device, dtype=p.dtype)).latent_dist
        return (d.mean * self.scaling_factor).to(device=x.device, dtype=x.dtype)

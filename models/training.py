r"""Training denoisers by noise matching, with EMA, seeding and resumable checkpoints.

The loss is the usual eps-matching objective at a uniform time of the model's
schedule,

.. math:: L = E_{x, c, t, \epsilon} \| \epsilon - \epsilon_\theta(\alpha_t x + \sigma_t \epsilon, t, c) \|^2,

with classifier-free dropout: each discrete attribute is replaced by its null
token, and each continuous condition by "absent", with probability ``p_drop``
per attribute and sample.  ``objective="composed"`` trains on data labelled with
``K`` concepts per sample (dissertation Eq. 5.5):

.. math:: L = E \| \epsilon - \sum_k \epsilon_\theta(x_t, t, c_k) \|^2,

where every condition tensor has a concept axis ``(N, K, ...)`` and an optional
boolean ``"mask"`` ``(N, K)`` marks the concepts present.  ``objective="coind"`` adds
COIND's conditional-independence term (Gaudi et al., Eq. 8 and App. D, Alg. 1),

.. math:: L = E\| \epsilon - \epsilon_\theta(x_t, t, \tilde c) \|^2 + \lambda\, E \frac{1}{\sigma_t^2}
          \| \epsilon_\theta(x_t, t, c^i) + \epsilon_\theta(x_t, t, c^j)
          - \epsilon_\theta(x_t, t, c^{ij}) - \epsilon_\theta(x_t, t, c^\varnothing) \|^2,

where ``tilde c`` is ``c`` with attribute dropout ``p_drop`` (``p_uncond`` of Gaudi et al. 2025), ``i != j``
are two attributes drawn per example, and ``c^i``, ``c^j``, ``c^{ij}`` keep only those
attributes of the *original* labels (the rest set to the null token).  The ``1 / sigma_t^2``
turns the eps residual into the score residual (the Fisher divergence of Eq. 7); it is
Gaudi et al.'s weighting.  ``objective="decomposition"`` trains a
:class:`~probcomp.models.decomposition.Decomposition` (Decomp Diffusion, dissertation Eq. 4.9):
the encoder's ``K`` latents of each clean image condition the denoiser, and their composed
prediction ``sum_k w_k eps_theta(x_t, t, z_k)`` regresses eps; labels in the data are ignored
(the decomposition is unsupervised) and the schedule is the model's own.

Choosing ``lam``: Gaudi et al. balance the two terms' gradients, with
``lam = L_score / L_CI`` measured on a vanilla model, or the rule of thumb
``lam = 4000 L_score`` (App. C.3).
"""

from __future__ import annotations

import copy
import os
import pickle
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from probcomp import schedules as sched
from probcomp.errors import DataError, first_line

from .decomposition import Decomposition

__all__ = ["TrainResult", "train"]

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]

OBJECTIVES = ("eps", "composed", "coind", "decomposition")


@dataclass
class TrainResult:
    """The EMA model and the training record."""

    model: nn.Module
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    wall_time: float = 0.0

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")


def _sampler(data: Any) -> Callable[[int, torch.Generator], Batch]:
    """Normalise ``data`` to ``draw(n, generator) -> (x, cond)``."""
    if callable(data):

        def draw(n: int, g: torch.Generator) -> Batch:
            out: Any = data(n, g)  # the user's sampler: x, or (x, cond)
            return (out[0], dict(out[1])) if isinstance(out, tuple) else (out, {})

        return draw
    x, cond = (data[0], dict(data[1])) if isinstance(data, tuple) else (data, {})
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise DataError(f"training data must be a sampler or an (M, ...) tensor, got {type(x).__name__}")
    for k, v in cond.items():
        if v.shape[0] != x.shape[0]:
            raise DataError(f"condition {k!r} has {v.shape[0]} rows but the data has {x.shape[0]}")

    def draw_tensor(n: int, g: torch.Generator) -> Batch:
        idx = torch.randint(x.shape[0], (n,), generator=g)
        return x[idx], {k: v[idx] for k, v in cond.items()}

    return draw_tensor


def _drop(cond: dict[str, torch.Tensor], attributes: dict[str, int], p: float, g: torch.Generator) -> dict:
    """Classifier-free dropout, independently per attribute and sample."""
    out = {}
    for k, v in cond.items():
        mask = torch.rand(v.shape[0], generator=g) < p
        if k in attributes:
            out[k] = torch.where(mask, torch.full_like(v, attributes[k]), v)
        else:
            v = v.to(torch.get_default_dtype())
            out[k] = torch.where(mask.reshape(-1, *([1] * (v.ndim - 1))), torch.full_like(v, float("nan")), v)
    return out


def _composed_eps(model: nn.Module, y: torch.Tensor, mt: torch.Tensor, cond: dict) -> torch.Tensor:
    """``sum_k mask_k eps(y, t, c_k)`` with the K concepts flattened into the batch."""
    mask = cond.pop("mask", None)
    k = next(iter(cond.values())).shape[1]
    n = y.shape[0]
    y_rep = y.repeat_interleave(k, 0)
    flat = {name: v.reshape(n * k, *v.shape[2:]) for name, v in cond.items()}
    eps = model(y_rep, mt.repeat_interleave(k, 0), flat).reshape(n, k, *y.shape[1:])
    if mask is not None:
        eps = eps * mask.to(eps.dtype).reshape(n, k, *([1] * (y.ndim - 1)))
    return eps.sum(1)


def _coind_ci(
    model: nn.Module,
    y: torch.Tensor,
    mt: torch.Tensor,
    sigma: torch.Tensor,
    cond: dict,
    attributes: dict[str, int],
    g: torch.Generator,
) -> torch.Tensor:
    """COIND's pairwise conditional-independence residual per example (module docstring)."""
    names = list(attributes)
    n = y.shape[0]
    i = torch.randint(len(names), (n,), generator=g)
    j = (i + 1 + torch.randint(len(names) - 1, (n,), generator=g)) % len(names)  # uniform over j != i
    null = {k: torch.full_like(cond[k], attributes[k]) for k in names}
    keep_i = {k: torch.where((i == a).to(cond[k].device), cond[k], null[k]) for a, k in enumerate(names)}
    keep_j = {k: torch.where((j == a).to(cond[k].device), cond[k], null[k]) for a, k in enumerate(names)}
    keep_ij = {
        k: torch.where(((i == a) | (j == a)).to(cond[k].device), cond[k], null[k])
        for a, k in enumerate(names)
    }
    batch = {k: torch.cat([keep_i[k], keep_j[k], keep_ij[k], null[k]]) for k in names}
    e = model(y.repeat(4, *[1] * (y.ndim - 1)), mt.repeat(4), batch).reshape(4, *y.shape)
    r = e[0] + e[1] - e[2] - e[3]
    return r.square().flatten(1).mean(1) / sigma.reshape(-1).square()


def _quiet() -> bool:
    return bool(os.environ.get("CI")) or not sys.stderr.isatty()


def train(
    model: nn.Module,
    data: Any,
    *,
    schedule: sched.Schedule | None = None,
    steps: int = 2000,
    batch: int = 512,
    lr: float = 1e-3,
    ema: float = 0.999,
    seed: int = 0,
    p_drop: float = 0.1,
    objective: str | None = None,
    lam: float = 0.0,
    t_min: float = 1e-3,
    min_snr: float | None = None,
    snr_floor: float | None = None,
    grad_clip: float = 1.0,
    log_every: int = 100,
    checkpoint: str | Path | None = None,
    save_every: int = 500,
    progress: bool | None = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train ``model(y, model_time, cond) -> eps_hat`` on ``data``; returns the EMA model.

    Args:
        model: an eps-predicting network or an :class:`~probcomp.models.energy.EnergyModel`.
        data: ``sampler(n, generator) -> x`` or ``-> (x, cond)``, or a tensor ``(M, ...)``,
            or a pair ``(tensor, cond dict of (M, ...) tensors)``.
        schedule: the noise schedule the model is trained on (continuous linear by default).
        steps, batch, lr: Adam steps, batch size, learning rate.
        ema: decay of the exponential moving average of the weights (0 disables it).
        seed: seeds data, times and noise; with a fixed seed CPU training is deterministic.
        p_drop: classifier-free dropout probability per attribute.
        objective: ``"eps"``, ``"composed"`` (Eq. 5.5), ``"coind"`` (COIND, with weight ``lam``
            on the conditional-independence term; needs two or more discrete attributes) or
            ``"decomposition"`` (Eq. 4.9, for a :class:`~probcomp.models.decomposition.Decomposition`).
            By default ``"decomposition"`` for a Decomposition and ``"eps"`` otherwise.
        min_snr: weigh each sample's eps loss by ``min(SNR_t, gamma) / SNR_t`` with ``gamma =
            min_snr`` and ``SNR_t = alpha_t^2 / sigma_t^2`` (Hang et al. 2023, "Efficient diffusion
            training via min-SNR weighting strategy", Eq. 7).  For an x0-predicting network the eps
            loss is ``SNR_t |x0 - x0_hat|^2``, which the nearly clean levels dominate; the clamp
            bounds their share (``gamma = 5`` is the paper's choice).  ``None``: the plain eps loss.
        snr_floor: weigh by ``max(SNR_t, floor) / SNR_t`` (with ``min_snr``, by
            ``clip(SNR_t, floor, gamma) / SNR_t``): for an x0-predicting network the loss at the
            noisiest levels becomes ``floor * |x0 - x0_hat|^2`` instead of vanishing with
            ``SNR_t``, so reconstructing the image from almost pure noise, where only the
            condition tells what it is, counts ("truncated SNR" weighting, Salimans & Ho 2022,
            "Progressive distillation for fast sampling of diffusion models", Sec. 4, floor 1).
            It multiplies an eps-predicting network's loss by up to ``floor / SNR_t``.
        checkpoint: a file path for the resumable training state (``torch.save`` of
            tensors only, read back with ``weights_only=True``); training resumes from it.
        progress: show a tqdm bar; by default only on an interactive terminal outside CI.
        device: where the model trains.  Data, times and noise are always drawn on the
            CPU from ``seed``, so every device sees the same batches.
    """
    if objective is None:  # a Decomposition has one objective; every other network starts from eps
        objective = "decomposition" if isinstance(model, Decomposition) else "eps"
    if objective not in OBJECTIVES:
        raise DataError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    decomposing = objective == "decomposition"
    if decomposing != isinstance(model, Decomposition):
        raise DataError(
            "objective='decomposition' trains a probcomp.models.Decomposition, and a Decomposition "
            f"trains only with it; got objective={objective!r} for a {type(model).__name__}"
        )
    if isinstance(model, Decomposition):
        schedule = schedule if schedule is not None else model.schedule
        if schedule.config() != model.schedule.config():
            raise DataError(
                f"a Decomposition trains on its own schedule {model.schedule!r}; got schedule={schedule!r}"
            )
    if steps < 1 or batch < 1:
        raise DataError(f"steps and batch must be positive, got {steps}, {batch}")
    for label, v in (("min_snr", min_snr), ("snr_floor", snr_floor)):
        if v is not None and not (isinstance(v, (int, float)) and 0 < v < float("inf")):
            raise DataError(f"{label} must be a positive number or None, got {v!r}")
    if min_snr is not None and snr_floor is not None and snr_floor > min_snr:
        raise DataError(f"snr_floor={snr_floor} is above min_snr={min_snr}")
    schedule = schedule if schedule is not None else sched.linear()
    draw = _sampler(data)
    device = torch.device(device)
    model.to(device)
    net = getattr(model, "net", model)
    attributes = dict(getattr(getattr(net, "cond", None), "attributes", {}) or {})
    if objective == "coind" and len(attributes) < 2:
        raise DataError(
            f"objective='coind' needs a network with two or more attributes, got {sorted(attributes)}"
        )
    if objective == "coind" and not lam >= 0:
        raise DataError(f"lam must be non-negative, got {lam}")
    if ema > 0 and ema**steps > 0.05 and steps >= 100:
        warnings.warn(
            f"after {steps} steps the weight EMA (decay {ema}) still holds {ema**steps:.0%} of the "
            f"untrained initial weights; use ema <= {1 - 3 / steps:.4g} or train longer",
            UserWarning,
            stacklevel=2,
        )
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ema_model = copy.deepcopy(model).eval() if ema > 0 else model
    if ema > 0:  # ema=0 trains and returns the model itself, which must keep its gradients
        for p in ema_model.parameters():
            p.requires_grad_(False)
    result = TrainResult(ema_model)
    start_step = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        start_step = _resume(path, model, ema_model, opt, gen, result, steps)
    model.train()
    t0 = time.perf_counter()
    running, count = 0.0, 0
    bar = tqdm(
        range(start_step, steps), desc="training", disable=_quiet() if progress is None else not progress
    )
    for step in bar:
        x, cond = draw(batch, gen)
        if isinstance(model, Decomposition):
            cond = {}  # unsupervised: the labels a sampler returns are not used
        x = x.to(torch.get_default_dtype())
        t = t_min + (1 - t_min) * torch.rand(batch, generator=gen, dtype=torch.float64)
        a = schedule.alpha(t).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        s = schedule.sigma(t).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        eps = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        y = (a * x + s * eps).to(device)
        eps = eps.to(device)
        mt = schedule.model_time(t).to(x.dtype).to(device)
        original = {k: v.to(device) for k, v in cond.items()}
        if objective in ("eps", "coind") and cond and p_drop > 0:
            cond = _drop(cond, attributes, p_drop, gen)
        cond = {k: v.to(device) for k, v in cond.items()}
        if isinstance(model, Decomposition):
            pred = model.composed_eps(y, mt, x.to(device), a.to(device), s.to(device))
        elif objective == "composed":
            pred = _composed_eps(model, y, mt, cond)
        else:
            pred = model(y, mt, cond or None)
        per = (pred - eps).square().flatten(1).mean(1)
        if min_snr is not None or snr_floor is not None:
            snr = (a / s).square().reshape(-1).to(device)
            per = per * snr.clamp(min=snr_floor, max=min_snr) / snr
        loss = per.mean()
        if objective == "coind" and lam > 0:
            loss = loss + lam * _coind_ci(model, y, mt, s.to(device), original, attributes, gen).mean()
        if not torch.isfinite(loss):
            raise DataError(f"training loss became {float(loss)} at step {step}; lower lr={lr}")
        _descend(opt, loss, model, grad_clip)
        if ema > 0:
            with torch.no_grad():
                for pe, pm in zip(ema_model.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - ema)
                for be, bm in zip(ema_model.buffers(), model.buffers(), strict=True):
                    be.copy_(bm)
        running += float(loss.detach())
        count += 1
        if count == log_every or step == steps - 1:
            result.losses.append(running / count)
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
            running, count = 0.0, 0
        if path is not None and ((step + 1) % save_every == 0 or step == steps - 1):
            _save_state(path, step + 1, model, ema_model, opt, gen, result, time.perf_counter() - t0)
    result.steps = steps
    result.wall_time += time.perf_counter() - t0
    model.eval()
    return result


def _descend(opt: torch.optim.Optimizer, loss: torch.Tensor, model: nn.Module, grad_clip: float) -> None:
    """One optimiser step on ``loss``: clear, back-propagate, clip the gradient norm (0: no clip), step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()


def _save_state(
    path: Path, step: int, model, ema_model, opt, gen, result: TrainResult, elapsed: float
) -> None:
    state = {
        "step": step,
        "model": model.state_dict(),
        "ema": ema_model.state_dict(),
        "opt": opt.state_dict(),
        "rng": gen.get_state(),
        "losses": torch.tensor(result.losses, dtype=torch.float64),
        "wall_time": result.wall_time + elapsed,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _resume(path: Path, model, ema_model, opt, gen, result: TrainResult, steps: int | None = None) -> int:
    # weights_only=True: only tensors and plain containers are read, so no code runs; a file
    # holding anything else is refused (never retried with weights_only=False, which would run it)
    who = f"cannot resume from training checkpoint {str(path)!r}"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" in msg:  # an object that would be rebuilt by running code
            raise DataError(
                f"{who}: it holds objects other than tensors, and loading those would execute code, so "
                "it is refused (probcomp.models.train writes tensors only; delete the file to start afresh)"
            ) from None
        detail = msg.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in msg else msg
        raise DataError(f"{who}: not a readable training state ({first_line(detail)})") from None
    except Exception as e:
        raise DataError(f"{who}: not a readable torch file ({type(e).__name__}: {first_line(e)})") from None
    missing = {"step", "model", "ema", "opt", "rng", "losses"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise DataError(f"{who}: it is not a probcomp training state (lacks {sorted(missing)})")
    if steps is not None and int(state["step"]) > steps:  # a longer run cannot be cut back to this one
        raise DataError(
            f"{who}: it is at step {int(state['step'])}, past the {steps} steps asked for; a shorter run "
            "cannot be read from it (ask for at least that many steps, or give a new checkpoint path)"
        )
    try:
        model.load_state_dict(state["model"])
        ema_model.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["rng"])
        result.losses = [float(v) for v in state["losses"]]
        result.wall_time = float(state.get("wall_time", 0.0))
        step = int(state["step"])
    except Exception as e:
        raise DataError(
            f"{who}: it does not match this model and optimiser ({type(e).__name__}: {first_line(e)})"
        ) from None
    return step

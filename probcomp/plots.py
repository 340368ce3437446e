"""Plots of samples, images, per-level diagnostics and scene graphs (matplotlib, headless-safe).

Every function returns the ``matplotlib.figure.Figure`` it drew (save it with
``fig.savefig(path)``); none calls ``plt.show``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .errors import ShapeError
from .results import Result
from .scene import CONTROL, Scene

__all__ = ["image_grid", "loss_traces", "pairs", "per_level", "samples_2d", "scene_graph", "summary"]


def _plt() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def samples_2d(
    samples: torch.Tensor | dict[str, torch.Tensor],
    log_density: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    lim: float = 1.0,
    max_points: int = 1000,
    title: str | None = None,
) -> Any:
    """2-D samples (one panel per entry of a dict) as points over ``exp(log_density)`` in grey."""
    plt = _plt()
    panels = samples if isinstance(samples, dict) else {"samples": samples}
    for label, xs in panels.items():
        if xs.ndim != 2 or xs.shape[1] != 2:
            raise ShapeError(f"samples_2d: {label!r} must be (N, 2), got {tuple(xs.shape)}")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.3), squeeze=False, sharey=True)
    dens = None
    if log_density is not None:
        g = torch.linspace(-lim, lim, 200, dtype=torch.float64)
        gx, gy = torch.meshgrid(g, g, indexing="xy")
        with torch.no_grad():
            dens = log_density(torch.stack([gx, gy], -1).reshape(-1, 2).float()).exp().reshape(200, 200)
    for ax, (label, xs) in zip(axes[0], panels.items(), strict=True):
        if dens is not None:
            ax.contourf(gx.numpy(), gy.numpy(), dens.double().numpy(), levels=20, cmap="Greys")
        pts = xs[:max_points].detach().cpu().numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=2, c="tab:red", alpha=0.5)
        ax.set_title(label, fontsize=9)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def image_grid(images: torch.Tensor, *, ncol: int = 8, titles: Sequence[str] | None = None) -> Any:
    """Images ``(N, C, H, W)`` (C = 1 or 3, values roughly in [-1, 1]) in a grid."""
    plt = _plt()
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ShapeError(f"image_grid: images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    n = images.shape[0]
    ncol = min(ncol, n)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.2 * ncol, 1.2 * nrow), squeeze=False)
    imgs = ((images.detach().cpu().float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(imgs[k, :, :, 0] if imgs.shape[-1] == 1 else imgs[k], cmap="gray", vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(titles[k], fontsize=7)
    fig.tight_layout()
    return fig


def per_level(result: Result, keys: Sequence[str] | None = None) -> Any:
    """Per-level statistics of a run against the noise level ``t`` (acceptance, step size, ESS,
    NFE, PerStepEM objectives, ...): every 1-D entry of ``result.stats`` as long as ``t``."""
    plt = _plt()
    t = result.stats.get("t")
    if t is None:
        raise ShapeError("per_level: the result has no per-level 't' in its stats")
    t = torch.as_tensor(t).double()
    per = {
        k: torch.as_tensor(v).double()
        for k, v in result.stats.items()
        if k != "t" and isinstance(v, torch.Tensor) and v.ndim == 1 and v.shape == t.shape
    }
    if keys is not None:
        missing = [k for k in keys if k not in per]
        if missing:
            raise ShapeError(f"per_level: no per-level stats {missing}; available: {sorted(per)}")
        per = {k: per[k] for k in keys}
    fig, axes = plt.subplots(len(per), 1, figsize=(5, 1.6 * max(len(per), 1)), sharex=True, squeeze=False)
    for ax, (k, v) in zip(axes[:, 0], per.items(), strict=True):
        ax.plot(t.numpy(), v.numpy(), lw=1)
        ax.set_ylabel(k, fontsize=8)
        if k in ("step_size", "objective_before", "objective_after") and bool((v > 0).all()):
            ax.set_yscale("log")
    axes[-1, 0].set_xlabel("noise level t")
    axes[-1, 0].invert_xaxis()  # time runs from noise to data
    fig.suptitle(result.engine, fontsize=9)
    fig.tight_layout()
    return fig


def loss_traces(result: Any, *, smooth: int = 10) -> Any:
    """Concept inversion's loss per restart against the step (a running mean over ``smooth``
    steps; a restart's line ends where it was pruned, the chosen one is drawn thick), and,
    when ``K`` was chosen, the minimised loss per ``K`` (Eq. 5.9)."""
    plt = _plt()
    traces = getattr(result, "traces", None)
    if traces is None:
        raise ShapeError("loss_traces: the result has no per-restart traces (enumeration keeps none)")
    k_losses = getattr(result, "k_losses", {}) or {}
    fig, axes = plt.subplots(1, 2 if k_losses else 1, figsize=(8 if k_losses else 5, 3), squeeze=False)
    ax = axes[0, 0]
    best = result.stats.get("best_restart")
    w = max(1, int(smooth))
    kernel = torch.ones(1, 1, w, dtype=torch.float64) / w
    for r, tr in enumerate(torch.as_tensor(traces).double()):
        live = int(torch.isfinite(tr).sum())
        if live == 0:
            continue
        v = tr[:live]
        if live >= w:
            v = torch.nn.functional.conv1d(v.reshape(1, 1, -1), kernel).reshape(-1)
        x = torch.arange(v.numel()) + (min(w, live) - 1 if live >= w else 0)
        ax.plot(
            x.numpy(), v.numpy(), lw=2.2 if r == best else 0.8, label=f"restart {r}" if r == best else None
        )
    ax.set_xlabel("step")
    ax.set_ylabel("denoising loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    if k_losses:
        ks = sorted(k_losses)
        axes[0, 1].plot(ks, [k_losses[k] for k in ks], "o-")
        axes[0, 1].axvline(result.k, color="k", lw=0.8, ls="--")
        axes[0, 1].set_xlabel("number of concepts K")
        axes[0, 1].set_ylabel("minimised loss")
    fig.tight_layout()
    return fig


def scene_graph(scene: Scene) -> Any:
    """The bipartite graph of a scene: controls (blue circles) above observables (orange squares)."""
    import networkx as nx

    plt = _plt()
    g = scene.graph
    controls = [n for n, d in g.nodes(data=True) if d["kind"] == CONTROL]
    observables = [n for n in g.nodes if n not in controls]
    pos = {n: (i - (len(controls) - 1) / 2, 1.0) for i, n in enumerate(controls)}
    pos.update({n: (i - (len(observables) - 1) / 2, 0.0) for i, n in enumerate(observables)})
    fig, ax = plt.subplots(figsize=(max(3.0, 1.1 * max(len(controls), len(observables))), 2.6))
    nx.draw_networkx_nodes(g, pos, nodelist=controls, node_color="tab:blue", node_shape="o", ax=ax)
    nx.draw_networkx_nodes(g, pos, nodelist=observables, node_color="tab:orange", node_shape="s", ax=ax)
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=True)
    labels = {n: n if n in controls else f"{n}\n{g.nodes[n]['factor'].name}" for n in g.nodes}
    nx.draw_networkx_labels(g, pos, labels, font_size=7, ax=ax)
    ax.set_axis_off()
    fig.tight_layout()
    return fig


def _members(name: str, v: torch.Tensor, max_dims: int) -> list[tuple[str, torch.Tensor]]:
    """A control's samples as ``(label, (N, d))`` panels: one per plate member for ``(N, K, d)``."""
    v = v.detach().cpu().double()
    if v.ndim == 1:
        return [(name, v[:, None])]
    if v.ndim == 3 and v.shape[2] <= max_dims:  # a vectorised plate: K members of d entries
        return [(f"{name}[{k}]", v[:, k]) for k in range(v.shape[1])]
    return [(name, v.reshape(v.shape[0], -1)[:, :max_dims])]


def pairs(
    samples: dict[str, torch.Tensor], *, max_dims: int = 4, max_points: int = 1000, axes: Any = None
) -> Any:
    """Pair plots of each control (per plate member): histograms on the diagonal, scatter below.

    ``samples`` maps names to ``(N, ...)`` tensors; a control of shape ``(K, d)`` with small ``d`` is
    drawn as ``K`` plate members, larger controls by their first ``max_dims`` entries.
    """
    plt = _plt()
    panels = [m for name, v in samples.items() for m in _members(name, v, max_dims)]
    if not panels:
        raise ShapeError("pairs: no samples to draw")
    width = max(p.shape[1] for _, p in panels)
    fig = None
    if axes is None:
        fig, axes = plt.subplots(
            len(panels) * width, width, figsize=(2.0 * width, 2.0 * width * len(panels)), squeeze=False
        )
    for j, (label, xs) in enumerate(panels):
        pts = xs[:max_points].numpy()
        d = xs.shape[1]
        for a in range(width):
            for b in range(width):
                ax = axes[j * width + a][b]
                if a >= d or b >= d or b > a:
                    ax.set_axis_off()
                    continue
                if a == b:
                    ax.hist(xs[:, a].numpy(), bins=40, color="tab:blue", alpha=0.8)
                    ax.set_yticks([])
                else:
                    ax.scatter(pts[:, b], pts[:, a], s=2, c="tab:red", alpha=0.4)
                if b == 0:
                    ax.set_ylabel(f"{label}[{a}]" if d > 1 else label, fontsize=7)
                if a == d - 1:
                    ax.set_xlabel(f"{label}[{b}]" if d > 1 else label, fontsize=7)
                ax.tick_params(labelsize=6)
    if fig is not None:
        fig.tight_layout()
    return fig if fig is not None else axes[0][0].figure


_DIAGNOSTICS = (
    "accept",
    "step_size",
    "ess",
    "log_evidence_increment",
    "objective_before",
    "objective_after",
    "lambda_mean",
    "nfe_per_level",
)


def _informative(result: Result) -> dict[str, torch.Tensor]:
    """Per-level statistics that vary over the levels (flat panels say nothing)."""
    t = result.stats.get("t")
    if not isinstance(t, torch.Tensor):
        return {}
    out = {}
    for k, v in result.stats.items():
        if (
            k in ("t", "nfe_per_level", "resampled")
            or not isinstance(v, torch.Tensor)
            or v.ndim != 1
            or v.shape != t.shape
        ):
            continue  # NFE is cost, not a diagnostic; resampling is marked on the ESS panel
        v = v.double()
        finite = v[torch.isfinite(v)]
        if finite.numel() < 2 or float(finite.max() - finite.min()) <= 1e-9 * max(
            1.0, float(finite.abs().max())
        ):
            continue
        out[k] = v
    order = {k: i for i, k in enumerate(_DIAGNOSTICS)}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))


def summary(result: Result, *, max_dims: int = 4, max_controls: int = 4, max_points: int = 1000) -> Any:
    """What a user looks at after a run: the samples beside the diagnostics that vary.

    Left, pair plots of each control (per plate member; image controls as a grid of samples);
    right, the per-level statistics of the engine that are not constant over the levels
    (acceptance and step size of annealed MCMC, effective sample size when weights were used,
    the objectives of PerStepEM, ...), against the noise level ``t``.
    """
    plt = _plt()
    samples = dict(list(result.samples.items())[:max_controls])
    images = {k: v for k, v in samples.items() if v.ndim == 4 and v.shape[1] in (1, 3)}
    points = {k: v for k, v in samples.items() if k not in images}
    diag = _informative(result)
    panels = [m for name, v in points.items() for m in _members(name, v, max_dims)]
    width = max([p.shape[1] for _, p in panels], default=0)
    rows = max(len(panels) * width + 2 * len(images), len(diag), 1)
    cols = width + (2 if diag else 0) or 2
    fig = plt.figure(figsize=(2.1 * cols + 0.5, 1.9 * rows + 0.6))
    grid = fig.add_gridspec(rows, cols)
    if panels:
        axes = [[fig.add_subplot(grid[r, c]) for c in range(width)] for r in range(len(panels) * width)]
        pairs(points, max_dims=max_dims, max_points=max_points, axes=axes)
    r0 = len(panels) * width
    for j, (name, v) in enumerate(images.items()):
        imgs = ((v[:8].detach().cpu().float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        sub = grid[r0 + 2 * j : r0 + 2 * j + 2, : max(width, 2)].subgridspec(2, 4)
        for k in range(min(8, imgs.shape[0])):
            ax = fig.add_subplot(sub[k // 4, k % 4])
            ax.imshow(imgs[k, :, :, 0] if imgs.shape[-1] == 1 else imgs[k], cmap="gray", vmin=0, vmax=1)
            ax.set_axis_off()
            if k == 0:
                ax.set_title(name, fontsize=8)
    if diag:
        t = torch.as_tensor(result.stats["t"]).double().numpy()
        dgrid = grid[:, cols - 2 :].subgridspec(len(diag), 1)
        first: Any = None
        for i, (k, v) in enumerate(diag.items()):
            ax = fig.add_subplot(dgrid[i, 0], sharex=first)
            first = first if first is not None else ax
            ax.plot(t, v.numpy(), lw=1)
            ax.set_ylabel(k, fontsize=8)
            ax.tick_params(labelsize=6)
            resampled = result.stats.get("resampled")
            if k == "ess" and isinstance(resampled, torch.Tensor) and resampled.shape == v.shape:
                for tr in t[resampled.bool().numpy()]:
                    ax.axvline(tr, color="tab:gray", lw=0.6, ls=":")
            if k in ("step_size", "objective_before", "objective_after") and bool((v > 0).all()):
                ax.set_yscale("log")
            if i == len(diag) - 1:
                ax.set_xlabel("noise level t", fontsize=8)
        first.invert_xaxis()  # time runs from noise to data
    fig.suptitle(result.engine or "result", fontsize=10)
    fig.tight_layout()
    return fig

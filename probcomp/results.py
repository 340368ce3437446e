"""The result of an inference run: samples, statistics, and an ArviZ view."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from .errors import SceneError, ShapeError

__all__ = ["Result"]


class Result:
    """Samples of every control variable plus run statistics.

    * ``res[name]`` -- a ``(N, *shape)`` tensor of the control ``name``.
    * ``res.stats`` -- a dict: ``nfe`` (score evaluations per factor term),
      ``nfe_total``, ``calls`` (batched factor calls), ``wall_time`` (s), and
      per-level diagnostics as tensors whose first axis is the level.
    * ``res.particle_stats`` -- per-particle diagnostics, ``(N, ...)``.
    * :meth:`to_arviz` -- an ``arviz.InferenceData`` with a ``posterior`` group
      ``(chain, draw, *var dims)`` and ``sample_stats``.

    The ``N`` particles are split into ``num_chains`` consecutive blocks of
    equal size, which become ArviZ chains.

    Engines that optimise rather than sample (concept inversion) also set

    * ``res.point`` -- the answer, one value per control with no particle axis; then
      ``res[name]`` is ``res.point[name]`` and the samples are the restarts' final values;
    * ``res.loss`` -- the answer's objective; ``res.traces`` -- ``(R, steps)`` objective
      per restart and step (NaN once pruned);
    * ``res.per_k`` -- with a choice of the number of concepts, every ``K``'s result.
    """

    def __init__(
        self,
        samples: Mapping[str, torch.Tensor],
        stats: Mapping[str, Any],
        particle_stats: Mapping[str, torch.Tensor] | None = None,
        *,
        num_chains: int = 1,
        engine: str = "",
        point: Mapping[str, torch.Tensor] | None = None,
        loss: float | None = None,
        traces: torch.Tensor | None = None,
    ) -> None:
        self.point = dict(point) if point is not None else None
        self.loss, self.traces = loss, traces
        self.per_k: dict[int, Result] = {}
        self.samples = dict(samples)
        self.stats = dict(stats)
        self.particle_stats = dict(particle_stats or {})
        self.engine = engine
        n = {v.shape[0] for v in self.samples.values()}
        if len(n) != 1:
            raise ShapeError(f"controls have different numbers of samples: {n}")
        self.num_samples = n.pop()
        if num_chains < 1 or self.num_samples % num_chains:
            raise ShapeError(f"{self.num_samples} samples do not split into {num_chains} chains")
        self.num_chains = num_chains

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.samples:
            raise SceneError(f"no samples of {name!r}; the result has {sorted(self.samples)}")
        return self.point[name] if self.point is not None else self.samples[name]

    # The answer of an optimising engine (see the class docstring) ------------------------
    @property
    def concepts(self) -> dict[str, torch.Tensor]:
        """The inferred value of every control (``res.point``)."""
        if self.point is None:
            raise SceneError(f"{self.engine} returns samples, not a point estimate: use res[name]")
        return self.point

    @property
    def restart_concepts(self) -> dict[str, torch.Tensor]:
        """Every restart's final value, ``(R, *shape)`` per control (the samples)."""
        return self.samples

    @property
    def restart_losses(self) -> torch.Tensor | None:
        """Every restart's re-scored loss ``(R,)`` (NaN where pruned)."""
        return self.particle_stats.get("loss")

    @property
    def k(self) -> int | None:
        """The chosen number of concepts (with a choice of ``K``)."""
        return self.stats.get("k")

    @property
    def k_losses(self) -> dict[int, float]:
        """The minimised loss of every ``K`` tried (with a choice of ``K``)."""
        return self.stats.get("k_losses", {})

    def __contains__(self, name: str) -> bool:
        return name in self.samples

    def keys(self) -> list[str]:
        return list(self.samples)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self.samples.items())
        if self.point is not None:
            k = f", K={self.k}" if self.k is not None else ""
            loss = f"{self.loss:.5g}" if self.loss is not None else "?"
            return f"Result({self.engine}: loss={loss}{k}, controls={sorted(self.point)})"
        return (
            f"Result({self.engine}: {shapes}; nfe={self.stats.get('nfe_total')}, "
            f"wall_time={self.stats.get('wall_time', float('nan')):.3g}s)"
        )

    def _chains(self, v: torch.Tensor) -> Any:
        v = v.detach().cpu()
        return v.reshape(self.num_chains, self.num_samples // self.num_chains, *v.shape[1:]).numpy()

    def to_arviz(self) -> Any:
        """An ``arviz.InferenceData``: posterior ``(chain, draw, ...)`` and sample_stats.

        Per-particle statistics become ``sample_stats`` variables; those with a
        level axis get a ``level`` dimension whose coordinate is the noise level ``t``.
        """
        with warnings.catch_warnings():  # arviz 0.23 announces its 1.0 refactor on import
            warnings.simplefilter("ignore", FutureWarning)
            import arviz as az

        posterior = {k: self._chains(v) for k, v in self.samples.items()}
        dims = {k: [f"{k}_dim_{i}" for i in range(v.ndim - 1)] for k, v in self.samples.items()}
        sample_stats = {}
        coords: dict[str, Any] = {}
        levels = self.stats.get("t")
        for k, v in self.particle_stats.items():
            sample_stats[k] = self._chains(v)
            if v.ndim == 2 and levels is not None and v.shape[1] == len(levels):
                dims[k] = ["level"]
                coords["level"] = torch.as_tensor(levels).cpu().numpy()
        return az.from_dict(
            posterior=posterior,
            sample_stats=sample_stats or None,
            dims=dims,
            coords=coords or None,
            attrs={"engine": self.engine, "nfe_total": int(self.stats.get("nfe_total", 0))},
        )

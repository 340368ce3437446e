r"""The contract every engine shares: configuration, compilation, the level loop, stats, callbacks.

An engine is configured once (its constructor), compiles a scene once
(:meth:`Engine.compile`) and runs the compiled form (:meth:`Engine.run`), returning one
:class:`~probcomp.results.Result`.  Engines that walk a descending grid of noise levels
(reverse diffusion, annealed MCMC, per-step optimisation) derive from
:class:`DiffusionEngine`, which owns the grid ``t_0 = t_max > ... > t_{L-1} = t_min > t_L = 0``
and, per level, the variance-preserving coefficients at equal log-SNR ``lambda(t)``,

.. math:: \alpha_t = \sqrt{\operatorname{sigmoid}(\lambda(t))}, \qquad
          \sigma_t = \sqrt{\operatorname{sigmoid}(-\lambda(t))},

handed to the loop as :class:`Level` records.  After every level (or optimiser step) an
engine calls the user's callback with one :class:`LevelInfo`.

A new engine is a subclass plus a registry entry (:func:`register`), after which it is
listed by :func:`engine_names` and runs from ``probcomp run --engine NAME``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

import torch
from tqdm.auto import tqdm

from probcomp import schedules as sched
from probcomp.compiled import CompiledScene
from probcomp.errors import NumericalError, SceneError, ScheduleError
from probcomp.program import scene_from_pyro
from probcomp.scene import Scene
from probcomp.validation import (
    MAX_PARTICLE_ELEMENTS,
    check_count,
    check_device,
    check_dtype,
    check_positive,
    check_seed,
)

from .steps import ReverseStep

if TYPE_CHECKING:
    pass

__all__ = [
    "DiffusionEngine",
    "Engine",
    "Level",
    "LevelInfo",
    "LevelRecords",
    "engine_names",
    "make_engine",
    "register",
]


@dataclass(frozen=True)
class Level:
    """One level ``i`` of the grid: engine time ``t`` and the next ``next_t`` with their coefficients."""

    i: int
    t: float
    next_t: float
    alpha: float
    sigma: float
    next_alpha: float
    next_sigma: float

    def reverse_step(self, eta: float, clip: tuple[float, float] | None = None) -> ReverseStep:
        """The DDIM step from ``t`` to ``next_t`` with stochasticity ``eta`` (1: DDPM)."""
        return ReverseStep(self.alpha, self.sigma, self.next_alpha, self.next_sigma, eta, clip)


@dataclass
class LevelInfo:
    """What a callback sees after level (or step) ``i``: the state and the engine's diagnostics.

    ``x`` is the state of every control, ``(N, *shape)``; ``values`` holds the engine's own
    entries (reverse diffusion: ``x0_hat``, ``grad``; annealed MCMC: ``step_size``;
    per-step EM: ``objective``, ``lambdas``; concept inversion: ``loss``, ``alive``).
    ``info["name"]`` reads a field or a value, so a callback can treat it as a dict.
    """

    engine: str
    i: int
    t: float | None
    x: Mapping[str, torch.Tensor]
    values: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        if key in ("engine", "i", "t", "x"):
            return getattr(self, key)
        if key in self.values:
            return self.values[key]
        raise KeyError(f"{self.engine} level info has no {key!r}; it has i, t, x and {sorted(self.values)}")

    def keys(self) -> list[str]:
        return ["engine", "i", "t", "x", *self.values]


class LevelRecords:
    """Per-level scalar diagnostics, collected as lists and returned as float64 tensors."""

    def __init__(self, *names: str) -> None:
        self.values: dict[str, list[float]] = {n: [] for n in names}

    def add(self, **values: float) -> None:
        for k, v in values.items():
            self.values[k].append(v)

    def __getitem__(self, name: str) -> list[float]:
        return self.values[name]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in self.values.items()}


class EngineOptions(TypedDict, total=False):
    """Keyword arguments every engine takes (see :class:`Engine`)."""

    dtype: torch.dtype
    device: str | torch.device
    progress: bool
    callback: Callable[[LevelInfo], None] | None


class DiffusionOptions(EngineOptions, total=False):
    """Keyword arguments every engine over noise levels takes (see :class:`DiffusionEngine`)."""

    schedule: sched.Schedule | None
    t_max: float
    t_min: float
    spacing: str
    group: bool
    max_abs: float | None


MAX_ABS = 1e6  # the default runaway guard (DiffusionEngine's max_abs)


def seeded(seed: Any, device: torch.device) -> tuple[torch.Generator, int | None]:
    """The generator and seed of :meth:`Engine.generator` on ``device``."""
    if isinstance(seed, torch.Generator):
        if seed.device.type != device.type:
            raise SceneError(f"the seed generator is on {seed.device}, the engine runs on {device}")
        return seed, None
    s = check_seed(seed)
    return torch.Generator(device).manual_seed(s), s


class Engine:
    """Base of every engine: dtype, device, progress bar, callback, seeding and the registry name.

    Args:
        dtype, device: of the particles (a floating dtype; a device this machine has).
        progress: show a tqdm bar over levels or steps.
        callback: called after every level or step with a :class:`LevelInfo`.

    Subclasses set ``name`` and implement :meth:`run`; :meth:`notify` calls the callback.
    """

    name: ClassVar[str] = "engine"
    #: whether :meth:`run` takes ``distributed=`` and couples its particles across ranks
    #: itself (else :func:`probcomp.distributed.run` shards the particles among the ranks)
    distributed_native: ClassVar[bool] = False

    def __init__(
        self,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        progress: bool = False,
        callback: Callable[[LevelInfo], None] | None = None,
    ) -> None:
        self.dtype = check_dtype(dtype, type(self).__name__)
        self.device = check_device(device, type(self).__name__)
        if callback is not None and not callable(callback):
            raise SceneError(f"{type(self).__name__}: callback must be callable, got {callback!r}")
        self.progress, self.callback = bool(progress), callback

    def generator(self, seed: Any) -> tuple[torch.Generator, int | None]:
        """A generator on the engine's device seeded with ``seed``, and the seed used.

        ``seed`` is an int in ``[0, 2**63)``, ``None`` (fresh entropy: the seed drawn is
        returned, and engines record it in ``res.stats["seed"]``), or a ``torch.Generator``
        on the engine's device, used as it is (its state advances; the seed is ``None``).
        """
        return seeded(seed, self.device)

    def notify(self, i: int, t: float | None, x: Mapping[str, torch.Tensor], **values: Any) -> None:
        """Call the callback (if any) with a :class:`LevelInfo`."""
        if self.callback is not None:
            self.callback(LevelInfo(self.name, i, t, x, values))

    def bar(self, n: int, desc: str) -> Iterator[int]:
        if not self.progress:  # (a disabled tqdm bar still costs its construction, every run)
            return iter(range(n))
        return iter(tqdm(range(n), desc=desc, leave=False))

    def run(self, scene: Any, num_samples: int = 1000, *, seed: Any = 0, num_chains: int = 1) -> Any:
        raise NotImplementedError


class DiffusionEngine(Engine):
    """An engine over a descending grid of noise levels on a :class:`CompiledScene`.

    Args:
        levels: number of noisy levels (the grid has ``levels + 1`` times, the last 0).
        schedule: the engine's noise schedule (factors are matched to it by log-SNR).
        t_max, t_min: the noisy levels run from ``t_max`` to ``t_min``, then a last step to 0
            (:func:`probcomp.schedules.time_grid`; ``t_min = 0``: uniform to 0).
        spacing: ``"uniform"`` in ``t`` or ``"log-snr"`` (uniform in the schedule's log-SNR;
            :func:`probcomp.schedules.time_grid`).
        group: evaluate observables that share a factor in one batched call.
        max_abs: the runaway guard: a particle with an entry beyond it stops the run with a
            :class:`~probcomp.NumericalError` naming the level and the factor whose score
            dominates (a VP chain keeps ``|x_t| <= max(|x_0|, a few)``: particles growing past
            it follow a target that is not normalisable, or steps too large); ``None`` turns
            it off.
        dtype, device, progress, callback: as in :class:`Engine`.
    """

    #: the engine's name in messages about scenes it cannot run
    label: ClassVar[str] = "DiffusionEngine"
    #: the constructor argument that sets the number of levels (named in errors)
    levels_arg: ClassVar[str] = "levels"

    def __init__(
        self,
        levels: int,
        *,
        schedule: sched.Schedule | None = None,
        t_max: float = 1.0,
        t_min: float = sched.DEFAULT_T_MIN,
        spacing: str = "uniform",
        group: bool = True,
        max_abs: float | None = MAX_ABS,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        progress: bool = False,
        callback: Callable[[LevelInfo], None] | None = None,
    ) -> None:
        super().__init__(dtype=dtype, device=device, progress=progress, callback=callback)
        levels = check_count(self.levels_arg, levels)
        self.max_abs = None if max_abs is None else check_positive("max_abs", max_abs)
        if schedule is not None and not isinstance(schedule, sched.Schedule):
            raise ScheduleError(f"{self.label}: schedule must be a probcomp Schedule, got {schedule!r}")
        t_max, t_min = check_positive("t_max", t_max), check_positive("t_min", t_min, allow_zero=True)
        self.schedule = schedule if schedule is not None else sched.linear()
        self.spacing = spacing
        self.ts = sched.time_grid(levels, t_max=t_max, t_min=t_min, spacing=spacing, schedule=self.schedule)
        self.group = group

    @property
    def num_levels(self) -> int:
        return len(self.ts) - 1

    def compile(self, scene: Scene) -> CompiledScene:
        """Validate ``scene`` and build its batched target (then :meth:`check_compiled`)."""
        compiled = CompiledScene(scene, self.schedule, group=self.group)
        compiled.require_value_observables(self.label)
        self.check_compiled(compiled)
        return compiled

    def check_compiled(self, compiled: CompiledScene) -> None:
        """Engine-specific checks of a compiled scene (raise to refuse it)."""

    def prepare(self, scene: Any, num_samples: Any) -> CompiledScene:
        """Check ``num_samples`` and return ``scene`` compiled for this engine (compiling it if
        needed; a zero-argument Pyro program becomes a scene by :func:`probcomp.scene_from_pyro`)."""
        num_samples = check_count("num_samples", num_samples, error=SceneError)
        if callable(scene) and not isinstance(scene, (Scene, CompiledScene)):  # a Pyro program
            scene = scene_from_pyro(scene)
        if isinstance(scene, CompiledScene):  # compiled by this or another engine: this engine's checks
            compiled = scene
            compiled.require_value_observables(self.label)
            self.check_compiled(compiled)
        else:
            compiled = self.compile(scene)
        if compiled.schedule != self.schedule:
            raise ScheduleError("the scene was compiled for a different schedule than this engine's")
        elements = num_samples * sum(math.prod(s) for s in compiled.shapes.values())
        if elements > MAX_PARTICLE_ELEMENTS:
            raise SceneError(
                f"num_samples={num_samples} particles of {elements // num_samples} control elements each "
                f"need {elements:.3g} elements per state tensor, more than this engine allocates at once "
                f"({MAX_PARTICLE_ELEMENTS:.3g}); run fewer particles per call"
            )
        return compiled

    def levels(self, desc: str) -> Iterator[Level]:
        """The grid's levels in order, with their coefficients (and a progress bar)."""
        lam = self.schedule.log_snr(self.ts)
        alpha, sigma = torch.sigmoid(lam).sqrt().tolist(), torch.sigmoid(-lam).sqrt().tolist()
        ts = self.ts.tolist()
        for i in self.bar(self.num_levels, desc):
            yield Level(i, ts[i], ts[i + 1], alpha[i], sigma[i], alpha[i + 1], sigma[i + 1])

    def guard(self, compiled: CompiledScene, x: Mapping[str, torch.Tensor], lv: Level) -> None:
        """Stop a run whose particles ran away (see ``max_abs``), naming the level and the factor
        whose score dominates there."""
        if self.max_abs is None:
            return
        for name, v in x.items():
            top = float(v.detach().abs().max()) if v.numel() else 0.0
            if top > self.max_abs:  # NaN compares False: non-finite states are diagnosed elsewhere
                term, norm = compiled.dominant_term(dict(x), lv.t)
                raise NumericalError(
                    f"the particles ran away: control {name!r} reached |x| = {top:.3g} > max_abs = "
                    f"{self.max_abs:.3g} at level {lv.i} (t={lv.t:.4g}); factor {term.factor.name!r} "
                    f"(observable {term.key!r}) dominates the score there (mean |w s| = {norm:.3g}): "
                    "check that the composition is normalisable (weights), or use smaller steps"
                )

    def base_stats(self, compiled: CompiledScene, wall_time: float, seed: int) -> dict[str, Any]:
        """The stats every engine reports: NFE per term and in total, batched calls, wall time,
        the noisy levels ``t`` and the seed."""
        return {
            "nfe": dict(compiled.nfe),
            "nfe_total": compiled.nfe_total,
            "calls": compiled.calls,
            "wall_time": wall_time,
            "t": self.ts[:-1].clone(),
            "seed": seed,
        }


# The registry -------------------------------------------------------------------------
EngineFactory = Callable[..., Engine]
_REGISTRY: dict[str, tuple[EngineFactory, str]] = {}


def register(name: str, factory: EngineFactory, help: str = "") -> None:
    """Make ``factory(steps=..., steps_per_level=..., progress=...)`` available as engine ``name``
    (``probcomp run --engine NAME``).  Re-registering a name replaces it."""
    if not isinstance(name, str) or not name or " " in name:
        raise SceneError(f"an engine name is a non-empty word, got {name!r}")
    _REGISTRY[name] = (factory, help)


def engine_names() -> list[str]:
    """The registered engine names, in registration order."""
    return list(_REGISTRY)


def make_engine(name: str, *, steps: int = 100, steps_per_level: int = 10, progress: bool = False) -> Engine:
    """The engine registered as ``name``, at ``steps`` levels (``steps_per_level`` MCMC transitions)."""
    if name not in _REGISTRY:
        raise SceneError(f"unknown engine {name!r}; choose from {engine_names()}")
    steps = check_count("--steps", steps, error=SceneError)
    steps_per_level = check_count("--steps-per-level", steps_per_level, 0, error=SceneError)
    return _REGISTRY[name][0](steps=steps, steps_per_level=steps_per_level, progress=progress)

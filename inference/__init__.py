"""Inference engines (installed as ``probcomp.inference``).

Every engine derives from :class:`Engine` (:mod:`probcomp.inference.base`): it compiles a
:class:`probcomp.Scene` once (``engine.compile(scene)``), runs the compiled loop
(``engine.run(scene_or_compiled, ...)``) and returns one :class:`probcomp.Result`; its
callback receives one :class:`LevelInfo` per level or step.  Kernels of annealed MCMC are
objects (:mod:`probcomp.inference.kernels`), and the SMC layer (effective sample size,
resampling, weight increments) is :mod:`probcomp.inference.smc`.  Engines are registered
by name (:func:`register`, :func:`engine_names`) for ``probcomp run --engine``.
"""

if __name__ != "probcomp.inference":  # the checkout's top-level folder, imported by its own name
    raise ImportError(
        f"this folder is installed as probcomp.inference; import probcomp.inference, not {__name__!r} "
        "(one module object per engine class)"
    )

from . import kernels, smc
from .annealed_mcmc import AnnealedMCMC
from .base import DiffusionEngine, Engine, Level, LevelInfo, engine_names, make_engine, register
from .concept_inversion import ConceptInversion
from .lift import LiftRejection, estimate_lifts, exact_lifts, lift_filter
from .per_step_em import PerStepEM
from .reverse_diffusion import ReverseDiffusion

__all__ = [
    "AnnealedMCMC",
    "ConceptInversion",
    "DiffusionEngine",
    "Engine",
    "Level",
    "LevelInfo",
    "LiftRejection",
    "PerStepEM",
    "ReverseDiffusion",
    "engine_names",
    "estimate_lifts",
    "exact_lifts",
    "kernels",
    "lift_filter",
    "make_engine",
    "register",
    "smc",
]

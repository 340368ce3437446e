"""probcomp: compositional generative inference with diffusion-model factors.

Declare a bipartite scene of control variables and observables, plug in score
factors (learned or analytic) and explicit densities, and run an engine::

    import probcomp as pc
    from probcomp.inference import ReverseDiffusion

    scene = pc.Scene()
    x = scene.control("x", shape=(2,))
    scene.observe("a", x, factor=pc.factors.Gaussian([0.0, 0.0], 1.0))
    scene.observe("b", x, factor=pc.factors.Gaussian([1.0, 0.0], 0.5))
    res = ReverseDiffusion(steps=100).run(scene, num_samples=1000, seed=0)
"""

from . import compose, datasets, factors, metrics, ops, plots, schedules
from ._version import __version__
from .compiled import CompiledScene
from .compiled_inversion import CompiledInversion
from .errors import (
    DataError,
    FactorError,
    NumericalError,
    ProbcompError,
    SceneError,
    ScheduleError,
    ShapeError,
)
from .program import control, observe, scene_from_pyro
from .results import Result
from .scene import Scene, Var

__all__ = [
    "CompiledInversion",
    "CompiledScene",
    "DataError",
    "FactorError",
    "NumericalError",
    "ProbcompError",
    "Result",
    "Scene",
    "SceneError",
    "ScheduleError",
    "ShapeError",
    "Var",
    "__version__",
    "batch",
    "compose",
    "control",
    "datasets",
    "distributed",
    "factors",
    "inference",
    "metrics",
    "models",
    "observe",
    "ops",
    "plots",
    "scene_from_pyro",
    "schedules",
]


def __getattr__(name: str):
    # ``pc.models``, ``pc.inference``, ``pc.distributed`` and ``pc.batch`` load on first use
    # (torch.nn, tqdm; torch.distributed and ray only when used).
    if name in ("models", "inference", "distributed", "batch"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

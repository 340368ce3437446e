"""``probcomp run SCENE.py``: load a scene file, run an engine, summarise the result.

A scene file is a Python file that defines ``scene`` (a :class:`~probcomp.Scene`) or
``program`` (a zero-argument Pyro program with :func:`probcomp.control` /
:func:`probcomp.observe` sites).  Running it executes that file, as ``python SCENE.py``
would: use only scene files you trust (checkpoints, by contrast, never execute code).
"""

from __future__ import annotations

import math
import runpy
from pathlib import Path
from typing import Any

from .errors import SceneError
from .program import scene_from_pyro
from .results import Result
from .scene import Scene

__all__ = ["engine_names", "load_scene", "make_engine", "run_query", "summary"]


def load_scene(path: str | Path) -> Scene:
    """The scene declared by the file ``path`` (its ``scene`` or its ``program``)."""
    p = Path(path)
    if p.is_dir():
        raise SceneError(f"scene file {str(p)!r} is a directory; give the Python file that defines `scene`")
    if not p.is_file():
        raise SceneError(f"scene file {str(p)!r} does not exist")
    try:
        ns = runpy.run_path(str(p), run_name="__probcomp_scene__")
    except SceneError:
        raise
    except Exception as e:  # the user's file failed: say where, in one line
        raise SceneError(f"scene file {str(p)!r} raised {type(e).__name__}: {e}") from e
    if isinstance(ns.get("scene"), Scene):
        return ns["scene"]
    if callable(ns.get("program")):
        return scene_from_pyro(ns["program"])
    raise SceneError(f"scene file {str(p)!r} defines neither `scene` (a probcomp.Scene) nor `program`")


def engine_names() -> list[str]:
    """The engines ``probcomp run --engine`` accepts: the registry of :mod:`probcomp.inference.base`."""
    from probcomp.inference import engine_names as names

    return names()


def make_engine(name: str, steps: int, steps_per_level: int, progress: bool) -> Any:
    """The engine registered as ``name`` at ``steps`` levels (``steps_per_level`` MCMC transitions each)."""
    from probcomp.inference import make_engine as make

    return make(name, steps=steps, steps_per_level=steps_per_level, progress=progress)


def run_query(
    path: str | Path,
    engine: str,
    samples: int,
    *,
    steps: int = 100,
    steps_per_level: int = 10,
    seed: int = 0,
    chains: int = 1,
    progress: bool = False,
) -> Result:
    """Load the scene file and run ``engine`` on it."""
    if samples < 1 or chains < 1 or samples % chains:
        raise SceneError(f"--samples ({samples}) must be a positive multiple of --chains ({chains})")
    scene = load_scene(path)
    return make_engine(engine, steps, steps_per_level, progress).run(
        scene, samples, seed=seed, num_chains=chains
    )


def summary(res: Result) -> dict[str, Any]:
    """JSON-ready summary: per control its shape, mean and std (averaged over entries), plus cost."""
    out: dict[str, Any] = {"engine": res.engine, "samples": None, "controls": {}}
    for name, v in res.samples.items():
        out["samples"] = int(v.shape[0])
        flat = v.reshape(v.shape[0], -1).double()
        out["controls"][name] = {
            "shape": list(v.shape[1:]),
            "mean": [round(float(m), 5) for m in flat.mean(0)[:8]],
            "std": [round(float(s), 5) for s in flat.std(0)[:8]],
            "entries_shown": min(8, flat.shape[1]),
        }
    st = res.stats
    out["nfe_total"] = int(st.get("nfe_total", 0))
    out["wall_time_s"] = round(float(st.get("wall_time", math.nan)), 3)
    if "accept_mean" in st and not math.isnan(st["accept_mean"]):
        out["accept_mean"] = round(float(st["accept_mean"]), 4)
    return out


def summary_figure(res: Result) -> Any:
    """The samples (pair plots of each control, per plate member) beside the engine's per-level
    diagnostics that vary over the levels; see :func:`probcomp.plots.summary`."""
    from . import plots

    if not res.samples:
        return None
    return plots.summary(res)

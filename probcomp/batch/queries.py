"""Inference over many observations: an engine per observation, records, data files and scene files."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import BatchError
from .ray_map import map_items


# Inference over many observations -------------------------------------------------------------
def record(res: Any) -> dict[str, Any]:
    """A JSON record of a result: the point estimate and loss of an optimising engine, else
    per control the sample mean and std (flattened, first 8 entries), and NFE and wall time."""
    out: dict[str, Any] = {"engine": res.engine}
    if res.point is not None:
        out["concepts"] = {k: torch.as_tensor(v).tolist() for k, v in res.point.items()}
        out["loss"] = float(res.loss) if res.loss is not None else None
        if res.k is not None:
            out["k"] = int(res.k)
    else:
        out["controls"] = {}
        for name, v in res.samples.items():
            flat = v.detach().reshape(v.shape[0], -1).double().cpu()
            out["controls"][name] = {
                "shape": list(v.shape[1:]),
                "mean": [round(float(m), 6) for m in flat.mean(0)[:8]],
                "std": [round(float(s), 6) for s in flat.std(0)[:8]] if flat.shape[0] > 1 else None,
            }
    out["nfe_total"] = int(res.stats.get("nfe_total", 0))
    out["wall_time"] = round(float(res.stats.get("wall_time", math.nan)), 4)
    return out


class _Query:
    """The task of :func:`run`: build the scene of one observation, run the engine, summarise."""

    def __init__(
        self,
        engine: Any,
        build: Callable[[Any], Any] | None,
        num_samples: int | None,
        seed: int,
        summarise: Callable[[Any], Any],
    ) -> None:
        self.engine, self.build, self.num_samples = engine, build, num_samples
        self.seed, self.summarise = seed, summarise

    def __call__(self, item: tuple[int, Any]) -> Any:
        i, obs = item
        scene = obs if self.build is None else self.build(obs)
        if self.num_samples is None:
            res = self.engine.run(scene, seed=self.seed + i)
        else:
            res = self.engine.run(scene, self.num_samples, seed=self.seed + i)
        return self.summarise(res)


def run(
    engine: Any,
    build: Callable[[Any], Any] | None,
    observations: Sequence[Any],
    *,
    num_samples: int | None = None,
    seed: int = 0,
    summarise: Callable[[Any], Any] = record,
    keys: Sequence[Hashable] | None = None,
    log: str | Path | None = None,
    config: Any = None,
    **options: Any,
) -> list[Any]:
    """``summarise(engine.run(build(obs), num_samples, seed=seed + i))`` for every observation
    (with ``build=None`` the observations are the scenes themselves).

    Observation ``i`` runs with seed ``seed + i`` whatever worker runs it, so a batch gives
    the same records as a loop.  ``options`` are those of :func:`map_items` (``log``,
    ``workers``, ``num_cpus``, ``num_gpus``, ``address``, ``retries``, ``time_limit``,
    ``progress``).  Without ``config`` the record file is keyed by the engine, its seed and
    its number of samples.
    """
    query = _Query(engine, build, num_samples, int(seed), summarise)
    if config is None and log is not None:
        config = {"engine": engine_settings(engine), "seed": int(seed), "num_samples": num_samples}
    items = list(enumerate(observations))
    return map_items(query, items, keys=keys, log=log, config=config, desc="observations", **options)


def load_observations(path: str | Path) -> list[Any]:
    """The observations of a data file, one per entry of its first axis: ``.pt`` (a tensor, a
    list of tensors or a dict of equal-length tensors, loaded with ``weights_only``), ``.npy``
    or ``.safetensors`` (a dict of equal-length tensors)."""
    p = Path(path)
    if not p.is_file():
        raise BatchError(f"data set {str(p)!r} does not exist")
    try:
        if p.suffix == ".npy":
            import numpy as np

            data: Any = torch.as_tensor(np.load(p, allow_pickle=False))
        elif p.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(p))
        elif p.suffix == ".pt":
            data = torch.load(p, weights_only=True)
        else:
            raise BatchError(f"data set {str(p)!r} must be a .pt, .npy or .safetensors file")
    except BatchError:
        raise
    except Exception as e:
        raise BatchError(f"data set {str(p)!r} could not be read ({type(e).__name__}: {e})") from None
    if isinstance(data, torch.Tensor):
        return list(data) if data.ndim else [data]
    if isinstance(data, (list, tuple)):
        return list(data)
    if isinstance(data, dict) and data:
        n = {len(v) for v in data.values()}
        if len(n) != 1:
            raise BatchError(f"data set {str(p)!r}: its entries have different lengths {sorted(n)}")
        return [{k: v[i] for k, v in data.items()} for i in range(n.pop())]
    raise BatchError(f"data set {str(p)!r} holds {type(data).__name__}, not tensors")


def run_scene_file(
    path: str | Path,
    data: str | Path,
    engine_name: str,
    *,
    samples: int = 1000,
    steps: int = 100,
    steps_per_level: int = 10,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """``probcomp run SCENE.py --over DATA``: the scene file defines ``scene_for(observation)``
    (and optionally ``engine``, an engine object used instead of ``engine_name``); every
    observation of ``data`` (:func:`load_observations`) is run as a task of :func:`run`.
    Returns a JSON-ready summary with one record per observation."""
    import runpy

    from ..errors import SceneError
    from ..query import make_engine

    p = Path(path)
    if not p.is_file():
        raise SceneError(f"scene file {str(p)!r} does not exist")
    try:
        ns = runpy.run_path(str(p), run_name="__probcomp_scene__")
    except Exception as e:
        raise SceneError(f"scene file {str(p)!r} raised {type(e).__name__}: {e}") from e
    build = ns.get("scene_for")
    if not callable(build):
        raise SceneError(
            f"scene file {str(p)!r} defines no `scene_for(observation)`; --over runs that function "
            "on every observation of the data set"
        )
    observations = load_observations(data)
    engine = ns.get("engine")
    if engine is None:
        engine = make_engine(engine_name, steps, steps_per_level, False)
    optimiser = not hasattr(engine, "levels_arg")  # concept inversion takes no sample count
    config = {
        "scene": p.name,
        "scene_sha256": _sha256(p),
        "data": Path(data).name,
        "data_sha256": _sha256(Path(data)),
        "engine": engine_settings(engine),
        "samples": None if optimiser else samples,
        "steps": steps,
        "steps_per_level": steps_per_level,
        "seed": seed,
    }
    start = time.perf_counter()
    records = run(
        engine,
        build,
        observations,
        num_samples=None if optimiser else samples,
        seed=seed,
        config=config,
        **options,
    )
    return {
        "scene": str(p),
        "data": str(data),
        "items": len(observations),
        "done": sum(r is not None for r in records),
        "wall_time_s": round(time.perf_counter() - start, 3),
        "records": records,
    }


def engine_settings(engine: Any) -> dict[str, Any]:
    """The engine's class and its scalar settings (what a resumed run must share with the run
    that wrote the record file)."""
    plain = (bool, int, float, str, type(None))
    out: dict[str, Any] = {"class": type(engine).__name__}
    for k, v in sorted(vars(engine).items()):
        if k.startswith("_") or callable(v):
            continue
        if isinstance(v, plain):
            out[k] = v
        elif isinstance(v, (tuple, list)) and all(isinstance(u, plain) for u in v):
            out[k] = list(v)
        elif isinstance(v, (torch.dtype, torch.device)):
            out[k] = str(v)
    return out


def _sha256(path: Path) -> str | None:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None

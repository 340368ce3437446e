"""Many queries at once: map an engine over many scenes or observations with Ray.

:func:`map_items` runs ``fn(item)`` for every item as a Ray task and streams each result to
an append-only record file (JSON lines), written only by the calling process as results
arrive, so that

* a run that was stopped (a time limit, Ctrl-C, a killed driver) resumes where it stopped:
  items already in the file are read back, not recomputed (a line cut short by a kill is
  skipped and its item recomputed);
* a worker process that dies has its task retried on another worker (Ray's task retries);
  only the finished task's result is written, so every item appears in the file once;
* the same call runs on a laptop or a cluster: without a running Ray instance it starts a
  local one with this machine's cores (``num_cpus`` per task, ``num_gpus`` where asked).

:func:`run` is the inference front end: ``engine.run(build(observation), seed=...)`` per
observation, summarised as a JSON record (:func:`record`).  ``probcomp run SCENE.py --over
DATA`` calls :func:`run_scene_file`.  Ray is an optional dependency
(``pip install probcomp[distributed]``), imported only when a batch runs.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import ProbcompError

__all__ = ["BatchError", "map_items", "read_records", "record", "run", "run_scene_file"]


class BatchError(ProbcompError, RuntimeError):
    """A batch could not run: Ray missing or unreachable, an item that cannot be sent to a
    worker, an item whose function failed (the message names it), a record file of another run."""


# The record file -----------------------------------------------------------------------------
def read_records(path: str | Path | None, config: Any = None) -> dict[Any, Any]:
    """The records of a JSONL record file by key (``{}`` when there is none).

    Each line is ``{"key": ..., "record": ..., "config": ...}``; a line that does not parse
    (cut short when a run was killed) is skipped, and a line written under another
    ``config`` stops the run (its records would mix two settings)."""
    if path is None or not Path(path).exists():
        return {}
    done: dict[Any, Any] = {}
    want = _jsonable(config)
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key, rec = _key(row["key"]), row["record"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        if row.get("config") != want:
            raise BatchError(
                f"record file {str(path)!r} line {n} was written with other settings "
                f"({row.get('config')!r}, not {want!r}); use another record file or the same settings"
            )
        done[key] = rec
    return done


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v)) if v is not None else None


def _key(k: Any) -> Any:
    """A key as read back from JSON (lists become tuples, so keys stay hashable)."""
    return tuple(_key(x) for x in k) if isinstance(k, list) else k


def _append(path: Path, key: Any, rec: Any, config: Any) -> None:
    line = json.dumps({"key": key, "record": rec, "config": _jsonable(config)})
    with path.open("a") as f:  # one write per line, flushed at once
        f.write(line + "\n")
        f.flush()


# Ray -------------------------------------------------------------------------------------------
def _ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise BatchError(
            "probcomp.batch needs Ray: pip install 'probcomp[distributed]' (or pip install ray)"
        ) from e
    return ray


def _probe(address: str) -> None:
    """Refuse an address whose head node does not answer (Ray would retry for minutes)."""
    if address == "auto" or address == "local":
        return
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            pass
    except (OSError, ValueError) as e:
        raise BatchError(
            f"cannot reach the Ray cluster at {address!r} ({type(e).__name__}: {e}); start it with "
            "`ray start --head`, fix the address, or leave address unset to run on this machine"
        ) from None


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> Any:
    """The Ray module, connected: to ``address`` (or ``RAY_ADDRESS``) if given, else to a new
    local instance with ``num_cpus`` (default: this machine's cores) and ``num_gpus``."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if address is not None:
            _probe(address)
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus, **kw)
    except BatchError:
        raise
    except Exception as e:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise BatchError(
            f"cannot start or reach {where} ({type(e).__name__}: {msg}); start one with "
            "`ray start --head` or leave address unset to run on this machine"
        ) from None
    return ray


def _check_pickle(ray: Any, what: str, obj: Any) -> None:
    try:
        ray.cloudpickle.dumps(obj)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise BatchError(
            f"{what} cannot be pickled for a worker ({type(e).__name__}: {msg}); build what cannot be "
            "pickled (open files, locks, generators, live connections) inside the function, or define "
            "the function at module level"
        ) from None


def _failure(ray: Any, key: Any, e: BaseException, retries: int) -> BatchError:
    """One line for an item that failed on a worker."""
    if isinstance(e, ray.exceptions.RayTaskError):
        inner = getattr(e, "cause", None)
        cause = inner if inner is not None else e
        text = str(cause).strip().splitlines()
        text = (
            text[-1] if isinstance(cause, ray.exceptions.RayTaskError) and text else (text[0] if text else "")
        )
        return BatchError(f"item {key!r} failed on a worker: {type(cause).__name__}: {text}")
    if isinstance(e, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)):
        return BatchError(
            f"item {key!r}: its worker died {retries + 1} times (out of memory? a crash in native code?); "
            "the records finished so far are kept: rerun to resume"
        )
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return BatchError(f"item {key!r} failed: {type(e).__name__}: {msg}")


def map_items(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    keys: Sequence[Hashable] | None = None,
    log: str | Path | None = None,
    config: Any = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    workers: int | None = None,
    address: str | None = None,
    retries: int = 3,
    time_limit: float | None = None,
    progress: bool = True,
    desc: str = "items",
    on_result: Callable[[Any, Any], None] | None = None,
) -> list[Any]:
    """``[fn(item) for item in items]`` as Ray tasks, each result appended to ``log`` as it arrives.

    Args:
        fn: a picklable function of one item returning a JSON-serialisable record.
        items: the items (each is pickled to its worker).
        keys: a unique JSON-serialisable key per item (default its index); the record file
            is keyed by them, so a resumed run must use the same keys.
        log: the JSONL record file: read first (its items are not rerun), then appended to.
        config: the settings the records depend on, stored on every line; a file written
            under another ``config`` is refused.
        num_cpus, num_gpus: resources of each task.
        workers: tasks in flight at once (default: as many as the cluster's CPUs allow);
            with a new local Ray instance also its number of CPUs (default this machine's).
        address: a Ray cluster (``"auto"``, ``"HOST:PORT"``, ``"ray://HOST:PORT"``); default
            ``RAY_ADDRESS`` or a new local instance.
        retries: how often a task whose worker process died is run again elsewhere.
        time_limit: seconds; no item is started after it (running ones finish and are
            recorded), and the missing items come back as ``None``: rerun to resume.
        progress: a tqdm bar over the items.
        on_result: called as ``on_result(key, record)`` in this process as each record
            arrives (after it is written to ``log``), e.g. to keep a log of one's own format.

    Returns: the records in the order of ``items`` (``None`` for items not run).
    """
    from tqdm.auto import tqdm

    items = list(items)
    keys = list(range(len(items))) if keys is None else [_key(_jsonable(k)) for k in keys]
    if len(keys) != len(items) or len(set(keys)) != len(keys):
        raise BatchError(f"need one unique key per item: {len(items)} items, {len(set(keys))} distinct keys")
    path = Path(log) if log is not None else None
    if path is not None and not path.parent.is_dir():
        raise BatchError(f"record file {str(path)!r}: the folder {str(path.parent)!r} does not exist")
    done = read_records(path, config)
    if path is not None and path.exists() and path.stat().st_size:
        with path.open("rb+") as f:  # end a line cut short by a kill, so the next record starts afresh
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
    out: dict[Any, Any] = {k: done[k] for k in keys if k in done}
    todo = [(k, it) for k, it in zip(keys, items, strict=True) if k not in done]
    bar = tqdm(total=len(items), initial=len(out), desc=desc, disable=not progress, leave=False)
    if not todo:
        bar.close()
        return [out.get(k) for k in keys]
    ray = connect(address, num_cpus=workers)  # a local instance finds this machine's GPUs itself
    _check_pickle(ray, f"the function {getattr(fn, '__name__', fn)!r}", fn)
    for k, it in todo:
        _check_pickle(ray, f"item {k!r}", it)
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=retries, retry_exceptions=False)(
        _call
    )
    fn_ref = ray.put(fn)
    slots = workers or max(1, int(ray.cluster_resources().get("CPU", 1) // max(num_cpus, 1e-9)))
    deadline = time.monotonic() + (math.inf if time_limit is None else time_limit)
    pending: dict[Any, Any] = {}
    queue = list(reversed(todo))
    try:
        while queue or pending:
            while queue and len(pending) < slots and time.monotonic() <= deadline:
                k, it = queue.pop()
                pending[task.remote(fn_ref, it)] = k
            if not pending:
                break  # past the time limit
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                k = pending.pop(ref)
                try:
                    rec = _jsonable(ray.get(ref))
                except Exception as e:
                    raise _failure(ray, k, e, retries) from None
                if path is not None:
                    _append(path, k, rec, config)
                if on_result is not None:
                    on_result(k, rec)
                out[k] = rec
                bar.update(1)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    return [out.get(k) for k in keys]


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    """The task body: one torch thread per task unless the task asked for more CPUs."""
    threads = max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    torch.set_num_threads(threads)
    return fn(item)


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
        config = {"engine": repr(type(engine).__name__), "seed": int(seed), "num_samples": num_samples}
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

    from .errors import SceneError
    from .query import make_engine

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
        "data": Path(data).name,
        "engine": engine_name if ns.get("engine") is None else type(engine).__name__,
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

"""``map_items``: a function over many items as Ray tasks, with retries and a resumable record file."""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import BatchError, first_line
from .records import _append, _jsonable, _key, read_records


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
        msg = first_line(e)
        raise BatchError(
            f"cannot start or reach {where} ({type(e).__name__}: {msg}); start one with "
            "`ray start --head` or leave address unset to run on this machine"
        ) from None
    return ray


def _check_pickle(ray: Any, what: str, obj: Any) -> None:
    try:
        ray.cloudpickle.dumps(obj)
    except Exception as e:
        msg = first_line(e)
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
    msg = first_line(e)
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

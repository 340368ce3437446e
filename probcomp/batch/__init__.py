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

from ..errors import BatchError
from .queries import load_observations, record, run, run_scene_file
from .ray_map import connect, map_items
from .records import read_records

__all__ = [
    "BatchError",
    "connect",
    "load_observations",
    "map_items",
    "read_records",
    "record",
    "run",
    "run_scene_file",
]

"""Batch inversion over many observations with Ray: records streamed to a JSONL file, a worker
killed mid-run, an interrupted run resumed, bad input as one probcomp error.

One local Ray instance (2 CPUs) serves the module; each test takes seconds.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

import probcomp as pc  # noqa: E402
from probcomp import batch  # noqa: E402
from probcomp.cli import main  # noqa: E402
from probcomp.factors import ConditionalGaussian  # noqa: E402
from probcomp.inference import ConceptInversion  # noqa: E402

# the functions below travel to the workers by value (the workers cannot import this file)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

OBS = [torch.tensor([0.7, -1.2, 0.3]) * (1 + 0.2 * i) for i in range(5)]


def concept_scene(x: torch.Tensor) -> pc.Scene:
    """One 3-D concept ``c`` behind ``x ~ N(c, 0.1^2)``: the answer is ``c = x``."""
    s = pc.Scene()
    s.observe("x", value=x, factor=ConditionalGaussian((3,), std=0.1), condition=s.control("c", (3,)))
    return s


def engine() -> ConceptInversion:
    return ConceptInversion(steps=150, restarts=2, lr=0.1, prune_every=75)


class Faulty:
    """Builds the scene of an observation, noting each call in ``calls``; the first call for
    item ``kill`` kills its worker process (SIGKILL), the first for ``fail`` raises."""

    def __init__(self, folder: Path, kill: int | None = None, fail: int | None = None) -> None:
        self.folder, self.kill, self.fail = str(folder), kill, fail

    def __call__(self, x: torch.Tensor) -> pc.Scene:
        i = min(range(len(OBS)), key=lambda j: float((OBS[j] - x).abs().sum()))
        with open(os.path.join(self.folder, "calls"), "a") as f:
            f.write(f"{i}\n")
        marker = os.path.join(self.folder, f"first-{i}")
        first = not os.path.exists(marker)
        open(marker, "a").close()
        if first and i == self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        if first and i == self.fail:
            raise RuntimeError(f"observation {i} was interrupted")
        return concept_scene(x)


def calls(folder: Path) -> list[int]:
    path = folder / "calls"
    return [int(v) for v in path.read_text().split()] if path.exists() else []


def keys_in(log: Path) -> list:
    return [json.loads(line)["key"] for line in log.read_text().splitlines() if line.strip()]


def test_an_unreachable_cluster_is_one_probcomp_error():
    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    with pytest.raises(batch.BatchError, match="cannot reach the Ray cluster") as e:
        batch.map_items(abs, [1], address="127.0.0.1:1", progress=False)
    assert isinstance(e.value, pc.ProbcompError) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    batch.connect(num_cpus=2)
    yield
    if started:
        ray.shutdown()


@pytest.mark.filterwarnings("ignore::probcomp.errors.ConvergenceWarning")
def test_batch_inversion_recovers_every_concept_and_streams_records(local_ray, tmp_path):
    log = tmp_path / "records.jsonl"
    recs = batch.run(engine(), concept_scene, OBS, seed=1, log=log, progress=False)
    for x, rec in zip(OBS, recs, strict=True):
        assert (torch.tensor(rec["concepts"]["c"]) - x).abs().max() < 0.2, rec
        assert rec["nfe_total"] > 0
    assert sorted(keys_in(log)) == list(range(len(OBS)))
    # the records are those of a loop with seeds seed + i
    loop = engine().run(concept_scene(OBS[3]), seed=1 + 3)
    assert recs[3]["concepts"]["c"] == loop["c"].tolist()
    # a second call reads everything back
    assert batch.run(engine(), concept_scene, OBS, seed=1, log=log, progress=False) == recs
    with pytest.raises(batch.BatchError, match="other settings"):
        batch.run(engine(), concept_scene, OBS, seed=2, log=log, progress=False)


def test_a_killed_worker_has_its_item_retried_and_recorded_once(local_ray, tmp_path):
    log = tmp_path / "records.jsonl"
    recs = batch.run(engine(), Faulty(tmp_path, kill=2), OBS, seed=1, log=log, progress=False)
    assert calls(tmp_path).count(2) == 2  # killed once, then run again on another worker
    assert sorted(keys_in(log)) == list(range(len(OBS)))  # every item exactly once
    assert (torch.tensor(recs[2]["concepts"]["c"]) - OBS[2]).abs().max() < 0.2


def test_an_interrupted_run_resumes_where_it_stopped(local_ray, tmp_path):
    log = tmp_path / "records.jsonl"
    opts = dict(seed=1, log=log, progress=False, workers=1)  # one at a time: items 0, 1 finish first
    with pytest.raises(
        batch.BatchError, match=r"item 2 failed on a worker: RuntimeError: observation 2"
    ) as e:
        batch.run(engine(), Faulty(tmp_path, fail=2), OBS, **opts)
    assert "\n" not in str(e.value)
    assert sorted(keys_in(log)) == [0, 1]
    with log.open("a") as f:  # a driver killed in the middle of a write leaves half a line
        f.write('{"key": 3, "rec')
    before = len(calls(tmp_path))
    recs = batch.run(engine(), Faulty(tmp_path, fail=2), OBS, **opts)
    assert sorted(calls(tmp_path)[before:]) == [2, 3, 4]  # only the missing items ran
    assert sorted(k for k in keys_in_valid(log)) == list(range(len(OBS)))
    assert all(r is not None for r in recs)
    # a time limit that has passed starts nothing and returns what the file holds
    fresh = tmp_path / "fresh.jsonl"
    assert (
        batch.run(engine(), concept_scene, OBS, seed=1, log=fresh, time_limit=0, progress=False) == [None] * 5
    )


def keys_in_valid(log: Path) -> list:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line)["key"])
        except json.JSONDecodeError:
            continue
    return out


def test_a_scene_that_cannot_be_pickled_is_one_probcomp_error(local_ray):
    lock = threading.Lock()

    def build(x):
        with lock:
            return concept_scene(x)

    with pytest.raises(batch.BatchError, match="cannot be pickled for a worker") as e:
        batch.run(engine(), build, OBS[:2], progress=False)
    assert "\n" not in str(e.value)
    scene = concept_scene(OBS[0])
    scene.lock = lock  # a scene holding an unpicklable attribute, passed as the item itself
    with pytest.raises(batch.BatchError, match="item 0 cannot be pickled"):
        batch.run(engine(), None, [scene], progress=False)


SCENE_FILE = """
import torch
import probcomp as pc
from probcomp.factors import ConditionalGaussian
from probcomp.inference import ConceptInversion

engine = ConceptInversion(steps=150, restarts=2, lr=0.1, prune_every=75)

def scene_for(x):
    s = pc.Scene()
    s.observe("x", value=x, factor=ConditionalGaussian((3,), std=0.1), condition=s.control("c", (3,)))
    return s
"""


def test_cli_runs_a_scene_file_over_a_data_set(local_ray, tmp_path, capsys):
    scene, data, log = tmp_path / "scene.py", tmp_path / "obs.pt", tmp_path / "rec.jsonl"
    scene.write_text(SCENE_FILE)
    torch.save(torch.stack(OBS[:3]), data)
    argv = ["run", str(scene), "--over", str(data), "--log", str(log), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["items"] == out["done"] == 3 and len(keys_in(log)) == 3
    for x, rec in zip(OBS, out["records"], strict=False):
        assert (torch.tensor(rec["concepts"]["c"]) - x).abs().max() < 0.2
    assert main(argv) == 0 and len(keys_in(log)) == 3  # resumed: nothing recomputed
    capsys.readouterr()
    for bad in (
        ["run", str(scene), "--over", str(tmp_path / "missing.pt")],
        ["run", str(scene), "--log", str(log)],
        ["run", str(tmp_path / "nope.py"), "--over", str(data)],
    ):
        assert main(bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("probcomp: error:"), err
    plain = tmp_path / "plain.py"
    plain.write_text("import probcomp as pc\nscene = pc.Scene()\n")
    assert main(["run", str(plain), "--over", str(data)]) == 2
    assert "scene_for" in capsys.readouterr().err


def test_a_record_file_of_other_engine_settings_is_refused(tmp_path):
    """Resuming must not mix records: the engine's settings are part of the record file's config."""
    from probcomp.batch.queries import engine_settings
    from probcomp.batch.records import _append, read_records
    from probcomp.inference import ReverseDiffusion

    log = tmp_path / "records.jsonl"
    a = {"engine": engine_settings(ReverseDiffusion(10)), "seed": 0}
    _append(log, 0, {"x": 1.0}, a)
    assert read_records(log, a) == {0: {"x": 1.0}}
    b = {"engine": engine_settings(ReverseDiffusion(20)), "seed": 0}
    assert a != b and engine_settings(ReverseDiffusion(10, "ddim"))["sampler"] == "ddim"
    with pytest.raises(pc.ProbcompError, match="other settings"):
        read_records(log, b)

"""Particles across processes: two gloo ranks on the CPU against one process and the exact answer.

The multi-process tests spawn their own ranks (torch.multiprocessing, a free port, one torch
thread each), wait a bounded time and terminate what is left; each takes seconds.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

import probcomp as pc
from probcomp import distributed, targets
from probcomp.inference import AnnealedMCMC, ReverseDiffusion, smc

TIMEOUT = 120  # seconds for a whole multi-process run (each takes well under a minute)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ring_bar(score_only: bool = False) -> pc.Scene:
    ring, bar, _ = targets.analytic_ring_bar()
    s = pc.Scene()
    x = s.control("x", (2,))
    s.observe("ring", x, factor=ring)
    s.observe("bar", x, factor=bar)
    return s


def _init(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )


def _worker(rank: int, world: int, port: int, job: str, out: str) -> None:
    _init(rank, world, port)
    try:
        result = JOBS[job](rank, world)
        torch.save(result, f"{out}.{rank}")
    finally:
        tdist.destroy_process_group()


def _spawn(job: str, tmp_path: Path, world: int = 2) -> list[dict]:
    """Run ``JOBS[job]`` on ``world`` gloo ranks; every rank's returned dict."""
    out = str(tmp_path / job)
    ctx = mp.spawn(_worker, args=(world, _free_port(), job, out), nprocs=world, join=False)
    deadline = time.monotonic() + TIMEOUT
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"{job}: the ranks did not finish in {TIMEOUT} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)
    return [torch.load(f"{out}.{r}", weights_only=False) for r in range(world)]


# Jobs run on every rank ----------------------------------------------------------------------
N, SEEDS = 1000, (0, 1, 2)


def _engine() -> AnnealedMCMC:
    """Annealed HMC with annealed-importance weights and ESS-triggered resampling."""
    return AnnealedMCMC("hmc", 3, 40, resample="ess", reverse_step=False)


def _job_ais(rank: int, world: int) -> dict:
    """The ring x bar product at three seeds, the first twice (determinism for a fixed seed)."""
    runs = [_engine().run(ring_bar(), N, seed=s, distributed=True) for s in (*SEEDS, SEEDS[0])]
    a = runs[0]
    return {
        "x": [r["x"] for r in runs[:-1]],
        "again": runs[-1]["x"],
        "stats": {k: a.stats[k] for k in ("nfe_total", "calls", "ess", "resampled", "accept", "step_size")},
        "world_size": a.stats["world_size"],
        "comm_time": a.stats["comm_time"],
        "log_weight": a.particle_stats["log_weight"],
    }


def _job_resample(rank: int, world: int) -> dict:
    """The global resampling of a rank-sharded population, for three sizes and every method."""
    comm = distributed.communicator(True)
    out = {}
    for n in (7, 64, 101):
        g = torch.Generator().manual_seed(n)
        log_w = 3 * torch.randn(n, generator=g, dtype=torch.float64)
        pop = torch.arange(n, dtype=torch.float32)[:, None] * torch.tensor([1.0, -1.0, 0.5])
        lp = torch.randn(n, generator=g, dtype=torch.float64)
        lo, m = comm.shard(n)
        for method in smc.RESAMPLERS:
            gen = torch.Generator().manual_seed(100 + n)
            gathered = comm.gather(log_w[lo : lo + m])
            idx = comm.ancestors(gathered, gen, method)
            x, p = comm.take([pop[lo : lo + m], lp[lo : lo + m]], idx)
            out[(n, method)] = (comm.gather(x), comm.gather(p), idx, gathered)
    return out


def _job_reverse(rank: int, world: int) -> dict:
    res = distributed.run(ReverseDiffusion(20), ring_bar(), 101, seed=4)
    return {"x": res["x"], "nfe_total": res.stats["nfe_total"]}


JOBS = {"ais": _job_ais, "resample": _job_resample, "reverse": _job_reverse}


# Tests -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exact() -> torch.Tensor:
    return targets.analytic_ring_bar()[2].sample(N, torch.Generator().manual_seed(11))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_ranks_sample_the_exact_product_as_well_as_one(tmp_path, exact):
    r0, r1 = _spawn("ais", tmp_path)
    h = N // 2
    assert r0["x"][0].shape == (N, 2) and r1["x"][0].shape == (h, 2)  # rank 0 gathers, rank 1 its shard
    assert torch.equal(r0["x"][0], r0["again"]) and torch.equal(r1["x"][0], r1["again"])  # fixed (seed, K)
    assert all(torch.equal(a[h:], b) for a, b in zip(r0["x"], r1["x"], strict=True))  # rank order
    # the population's stats are the same on both ranks
    for k, v in r0["stats"].items():
        assert torch.equal(torch.as_tensor(v), torch.as_tensor(r1["stats"][k])), k
    assert r0["world_size"] == 2 and r0["comm_time"] > 0
    assert r0["stats"]["resampled"].sum() >= 1  # the global weights did resample across ranks
    torch.set_num_threads(1)
    single = [_engine().run(ring_bar(), N, seed=s) for s in SEEDS]
    assert r0["stats"]["nfe_total"] == single[0].stats["nfe_total"]  # per particle: the same on every rank
    # accuracy: the SMC estimate of the two modes' balance varies by a few percent per run, so
    # compare the mean W2 over seeds with one process's (and with the exact two-sample floor)
    w2_dist = sum(pc.metrics.w2(x, exact) for x in r0["x"]) / len(SEEDS)
    w2_single = sum(pc.metrics.w2(r["x"], exact) for r in single) / len(SEEDS)
    floor = pc.metrics.w2(targets.analytic_ring_bar()[2].sample(N, torch.Generator().manual_seed(12)), exact)
    assert w2_dist < 1.5 * w2_single + 0.03 and w2_dist < 10 * floor, (w2_dist, w2_single, floor)
    upper = sum(float((x[:, 1] > 0).double().mean()) for x in r0["x"]) / len(SEEDS)
    assert abs(upper - 0.5) < 0.08  # the product's two dominant modes are symmetric


def test_global_resampling_equals_one_process_resampling_the_gathered_weights(tmp_path):
    r0, r1 = _spawn("resample", tmp_path)
    for (n, method), (x, p, idx, gathered) in r0.items():
        g = torch.Generator().manual_seed(n)
        log_w = 3 * torch.randn(n, generator=g, dtype=torch.float64)
        pop = torch.arange(n, dtype=torch.float32)[:, None] * torch.tensor([1.0, -1.0, 0.5])
        lp = torch.randn(n, generator=g, dtype=torch.float64)
        want = smc.resample(log_w, torch.Generator().manual_seed(100 + n), method)
        assert torch.equal(gathered, log_w) and torch.equal(idx, want), (n, method)
        assert torch.equal(x, pop[want]) and torch.equal(p, lp[want]), (n, method)
        assert torch.equal(r1[(n, method)][2], want)  # every rank holds the same ancestors
        assert x.dtype == torch.float32 and p.dtype == torch.float64


def test_embarrassingly_parallel_engines_shard_without_collectives(tmp_path):
    r0, r1 = _spawn("reverse", tmp_path)
    assert r0["x"].shape == (101, 2) and r1["x"].shape == (50, 2)
    assert torch.equal(r0["x"][51:], r1["x"])
    assert r0["nfe_total"] == ReverseDiffusion(20).run(ring_bar(), 5).stats["nfe_total"]
    # rank 0's shard is a plain run of its 51 particles with the same seed
    assert torch.equal(r0["x"][:51], ReverseDiffusion(20).run(ring_bar(), 51, seed=4)["x"])


# One rank: bit-identical to a plain run ------------------------------------------------------
@pytest.fixture
def one_rank():
    if tdist.is_initialized():
        pytest.skip("a process group is already initialised here")
    _init(0, 1, _free_port())
    try:
        yield
    finally:
        tdist.destroy_process_group()


CASES = {
    "hmc-energy-smc": lambda: AnnealedMCMC("hmc", 2, 20, resample="ess"),
    "hmc-always-noreverse": lambda: AnnealedMCMC("hmc", 2, 20, resample="always", reverse_step=False),
    "mala-score-multinomial": lambda: AnnealedMCMC(
        "mala", 2, 20, metropolis="score", resample="always", resampling="multinomial", final_resample=False
    ),
    "ula": lambda: AnnealedMCMC("ula", 2, 20),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_one_rank_is_bit_identical_to_a_plain_run(one_rank):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, make in CASES.items():
            plain = make().run(ring_bar(), 64, seed=7)
            dist = make().run(ring_bar(), 64, seed=7, distributed=True)
            assert torch.equal(plain["x"], dist["x"]), name
            for k, v in plain.particle_stats.items():
                assert torch.equal(v, dist.particle_stats[k]), (name, k)
            for k in ("nfe_total", "calls", "accept", "step_size", "ess", "resampled", "nfe_per_level"):
                a, b = torch.as_tensor(plain.stats[k]), torch.as_tensor(dist.stats[k])
                assert torch.equal(a.nan_to_num(-1.0), b.nan_to_num(-1.0)), (name, k)
            assert dist.stats["world_size"] == 1
        plain = ReverseDiffusion(20).run(ring_bar(), 64, seed=7)
        assert torch.equal(distributed.run(ReverseDiffusion(20), ring_bar(), 64, seed=7)["x"], plain["x"])
    finally:
        torch.set_num_threads(threads)


def test_distributed_without_a_process_group_is_one_probcomp_error():
    if tdist.is_initialized():
        pytest.skip("a process group is already initialised here")
    with pytest.raises(distributed.DistributedError, match="torchrun") as e:
        AnnealedMCMC("hmc", 1, 2).run(ring_bar(), 8, distributed=True)
    assert isinstance(e.value, pc.ProbcompError) and "\n" not in str(e.value)
    with pytest.raises(distributed.DistributedError, match="torchrun"):
        distributed.run(ReverseDiffusion(2), ring_bar(), 8)
    with pytest.raises(distributed.DistributedError, match="got 'yes'"):
        AnnealedMCMC("hmc", 1, 2).run(ring_bar(), 8, distributed="yes")
    env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE") if k in os.environ}
    try:
        with pytest.raises(distributed.DistributedError, match="torchrun"):
            distributed.init()
    finally:
        os.environ.update(env)


def test_shards_and_rank_seeds():
    assert distributed.shard_sizes(7, 3) == [3, 2, 2] and sum(distributed.shard_sizes(100, 8)) == 100
    assert distributed.rank_seed(5, 0) == 5
    seeds = {distributed.rank_seed(5, r) for r in range(1, 50)}
    assert len(seeds) == 49 and all(0 <= s < 2**63 for s in seeds)
    assert distributed.rank_seed(5, 1) == distributed.rank_seed(5, 1) != distributed.rank_seed(6, 1)


def test_import_probcomp_needs_neither_ray_nor_a_process_group():
    import subprocess

    code = (
        "import sys, probcomp, probcomp.distributed, probcomp.batch; "
        "print(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr

r"""Particles across processes and devices: a communicator over ``torch.distributed``.

A run of ``N`` particles on ``K`` processes (ranks) gives rank ``r`` the contiguous block
of global particle indices ``[o_r, o_r + n_r)`` with ``n_r = floor(N / K)`` or one more
(:func:`shard_sizes`), on its own device.  Everything that couples particles is computed
on the whole population, exactly as one process holding all ``N`` would compute it:

* the log-weights of a sequential Monte Carlo sampler (Del Moral, Doucet & Jasra 2006)
  are all-gathered, so the effective sample size ``(sum w)^2 / sum w^2`` (Kong, Liu & Wong
  1994) and the decision to resample are global;
* one systematic resampling (Kitagawa 1996) of the gathered weights on rank 0 gives the
  ancestors ``a_1..a_N`` of every global particle; they are broadcast, and particle ``j``
  of rank ``r`` is copied from the rank that owns ``a_j``: only ancestors that live on
  another rank travel, each at most once per pair of ranks (the "gather everything"
  scheme that Murray, Lee & Jacob 2016 compare their collective-free resamplers with;
  with ``N`` log-weights of 8 bytes per level it is not the bottleneck at the sizes here);
* the acceptance rate that adapts the step size is the mean over all ``N`` particles;
* batched calls are summed; NFE per particle (the same on every rank) and wall time are the
  slowest rank's.

Rank 0's random stream is the one a single-process run with the same seed uses, so with
``K = 1`` a distributed run is bit-identical to a plain one; rank ``r > 0`` draws from a
stream derived from ``(seed, r)`` (:func:`rank_seed`), so a fixed ``(seed, K)`` gives the
same samples on every run.  Launch with ``torchrun --nproc_per_node K script.py``::

    import probcomp as pc
    from probcomp import distributed
    from probcomp.inference import AnnealedMCMC

    distributed.init()                                      # gloo on CPUs, NCCL on GPUs
    engine = AnnealedMCMC("hmc", 10, 100, resample="ess", device=distributed.local_device())
    res = engine.run(scene, num_samples=100_000, seed=0, distributed=True)
    # rank 0: all 100 000 particles; rank r: its own shard

Engines without coupling between particles (reverse diffusion, per-step EM) run with
:func:`run`: each rank samples its shard from its own stream and rank 0 gathers.

This module imports ``torch.distributed`` only when a process group is used.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .errors import NumericalError, ProbcompError

if TYPE_CHECKING:
    from .results import Result

__all__ = [
    "Communicator",
    "DistributedError",
    "LocalCommunicator",
    "ProcessGroupCommunicator",
    "communicator",
    "gather_result",
    "init",
    "local_device",
    "rank_seed",
    "run",
    "shard_sizes",
]


def _ancestors(log_w: torch.Tensor, generator: torch.Generator, method: str, shuffle: bool) -> torch.Tensor:
    from probcomp.inference import smc

    idx = smc.resample(log_w, generator, method)
    if shuffle:
        idx = idx[torch.randperm(idx.shape[0], generator=generator, device=generator.device).to(idx.device)]
    return idx


class DistributedError(ProbcompError, RuntimeError):
    """A distributed run was asked for without what it needs (a process group, a cluster)."""


def shard_sizes(n: int, world_size: int) -> list[int]:
    """Particles per rank: ``n // K`` each, the first ``n % K`` ranks one more."""
    base, extra = divmod(int(n), int(world_size))
    return [base + (r < extra) for r in range(world_size)]


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s generator: ``seed`` itself on rank 0 (so that one process
    reproduces a plain run), otherwise a well-mixed function of ``(seed, rank)``."""
    if rank == 0:
        return int(seed)
    import numpy as np

    words = np.random.SeedSequence([int(seed) % 2**63, int(rank)]).generate_state(2, np.uint32)
    return (int(words[0]) << 31 | int(words[1]) >> 1) % 2**63


def local_device() -> torch.device:
    """This process's device under ``torchrun``: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def init(backend: str | None = None, **kwargs: Any) -> ProcessGroupCommunicator:
    """Initialise the default process group from the ``torchrun`` environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), if it is not yet, and return its
    communicator.  ``backend`` defaults to NCCL with CUDA, else gloo; ``kwargs`` go to
    :func:`torch.distributed.init_process_group`."""
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; install a build that has it")
    if not dist.is_initialized():
        if "RANK" not in os.environ and "init_method" not in kwargs:
            raise DistributedError(
                "probcomp.distributed.init() found no RANK/WORLD_SIZE in the environment: launch the "
                "script with `torchrun --nproc_per_node K` (or pass init_method=, rank=, world_size=)"
            )
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_device())
        dist.init_process_group(backend, **kwargs)
    return ProcessGroupCommunicator()


# Communicators -------------------------------------------------------------------------------
class Communicator:
    """What a distributed engine needs from its processes; :class:`LocalCommunicator` is the
    single-process identity, :class:`ProcessGroupCommunicator` the ``torch.distributed`` one.

    ``comm_time`` accumulates the seconds spent in collectives (the communication share of
    a run's wall time).
    """

    rank: int = 0
    world_size: int = 1
    comm_time: float = 0.0

    @property
    def distributed(self) -> bool:
        return False

    def shard(self, n: int) -> tuple[int, int]:
        """``(offset, count)`` of this rank's block of ``n`` global particles."""
        sizes = shard_sizes(n, self.world_size)
        return sum(sizes[: self.rank]), sizes[self.rank]

    def seed(self, seed: int) -> int:
        """Rank 0's seed, agreed by every rank (a ``None`` seed draws fresh entropy per rank)."""
        return seed

    def gather(self, t: torch.Tensor, total: int | None = None) -> torch.Tensor:
        """Every rank's ``t`` concatenated along the first axis in rank order, on every rank;
        ``total``: the global length when the blocks are the :func:`shard_sizes` of it (saves
        a collective)."""
        return t

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over ranks (float64)."""
        return list(values)

    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maxima over ranks (float64)."""
        return list(values)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on some rank."""
        return bool(flag)

    def ancestors(
        self, log_w: torch.Tensor, generator: torch.Generator, method: str, shuffle: bool = False
    ) -> torch.Tensor:
        """Global ancestor indices of the gathered ``log_w`` (drawn on rank 0, shared with all);
        ``shuffle`` puts them in random order (systematic resampling returns them sorted, so
        that consecutive blocks of particles, the chains of a result, descend from the same
        few ancestors)."""
        return _ancestors(log_w, generator, method, shuffle)

    def take(self, tensors: Sequence[torch.Tensor], ancestors: torch.Tensor) -> list[torch.Tensor]:
        """This rank's rows of ``[t[ancestors] for t in tensors]``, where ``t`` is the global
        population of which this rank holds its block; rows owned elsewhere are received."""
        return [t[ancestors] for t in tensors]

    def together(self, check: Callable[[], None], what: str) -> None:
        """Run ``check`` (which may raise a probcomp error) and raise on every rank if it raised
        on any, so that no rank is left waiting in the next collective."""
        check()


class LocalCommunicator(Communicator):
    """One process: every collective is the identity (a plain run)."""


class ProcessGroupCommunicator(Communicator):
    """The collectives over a ``torch.distributed`` process group (the default group if ``None``).

    Tensors travel on the group's device (CUDA for NCCL, else CPU) and come back on the
    caller's device; particle rows are exchanged by point-to-point sends.
    """

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise DistributedError(
                "distributed=True needs an initialised torch.distributed process group: launch with "
                "`torchrun --nproc_per_node K` and call probcomp.distributed.init() (or "
                "torch.distributed.init_process_group) before engine.run"
            )
        self._dist, self.group = dist, group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        backend = str(dist.get_backend(group)).lower()
        self.device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend else None
        self.comm_time = 0.0

    @property
    def distributed(self) -> bool:
        return True

    def _global(self, rank: int) -> int:
        return rank if self.group is None else self._dist.get_global_rank(self.group, rank)

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device) if self.device is not None else t.cpu()

    def _timed(self, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.comm_time += time.perf_counter() - start

    def seed(self, seed: int) -> int:
        t = torch.tensor([int(seed)], dtype=torch.int64)
        return int(self._timed(lambda: self._broadcast(t))[0])

    def _broadcast(self, t: torch.Tensor) -> torch.Tensor:
        out = self._to(t).contiguous()
        self._dist.broadcast(out, self._global(0), group=self.group)
        return out.to(t.device)

    def gather(self, t: torch.Tensor, total: int | None = None) -> torch.Tensor:
        def go() -> torch.Tensor:
            if total is not None:
                counts = shard_sizes(total, self.world_size)
            else:
                n = torch.tensor([t.shape[0]], dtype=torch.int64, device=self.device)
                sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
                self._dist.all_gather(sizes, n, group=self.group)
                counts = [int(s) for s in sizes]
            top = max(counts)
            local = self._to(t)
            if local.shape[0] < top:
                pad = local.new_zeros((top - local.shape[0], *local.shape[1:]))
                local = torch.cat([local, pad])
            parts = [torch.empty_like(local) for _ in range(self.world_size)]
            self._dist.all_gather(parts, local.contiguous(), group=self.group)
            return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).to(t.device)

        return self._timed(go)

    def _reduce(self, values: Sequence[float], op: Any) -> list[float]:
        def go() -> list[float]:
            t = self._to(torch.tensor(list(values), dtype=torch.float64))
            self._dist.all_reduce(t, op=op, group=self.group)
            return t.cpu().tolist()

        return self._timed(go) if len(values) else []

    def sum(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, self._dist.ReduceOp.SUM)

    def max(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, self._dist.ReduceOp.MAX)

    def any(self, flag: bool) -> bool:
        return self.max([float(bool(flag))])[0] > 0

    def ancestors(
        self, log_w: torch.Tensor, generator: torch.Generator, method: str, shuffle: bool = False
    ) -> torch.Tensor:
        if self.rank == 0:
            idx = _ancestors(log_w, generator, method, shuffle)
        else:
            idx = torch.empty(log_w.shape[0], dtype=torch.int64, device=log_w.device)
        return self._timed(lambda: self._broadcast(idx))

    def take(self, tensors: Sequence[torch.Tensor], ancestors: torch.Tensor) -> list[torch.Tensor]:
        return self._timed(lambda: self._take(list(tensors), ancestors))

    def _take(self, tensors: list[torch.Tensor], ancestors: torch.Tensor) -> list[torch.Tensor]:
        dist, k = self._dist, self.world_size
        sizes = shard_sizes(ancestors.shape[0], k)
        ends = torch.tensor(sizes).cumsum(0)
        starts = [int(e) - s for e, s in zip(ends, sizes, strict=True)]
        anc = ancestors.cpu()
        owner = torch.searchsorted(ends, anc, right=True)  # rank holding each global ancestor
        me, lo = self.rank, starts[self.rank]
        mine = slice(lo, lo + sizes[me])
        # one row format for every tensor: float64 columns (exact for every float and int32 dtype)
        widths = [math.prod(t.shape[1:]) for t in tensors]

        def pack(rows: torch.Tensor) -> torch.Tensor:
            dev = tensors[0].device
            cols = [t[rows.to(dev)].reshape(rows.shape[0], -1).double() for t in tensors]
            return self._to(torch.cat(cols, 1))

        ops, recv = [], {}
        for q in range(k):
            if q == me:
                continue
            need = torch.unique(anc[mine][owner[mine] == q])  # rows of q this rank needs, sorted
            give = torch.unique(anc[starts[q] : starts[q] + sizes[q]])
            give = give[torch.searchsorted(ends, give, right=True) == me]  # rows of this rank q needs
            if len(give):
                ops.append(dist.P2POp(dist.isend, pack(give - lo), self._global(q), self.group))
            if len(need):
                buf = torch.empty(len(need), sum(widths), dtype=torch.float64, device=self.device)
                recv[q] = (need, buf)
                ops.append(dist.P2POp(dist.irecv, buf, self._global(q), self.group))
        if ops:
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        # the rows of this rank's new block, from the local rows and the received ones
        local = anc[mine]
        rows = torch.zeros(len(local), sum(widths), dtype=torch.float64)
        here = owner[mine] == me
        if bool(here.any()):
            rows[here] = pack(local[here] - lo).cpu()
        for q, (need, buf) in recv.items():
            at = owner[mine] == q
            rows[at] = buf.cpu()[torch.searchsorted(need, local[at])]
        out, col = [], 0
        for t, w in zip(tensors, widths, strict=True):
            block = rows[:, col : col + w].to(t.dtype).reshape(len(local), *t.shape[1:])
            out.append(block.to(t.device))
            col += w
        return out

    def together(self, check: Callable[[], None], what: str) -> None:
        err: BaseException | None = None
        try:
            check()
        except Exception as e:
            err = e
        if self.any(err is not None):
            if err is not None:
                raise err
            raise NumericalError(f"rank {self.rank}: another rank stopped the run {what}; its error says why")


def communicator(distributed: Any) -> Communicator:
    """The communicator an engine's ``distributed`` argument asks for: ``False``/``None`` a
    :class:`LocalCommunicator`; ``True`` the default process group; a
    ``torch.distributed.ProcessGroup`` that group; a :class:`Communicator` itself."""
    if distributed is None or distributed is False:
        return LocalCommunicator()
    if isinstance(distributed, Communicator):
        return distributed
    if distributed is True:
        return ProcessGroupCommunicator()
    import torch.distributed as dist

    if isinstance(distributed, dist.ProcessGroup):
        return ProcessGroupCommunicator(distributed)
    raise DistributedError(
        "distributed must be True, False, a torch.distributed ProcessGroup or a Communicator, "
        f"got {distributed!r}"
    )


# Embarrassingly parallel engines -------------------------------------------------------------
def gather_result(res: Result, comm: Communicator, *, num_chains: int = 1) -> Result:
    """Rank 0: the shards' samples and per-particle stats concatenated in rank order, batched
    calls summed, NFE per particle and wall time the slowest rank's; other ranks: their own ``res``.
    Per-level diagnostics other than counts are rank 0's."""
    from .results import Result

    if not comm.distributed:
        return res
    samples = {k: comm.gather(v) for k, v in res.samples.items()}
    particle = {k: comm.gather(v) for k, v in res.particle_stats.items()}
    nfe = res.stats.get("nfe", {})
    counts = comm.max([*nfe.values(), res.stats.get("nfe_total", 0)]) + comm.sum([res.stats.get("calls", 0)])
    wall = comm.max([res.stats.get("wall_time", 0.0)])[0]
    if comm.rank != 0:
        return res
    stats = dict(res.stats)
    stats["nfe"] = {k: int(v) for k, v in zip(nfe, counts, strict=False)}
    stats["nfe_total"], stats["calls"] = int(counts[-2]), int(counts[-1])
    stats.update(wall_time=wall, world_size=comm.world_size, comm_time=comm.comm_time)
    return Result(samples, stats, particle, num_chains=num_chains, engine=res.engine)


def run(
    engine: Any,
    scene: Any,
    num_samples: int = 1000,
    *,
    seed: int = 0,
    num_chains: int = 1,
    distributed: Any = True,
) -> Result:
    """Run ``engine`` on ``num_samples`` particles shared among the ranks of a process group.

    Engines that couple their particles (annealed MCMC's weights, resampling and adaptation)
    run their own distributed loop (``engine.run(..., distributed=...)``); the others sample
    each rank's shard independently from the rank's stream (:func:`rank_seed`) and rank 0
    gathers them (:func:`gather_result`).  Rank 0 returns the whole population, the other
    ranks their shard.
    """
    comm = communicator(distributed)
    if getattr(engine, "distributed_native", False):
        return engine.run(scene, num_samples, seed=seed, num_chains=num_chains, distributed=comm)
    from .errors import SceneError
    from .validation import check_count, check_seed

    num_samples = check_count("num_samples", num_samples, error=SceneError)
    if num_samples < comm.world_size:
        raise SceneError(f"num_samples={num_samples} is fewer than the {comm.world_size} ranks")
    base = comm.seed(check_seed(seed))
    _, n = comm.shard(num_samples)
    res = engine.run(scene, n, seed=rank_seed(base, comm.rank))
    res.stats["seed"] = base
    return gather_result(res, comm, num_chains=num_chains)


def _fields(state: Any) -> list[str]:
    """The per-particle tensor fields of a dataclass state (for exchanging particles)."""
    return [f.name for f in dataclasses.fields(state) if isinstance(getattr(state, f.name), torch.Tensor)]


def take_state(state: Any, ancestors: torch.Tensor, comm: Communicator) -> Any:
    """``state.take(ancestors)`` over the whole population: a plain ``take`` in one process,
    an exchange of the dataclass's tensor fields between ranks otherwise."""
    if not comm.distributed:
        return state.take(ancestors)
    names = _fields(state)
    moved = comm.take([getattr(state, k) for k in names], ancestors)
    return dataclasses.replace(state, **dict(zip(names, moved, strict=True)))

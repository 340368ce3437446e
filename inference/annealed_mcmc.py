r"""Annealed MCMC on the composed target of a scene (Du et al. 2023; Sjöberg et al. 2023).

Reverse diffusion on summed scores samples the product of the *noised* factors
at every level, which is not the noised product.  This engine instead runs, at
each noise level ``t_i`` of a descending grid, ``k`` transitions of an MCMC
kernel whose target is the composed density

.. math:: \log \pi_t(X) = \sum_i w_i \log p_i^t(f_i(X)) + \text{const},
          \qquad \nabla_X \log \pi_t = \sum_i w_i J_{f_i}^\top s_i(f_i(X), t),

optionally followed by a reverse-diffusion step to ``t_{i+1}`` (the default, as in
Du et al.).  The last step goes to ``t = 0`` and returns the denoised estimate.

The kernel is a name -- ``ula``, ``mala`` (:mod:`~probcomp.inference.kernels.langevin`),
``uhmc``, ``hmc`` (:mod:`~probcomp.inference.kernels.hamiltonian`) -- or any
:class:`~probcomp.inference.kernels.Kernel` object, which then runs here with adaptation,
resampling and stats.  The Metropolis tests of the adjusted kernels
(:mod:`~probcomp.inference.kernels.metropolis`; per particle, never for the batch at once)
are ``"energy"`` (exact, from the factors' energies), ``"score"`` (the score's line
integral by the trapezoid rule on ``trapezoid_points`` points, Sjöberg et al. 2023) and
``"effective"`` (the same along the leapfrog path, at no extra cost, but degenerate: the
engine warns when a run would use a test that ignores the energy change).

Step sizes follow the noise level, ``eps(t) = c * sigma_t^2``, and ``c`` adapts
toward ``target_accept`` during the run by a Robbins-Monro update of ``log c``
after every transition of an adjusted kernel; the step size used at each level is
recorded.

With ``resample``, particles carry sequential-Monte-Carlo
weights across levels (:mod:`probcomp.inference.smc`): the reverse step is the forward kernel ``F`` and the
forward noising ``B(x_t | x_s) = N(sqrt(abar_t / abar_s) x_s, 1 - abar_t / abar_s)``
the backward kernel (Del Moral et al. 2006), so

.. math:: \log w \mathrel{+}= \log\pi_s(x_s) + \log B(x_t | x_s) - \log\pi_t(x_t) - \log F(x_s | x_t),

and the adjusted MCMC moves, which leave ``pi_s`` invariant, leave the weights
alone (with ``reverse_step=False`` the increment is the annealed-importance ratio
``log pi_s(x) - log pi_t(x)``).  Energies give these ratios exactly.  Score-only
scenes get them from scores alone, in the spirit of the Feynman-Kac correctors of
Skreta et al. (2025): the change of ``log pi`` in noise level at fixed ``x`` follows
from the Fokker-Planck equation (:func:`probcomp.inference.smc.log_snr_derivative`, a
trapezoid in log-SNR between levels), and the change in space from the score's
line integral.  The log-SNR trapezoid needs small steps in log-SNR; on the default grid
the last interval (to ``t_min = 1e-3``) is the widest, about 3 units at 100 levels, so
score-only weights there are the least accurate (``t_min = 0`` or more levels narrow
it, at the cost of the mode-width bias of :data:`probcomp.schedules.DEFAULT_T_MIN`).
When the effective sample size falls below ``ess_threshold * N`` the
particles are resampled (systematic resampling) and the weights reset.  This is
what moves mass between distant modes, which local MCMC at low noise cannot.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from probcomp.compiled import CompiledScene
from probcomp.distributed import communicator, rank_seed
from probcomp.errors import FactorError, SceneError, ScheduleError
from probcomp.results import Result
from probcomp.scene import Scene
from probcomp.validation import check_count, check_positive, check_seed

from . import compiled_loop, smc
from .annealed_transitions import LevelTransitions, check_weights
from .base import DiffusionEngine, DiffusionOptions, LevelRecords, register
from .kernels import (
    ADJUSTED,
    HMC,
    KERNELS,
    MALA,
    TESTS,
    FlatTarget,
    Kernel,
    KernelState,
    make_kernel,
    make_test,
)
from .steps import Packer

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "AUTO_WEIGHT_DIM",
    "ENERGY_SETTINGS",
    "KERNELS",
    "RECOMMENDED_GRID",
    "SCORE_ONLY_SETTINGS",
    "AnnealedMCMC",
]

#: the defaults' level placement: uniform in log-SNR (benchmarks/frontier.py)
RECOMMENDED_GRID: dict[str, Any] = {"spacing": "log-snr"}
#: the settings measured best where every factor has an energy (benchmarks/frontier.py, three
#: exact products): two transitions of two leapfrog steps on 45 levels from t = 0.6 to 3e-4
ENERGY_SETTINGS: dict[str, Any] = {
    "steps_per_level": 2,
    "levels": 45,
    "leapfrog_steps": 2,
    "t_max": 0.6,
    "t_min": 3e-4,
}
_DEFAULT_STEP = 0.05  # c in eps(t) = c sigma_t^2; adapted by the adjusted kernels
#: under ``resample="auto"``, score-only terms of at most this many coordinates get annealed-
#: importance weights: a weight increment costs ``2 d + 1`` score calls per such term and level
#: (the finite-difference divergence of :func:`~probcomp.inference.smc.log_snr_derivative`)
AUTO_WEIGHT_DIM = 16
#: the settings measured best on learned score-only factors (benchmarks/frontier.py, the zoo's
#: ring8 x bar): one transition of three leapfrog steps on 40 levels from t = 1 to 1e-3; learned
#: scores are not exact gradients, and more transitions at low noise follow the model's error
SCORE_ONLY_SETTINGS: dict[str, Any] = {
    "steps_per_level": 1,
    "levels": 40,
    "leapfrog_steps": 3,
    "t_max": 1.0,
    "t_min": 1e-3,
}
_RESAMPLE = (None, "ess", "always", "auto")
_WEIGHTS = ("auto", "energy", "score")
_DEFAULT_ACCEPT: dict[str, float | None] = {"mala": MALA.target_accept, "hmc": HMC.target_accept}


class AnnealedMCMC(LevelTransitions, DiffusionEngine):
    """Annealed ULA / MALA / underdamped-Langevin / HMC (or any kernel) over the controls of a scene.

    The defaults are the configurations the cost-accuracy frontier (``benchmarks/frontier.py``)
    measured best, chosen at run time by the scene's factors: generalised HMC with
    annealed-importance weights, resampled when the ESS falls below half, on levels uniform in
    log-SNR; where every factor has an energy given by a formula (analytic factors, explicit
    densities), :data:`ENERGY_SETTINGS` (two transitions of two leapfrog steps on 45 levels
    from ``t = 0.6`` to ``3e-4``, about 225 gradient evaluations per factor and particle,
    Metropolis test and weights exact), otherwise
    :data:`SCORE_ONLY_SETTINGS` (one transition of three leapfrog steps on 40 levels from
    ``t = 1`` to ``1e-3``; test and weights from scores).  A setting passed explicitly is kept
    either way.  The weights of a score-only factor cost ``2 d + 1`` more calls per level, so
    ``resample="auto"`` drops them for factors of more than :data:`AUTO_WEIGHT_DIM` coordinates
    (images, latents).  Learned energies are weighted by their scores (``weights="auto"``), and
    such scenes get the score-only settings.

    Args:
        kernel: ``"ula"``, ``"mala"``, ``"uhmc"``, ``"hmc"`` or a
            :class:`~probcomp.inference.kernels.Kernel` object (which brings its own test).
        steps_per_level: MCMC transitions at every noise level (default: by the factors).
        levels: number of noise levels (reverse steps) from ``t_max`` to 0 (default: by the
            factors).
        step_size: ``c`` in ``eps(t) = c sigma_t^2``, or a callable ``t -> eps``.
        leapfrog_steps, damping, mass: of ``uhmc`` / ``hmc`` (``leapfrog_steps``: by the factors).
        metropolis: ``"energy"``, ``"score"``, ``"effective"`` (HMC) or ``None`` for the
            default: energies when every factor has one, else the score line integral.
        trapezoid_points: points of the trapezoid rule of ``"score"`` tests (>= 2).
        adapt: adapt the step size toward ``target_accept`` (adjusted kernels).
        target_accept: defaults to the kernel's (MALA 0.57, HMC 0.65).
        reverse_step: interleave a DDPM step between levels (Du et al. 2023; else, the
            default, the particles are carried to the next level unchanged).
        resample: ``None``, ``"ess"`` (when ESS < ``ess_threshold`` N), ``"always"`` or
            ``"auto"`` (the default): ``"ess"`` where every factor has an energy or is at most
            :data:`AUTO_WEIGHT_DIM`-dimensional, else ``None`` (weights from scores alone cost
            ``2 d + 1`` score calls per factor and level); ``stats["resample"]`` is the choice.
        final_resample: with ``resample``, resample once more after the last level so the
            returned particles are equally weighted (``stats["ess_final"]`` is the ESS
            before it).  With ``False`` the particles keep their weights, in
            ``res.particle_stats["log_weight"]`` (weight the samples by them).
        resampling: ``"systematic"`` (default), ``"stratified"`` or ``"multinomial"``.
        weights: where the weights take a factor's change between levels from: ``"energy"``
            (its energy, where it has one), ``"score"`` (its scores alone, the Fokker-Planck
            identity) or ``"auto"`` (the default: energies of factors given by formulas, scores
            of :attr:`~probcomp.factors.ScoreFactor.learned` ones, whose trained energies are not
            reliable between distant modes: on the zoo's ``ring8-energy`` x ``bar-energy`` the
            largest mode-weight error (p90) is 0.27 with their energies and 0.07 from their scores,
            ``benchmarks/frontier.py``).  Explicit densities and priors always use theirs.
        compile: run each level's transitions and the target compiled by ``torch.compile``
            (:mod:`~probcomp.inference.compiled_loop`: ``True``, ``"auto"`` (no warning when it
            falls back to eager) or a ``torch.compile`` mode; CUDA graphs on CUDA by default).
        t_min: the last MCMC level, then one denoising step to 0 (default: by the factors;
            with 0 the levels are uniform on ``[0, t_max]``: see
            :data:`probcomp.schedules.DEFAULT_T_MIN`).
        t_max, spacing: the first level (default: by the factors) and the placement of the
            levels (default ``"log-snr"``; :func:`probcomp.schedules.time_grid`).
        schedule, group, dtype, device, progress: as in
            :class:`~probcomp.inference.ReverseDiffusion`.
        callback: called at every level after its transitions with a
            :class:`~probcomp.inference.LevelInfo` holding ``i, t, x`` and ``step_size``.
    """

    name = "annealed-mcmc"
    label = "AnnealedMCMC"
    distributed_native = True

    def __init__(
        self,
        kernel: str | Kernel = "hmc",
        steps_per_level: int | None = None,
        levels: int | None = None,
        *,
        step_size: float | Callable[[float], float] | None = None,
        leapfrog_steps: int | None = None,
        damping: float = 0.5,
        mass: float = 1.0,
        metropolis: str | None = None,
        trapezoid_points: int = 3,
        adapt: bool = True,
        target_accept: float | None = None,
        adapt_rate: float = 0.05,
        reverse_step: bool = False,
        resample: str | None = "auto",
        ess_threshold: float = 0.5,
        final_resample: bool = True,
        resampling: str = "systematic",
        weights: str = "auto",
        compile: bool | str = False,
        **options: Unpack[DiffusionOptions],
    ) -> None:
        given = dict(locals())  # the arguments as passed, to build the score-only variant
        for key in ("self", "__class__", "options"):
            given.pop(key, None)
        given.update(options)
        self._by_factors = frozenset(k for k in ENERGY_SETTINGS if given.get(k) is None)
        self._score_only: AnnealedMCMC | None = None
        self._given = given
        self.settings = "energy" if self._by_factors else "given"
        if steps_per_level is None:
            steps_per_level = int(ENERGY_SETTINGS["steps_per_level"])
        if levels is None:
            levels = int(ENERGY_SETTINGS["levels"])
        if leapfrog_steps is None:
            leapfrog_steps = int(ENERGY_SETTINGS["leapfrog_steps"])
        for key in ("t_max", "t_min"):
            options.setdefault(key, ENERGY_SETTINGS[key])  # type: ignore[misc]
        user = kernel if isinstance(kernel, Kernel) else None
        if user is None and kernel not in KERNELS:
            raise ScheduleError(f"kernel must be one of {KERNELS} or a Kernel object, got {kernel!r}")
        if user is not None and metropolis is not None:
            raise ScheduleError(f"kernel {user.name!r} is an object with its own test; leave metropolis=None")
        steps_per_level = check_count("steps_per_level", steps_per_level, 0)
        leapfrog_steps = check_count("leapfrog_steps", leapfrog_steps)
        mass = check_positive("mass", mass)
        if not 0.0 < check_positive("damping", damping) <= 1.0:
            raise ScheduleError(f"need 0 < damping <= 1, got {damping}")
        if metropolis not in (None, *TESTS):
            raise ScheduleError(f"metropolis must be 'energy', 'score' or 'effective', got {metropolis!r}")
        adjusted = user.adjusted if user is not None else kernel in ADJUSTED
        if metropolis is not None and not adjusted:
            raise ScheduleError(f"kernel {kernel!r} has no Metropolis test; use 'mala' or 'hmc'")
        if metropolis == "effective" and kernel != "hmc":
            raise ScheduleError("the 'effective' test reuses leapfrog points: it needs kernel='hmc'")
        trapezoid_points = check_count("trapezoid_points", trapezoid_points, 2)
        if resample not in _RESAMPLE:
            raise ScheduleError(f"resample must be None, 'ess', 'always' or 'auto', got {resample!r}")
        if weights not in _WEIGHTS:
            raise ScheduleError(f"weights must be one of {_WEIGHTS}, got {weights!r}")
        if resampling not in smc.RESAMPLERS:
            raise ScheduleError(f"resampling must be one of {sorted(smc.RESAMPLERS)}, got {resampling!r}")
        if step_size is not None and not callable(step_size):
            step_size = check_positive("step_size", step_size)
        if target_accept is not None and not 0.0 < check_positive("target_accept", target_accept) < 1.0:
            raise ScheduleError(f"target_accept must lie in (0, 1), got {target_accept}")
        adapt_rate = check_positive("adapt_rate", adapt_rate, allow_zero=True)
        if not 0.0 <= check_positive("ess_threshold", ess_threshold, allow_zero=True) <= 1.0:
            raise ScheduleError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
        grid = dict(RECOMMENDED_GRID)
        if options.get("t_min") == 0.0:  # a grid uniform to t = 0 (log-SNR spacing needs t_min > 0)
            grid["spacing"] = "uniform"
        for key, value in grid.items():
            options.setdefault(key, value)  # type: ignore[misc]
        super().__init__(levels, **options)
        self._user_kernel = user
        self.kernel: str = user.name if user is not None else str(kernel)
        self.k = int(steps_per_level)
        self.final_resample = bool(final_resample)
        self.step_size = _DEFAULT_STEP if step_size is None else step_size
        self.leapfrog_steps, self.damping, self.mass = int(leapfrog_steps), float(damping), float(mass)
        self.metropolis, self.trapezoid_points = metropolis, int(trapezoid_points)
        self.adapt = bool(adapt) and adjusted and not callable(self.step_size)
        default_accept = user.target_accept if user is not None else _DEFAULT_ACCEPT.get(str(kernel))
        if self.adapt and target_accept is None and default_accept is None:
            raise ScheduleError(
                f"kernel {self.kernel!r} has a Metropolis test but no target_accept to adapt toward: set "
                "its class attribute target_accept, pass target_accept=..., or adapt=False"
            )
        self.target_accept = float(target_accept if target_accept is not None else default_accept or 0.0)
        self.adapt_rate = float(adapt_rate)
        self.reverse_step, self.resample, self.ess_threshold = (
            bool(reverse_step),
            resample,
            float(ess_threshold),
        )
        self.resampling, self.weights = resampling, weights
        self.torch_compile = compiled_loop.check_compile(compile)
        self._compiled_loops: dict[Any, Any] = {}  # compiled_loop.fast_path's graphs, per compiled scene

    # ------------------------------------------------------------------------------
    def for_factors(self, compiled: CompiledScene) -> AnnealedMCMC:
        """The engine a run on ``compiled`` uses: this one, or, where the weights take some
        factor's change from its scores (a factor with only a score, or a :attr:`learned`
        energy under ``weights="auto"``), a copy with :data:`SCORE_ONLY_SETTINGS` for the
        settings left to their defaults (``steps_per_level``, ``levels``, ``leapfrog_steps``,
        ``t_max``, ``t_min``; ``stats["settings"]`` says which: ``"energy"``, ``"score-only"``
        or ``"given"``)."""
        if not self._by_factors or self.weighs_all_by_energy(compiled):
            return self
        if self._score_only is None:
            chosen = {k: SCORE_ONLY_SETTINGS[k] for k in self._by_factors}
            self._score_only = AnnealedMCMC(**{**self._given, **chosen})
            self._score_only.settings = "score-only"
        return self._score_only

    def resample_for(self, compiled: CompiledScene) -> str | None:
        """The resampling rule a run on ``compiled`` uses: ``resample``, with ``"auto"`` resolved
        (``"ess"`` unless a score-only factor has more than :data:`AUTO_WEIGHT_DIM` coordinates)."""
        if self.resample != "auto":
            return self.resample
        wide = [
            tm.factor.name
            for tm in compiled.terms
            if not tm.factor.has_energy and math.prod(tm.factor.event_shape) > AUTO_WEIGHT_DIM
        ]
        return None if wide else "ess"

    def _test(self, compiled: CompiledScene) -> str | None:
        """The Metropolis test this run uses (``None`` for unadjusted kernels)."""
        if self.kernel not in ADJUSTED:
            return None
        test = self.metropolis or ("energy" if compiled.has_energy else "score")
        if test == "energy" and not compiled.has_energy:
            self._lacking_energy(compiled, "metropolis='energy'")
        degenerate = test == "effective" or (
            test == "score"
            and self.trapezoid_points == 2
            and (self.kernel == "mala" or self.leapfrog_steps == 1)
        )
        if degenerate:
            warnings.warn(
                f"metropolis={test!r} with these settings reduces algebraically to "
                "log a = -(eps/4)(|g(x')|^2 - |g(x)|^2), which ignores the energy change; use "
                "energies or metropolis='score' with trapezoid_points >= 3 (AnnealedMCMC docs)",
                UserWarning,
                stacklevel=4,
            )
        return test

    @staticmethod
    def _lacking_energy(compiled: CompiledScene, what: str) -> None:
        lacking = sorted({t.factor.name for t in compiled.terms if not t.factor.has_energy})
        raise FactorError(
            f"{what} needs an energy for every factor; {lacking} have only scores "
            "(use metropolis='score' or 'effective')"
        )

    def _kernel(self, compiled: CompiledScene) -> tuple[Kernel, str | None]:
        """The kernel object of this run and the name of its test."""
        user = self._user_kernel
        if user is not None:
            if user.needs_energy and not compiled.has_energy:
                self._lacking_energy(compiled, f"kernel {user.name!r} with {user.metropolis!r}")
            return user, user.metropolis.name if user.metropolis is not None else None
        test = self._test(compiled)
        mh = make_test(test, self.trapezoid_points) if test is not None else None
        kernel = make_kernel(
            self.kernel, mh, leapfrog_steps=self.leapfrog_steps, damping=self.damping, mass=self.mass
        )
        return kernel, test

    def _eps(self, t: float, log_c: float, sigma: float) -> float:
        if not callable(self.step_size):
            return math.exp(log_c) * sigma**2
        eps = self.step_size(t)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
            raise ScheduleError(f"step_size({t:.4g}) must return a finite number > 0, got {eps!r}")
        return float(eps)

    def run(
        self,
        scene: Scene | CompiledScene,
        num_samples: int = 1000,
        *,
        seed: Any = 0,
        num_chains: int = 1,
        distributed: Any = False,
    ) -> Result:
        """Draw ``num_samples`` particles; same ``seed``, same samples.

        With ``distributed`` (``True`` for the default ``torch.distributed`` process group,
        a ``ProcessGroup``, or a :class:`~probcomp.distributed.Communicator`) each of the
        ``K`` ranks moves its block of about ``num_samples / K`` particles on the engine's
        device, while the weights, the effective sample size, resampling (one systematic
        resampling of the all-gathered log-weights, Kitagawa 1996), the acceptance rate that
        adapts the step size and the counters are those of the whole population
        (:mod:`probcomp.distributed`).  Rank 0 returns every particle, the other ranks their
        block; with ``K = 1`` the result is bit-identical to a plain run.
        """
        comm = communicator(distributed)
        compiled = self.prepare(scene, num_samples)
        engine = self.for_factors(compiled)
        if engine is not self:
            return engine.run(
                compiled, num_samples, seed=seed, num_chains=num_chains, distributed=distributed
            )
        if num_samples < comm.world_size:
            raise SceneError(f"num_samples={num_samples} is fewer than the {comm.world_size} ranks")
        kernel, test = self._kernel(compiled)
        resample = self.resample_for(compiled)
        by_energy = bool(resample) and self.weighs_all_by_energy(compiled)
        energy = kernel.needs_energy or by_energy
        compiled.reset_counters()
        packer = Packer(compiled.shapes)
        target = FlatTarget(compiled, packer, energy)
        fast, level_target = None, target
        if self.torch_compile and not comm.distributed:
            fast, level_target = compiled_loop.fast_path(
                self._compiled_loops, self.torch_compile, kernel, target, steps=self.k, adapt=self.adapt,
                adapt_rate=self.adapt_rate, target_accept=self.target_accept, device=self.device,
            )  # fmt: skip
        if comm.distributed:  # every rank agrees on rank 0's seed, then draws its own stream
            seed = comm.seed(check_seed(seed))
            gen, _ = self.generator(rank_seed(seed, comm.rank))
        else:
            gen, seed = self.generator(seed)
        n_all = num_samples
        _, n = comm.shard(n_all)
        with torch.no_grad():  # (as the levels: the compiled target keeps one graph)
            x = packer.pack(compiled.noise(n, gen, dtype=self.dtype, device=self.device))
            # (level_target: the compiled target on the fast path, so every run evaluates the same way)
            state = kernel.init(x, level_target, float(self.ts[0]), gen)
            log_c = math.log(self.step_size) if not callable(self.step_size) else 0.0
            log_w = torch.zeros(n, dtype=torch.float64, device=self.device)
            if resample:  # start from a Gaussian matched to pi_{t_0}, weighted to it
                t0 = float(self.ts[0])
                precision = smc.matched_precision(comm.gather(x, n_all), comm.gather(state.grad, n_all))
                x = x / precision.sqrt().to(x.dtype)
                state = state.moved(x, *level_target(x, t0))
                log_w += smc.initial_log_weight(
                    lambda v: level_target(v, t0)[0],
                    state.x,
                    state.grad,
                    state.log_p if by_energy else None,
                    self.trapezoid_points,
                    precision,
                )
                where = f"at the first level t={t0:.4g}"

                def find() -> None:  # names a factor that is not finite at the first draws
                    compiled.target(packer.unpack(state.x), t0, energy=target.energy, check=True)

                comm.together(lambda: check_weights(log_w, where, find), f"in the weights {where}")
        acc_level = torch.full((self.num_levels, n), math.nan, dtype=self.dtype)  # (NaN: no test)
        rec = LevelRecords("step_size", "accept", "ess", "nfe_per_level", "resampled")
        start = time.perf_counter()
        with torch.no_grad():
            for lv in self.levels(f"annealed {self.kernel}"):
                i, t = lv.i, lv.t
                nfe0 = compiled.nfe_total
                x_start, mean_acc, top = state.x, None, None
                out = fast.level(state, t, self._eps(t, log_c, lv.sigma), log_c, gen) if fast else None
                if out is not None:
                    state, mean_acc, log_c, top = out
                else:
                    accs = []
                    for _ in range(self.k):
                        state, info = kernel.step(state, target, t, self._eps(t, log_c, lv.sigma), gen)
                        if info.accept_prob is not None:
                            accs.append(info.accept_prob)
                            if self.adapt:  # the acceptance of the whole population
                                accept = float(comm.gather(info.accept_prob, n_all).mean())
                                log_c += self.adapt_rate * (accept - self.target_accept) * 10
                    mean_acc = torch.stack(accs).mean(0) if accs else None

                def check(
                    state: KernelState = state,
                    x_start: torch.Tensor = x_start,
                    t: float = t,
                    lv: Any = lv,
                    top: torch.Tensor | None = top,
                ) -> None:
                    # one sync: the largest |x| and |score| (NaN if any is NaN; the compiled
                    # transitions compute them)
                    if top is None:
                        top = torch.stack([state.x.abs().amax(), state.grad.abs().amax()])
                    top_x, top_g = top.tolist()
                    if not (math.isfinite(top_x) and math.isfinite(top_g)):
                        compiled.diagnose(packer.unpack(x_start), t, f"in the MCMC moves at t={t:.4g}")
                    if self.max_abs is not None and top_x > self.max_abs:
                        self.guard(compiled, packer.unpack(state.x), lv)

                comm.together(check, f"at level {i} (t={t:.4g})")
                rec.add(step_size=self._eps(t, log_c, lv.sigma))
                if mean_acc is not None:
                    acc_level[i] = mean_acc.to(acc_level.dtype).cpu()
                    rec.add(accept=float(comm.gather(mean_acc, n_all).mean()))
                else:
                    rec.add(accept=math.nan)
                if self.callback is not None:  # the state at level t, after its MCMC moves (this rank's)
                    self.notify(i, t, packer.unpack(state.x), step_size=rec["step_size"][-1])
                state, ess, resampled = self._next_level(
                    compiled, packer, level_target, state, log_w, lv, gen, comm, n_all, resample
                )
                rec.add(ess=ess / n_all, resampled=float(resampled), nfe_per_level=compiled.nfe_total - nfe0)
        x = state.x
        log_w_all = comm.gather(log_w, n_all) if resample else log_w.new_zeros(n_all)
        ess_final = smc.ess(log_w_all) / n_all
        if resample and self.final_resample and bool((log_w_all != log_w_all[0]).any()):
            x = comm.take([x], comm.ancestors(log_w_all, gen, self.resampling, shuffle=True))[0]
            log_w.zero_()
            log_w_all = log_w_all.zero_()
        stats = {
            **self.base_stats(compiled, time.perf_counter() - start, seed),
            "kernel": self.kernel,
            "metropolis": test,
            "steps_per_level": self.k,
            "levels": self.num_levels,
            "resample": resample,
            "settings": self.settings,
            "weights": self.weights,
            **({"ess_final": ess_final} if resample else {}),
            **rec.tensors(),
        }
        acc_particles = acc_level.T.contiguous()
        if comm.distributed:
            stats.update(self._global_counts(comm, stats))
            x_all, acc_all = comm.gather(x, n_all), comm.gather(acc_particles, n_all)
            if comm.rank == 0:
                x, acc_particles = x_all, acc_all
            else:  # this rank's block, with the population's stats
                log_w_all, num_chains = log_w, 1
        stats["accept_mean"] = float(torch.nanmean(stats["accept"])) if test else float("nan")
        return Result(
            packer.unpack(x),
            stats,
            {
                **({"accept": acc_particles} if test else {}),
                **({"log_weight": log_w_all.cpu()} if resample else {}),
            },
            num_chains=num_chains,
            engine=f"{self.name}/{self.kernel}",
        )


def _factory(kernel: str) -> Callable[..., AnnealedMCMC]:
    return lambda steps, steps_per_level, progress: AnnealedMCMC(
        kernel, steps_per_level, steps, progress=progress
    )


for _name, _help in zip(
    KERNELS, ("Langevin", "MALA", "underdamped Langevin", "generalised HMC"), strict=True
):
    register(f"annealed-{_name}", _factory(_name), f"annealed {_help}")

r"""The compiled fast path of :class:`~probcomp.inference.AnnealedMCMC` (``compile=...``).

On cheap factors (analytic mixtures, small networks) an eager annealed sampler spends most of
its time in Python and in dispatching small tensor operations, not in arithmetic.  This module
compiles, with :func:`torch.compile` (``fullgraph=True``: one graph or none), the arithmetic of
a level's MCMC moves:

* **the k transitions of a level** (:class:`CompiledLevels`): every kernel step -- the Langevin
  proposal or the momentum refresh and the leapfrog steps, each evaluation of the composed
  target, the Metropolis test and the selection -- and the Robbins-Monro adaptation of the step
  size between them, as one graph per level for small states of formula factors, else one
  graph per transition (:func:`transitions_per_call`; inductor fuses the elementwise work of a
  trajectory; on CUDA, mode ``"reduce-overhead"`` replays it as a CUDA graph);
* **the target** (:class:`CompiledTarget`): the composed score and log-density of the scene on
  flat particles, used between levels by the SMC weight increments, and with the DDPM step
  between levels (``reverse_step=True``) in one graph with it.

What stays eager, and why:

* **the random numbers.**  ``torch.Generator`` draws cannot be traced reproducibly, so a level
  first draws every transition's standard normals ``z`` and uniforms ``u`` eagerly, from the
  run's generator in the order the eager kernels draw them (:meth:`Kernel.draw
  <probcomp.inference.kernels.Kernel.draw>`), and passes them in as tensors; the compiled
  :meth:`Kernel.step_with <probcomp.inference.kernels.Kernel.step_with>` then computes what
  :meth:`~probcomp.inference.kernels.Kernel.step` does.  Same seed, same draws: samples agree
  with the eager path to float tolerance (inductor may reorder a reduction or fuse a
  multiply-add), with the same accept / reject decisions.
* **the counters and the checks.**  The target is evaluated without the compiled scene's
  side effects (its NFE counters and first-call shape checks: one uncounted eager evaluation
  runs the checks before the first compiled one); the counts of each compiled call are added
  afterwards, so ``nfe`` and ``calls`` are the eager path's.  The per-level finiteness checks
  and diagnostics, resampling and distributed collectives stay in the engine.

Only the built-in kernels (which implement ``step_with``) on scenes whose observations are all
identities (no autograd pull-back inside the graph) are compiled; otherwise, or if tracing or
compiling fails (a factor that is not traceable), :class:`CompiledLevels` warns once (with
``compile=True`` or a mode name; quietly with ``"auto"``) and the engine runs eagerly: the eager
path is both the fallback and the reference.  A failed level restores the generator's state
before falling back, so a fallback run gives exactly the eager run's samples.
"""

from __future__ import annotations

import time
import types
import warnings
from collections.abc import Callable
from typing import Any, cast

import torch

from probcomp.compiled import CompiledScene
from probcomp.errors import ScheduleError, first_line

from .kernels import HMC, MALA, UHMC, ULA, Kernel, KernelState, ScoreLineTest
from .kernels.base import FlatTarget
from .steps import Packer, ReverseStep, ddim_step

__all__ = [
    "COMPILE_MODES",
    "CompiledLevels",
    "CompiledTarget",
    "check_compile",
    "compile_mode",
    "fast_path",
    "transitions_per_call",
]

#: ``torch.compile`` modes accepted by name as the ``compile`` option
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_BUILT_IN = (ULA, MALA, UHMC, HMC)
#: transitions per compiled call: ``None`` compiles a level's ``k`` transitions as one graph, an
#: integer ``m`` (dividing ``k``) runs them as ``k / m`` calls of a graph of ``m``; ``"auto"``:
#: :func:`transitions_per_call`, by the state's size.
TRANSITIONS_PER_CALL: int | str | None = "auto"

Flat = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def check_compile(value: Any) -> bool | str:
    """The validated ``compile`` option: ``False``, ``True``, ``"auto"`` or one of :data:`COMPILE_MODES`."""
    if value is None or value is False:
        return False
    if value is True or (isinstance(value, str) and value in ("auto", *COMPILE_MODES)):
        return value
    raise ScheduleError(f"compile must be False, True, 'auto' or one of {COMPILE_MODES}, got {value!r}")


def compile_mode(option: bool | str, device: torch.device | str) -> str:
    """The ``torch.compile`` mode of an option: a named mode as given, else CUDA graphs
    (``"reduce-overhead"``) on a CUDA device and ``"default"`` elsewhere."""
    if isinstance(option, str) and option in COMPILE_MODES:
        return option
    return "reduce-overhead" if torch.device(device).type == "cuda" else "default"


class _Unsupported(Exception):
    """A scene or kernel the compiled path does not handle (the engine runs eagerly)."""


def _own_code(fn: Callable[..., Any], tag: str) -> Callable[..., Any]:
    """``fn`` with a code object of its own, so that each compiled loop has its own dynamo
    cache (instances never evict or recompile each other's graphs)."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    out = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    return out


def flat_target(compiled: CompiledScene, packer: Packer, energy: bool) -> Flat:
    """``(x, t) -> (grad log pi_t, log pi_t or None)`` on flat particles with ``t`` a 0-d float64
    tensor: the arithmetic of :meth:`CompiledScene.target` without its counters and checks
    (what :func:`torch.compile` traces).  Identity observations only (a :class:`_Unsupported`
    otherwise): a pull-back by autograd does not trace into one graph."""
    lifted = [term.observable for term in compiled.terms if not term.fn.is_identity]
    if lifted:
        raise _Unsupported(
            f"observables {sorted(set(lifted))} have observation functions (autograd pull-backs)"
        )
    groups = compiled.groups

    def target(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        xs = packer.unpack(x)
        n = x.shape[0]
        grads: dict[str, torch.Tensor | None] = dict.fromkeys(xs)
        log_p = torch.zeros(n, dtype=x.dtype, device=x.device) if energy else None
        for group in groups:
            factor = group[0].factor
            ys = [xs[term.parents[0]] for term in group]
            y = torch.cat(ys) if len(ys) > 1 else ys[0]
            tf = compiled.factor_time(factor, t)
            if any(term.factor is not factor for term in group):
                s, e = CompiledScene._evaluate_copies(group, y, tf, energy)
            elif energy:
                s, e = factor.score_and_energy(y, tf)
            else:
                s, e = factor.score(y, tf), None
            for k, term in enumerate(group):
                sk = s[k * n : (k + 1) * n] if len(group) > 1 else s
                ws = sk if term.weight == 1.0 else term.weight * sk
                p = term.parents[0]
                gp = grads[p]
                grads[p] = ws if gp is None else gp + ws
                if log_p is not None:
                    assert e is not None  # the eager check before the first call found the energies
                    ek = e[k * n : (k + 1) * n] if len(group) > 1 else e
                    log_p = log_p - term.weight * ek
        out = {k: torch.zeros_like(xs[k]) if g is None else g for k, g in grads.items()}
        return packer.pack(out), log_p

    return target


def _count(compiled: CompiledScene, evaluations: int) -> None:
    """Add ``evaluations`` target evaluations to the scene's counters, as the eager target counts them."""
    for term in compiled.terms:
        compiled.nfe[term.key] += evaluations * term.factor.cost
    compiled.calls += evaluations * len(compiled.groups)


def _evaluations_per_step(kernel: Kernel) -> int:
    """Target evaluations of one transition of a built-in kernel."""
    moves = kernel.leapfrog_steps if isinstance(kernel, UHMC) else 1
    test = kernel.metropolis
    return moves + (test.points - 2 if isinstance(test, ScoreLineTest) else 0)


#: the most arithmetic of a level (particles x coordinates x target evaluations) that runs as
#: one graph under ``"auto"``
WHOLE_LEVEL_WORK = 20000


def transitions_per_call(compiled: CompiledScene, x: torch.Tensor, steps: int, evaluations: int) -> int:
    """Transitions per compiled call under ``"auto"``: the whole level (``steps``) when a level of
    formula factors is little arithmetic (``x.numel()`` times its ``evaluations`` at most
    :data:`WHOLE_LEVEL_WORK`), else one.

    Each call of a compiled function has a fixed cost (guards, wrappers: about 30 µs on a CPU)
    that dominates a level's arithmetic for a few hundred particles of cheap analytic factors;
    there one graph per level is faster.  With more arithmetic a graph of one transition is
    faster (inductor's kernels for a whole unrolled level run slower per transition), and a
    learned network unrolled ``steps`` times would take minutes to compile, while its
    evaluations dwarf the calls' cost anyway (``benchmarks/loop_cost.py``)."""
    learned = any(term.factor.learned for term in compiled.terms)
    return steps if not learned and x.numel() * evaluations <= WHOLE_LEVEL_WORK else 1


class _Compiled:
    """A compiled function with eager fallback: warns once and disables itself on failure."""

    def __init__(self, option: bool | str, device: torch.device | str, what: str) -> None:
        self.option, self.what = option, what
        self.mode = compile_mode(option, device)
        self.cudagraphs = self.mode == "reduce-overhead" and torch.device(device).type == "cuda"
        self.failed: str | None = None
        self.warned = [False]  # shared by the transitions and the target of a run: one warning
        self.compile_time = 0.0  # seconds of the levels that compiled (tracing, code generation)
        self.calls = 0

    def compile(self, fn: Callable[..., Any], tag: str) -> Callable[..., Any]:
        return torch.compile(_own_code(fn, tag), fullgraph=True, mode=self.mode)

    def fail(self, err: BaseException | str) -> None:
        reason = err if isinstance(err, str) else f"{type(err).__name__}: {first_line(err)}"
        self.failed = reason
        if self.option != "auto" and not self.warned[0]:
            self.warned[0] = True
            warnings.warn(
                f"AnnealedMCMC(compile={self.option!r}): {self.what} could not be compiled ({reason}); "
                "running eagerly",
                UserWarning,
                stacklevel=4,
            )

    def begin(self) -> None:
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()

    def keep(self, v: torch.Tensor | None) -> torch.Tensor | None:
        """An output that outlives the next call (a CUDA graph overwrites its outputs)."""
        return v.clone() if self.cudagraphs and v is not None else v


class CompiledTarget(_Compiled):
    """A drop-in :class:`~probcomp.inference.kernels.FlatTarget` whose evaluations are compiled
    (module docstring); falls back to the eager target on failure."""

    def __init__(
        self, eager: FlatTarget, option: bool | str, device: torch.device | str, *, enabled: bool = True
    ) -> None:
        super().__init__(option, device, "the target")
        self.eager, self.energy = eager, eager.energy
        self.compiled, self.packer = eager.compiled, eager.packer
        self._fn: Callable[..., Any] | None = None
        self._stepped: Callable[..., Any] | None = None
        self._checked = False
        if not enabled:  # (the transitions' failure was reported)
            return
        try:
            flat = flat_target(eager.compiled, eager.packer, eager.energy)
        except _Unsupported as e:
            self.fail(str(e))
            return

        def stepped(
            x: torch.Tensor, g: torch.Tensor, z: torch.Tensor, coef: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
            """The DDPM step from ``x`` (score ``g``, noise ``z``) with ``coef`` = ``(alpha_t,
            sigma_t, alpha_s, keep, c, s)``, the target at the new positions and their largest
            ``|x|`` (NaN if any is NaN), in one graph."""
            a_t, s_t, a_s, keep, c, s = coef.unbind()
            new = ddim_step(x, g, a_t, s_t, a_s, keep) + c * z
            g1, log_p1 = flat(new, s)
            return new, g1, log_p1, new.abs().amax()

        self._fn = self.compile(flat, f"target_{id(self):x}")
        self._stepped = self.compile(stepped, f"stepped_{id(self):x}")

    def __call__(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._fn is None or self.failed is not None:
            return self.eager(x, t)
        if not self._checked:
            self._check(x, t)
        tt = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        try:
            self.begin()
            g, log_p = self._fn(x, tt)
        except Exception as e:  # a factor that does not trace: this and later calls run eagerly
            self.fail(e)
            return self.eager(x, t)
        _count(self.compiled, 1)
        return self.keep(g), self.keep(log_p)  # type: ignore[return-value]

    def after_step(
        self, step: ReverseStep, x: torch.Tensor, g: torch.Tensor, s: float, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor] | None:
        """``step(x, g)`` (noise drawn from ``generator`` as :class:`ReverseStep` draws it) and
        the target at the new positions at level ``s``, in one compiled call: ``(x_s, grad,
        log_p, max |x_s|)``; ``None`` where the step clips or the target runs eagerly."""
        if self._stepped is None or self.failed is not None or step.clip is not None or not self._checked:
            return None
        c = step.noise
        z = (
            torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            if c > 0
            else x.new_zeros(())
        )
        coef = torch.tensor([*step.coefficients(), s], dtype=torch.float64, device=x.device)
        try:
            self.begin()
            new, g1, log_p, top = self._stepped(x, g, z, coef)
        except Exception as e:  # (the noise is drawn: the fallback continues from here, eagerly)
            self.fail(e)
            new = step.mean(x, g) + c * z  # (z is 0 where c is)
            g1, log_p = self.eager(new, s)
            return new, g1, log_p, new.abs().amax()
        _count(self.compiled, 1)
        return (
            cast(torch.Tensor, self.keep(new)),
            cast(torch.Tensor, self.keep(g1)),
            self.keep(log_p),
            cast(torch.Tensor, self.keep(top)),
        )

    def _check(self, x: torch.Tensor, t: float) -> None:
        """One eager evaluation, uncounted, before the first compiled one: the scene's checks
        (output shapes, energies present, errors that name the factor) run as on the eager
        path; its values are discarded, so that every run evaluates the compiled way."""
        nfe, calls = dict(self.compiled.nfe), self.compiled.calls
        try:
            self.eager(x, t)
        finally:
            self.compiled.nfe.update(nfe)
            self.compiled.calls = calls
        self._checked = True


class CompiledLevels(_Compiled):
    """The ``k`` transitions of a level, with step-size adaptation, in compiled calls of
    :meth:`per_call` transitions each (the whole level, or one).

    :meth:`level` draws the level's random numbers eagerly, runs the compiled transitions and
    returns the new state, acceptance and ``log c`` as the engine's eager loop computes them,
    or ``None`` (generator restored) when the path is unavailable or compiling failed.
    """

    def __init__(
        self,
        kernel: Kernel,
        target: FlatTarget,
        steps: int,
        *,
        adapt: bool,
        adapt_rate: float,
        target_accept: float,
        option: bool | str,
        device: torch.device | str,
        per_call: int | str | None = "auto",
    ) -> None:
        super().__init__(option, device, f"the {kernel.name!r} transitions")
        self.kernel, self.target, self.k = kernel, target, int(steps)
        self._fn: Callable[..., Any] | None = None
        self._shape = torch.Size()
        try:
            if type(kernel) not in _BUILT_IN:  # (a subclass may draw or step otherwise)
                raise _Unsupported(f"kernel {kernel.name!r} is not one of the built-in kernels")
            flat = flat_target(target.compiled, target.packer, target.energy)
        except _Unsupported as e:
            self.fail(str(e))
            return
        self.per_call_option = per_call
        self.evaluations = self.k * _evaluations_per_step(kernel)  # (of a level)
        adjusted, k = kernel.adjusted, self.k
        rate, goal = float(adapt_rate), float(target_accept)
        adapt = bool(adapt) and adjusted

        def transitions(
            x: torch.Tensor,
            grad: torch.Tensor,
            log_p: torch.Tensor | None,
            momentum: torch.Tensor,
            zs: tuple[torch.Tensor, ...],
            us: tuple[torch.Tensor, ...],
            t: torch.Tensor,
            eps0: torch.Tensor,
            shift: torch.Tensor,
            accepted: torch.Tensor,
        ) -> tuple[Any, ...]:
            """``len(zs)`` transitions from ``(x, grad, log_p, momentum)``; the step size is
            ``eps0 exp(shift)``, ``shift`` the change of ``log c`` since the level began (a
            tensor of its own: passing the level's ``log c`` twice would alias two inputs,
            and compile a second graph for it).  ``accepted`` sums each particle's acceptance
            probabilities over the level; ``top`` holds the largest ``|x|`` and ``|grad|``
            (NaN if any is NaN) for the engine's checks, computed here to save their dispatch."""
            state = KernelState(x, grad, log_p, momentum)
            for j in range(len(zs)):
                eps = eps0 * torch.exp(shift) if adapt else eps0
                state, info = kernel.step_with(  # (a plain function: step_with reads no `energy`)
                    state,
                    flat,  # pyright: ignore[reportArgumentType]
                    t,
                    eps,
                    zs[j],
                    us[j] if adjusted else None,
                )
                if info.accept_prob is not None:
                    accepted = accepted + info.accept_prob
                    if adapt:  # the engine's Robbins-Monro update of log c, in float64
                        shift = shift + rate * (info.accept_prob.mean().double() - goal) * 10
            # (a whole level's graph; one transition's leaves it to the engine, once per level)
            top = torch.stack([state.x.abs().amax(), state.grad.abs().amax()]) if len(zs) == k else None
            return state.x, state.grad, state.log_p, state.momentum, shift, accepted, top

        # one compiled function, whose graphs dynamo keeps per transitions per call (the
        # length of zs) and per particle count
        self._fn = self.compile(transitions, f"levels_{id(self):x}")

    def per_call(self, x: torch.Tensor) -> int:
        """Transitions per compiled call for the state ``x`` (see :data:`TRANSITIONS_PER_CALL`)."""
        option = self.per_call_option
        if option == "auto":
            return transitions_per_call(self.target.compiled, x, self.k, self.evaluations)
        m = self.k if option is None else max(1, int(option))
        return m if self.k % m == 0 else self.k

    @property
    def available(self) -> bool:
        return self._fn is not None and self.failed is None

    def level(
        self, state: KernelState, t: float, step_size: float, log_c: float, generator: torch.Generator
    ) -> tuple[KernelState, torch.Tensor | None, float, torch.Tensor | None] | None:
        """The level's transitions from ``state`` at ``t``, starting at ``step_size`` (the eager
        loop's ``eps`` for ``log_c``): the new state, each particle's mean acceptance probability
        (``None`` without a Metropolis test), the new ``log c`` and the largest ``|x|`` and
        ``|grad|`` of the new state (``None`` unless the level ran as one graph); ``None`` when
        the engine must run them eagerly."""
        if not self.available:
            return None
        assert self._fn is not None
        x = state.x
        m = self.per_call(x)
        # the generator is restored if compiling fails (first call, or a new particle count)
        saved = generator.get_state() if self.calls == 0 or x.shape != self._shape else None
        self._shape = x.shape
        draws = [self.kernel.draw(x, generator) for _ in range(self.k)]
        zs = [z for z, _ in draws]
        us = [u for _, u in draws if u is not None]

        def f64(v: float) -> torch.Tensor:
            return torch.tensor(v, dtype=torch.float64, device=x.device)

        tt, eps0, shift = f64(t), f64(step_size), f64(0.0)
        accepted = x.new_zeros(x.shape[0])
        cur = (state.x, state.grad, state.log_p, state.momentum)
        top = None
        start = time.perf_counter()
        try:
            for j in range(0, self.k, m):
                self.begin()
                *cur, shift, accepted, top = self._fn(
                    *cur, tuple(zs[j : j + m]), tuple(us[j : j + m]), tt, eps0, shift, accepted
                )
                cur = [self.keep(v) for v in cur]
                shift, accepted = (cast(torch.Tensor, self.keep(v)) for v in (shift, accepted))
                top = self.keep(top)
        except Exception as e:  # not traceable: restore the draws, and the engine runs eagerly
            if saved is None:
                raise
            generator.set_state(saved)
            self.fail(e)
            return None
        if saved is not None:  # (this level compiled its graph)
            self.compile_time += time.perf_counter() - start
        _count(self.target.compiled, self.evaluations)
        self.calls += 1
        new_c = log_c + float(shift) if self.kernel.adjusted else log_c
        x1, g1, log_p1, p1 = cur
        assert x1 is not None and g1 is not None and p1 is not None
        accept = accepted / self.k if self.kernel.adjusted else None
        return KernelState(x1, g1, log_p1, p1), accept, new_c, top


def fast_path(
    cache: dict[Any, Any],
    option: bool | str,
    kernel: Kernel,
    target: FlatTarget,
    *,
    steps: int,
    adapt: bool,
    adapt_rate: float,
    target_accept: float,
    device: torch.device | str,
) -> tuple[CompiledLevels, CompiledTarget]:
    """The compiled transitions and target of a run of an engine on ``target``'s compiled scene,
    kept in the engine's ``cache`` so that later runs on the same compiled scene reuse their
    graphs (compiling takes seconds to minutes; an engine's settings do not change)."""
    key = (id(target.compiled), target.energy, str(torch.device(device)))
    hit = cache.get(key)
    if hit is not None and hit[0] is target.compiled:
        return hit[1], hit[2]
    levels = CompiledLevels(
        kernel,
        target,
        steps,
        adapt=adapt,
        adapt_rate=adapt_rate,
        target_accept=target_accept,
        option=option,
        device=device,
        per_call=TRANSITIONS_PER_CALL,
    )
    flat = CompiledTarget(target, option, device, enabled=levels.available)
    flat.warned = levels.warned
    cache[key] = (target.compiled, levels, flat)
    return levels, flat

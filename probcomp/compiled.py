r"""A scene compiled into a target gradient over the control variables.

:class:`CompiledScene` is what every engine runs on.  It is built once per
scene and engine schedule, and holds

* the control shapes;
* the *terms*: one ``(observable, leaf factor, weight, fn, parents, kind)`` per factor
  evaluation, with composed factors (:class:`probcomp.compose.Composite`)
  expanded into weighted leaves and each control's prior as a term of its own; a term's
  ``kind`` is ``"prior"``, ``"explicit"`` (a density applied at ``t = 0``) or ``"score"``
  (a diffusion factor);
* the *groups*: terms that share one factor object are evaluated in a single
  batched call (their inputs concatenated along the particle axis);
* NFE counters per term.

Every evaluation an engine makes goes through it, and it counts them: the composed
target (:meth:`CompiledScene.target`), the weighted scores per observable
(:meth:`CompiledScene.observable_scores`), the energies of chosen kinds of terms
(:meth:`CompiledScene.energy`); the noise-level derivative of the log-target
(:func:`probcomp.inference.smc.log_snr_derivative`) counts its evaluations in the same counters.

At engine time ``t`` the target is

.. math::
    \nabla_X \log p_t(X) = \sum_i w_i\, J_{f_i}(X)^\top s_i\big(f_i(X), \tau_i(t)\big),

where ``tau_i`` maps ``t`` to factor ``i``'s own schedule at equal log-SNR.  The
pull-back is one reverse-mode pass over all non-identity observation functions
together (``autograd.grad`` with the weighted scores as cotangents); no Jacobian is
ever formed, and identity observations skip autograd altogether.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, cast, overload

import torch

from . import ops
from . import schedules as sched
from .compose import Composite
from .diagnostics import Diagnostics, finite_or_raise
from .errors import FactorError, ProbcompError, SceneError, ShapeError, first_line
from .factors import ExplicitFactor, ScoreFactor
from .scene import Scene
from .terms import TERM_KINDS, EvaluationCounter, Target, Term, batch_key

__all__ = ["TERM_KINDS", "CompiledScene", "EvaluationCounter", "Target", "Term", "finite_or_raise"]


class CompiledScene(EvaluationCounter, Diagnostics):
    """A validated scene ready for an engine; see the module docstring."""

    def __init__(self, scene: Scene, schedule: sched.Schedule | None = None, *, group: bool = True) -> None:
        if not isinstance(scene, Scene):
            raise SceneError(f"expected a probcomp Scene, got {type(scene).__name__}")
        scene.validate()
        self.scene = scene
        self.schedule = schedule if schedule is not None else sched.linear()
        discrete = [n for n in scene.controls if scene[n].get("discrete")]
        if discrete:
            raise SceneError(
                f"controls {discrete} are discrete concepts; sampling engines move continuous controls "
                "only (use ConceptInversion to infer discrete concepts)"
            )
        self.shapes: dict[str, torch.Size] = {n: scene[n]["shape"] for n in scene.controls}
        self.conditioned: list[str] = [n for n in scene.observables if scene[n]["value"] is not None]
        terms: list[Term] = []
        for n in scene.controls:
            prior = scene[n]["prior_factor"]
            if prior is not None:
                terms.append(Term(f"prior:{n}", n, prior, 1.0, ops.identity, (n,), "prior"))
        for n in scene.observables:
            d = scene[n]
            if d["value"] is not None:
                continue
            f = d["factor"]
            leaves = list(f.leaves()) if isinstance(f, Composite) else [(f, 1.0)]
            for k, (leaf, w) in enumerate(leaves):
                key = n if len(leaves) == 1 else f"{n}[{k}:{leaf.name}]"
                kind = "explicit" if isinstance(leaf, ExplicitFactor) else "score"
                terms.append(Term(key, n, leaf, d["weight"] * w, d["fn"], d["parents"], kind))
        self.terms = tuple(t for t in terms if t.weight != 0.0)
        self._check_normalisable()
        by_factor: dict[int, list[Term]] = defaultdict(list)
        for t in self.terms:
            by_factor[batch_key(t.factor) if group else id(t)].append(t)
        self.groups: tuple[tuple[Term, ...], ...] = tuple(tuple(g) for g in by_factor.values())
        # factors trained on the engine's schedule need no time mapping (checked once, here)
        self._own_clock = {id(t.factor): t.factor.schedule == self.schedule for t in self.terms}
        self.nfe: dict[str, int] = {t.key: 0 for t in self.terms}
        self.calls = 0
        self._shapes_checked: set[int] = set()  # factors whose output shapes were checked once

    def _check_normalisable(self) -> None:
        """A control seen only whole (identity observations) by terms with a negative weight: the
        product of its terms must be normalisable (:func:`probcomp.compose.check_normalisable`:
        refused when decidable, warned otherwise)."""
        from .compose._checks import check_normalisable

        for name in self.shapes:
            mine = [t for t in self.terms if name in t.parents]
            if any(t.weight < 0 for t in mine) and all(t.fn.is_identity for t in mine):
                check_normalisable([(t.factor, t.weight) for t in mine], f"the target of control {name!r}")

    @property
    def has_energy(self) -> bool:
        return all(t.factor.has_energy for t in self.terms)

    def require_value_observables(self, engine: str) -> None:
        """Raise if the scene has conditioned observables an engine cannot move."""
        if self.conditioned:
            raise SceneError(
                f"{engine} moves controls through observation values; observables "
                f"{self.conditioned} are given data with controls as conditions "
                "(use ConceptInversion for those)"
            )

    # State helpers ------------------------------------------------------------------
    def noise(
        self, n: int, generator: torch.Generator, *, dtype: torch.dtype, device: torch.device | str
    ) -> dict[str, torch.Tensor]:
        """Standard normal draws for every control, shape ``(n, *shape)``."""
        return {
            k: torch.randn((n, *s), generator=generator, dtype=dtype, device=device)
            for k, s in self.shapes.items()
        }

    def check_state(self, x: dict[str, torch.Tensor]) -> int:
        """Validate a state dict; return the number of particles."""
        if set(x) != set(self.shapes):
            raise SceneError(
                f"state has variables {sorted(x)}, the scene's controls are {sorted(self.shapes)}"
            )
        n = None
        for k, v in x.items():
            if not isinstance(v, torch.Tensor) or v.shape[1:] != self.shapes[k]:
                got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ShapeError(f"control {k!r}: expected (N, {tuple(self.shapes[k])}), got {got}")
            if n is not None and v.shape[0] != n:
                raise ShapeError(f"control {k!r} has {v.shape[0]} particles, others have {n}")
            n = v.shape[0]
        assert n is not None  # validate() guarantees a control, and x has exactly the controls
        return int(n)

    # The target ---------------------------------------------------------------------
    def factor_time(self, factor: ScoreFactor, t: Any) -> Any:
        """Engine time ``t`` in ``factor``'s own schedule (equal log-SNR)."""
        if self._own_clock.get(id(factor)) or factor.schedule == self.schedule:
            return t
        return sched.match(t, self.schedule, factor.schedule)

    def target(
        self, x: dict[str, torch.Tensor], t: Any, *, energy: bool = False, check: bool = True
    ) -> Target:
        """``grad_X log p_t(X)`` per control (and ``log p_t(X)`` if ``energy``).

        ``t`` is engine time: a float, or a tensor with one value per particle.
        With ``check`` (the default), raises :class:`NumericalError` naming the
        factor and level if any score or energy is not finite.  Engines that check
        their state every step pass ``check=False`` and call :meth:`diagnose` when
        the state goes bad.
        """
        n = next(iter(x.values())).shape[0]
        grads: dict[str, torch.Tensor | None] = dict.fromkeys(x)
        ref = next(iter(x.values()))
        log_p = torch.zeros(n, dtype=ref.dtype, device=ref.device) if energy else None
        xg: dict[str, torch.Tensor] = {}
        outs: list[torch.Tensor] = []
        cots: list[torch.Tensor] = []
        for group in self.groups:
            factor = group[0].factor
            ys = []
            for term in group:
                if term.fn.is_identity:
                    ys.append(x[term.parents[0]])
                    continue
                for p in term.parents:
                    if p not in xg:
                        xg[p] = x[p].detach().requires_grad_(True)
                with torch.enable_grad():
                    yk = self.observe(term, [xg[p] for p in term.parents])
                if not yk.requires_grad:
                    raise SceneError(
                        f"the observation function of {term.observable!r} does not depend differentiably "
                        "on its parents (does it detach its input or convert it to numpy?)"
                    )
                ys.append(yk)
            y = torch.cat([v.detach() for v in ys]) if len(ys) > 1 else ys[0].detach()
            tf = self.factor_time(factor, t)
            if isinstance(tf, torch.Tensor) and tf.ndim == 1 and len(group) > 1:
                tf = tf.repeat(len(group))
            s, e = self.evaluate(group, y, tf, t, energy=energy)
            if check:
                self._check_finite(s, e, group, t)
            for k, (term, yk) in enumerate(zip(group, ys, strict=True)):
                self.nfe[term.key] += factor.cost
                sk = s[k * n : (k + 1) * n] if len(group) > 1 else s
                ws = sk if term.weight == 1.0 else term.weight * sk
                if term.fn.is_identity:
                    p = term.parents[0]
                    gp = grads[p]
                    grads[p] = ws if gp is None else gp + ws
                else:
                    outs.append(yk)
                    cots.append(ws)
                if log_p is not None:
                    if e is None:  # a user factor whose score_and_energy returned no energy
                        raise FactorError(
                            f"factor {factor.name!r} (observable {self._names(group)}) returned no energy "
                            f"at noise level t={self._level(t):.4g}"
                        )
                    ek = e[k * n : (k + 1) * n] if len(group) > 1 else e
                    log_p -= term.weight * ek
        if outs:
            names = list(xg)
            pulled = torch.autograd.grad(outs, [xg[k] for k in names], grad_outputs=cots, allow_unused=True)
            for k, g in zip(names, pulled, strict=True):
                if g is not None:
                    gk = grads[k]
                    grads[k] = g if gk is None else gk + g
        out = {k: torch.zeros_like(x[k]) if g is None else g for k, g in grads.items()}
        return Target(out, log_p)

    def observable_scores(
        self,
        x: dict[str, torch.Tensor],
        t: Any,
        *,
        kinds: tuple[str, ...] = ("score",),
        values: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per observable, ``sum_k w_k s_k(f(X), t)`` over its terms of the given ``kinds``.

        The scores of ``y = f(X)`` itself, not pulled back to the controls (per-step
        optimisation moves each observable by its own denoising step); ``values`` may hold
        observables' ``f(X)`` already computed.  Terms that share a factor object are scored
        in one batched call; raises :class:`NumericalError` naming the factor if a score is
        not finite.
        """
        ys: dict[str, torch.Tensor] = dict(values or {})
        scores: dict[str, torch.Tensor] = {}
        for group in self.groups:
            group = tuple(term for term in group if term.kind in kinds)
            if not group:
                continue
            for term in group:
                if term.observable not in ys:
                    ys[term.observable] = self.observe(term, [x[p] for p in term.parents])
            factor = group[0].factor
            batch = torch.cat([ys[term.observable] for term in group])
            out, _ = self.evaluate(group, batch, self.factor_time(factor, t), t)
            self._check_finite(out, None, group, t)
            for k, term in enumerate(group):
                self.nfe[term.key] += factor.cost
                n = ys[term.observable].shape[0]
                part = term.weight * out[k * n : (k + 1) * n]
                o = term.observable
                scores[o] = part if o not in scores else scores[o] + part
        return scores

    @overload
    def energy(
        self, x: dict[str, torch.Tensor], t: Any, *, kinds: tuple[str, ...] = ..., initial: torch.Tensor
    ) -> torch.Tensor: ...

    @overload
    def energy(
        self, x: dict[str, torch.Tensor], t: Any, *, kinds: tuple[str, ...] = ..., initial: float = ...
    ) -> torch.Tensor | float: ...

    def energy(
        self,
        x: dict[str, torch.Tensor],
        t: Any,
        *,
        kinds: tuple[str, ...] = ("prior", "explicit"),
        initial: torch.Tensor | float = 0.0,
    ) -> torch.Tensor | float:
        """``initial + sum_j w_j E_j(g_j(X), t)`` per particle over the terms of the given
        ``kinds``, accumulated in term order onto ``initial`` (differentiable).

        Closed-form terms (priors and explicit densities) are what engines ask for here;
        they are not network evaluations and are not counted in ``nfe``.
        """
        total = initial
        for term in self.terms:
            if term.kind in kinds:
                y = term.fn(*[x[p] for p in term.parents])
                total = total + term.weight * term.factor.energy(y, self.factor_time(term.factor, t))
        return total

    def observe(self, term: Term, parents: list[torch.Tensor]) -> torch.Tensor:
        """``f(*parents)`` of ``term``'s observable; an exception of the user's function is re-raised
        as a :class:`SceneError` naming the observable (the user's exception chained)."""
        try:
            return term.fn(*parents)
        except ProbcompError:
            raise
        except Exception as e:
            raise SceneError(
                f"the observation function of {term.observable!r} raised {type(e).__name__}: {first_line(e)}"
            ) from e

    def evaluate(
        self, group: tuple[Term, ...], y: torch.Tensor, tf: Any, t: Any, *, energy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One batched call of ``group``'s factor on ``y`` at factor time ``tf``: its score (and
        energy), counted in ``calls``.  The first call of each factor checks the output shapes
        (a score shaped like its input, one energy per row); an exception raised by the factor
        is re-raised as a :class:`FactorError` naming the factor, observables and noise level."""
        factor = group[0].factor
        try:
            if any(term.factor is not factor for term in group):  # copies of one model (batch_key)
                s, e = self._evaluate_copies(group, y, tf, energy)
            elif energy:
                s, e = factor.score_and_energy(y, tf)
            else:
                s, e = factor.score(y, tf), None
        except ProbcompError:
            raise
        except Exception as err:
            raise FactorError(
                f"factor {factor.name!r} (observable {self._names(group)}) raised {type(err).__name__} "
                f"at noise level t={self._level(t):.4g}: {first_line(err)}"
            ) from err
        self.calls += 1
        if id(factor) not in self._shapes_checked:
            if not isinstance(s, torch.Tensor) or s.shape != y.shape:
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise ShapeError(
                    f"factor {factor.name!r} (observable {self._names(group)}) returned a score of shape "
                    f"{got} for input {tuple(y.shape)}; a score has the shape of its input"
                )
            if e is not None and (not isinstance(e, torch.Tensor) or e.shape != y.shape[:1]):
                got = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
                raise ShapeError(
                    f"factor {factor.name!r} (observable {self._names(group)}) returned an energy of shape "
                    f"{got} for {y.shape[0]} inputs; an energy is one value per input, ({y.shape[0]},)"
                )
            self._shapes_checked.add(id(factor))
        return s, e

    @staticmethod
    def _evaluate_copies(
        group: tuple[Term, ...], y: torch.Tensor, tf: Any, energy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Terms whose factors are distinct copies of one model (equal ``batch_key``, e.g. one
        network conditioned on several prompts): one ``score_many`` call for all of them, each
        term on its own rows of ``y`` (factor by factor when energies are asked for)."""
        k = len(group)
        ys = list(torch.chunk(y, k))
        t1 = (
            tf[: ys[0].shape[0]]
            if isinstance(tf, torch.Tensor) and tf.ndim == 1 and tf.numel() == y.shape[0]
            else tf
        )
        factors = [term.factor for term in group]
        many = getattr(type(factors[0]), "score_many", None)
        if not energy and many is not None:
            return torch.cat(many(factors, ys, t1)), None
        outs = [
            f.score_and_energy(v, t1) if energy else (f.score(v, t1), None)
            for f, v in zip(factors, ys, strict=True)
        ]
        # with energy, every entry is score_and_energy's (score, energy) pair
        es = cast("list[torch.Tensor]", [e for _, e in outs])
        return torch.cat([s for s, _ in outs]), (torch.cat(es) if energy else None)

    def __repr__(self) -> str:
        return (
            f"CompiledScene({len(self.shapes)} controls, {len(self.terms)} terms in "
            f"{len(self.groups)} batched calls, schedule={self.schedule!r})"
        )

r"""A scene compiled for inversion: the composed denoising loss of its concepts.

:class:`CompiledInversion` is what :class:`~probcomp.inference.ConceptInversion` runs on,
as :class:`~probcomp.compiled.CompiledScene` is what the sampling engines run on.  A scene
for inversion gives data to its observables and makes the controls their conditions
(``scene.observe("img", value=x, factor=model, condition={"xy": c})``).  Compiling it
reads

* the controls: shapes, priors, and the *discrete* ones with their candidate values (a
  ``Categorical``-like prior's support, or candidates given by name), the others
  continuous;
* the *terms* (:class:`InversionTerm`): one per observable, its factor, weight, the
  factor's condition names and the controls bound to them;
* the *groups* (:class:`InversionGroup`): terms that score one observed value ``x``,
  whose weighted noise predictions add up.

The loss of concepts ``c`` is the composed denoising loss, the variational proxy for
``-log p(x | c^1..c^K)`` (Wang 2026, Eq. 5.7):

.. math::
    L(c) = \sum_{\text{groups}} \mathbb E_{t, \epsilon}\, \frac1D \Big\| \epsilon - \sum_i w_i\,
    \hat\epsilon_i\big(\alpha_t x + \sigma_t \epsilon, t \mid c_{(i)}\big) \Big\|^2,

with ``t`` uniform on a range of the group's schedule and ``D`` the number of elements of
``x`` (Eq. 5.7 sums them; the mean reads the same at any image size).  The expectation is
a mean over shared draws ``(t, eps, x_t)`` (:meth:`CompiledInversion.draws`, common random
numbers for every candidate); :meth:`~CompiledInversion.predict` gives the composed
prediction ``sum_i w_i eps_hat_i`` of any subset of the terms, so a search can score one
term's candidates against the others' fixed sum.  Every network evaluation is counted per
observable in :attr:`CompiledInversion.nfe`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from pyro.distributions import constraints

from .errors import NumericalError, SceneError
from .scene import Scene
from .terms import EvaluationCounter

__all__ = ["CompiledInversion", "InversionDraw", "InversionGroup", "InversionTerm"]


@dataclass(frozen=True)
class InversionTerm:
    """One observable of observed data: ``w * eps_hat(x_t, t | keys = controls)``."""

    name: str
    factor: Any
    weight: float
    keys: tuple[str, ...]  # the factor's condition names
    controls: tuple[str, ...]  # the controls bound to them


@dataclass(frozen=True)
class InversionGroup:
    """The terms that score one observed value: one summand of the loss."""

    value: torch.Tensor
    schedule: Any
    terms: tuple[InversionTerm, ...]


class InversionDraw(NamedTuple):
    """``D`` shared noise draws of one group: levels ``t`` ``(D,)``, noise and noised data ``(D, *event)``."""

    t: torch.Tensor
    eps: torch.Tensor
    xt: torch.Tensor


Draws = list[InversionDraw]
State = dict[str, torch.Tensor]


class CompiledInversion(EvaluationCounter):
    """A validated scene ready for concept inversion; see the module docstring.

    Args:
        scene: observables with data (``value=``) conditioned on the controls.
        candidates: discrete supports by control name (overriding a discrete prior's; a
            control given candidates is searched over them).
        batch: most network inputs per factor call.
        dtype, device: of the loss (the data are moved there).
    """

    def __init__(
        self,
        scene: Scene,
        candidates: dict[str, Any] | None = None,
        *,
        batch: int = 256,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        if not isinstance(scene, Scene):
            raise SceneError(f"ConceptInversion needs a probcomp Scene, got {type(scene).__name__}")
        scene.validate()
        candidates = candidates or {}
        self.batch, self.dtype, self.device = int(batch), dtype, torch.device(device)
        self.controls = list(scene.controls)
        self.shapes = {n: scene[n]["shape"] for n in self.controls}
        self.priors = {n: scene[n]["prior"] for n in self.controls}
        unknown = set(candidates) - set(self.controls)
        if unknown:
            raise SceneError(f"candidates given for unknown controls {sorted(unknown)}")
        self.candidates: dict[str, torch.Tensor] = {}
        for n in self.controls:
            if n in candidates:
                c = torch.as_tensor(candidates[n])
                if c.ndim == 0 or c.shape[0] == 0:
                    raise SceneError(f"discrete control {n!r} has no candidates")
                if c.shape[1:] != self.shapes[n]:
                    raise SceneError(
                        f"candidates of control {n!r} have shape {tuple(c.shape[1:])}, "
                        f"the control has {tuple(self.shapes[n])}"
                    )
                self.candidates[n] = c
            elif scene[n].get("discrete"):
                self.candidates[n] = self.priors[n].enumerate_support(expand=False).reshape(-1)
        self.continuous = [n for n in self.controls if n not in self.candidates]
        self.discrete = [n for n in self.controls if n in self.candidates]
        self.groups: list[InversionGroup] = self._groups(scene)
        if not any(o.controls for o in self.terms):
            raise SceneError("no observable is conditioned on a control: there is nothing to infer")
        self._boxes = {n: self.interval(n) for n in self.continuous}
        self.nfe: dict[str, int] = {o.name: 0 for o in self.terms}
        self.calls = 0

    def _groups(self, scene: Scene) -> list[InversionGroup]:
        """The observables as terms, grouped by observed value (equal values share a group)."""
        groups: dict[int, list[InversionTerm]] = {}
        values: dict[int, torch.Tensor] = {}
        for name in scene.observables:
            d = scene[name]
            if d["value"] is None:
                raise SceneError(
                    f"observable {name!r} is y = f(controls); ConceptInversion infers the conditions "
                    "of observed data (declare it with value=... and condition=...)"
                )
            f = d["factor"]
            keys = tuple(d.get("condition_keys", d["condition"]))
            missing = set(keys) - set(f.condition_names)
            if missing:
                raise SceneError(
                    f"observable {name!r}: factor {f.name!r} has no condition(s) {sorted(missing)}; "
                    f"it takes {list(f.condition_names)}"
                )
            v = d["value"]
            gid = next((g for g, u in values.items() if u is v or torch.equal(u, v)), id(v))
            values.setdefault(gid, v)
            groups.setdefault(gid, []).append(
                InversionTerm(name, f, d["weight"], keys, tuple(d["condition"]))
            )
        out = []
        for gid, terms in groups.items():
            sch = terms[0].factor.schedule
            other = [o.name for o in terms if o.factor.schedule != sch]
            if other:
                raise SceneError(
                    f"observables {[terms[0].name, *other]} score the same data with factors on different "
                    "schedules; one noised copy of the data cannot serve both"
                )
            out.append(
                InversionGroup(values[gid].to(dtype=self.dtype, device=self.device), sch, tuple(terms))
            )
        return out

    @property
    def terms(self) -> tuple[InversionTerm, ...]:
        """Every term, group by group."""
        return tuple(o for g in self.groups for o in g.terms)

    # Counters -----------------------------------------------------------------------
    # Draws and the loss ---------------------------------------------------------------
    def draws(self, n: int, t_range: tuple[float, float], gen: torch.Generator) -> Draws:
        """``n`` shared ``(t, eps, x_t)`` draws per group, ``t`` uniform on ``t_range``."""
        out = []
        lo, hi = t_range
        for g in self.groups:
            t = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)
            eps = torch.randn((n, *g.value.shape), generator=gen, dtype=self.dtype).to(self.device)
            a = g.schedule.alpha(t).to(self.dtype).to(self.device).reshape(-1, *[1] * g.value.ndim)
            s = g.schedule.sigma(t).to(self.dtype).to(self.device).reshape(-1, *[1] * g.value.ndim)
            out.append(InversionDraw(t, eps, a * g.value + s * eps))
        return out

    @staticmethod
    def first(draws: Draws, k: int) -> Draws:
        """The first ``k`` of every group's draws."""
        return [InversionDraw(t[:k], e[:k], x[:k]) for t, e, x in draws]

    def term(self, o: InversionTerm, cond: State, draw: InversionDraw) -> torch.Tensor:
        """``w eps_hat(x_t, t | c)`` for ``C`` condition values and ``D`` draws: ``(C, D, *event)``."""
        t, _, xt = draw
        n_draw = t.shape[0]
        c = next(iter(cond.values())).shape[0] if cond else 1
        out = []
        for lo in range(0, c * n_draw, self.batch):
            idx = torch.arange(lo, min(lo + self.batch, c * n_draw))
            ci, di = idx // n_draw, idx % n_draw
            cc = {o.keys[j]: cond[o.controls[j]][ci] for j in range(len(o.keys))}
            e = o.factor.eps_given(xt[di], t[di], cc)
            self.nfe[o.name] += idx.numel() * o.factor.cost
            self.calls += 1
            out.append(e)
        e = torch.cat(out).reshape(c, n_draw, *xt.shape[1:])
        return e if o.weight == 1.0 else o.weight * e

    def predict(
        self,
        state: State,
        draws: Draws,
        include: Callable[[InversionTerm], bool] = lambda o: True,
    ) -> list[torch.Tensor | float]:
        """Per group, ``sum_i w_i eps_hat_i`` over the included terms: ``(R, D, *event)``
        (``0.0`` where none is included); ``R`` is the number of particles in ``state``."""
        r = next(iter(state.values())).shape[0] if state else 1
        out: list[torch.Tensor | float] = []
        for g, draw in zip(self.groups, draws, strict=True):
            pred: torch.Tensor | float = 0.0
            for o in g.terms:
                if not include(o):
                    continue
                e = self.term(o, {c: state[c] for c in o.controls}, draw)
                pred = pred + (e.expand(r, *e.shape[1:]) if e.shape[0] == 1 else e)
            out.append(pred)
        return out

    def error(self, preds: list[torch.Tensor | float], draws: Draws) -> torch.Tensor:
        """The loss per particle from the groups' predictions, averaged over draws and elements."""
        total = None
        for pred, draw in zip(preds, draws, strict=True):
            err = (draw[1][None] - pred).square().flatten(2).mean(2).mean(1)
            total = err if total is None else total + err
        if total is None:  # draws() gives one per group, and __init__ rejects a scene without any
            raise SceneError("error() needs the predictions and draws of one group at least; got none")
        if not bool(torch.isfinite(total).all()):
            raise NumericalError("the denoising loss is not finite (a factor returned NaN or inf)")
        return total

    def loss(self, state: State, draws: Draws) -> torch.Tensor:
        """``L(c)`` per particle ``(R,)`` on ``draws``."""
        return self.error(self.predict(state, draws), draws)

    # Supports -------------------------------------------------------------------------
    def interval(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The bounds ``(low, high)`` of control ``name``'s prior support, or ``None`` if unbounded."""
        p = self.priors[name]
        sup = getattr(p, "support", None) if p is not None else None
        while isinstance(sup, constraints.independent):
            sup = sup.base_constraint
        if isinstance(sup, (constraints.interval, constraints.half_open_interval)):
            lo = torch.as_tensor(sup.lower_bound, dtype=self.dtype).expand(self.shapes[name])
            hi = torch.as_tensor(sup.upper_bound, dtype=self.dtype).expand(self.shapes[name])
            return lo.to(self.device), hi.to(self.device)
        return None

    def project(self, params: State) -> None:
        """Clamp each continuous control in ``params`` into its interval support (in place)."""
        with torch.no_grad():
            for n, p in params.items():
                box = self._boxes[n]
                if box is not None:
                    p.copy_(torch.maximum(torch.minimum(p, box[1]), box[0]))

    def init(self, name: str, r: int, gen: torch.Generator) -> torch.Tensor:
        """``r`` starts of continuous control ``name``: uniform in a bounded support, else drawn
        from the prior (``N(0, I)`` without one, Wang 2026, Alg. 5), all from ``gen``."""
        p = self.priors[name]
        if p is None:
            v = torch.randn((r, *self.shapes[name]), generator=gen, dtype=self.dtype)
        else:
            box = self.interval(name)
            if box is not None:  # uniform inside the support, from the engine's generator
                u = torch.rand((r, *self.shapes[name]), generator=gen, dtype=self.dtype)
                v = box[0].cpu() + (box[1] - box[0]).cpu() * u
            else:
                with torch.random.fork_rng(devices=[]):  # seeded from the engine, global RNG untouched
                    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
                    v = p.sample((r,)).to(self.dtype).reshape(r, *self.shapes[name])
        return v.to(self.device)

    def __repr__(self) -> str:
        return (
            f"CompiledInversion({len(self.continuous)} continuous, {len(self.discrete)} discrete controls; "
            f"{len(self.terms)} terms in {len(self.groups)} groups)"
        )

"""Scenes: bipartite Bayesian networks of control and observable variables.

A :class:`Scene` is declarative.  Control variables ``X`` (what is generated or
inferred) carry a shape and an optional prior; observable variables ``Y`` carry
a factor, an observation function ``f_i``, a noise scale ``psi_i`` and a weight
``w_i``, with (Compositional Generative Inference Using Diffusion-Based Optimization, Eq. 1)

    y_i = f_i(PA(y_i)) + N(0, psi_i^2 I),

and the scene's target, in the small-``psi`` limit,

    log p(X) = log prior(X) + sum_i w_i log p_i(f_i(X))   (+ const).

Controls reach an observable through its *value* (``y_i = f_i(parents)``) or,
when the observable's value is given data, through the factor's *condition*
(``p(y | c)``, dissertation ch. 5).  :attr:`Scene.graph` is a ``networkx.DiGraph``
whose nodes carry ``kind``, ``shape``, ``factor``, ``fn`` (and the rest) and
whose edges run from controls to observables only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch

from . import ops
from .errors import SceneError, ShapeError
from .factors import ScoreFactor, explicit
from .validation import check_shape

__all__ = ["CONTROL", "OBSERVABLE", "Scene", "Var"]

CONTROL = "control"
OBSERVABLE = "observable"


@dataclass(frozen=True)
class Var:
    """A handle on a scene variable, returned by :meth:`Scene.control` and :meth:`Scene.observe`."""

    name: str
    kind: str
    shape: torch.Size

    def __repr__(self) -> str:
        return f"Var({self.name!r}, {self.kind}, shape={tuple(self.shape)})"


def _shape(shape: Any, who: str) -> torch.Size:
    """A control's shape: :func:`~probcomp.validation.check_shape`, and every dimension positive."""
    s = check_shape(shape, who)
    if any(v == 0 for v in s):
        raise ShapeError(f"{who}: shape must be positive, got {tuple(s)}")
    return s


def _observed_value(value: Any, who: str) -> torch.Tensor:
    """Given data for an observable as a finite floating tensor (integer data converted)."""
    if isinstance(value, (str, bytes)):
        raise SceneError(f"{who}: value must be numeric (a tensor or array), got {type(value).__name__}")
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise SceneError(
            f"{who}: value must be numeric (a tensor or array), got {type(value).__name__}"
        ) from None
    if t.dtype == torch.bool or t.is_complex():
        raise SceneError(f"{who}: value must be real numbers (a tensor or array), got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise SceneError(f"{who}: value holds {bad} NaN or infinite entries; observed data must be finite")
    return t


class Scene:
    """A bipartite network of control variables and observables with factors.

    Example::

        scene = Scene()
        x = scene.control("x", shape=(2,))
        scene.observe("ring", x, factor=ring)
        scene.observe("bar", x, factor=bar, weight=1.0)
    """

    def __init__(self) -> None:
        self.graph = nx.DiGraph()

    # Declaring variables ------------------------------------------------------------
    def control(self, name: str, shape: Any, prior: Any = None) -> Var:
        """Declare a control variable of ``shape`` with an optional prior.

        ``prior`` is a ``pyro.distributions.Distribution`` whose batch and event
        shapes broadcast to ``shape`` (it is summed over all of them), or None for
        a flat prior.  A prior with discrete, enumerable support (``Categorical``,
        ``Bernoulli``) makes the control a *discrete concept* of shape ``()`` whose
        candidates are the prior's support; only ``ConceptInversion`` moves those.
        """
        self._check_new_name(name)
        shape = _shape(shape, f"control {name!r}")
        prior_factor = None
        discrete = False
        if prior is not None:
            if not callable(getattr(prior, "log_prob", None)):
                raise SceneError(
                    f"control {name!r}: prior must be a pyro distribution, got {type(prior).__name__}"
                )
            discrete = bool(getattr(getattr(prior, "support", None), "is_discrete", False))
        if discrete and prior is not None:  # (discrete implies a prior)
            if len(shape) != 0 or not prior.has_enumerate_support:
                raise ShapeError(
                    f"control {name!r}: a discrete control is one label (shape=()) with an enumerable "
                    f"prior such as Categorical; got shape {tuple(shape)} and {type(prior).__name__}"
                )
        elif prior is not None:
            try:
                prior_factor = explicit(prior, shape, name=f"prior:{name}")
            except SceneError as e:
                raise ShapeError(f"control {name!r}: {e}") from None
        self.graph.add_node(
            name, kind=CONTROL, shape=shape, prior=prior, prior_factor=prior_factor, discrete=discrete
        )
        return Var(name, CONTROL, shape)

    def observe(
        self,
        name: str,
        *parents: Var | str,
        factor: ScoreFactor,
        fn: Any = ops.identity,
        psi: float = 1.0,
        weight: float = 1.0,
        value: Any = None,
        condition: Var | str | Sequence[Var | str] | None = None,
    ) -> Var:
        """Declare an observable ``y = fn(*parents)`` scored by ``factor``.

        Args:
            name: unique name of the observable.
            *parents: control variables (handles or names) passed to ``fn`` in order.
            factor: a :class:`~probcomp.factors.ScoreFactor` (learned, analytic,
                explicit or composed) for ``p(y)``.
            fn: observation function (a :mod:`probcomp.ops` op or any
                differentiable callable on batched tensors); identity by default.
            psi: observation noise scale ``psi_i`` (> 0), used by engines that
                solve for ``X`` given ``y`` (PerStepEM).
            weight: ``w_i``, the power of this factor in the target (any real).
            value: given data for the observable; then ``condition`` names the
                controls the factor is conditioned on instead of ``parents``.
            condition: controls that condition the factor, ``p(y | c)``: a control, a
                list of them (each passed to the factor under its own name; a single
                control fills a factor's single condition whatever its name), or a dict
                ``{factor condition name: control}``, e.g. ``{"xy": xy0, "color": col0}``.
        """
        self._check_new_name(name)
        if not isinstance(factor, ScoreFactor):
            raise SceneError(
                f"observable {name!r}: factor must be a probcomp factor, got {type(factor).__name__} "
                "(wrap a pyro distribution with probcomp.factors.explicit)"
            )
        try:
            psi, weight = float(psi), float(weight)
        except (TypeError, ValueError):
            raise SceneError(f"observable {name!r}: psi and weight must be numbers") from None
        if not (psi > 0 and math.isfinite(psi)):
            raise SceneError(f"observable {name!r}: psi must be positive and finite, got {psi}")
        if not math.isfinite(weight):
            raise SceneError(f"observable {name!r}: weight must be finite, got {weight}")
        if isinstance(condition, dict):
            keys, cond = [str(k) for k in condition], list(condition.values())
        else:
            cond = (
                []
                if condition is None
                else ([condition] if isinstance(condition, (Var, str)) else list(condition))
            )
            keys = [c.name if isinstance(c, Var) else str(c) for c in cond]
            if len(cond) == 1 and len(getattr(factor, "condition_names", ())) == 1:
                keys = list(factor.condition_names)  # one condition: no name needed
        if value is None and cond:
            raise SceneError(f"observable {name!r}: condition=... needs the observed value=...")
        if value is not None and parents:
            raise SceneError(
                f"observable {name!r}: give either parents (y = fn(parents)) or value=... with "
                "condition=..., not both"
            )
        if value is None and not parents:
            raise SceneError(f"observable {name!r} has no parents")
        value_names = [self._parent(p, name) for p in parents]
        cond_names = [self._parent(p, name) for p in cond]
        fn = ops.as_op(fn)
        if fn.arity is not None and value is None and fn.arity != len(value_names):
            raise SceneError(
                f"observable {name!r}: {fn!r} takes {fn.arity} parent(s), got {len(value_names)}"
            )
        if value is not None:
            value = _observed_value(value, f"observable {name!r}")
            if tuple(value.shape) != tuple(factor.event_shape):
                raise ShapeError(
                    f"observable {name!r}: value has shape {tuple(value.shape)}, factor "
                    f"{factor.name!r} expects {tuple(factor.event_shape)}"
                )
        self.graph.add_node(
            name,
            kind=OBSERVABLE,
            shape=factor.event_shape,
            factor=factor,
            fn=fn,
            psi=psi,
            weight=weight,
            value=value,
            parents=tuple(value_names),
            condition=tuple(cond_names),
            condition_keys=tuple(keys),
        )
        for pos, p in enumerate(value_names):
            self.graph.add_edge(p, name, role="value", position=pos)
        for pos, p in enumerate(cond_names):
            self.graph.add_edge(p, name, role="condition", position=pos)
        return Var(name, OBSERVABLE, factor.event_shape)

    # Reading ------------------------------------------------------------------------
    @property
    def controls(self) -> list[str]:
        return [n for n, d in self.graph.nodes(data=True) if d["kind"] == CONTROL]

    @property
    def observables(self) -> list[str]:
        return [n for n, d in self.graph.nodes(data=True) if d["kind"] == OBSERVABLE]

    def __getitem__(self, name: str) -> dict[str, Any]:
        if name not in self.graph:
            raise SceneError(f"unknown variable {name!r}; the scene has {list(self.graph)}")
        return self.graph.nodes[name]

    def __repr__(self) -> str:
        lines = [f"Scene({len(self.controls)} controls, {len(self.observables)} observables)"]
        for n in self.controls:
            d = self.graph.nodes[n]
            prior = "flat" if d["prior"] is None else type(d["prior"]).__name__
            lines.append(f"  control    {n}: shape={tuple(d['shape'])}, prior={prior}")
        for n in self.observables:
            d = self.graph.nodes[n]
            src = ", ".join(d["parents"]) if d["value"] is None else f"data | {', '.join(d['condition'])}"
            lines.append(
                f"  observable {n} = {d['fn']!r}({src}) ~ {d['factor'].name}"
                f" (w={d['weight']:g}, psi={d['psi']:g})"
            )
        return "\n".join(lines)

    # Validation ---------------------------------------------------------------------
    def validate(self) -> None:
        """Check the whole scene; raise a :class:`SceneError` naming the first problem.

        Structure (bipartite, known and unique names) is checked as the scene is
        built; this adds the checks that need the whole scene: non-empty, every
        control scored by something, and every observation function's output shape
        equal to its factor's event shape (evaluated once, on a dummy batch).
        """
        if not self.graph:
            raise SceneError("the scene is empty: declare controls with scene.control(...)")
        if not self.controls:
            raise SceneError("the scene has no control variables")
        if not self.observables and all(self.graph.nodes[n]["prior"] is None for n in self.controls):
            raise SceneError("the scene has no observables and no priors: nothing scores the controls")
        for u, v in self.graph.edges:
            if self.graph.nodes[u]["kind"] != CONTROL or self.graph.nodes[v]["kind"] != OBSERVABLE:
                raise SceneError(f"edge {u!r} -> {v!r} is not control -> observable")
        for n in self.controls:
            if self.graph.out_degree(n) == 0 and self.graph.nodes[n]["prior"] is None:
                raise SceneError(
                    f"control {n!r} is not observed by any factor and has no prior: its target is flat"
                )
        for n in self.observables:
            self._check_observation_shape(n)

    def _check_observation_shape(self, name: str) -> None:
        d = self.graph.nodes[name]
        if d["value"] is not None:
            return
        dummies = [torch.zeros(2, *self.graph.nodes[p]["shape"]) for p in d["parents"]]
        try:
            with torch.no_grad():
                y = d["fn"](*dummies)
        except ShapeError as e:
            raise ShapeError(f"observable {name!r}: {e}") from None
        except Exception as e:
            shapes = ", ".join(f"{p}{tuple(self.graph.nodes[p]['shape'])}" for p in d["parents"])
            raise ShapeError(
                f"observable {name!r}: observation function {d['fn']!r} failed on a batch of "
                f"parents {shapes}: {type(e).__name__}: {e}"
            ) from None
        if not isinstance(y, torch.Tensor) or y.shape[1:] != d["factor"].event_shape or y.shape[0] != 2:
            got = tuple(y.shape[1:]) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ShapeError(
                f"observable {name!r}: observation function {d['fn']!r} gives samples of shape "
                f"{got}, but factor {d['factor'].name!r} has event shape "
                f"{tuple(d['factor'].event_shape)} (functions must map a batch (N, ...) to (N, ...))"
            )

    # Internals ----------------------------------------------------------------------
    def _check_new_name(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise SceneError(f"variable names must be non-empty strings, got {name!r}")
        if name in self.graph:
            raise SceneError(f"duplicate variable name {name!r}")

    def _parent(self, p: Var | str, child: str) -> str:
        pname = p.name if isinstance(p, Var) else p
        if not isinstance(pname, str):
            raise SceneError(f"observable {child!r}: parents must be variables or names, got {p!r}")
        if pname not in self.graph:
            raise SceneError(f"observable {child!r}: unknown parent {pname!r}")
        if self.graph.nodes[pname]["kind"] != CONTROL:
            raise SceneError(
                f"observable {child!r}: parent {pname!r} is an observable; a scene is bipartite "
                "(observables depend on controls only)"
            )
        return pname

"""Scenes written as Pyro programs: ``control`` and ``observe`` sample sites.

Inside any Python function (loops and helper functions included)::

    def panorama():
        x = probcomp.control("x", shape=(64,))
        for j in range(3):
            probcomp.observe(f"w{j}", x[..., 16 * j : 16 * j + 32], factor=patch)

    scene = probcomp.scene_from_pyro(panorama)

:func:`control` is a latent Pyro sample site and :func:`observe` an observed one whose
distribution wraps the factor (a Pyro distribution given as ``factor`` becomes an
explicit factor, exact where :func:`probcomp.factors.explicit` is).
:func:`scene_from_pyro` runs the program under an effect handler that substitutes the
controls, records each observed value, and finds each observable's parents by autograd;
the observation function ``f_i`` is the program re-run with the controls substituted.
Controls arrive with a leading particle axis ``(N, *shape)``, so the program must
broadcast over it (index with ``x[..., a:b]``, not ``x[a:b]``); the build checks this.
Any other ``pyro.sample`` site is refused with its name.

Plates: a sequential ``for j in pyro.plate("w", 3)`` is a loop.  A vectorised ``with
pyro.plate("objects", K)`` around a control gives it a batch dimension (shape ``(K,
*shape)``); around an observable, each of its ``K`` elements becomes an observable
``name[k]`` (the plate's dimension comes first after the particle axis, and one
vectorised plate per observable is supported).  Subsampling is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.poutine.messenger import Messenger

from . import ops
from .errors import SceneError
from .factors import ScoreFactor, explicit
from .scene import Scene
from .validation import check_count, check_shape

if TYPE_CHECKING:
    from pyro.poutine.runtime import InferDict

__all__ = ["control", "observe", "scene_from_pyro"]

_KEY = "probcomp"


class _Site(dist.TorchDistribution):
    """A placeholder distribution of a given event shape (probcomp sites are never sampled by Pyro)."""

    arg_constraints: ClassVar[dict] = {}
    # torch declares Distribution.support a property; distributions override it with a class
    # attribute, as torch's own do (Normal.support = constraints.real)
    support = constraints.real  # pyright: ignore[reportAssignmentType]

    def __init__(self, event_shape: tuple[int, ...]) -> None:
        super().__init__(torch.Size(), torch.Size(event_shape), validate_args=False)

    def sample(self, sample_shape: Any = ()) -> torch.Tensor:
        return torch.zeros(torch.Size(sample_shape) + self.event_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.zeros(value.shape[: value.dim() - len(self.event_shape)])


def control(name: str, shape: Any = (), prior: Any = None) -> torch.Tensor:
    """A control variable of ``shape`` (a latent site); ``prior`` as in :meth:`Scene.control`."""
    shape = tuple(check_shape(shape, f"control {name!r}"))
    info = {"kind": "control", "shape": shape, "prior": prior}
    # pyro types infer as a TypedDict of its own keys; it carries any (handlers read probcomp's)
    return pyro.sample(name, _Site(shape), infer=cast("InferDict", {_KEY: info}))


def observe(
    name: str, value: torch.Tensor, factor: Any, psi: float = 1.0, weight: float = 1.0
) -> torch.Tensor:
    """An observable ``y = value`` scored by ``factor`` (a probcomp factor or a Pyro distribution)."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        got = "a 0-d tensor" if isinstance(value, torch.Tensor) else type(value).__name__
        raise SceneError(
            f"observable {name!r}: value must be a tensor computed from the controls, with their leading "
            f"particle axis (N, ...), got {got}"
        )
    info = {"kind": "observe", "factor": factor, "psi": psi, "weight": weight}
    return pyro.sample(name, _Site(tuple(value.shape[1:])), obs=value, infer=cast("InferDict", {_KEY: info}))


class _Run(Messenger):
    """Substitute controls (``(N, *shape)`` tensors, made on first sight when ``make`` is given),
    record observed values and site information; refuse plain Pyro sample sites."""

    def __init__(
        self, values: dict[str, torch.Tensor], make: Callable[[tuple[int, ...]], torch.Tensor] | None
    ):
        super().__init__()
        self.values, self.make = values, make
        self.controls: dict[str, dict] = {}
        self.observed: dict[str, tuple[torch.Tensor, dict]] = {}

    def _pyro_sample(self, msg: dict) -> None:
        name = msg["name"]
        if type(msg["fn"]).__name__ == "_Subsample":  # the index site of a pyro.plate
            size, sub = _plate_size(name, msg["fn"].size), msg["fn"].subsample_size
            if sub is not None and sub != size:
                raise SceneError(
                    f"pyro.plate {name!r}: subsampling ({sub} of {size}) has no meaning in a scene; "
                    "drop subsample_size"
                )
            msg["value"] = torch.arange(size)
            msg["done"] = msg["stop"] = True
            return
        info = (msg.get("infer") or {}).get(_KEY)
        if info is None:
            raise SceneError(
                f"sample site {name!r} is neither a probcomp.control nor a probcomp.observe site; "
                "declare controls with probcomp.control and observables with probcomp.observe"
            )
        batch = _plate_shape(name, msg.get("cond_indep_stack") or ())
        if name in self.controls or name in self.observed:
            raise SceneError(f"site {name!r} appears twice in the program")
        if info["kind"] == "control":
            info = {**info, "shape": batch + tuple(info["shape"])}  # a plate adds batch dimensions
            if name not in self.values:
                if self.make is None:
                    raise SceneError(f"control {name!r} was not in the program when the scene was built")
                self.values[name] = self.make(info["shape"])
            self.controls[name] = info
            msg["value"] = self.values[name]
        else:
            if len(batch) > 1:
                raise SceneError(
                    f"observable {name!r} is inside {len(batch)} vectorised plates; one is supported "
                    "(each element becomes an observable)"
                )
            self.observed[name] = (msg["value"], {**info, "plate": batch[0] if batch else None})
        msg["done"] = True
        msg["stop"] = True


def _plate_size(name: str, size: Any) -> int:
    """A plate's size as a positive int (Pyro itself fails on 0 with a ZeroDivisionError)."""
    if isinstance(size, torch.Tensor) and size.ndim == 0 and not size.is_floating_point():
        size = int(size)
    if isinstance(size, int) and size == -1:  # Pyro's "no size given", which a scene cannot infer
        raise SceneError(f"pyro.plate {name!r}: size must be an integer >= 1, got -1 or none (give the size)")
    return check_count(f"pyro.plate {name!r}: size", size, error=SceneError)


def _plate_shape(name: str, frames: Any) -> tuple[int, ...]:
    """The batch shape that vectorised ``pyro.plate`` frames give a site (sequential plates: none)."""
    frames = [f for f in frames if f.vectorized and f.dim is not None]
    if not frames:
        return ()
    depth = max(-f.dim for f in frames)
    shape = [1] * depth
    for f in frames:
        shape[depth + f.dim] = f.size
    if 1 in shape:
        raise SceneError(
            f"site {name!r}: its plates leave batch dimensions of size 1 ({tuple(shape)}); "
            "nest plates at consecutive dims"
        )
    return tuple(shape)


def _run(program: Callable, args: tuple, kwargs: dict, values: dict, make=None) -> _Run:
    handler = _Run(values, make)
    with handler:
        program(*args, **kwargs)
    return handler


class ProgramOp(ops.Op):
    """``f_i``: the program re-run with the parents substituted; returns observable ``name``'s value."""

    def __init__(
        self,
        program: Callable,
        args: tuple,
        kwargs: dict,
        name: str,
        parents: tuple[str, ...],
        shapes: dict[str, tuple[int, ...]],
        element: int | None = None,
    ) -> None:
        self.program, self.args, self.kwargs = program, args, kwargs
        self.name, self.parents, self.shapes = name, parents, shapes
        self.site, self.element = name, element
        if element is not None:
            self.name = f"{name}[{element}]"
        self.arity = len(parents)

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor:
        ref = xs[0]
        values = dict(zip(self.parents, xs, strict=True))
        for k, s in self.shapes.items():  # controls this observable does not read
            values.setdefault(k, torch.zeros((ref.shape[0], *s), dtype=ref.dtype, device=ref.device))
        out = _run(self.program, self.args, self.kwargs, values).observed[self.site][0]
        return out if self.element is None else out[:, self.element]

    def __repr__(self) -> str:
        return f"program[{self.name}]"


def scene_from_pyro(program: Callable, *args: Any, **kwargs: Any) -> Scene:
    """Trace ``program(*args, **kwargs)`` and return the :class:`Scene` it declares."""
    if not callable(program):
        raise SceneError(f"scene_from_pyro needs a callable program, got {type(program).__name__}")
    probe_n = 3

    def make(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn((probe_n, *shape)).requires_grad_(True)

    with torch.enable_grad():
        run = _run(program, args, kwargs, {}, make)
        if not run.controls:
            raise SceneError("the program declares no probcomp.control site")
        if not run.observed:
            raise SceneError("the program declares no probcomp.observe site")
        names = list(run.controls)
        scene = Scene()
        for n in names:
            scene.control(n, run.controls[n]["shape"], prior=run.controls[n]["prior"])
        shapes = {n: run.controls[n]["shape"] for n in names}
        for site, (full, info) in run.observed.items():
            if not isinstance(full, torch.Tensor) or full.dim() == 0 or full.shape[0] != probe_n:
                got = tuple(full.shape) if isinstance(full, torch.Tensor) else type(full).__name__
                raise SceneError(
                    f"observable {site!r}: its value must keep the leading particle axis of the controls "
                    f"(expected ({probe_n}, ...), got {got}); index controls as x[..., a:b]"
                )
            plate = info["plate"]
            if plate is not None and (full.dim() < 2 or full.shape[1] != plate):
                raise SceneError(
                    f"observable {site!r} is inside a plate of size {plate}, but its value has shape "
                    f"{tuple(full.shape[1:])}: the plate's dimension must come first"
                )
            for element in [None] if plate is None else range(plate):
                value = full if element is None else full[:, element]
                obs = site if element is None else f"{site}[{element}]"
                identity = next((n for n in names if value is run.values[n]), None)
                if identity is not None:
                    parents: tuple[str, ...] = (identity,)
                    fn: Any = ops.identity
                else:
                    inputs = [run.values[n] for n in names]
                    grads = (
                        torch.autograd.grad(value.sum(), inputs, allow_unused=True, retain_graph=True)
                        if value.requires_grad
                        else [None] * len(names)
                    )
                    parents = tuple(n for n, g in zip(names, grads, strict=True) if g is not None)
                    if not parents:
                        raise SceneError(f"observable {obs!r} does not depend on any control")
                    fn = ProgramOp(program, args, kwargs, site, parents, shapes, element)
                factor = info["factor"]
                if not isinstance(factor, ScoreFactor):
                    factor = explicit(factor, tuple(value.shape[1:]), name=obs)
                scene.observe(obs, *parents, factor=factor, fn=fn, psi=info["psi"], weight=info["weight"])
    return scene

r"""Attribute composition: the conjunction of attribute-conditional scores.

Gaudi et al. 2025 (COIND), Eq. 1 / Eq. 2: under conditional independence of the
attributes given ``x``, the score of ``p(x | c_1, ..., c_n)`` is
``sum_i gamma_i s(c_i) - (sum_i gamma_i - 1) s(null)``; with ``reference=``, the same
from seen joint conditionals (their App. E.1).
:func:`attributes` builds it as a linear :class:`~probcomp.compose.Composite`, so every
engine runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import FactorError
from .linear import Composite

__all__ = ["attributes"]


def attributes(
    model: Any,
    values: dict[str, Any],
    *,
    gamma: float | Sequence[float] | None = None,
    reference: dict[str, Any] | None = None,
    name: str | None = None,
) -> Composite:
    r"""Compose attribute-conditional scores of one model into the score of their conjunction.

    Under conditional independence of the attributes given ``x`` (Gaudi et al. 2025,
    COIND, Eq. 1),

    .. math:: \nabla \log p(x \mid c_1 \wedge \dots \wedge c_n) = \sum_i \gamma_i \nabla \log p(x \mid c_i)
              - \big(\textstyle\sum_i \gamma_i - 1\big) \nabla \log p(x),

    with every ``gamma_i = 1`` by default (so ``sum_i s(c_i) - (n - 1) s(\varnothing)``).
    For two attributes a scalar ``gamma`` weights the first one: ``gamma s(c_1) + s(c_2) -
    gamma s(\varnothing)``, Eq. 2 of Gaudi et al. 2025.  ``model`` is a conditional factor
    with :meth:`condition` (a :class:`~probcomp.models.NetworkFactor`); unnamed attributes
    are its null token.  The result is an ordinary composite factor: every engine runs it.

    ``reference`` composes *joint* conditionals instead of marginals (Gaudi et al. 2025,
    App. E.1).  Conditional independence makes ``log p(x | c)`` additive over the
    attributes, so with a reference combination ``r`` and ``r[i -> v_i]`` the reference
    with attribute ``i`` set to the requested value,

    .. math:: \nabla \log p(x \mid v) = \sum_i \gamma_i \nabla \log p(x \mid r[i \to v_i])
              - \big(\textstyle\sum_i \gamma_i - 1\big) \nabla \log p(x \mid r)

    (for two attributes ``s(+1,+1) = s(+1,-1) + s(-1,+1) - s(-1,-1)``).  Choose ``r`` so that
    it and every ``r[i -> v_i]`` are combinations seen in training: then every term is a
    trained joint.  The marginals of partial-support data are not what Eq. 1 needs (with
    ``(+1, +1)`` held out, ``p(x | c_1 = +1)`` is the ``(+1, -1)`` cluster alone); the
    seen joints are.  Attributes that ``reference`` names and ``values`` does not are held
    at their reference value in every term.
    """
    if not hasattr(model, "condition") or not getattr(model, "condition_names", ()):
        raise FactorError(f"attributes() needs a conditional model with .condition(...), got {model!r}")
    if len(values) < 1:
        raise FactorError("attributes() needs at least one attribute value")
    for what, spec in (("values", values), ("reference", reference or {})):
        unknown = set(spec) - set(model.condition_names)
        if unknown:
            raise FactorError(
                f"model {model.name!r} has no attribute(s) {sorted(unknown)} (in {what}); "
                f"it takes {list(model.condition_names)}"
            )
    n = len(values)
    if gamma is None:
        gammas = [1.0] * n
    elif isinstance(gamma, (int, float)):
        if n != 2:
            raise FactorError(f"a scalar gamma weights the first of two attributes; got {n} attributes")
        gammas = [float(gamma), 1.0]
    else:
        gammas = [float(g) for g in gamma]
        if len(gammas) != n:
            raise FactorError(f"gamma has {len(gammas)} entries for {n} attributes {list(values)}")
    label = ",".join(f"{k}={v}" for k, v in values.items())
    if reference is None:
        leaves = [model.condition(**{k: v}) for k, v in values.items()]
        base = model
    else:
        missing = [k for k in values if k not in reference]
        if missing:
            raise FactorError(
                f"reference {reference!r} gives no value for attribute(s) {missing}; a joint "
                "composition needs the reference combination of every attribute it changes"
            )
        leaves = [model.condition(**{**reference, k: v}) for k, v in values.items()]
        base = model.condition(**reference)
        label += " via " + ",".join(f"{k}={v}" for k, v in reference.items())
    return Composite([*leaves, base], [*gammas, 1.0 - sum(gammas)], name=name or f"attributes({label})")

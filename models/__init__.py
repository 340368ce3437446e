"""Learned score factors (installed as ``probcomp.models``).

* :class:`ModelFactor` wraps any denoising network (eps, x0, v or score
  prediction, any continuous or discrete VP schedule) as a score factor.
"""

from .parameterisation import PREDICTIONS, ModelFactor, to_eps

__all__ = ["PREDICTIONS", "ModelFactor", "to_eps"]

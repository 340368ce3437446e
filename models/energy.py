r"""Energy parameterisation: a network ``f`` turned into an energy with ``score = -grad E``.

Two published forms (Du et al. 2023, "Reduce, Reuse, Recycle", Sec. 3), selectable
by ``form``, define a scalar potential ``g`` in eps units:

* ``"residual"``: ``g(y, t) = 0.5 ||y - f(y, t)||^2``;
* ``"norm"``:     ``g(y, t) = 0.5 ||f(y, t)||^2``.

The network is trained so that ``grad_y g`` predicts the noise ``eps``, i.e.
``eps_hat = grad_y g``; consistency with the eps convention
``score = -eps_hat / sigma(t)`` then fixes the energy's noise-level scaling,

.. math:: E(y, t) = g(y, t) / \sigma(t), \qquad -\nabla_y E = -\nabla_y g / \sigma = s(y, t).

``EnergyModel.forward`` returns ``eps_hat`` (by autograd, with a graph while
training, so the usual eps-matching loss trains it); ``potential`` returns ``g``.
"""

from __future__ import annotations

import torch
from torch import nn

from probcomp.errors import FactorError

__all__ = ["FORMS", "EnergyModel"]

FORMS = ("residual", "norm")


class EnergyModel(nn.Module):
    """Wrap ``net(y, t, cond) -> (N, *shape)`` as a potential ``g`` with ``eps_hat = grad_y g``."""

    def __init__(self, net: nn.Module, form: str = "norm", *, init_output: bool = True) -> None:
        super().__init__()
        if form not in FORMS:
            raise FactorError(f"unknown energy form {form!r}; expected one of {FORMS}")
        self.net, self.form = net, form
        out = getattr(net, "out", None)
        if (
            init_output
            and form == "norm"
            and isinstance(out, nn.Sequential)
            and isinstance(last := out[-1], nn.Linear)
        ):
            # ||f||^2 has zero gradient in every weight when f == 0: undo a zero-initialised
            # output layer before training (loading passes init_output=False)
            last.reset_parameters()

    def potential(self, y: torch.Tensor, t: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        """``g(y, t)``, shape ``(N,)``."""
        f = self.net(y, t, cond)
        r = y - f if self.form == "residual" else f
        return 0.5 * r.reshape(r.shape[0], -1).square().sum(1)

    def forward(self, y: torch.Tensor, t: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        with torch.enable_grad():
            yg = y if y.requires_grad else y.detach().requires_grad_(True)
            g = self.potential(yg, t, cond)
            (eps,) = torch.autograd.grad(g.sum(), yg, create_graph=self.training)
        return eps

r"""Composition operators.

Linear operators are sugar over observation weights: they build a
:class:`Composite`, whose score is ``sum_k w_k s_k``, and the compiled scene
expands it into one weighted term per factor (so factors that share a network
are still evaluated in one batched call).  With the target of a scene

.. math:: \log p(X) = \log \mathrm{prior}(X) + \sum_i w_i \log p_i(f_i(X)),

* ``product(p_1, ..., p_k)``               -- all ``w = 1`` (the conjunction of Liu et al. 2022);
* ``weighted([p_i], [w_i])``               -- any real weights;
* ``projective(p_1..p_k, background=p_b)`` -- Bradley et al. 2025 Def. 5.1 / Eq. 6:
  ``s_b + sum_i (s_i - s_b)``, i.e. weight ``1 - k`` on the background; with
  ``masks=[m_1..m_k]`` each score delta is kept on its own coordinates only,
  ``s_b + sum_i m_i * (s_i - s_b)`` (:class:`MaskedProjective`, Def. 5.2 imposed);
* ``guidance(cond, uncond, scale=g)``      -- ``(1 + g) s_c - g s_u`` (Ho & Salimans 2022);
* ``negation(p, q, scale=g)``              -- ``E_p - g E_q`` (weights ``1, -g``; Du et al. 2023);
* ``attributes(model, {a: v, ...}, gamma)`` -- Gaudi et al. 2025 (COIND) Eq. 1/2:
  ``sum_i gamma_i s(c_i) - (sum_i gamma_i - 1) s(null)``, the conjunction of
  attribute-conditional scores.

The mixture is not linear in scores; it needs normalised energies (Du et al. 2023):

* ``mixture([p_k], [pi_k])`` -- ``E = -logsumexp_k(log pi_k - E_k)`` and
  ``s = sum_k softmax_k(log pi_k - E_k) s_k``.  Because the forward noising is
  linear, the noised mixture is the mixture of the noised factors, so this is
  exact at every ``t`` when the ``E_k`` are normalised (as analytic factors' are).

Every factor's time argument is in its own schedule; composed factors map
their time to each part's schedule by matching log-SNR (:func:`probcomp.schedules.match`).

References: Liu et al. 2022, *Compositional Visual Generation with Composable Diffusion
Models*; Du et al. 2023, *Reduce, Reuse, Recycle: Compositional Generation with
Energy-Based Diffusion Models and MCMC*; Ho & Salimans 2022, *Classifier-Free Diffusion
Guidance*; Bradley et al. 2025, *Mechanisms of Projective Composition of Diffusion
Models*; Gaudi et al. 2025, *Compositional World Knowledge Leads to High Utility
Synthetic Data* (COIND).
"""

from .attributes import attributes
from .linear import Composite, guidance, negation, product, weighted
from .mixture import Mixture, mixture
from .projective import MaskedProjective, location_masks, projective

__all__ = [
    "Composite",
    "MaskedProjective",
    "Mixture",
    "attributes",
    "guidance",
    "location_masks",
    "mixture",
    "negation",
    "product",
    "projective",
    "weighted",
]

r"""Inverse generative modelling: the concepts that explain an observation (Wang 2026, ch. 5).

A scene for inversion gives data to its observables and makes the controls their
conditions: ``scene.observe("img", value=x, factor=model, condition={"xy": c1})``.
Observables that share one observed value compose by summing their weighted noise
predictions, and the concepts ``c`` are found by minimising the composed denoising
loss, the variational proxy for ``-log p(x | c^1..c^K)`` (Wang 2026, Eq. 5.7):

.. math::
    L(c) = \mathbb E_{t, \epsilon}\, \frac1D \Big\| \epsilon - \sum_i w_i\,
    \hat\epsilon_i\big(\alpha_t x + \sigma_t \epsilon, t \mid c_{(i)}\big) \Big\|^2,

with ``t`` uniform on ``t_range`` of the factors' schedule and ``D`` the number of
elements of ``x`` (Eq. 5.7 sums over them; the mean reads the same at any image size).
Several observed values add their losses.  The scene is compiled into a
:class:`~probcomp.compiled_inversion.CompiledInversion`, which holds the loss, the shared
noise draws and the NFE counters.

* **All-discrete scenes** (controls with ``Categorical``-like priors): exhaustive
  enumeration (Alg. 4) under ``draws`` shared noise draws (common random numbers).
  Each observable is evaluated once per distinct value of *its own* conditions, and
  every configuration's sum is assembled from those, so the network cost is
  ``sum_i M^{|c_i|}`` -- ``M K`` for K one-label concepts -- instead of ``K M^K``.
  Above ``max_configs`` configurations, coordinate search (beam width 1, O(M K) per
  sweep; the scalable alternative of Wang 2026, ch. 5) replaces enumeration
  (:mod:`.discrete`).
* **Continuous concepts**: Adam or SGD with one shared ``(t, eps)`` draw per step
  (Alg. 5) from ``restarts`` starts, pruning the worst ``1 - keep`` of the live
  restarts every ``prune_every`` steps by their mean loss since the last pruning
  (same draws for all, so the comparison is fair).  Discrete controls among them
  are set by coordinate search at every pruning and at the end.  The survivors are
  re-scored with ``draws`` shared draws and the best is returned (:mod:`.descent`).
* **Starts**: ``init="random"`` draws from the controls' priors (``N(0, I)`` where a
  control has none, as in Alg. 5); ``init="greedy"`` makes the first restart by
  matching pursuit with backfitting: concept observables are placed one at a time,
  each at the best point of a grid over its controls' bounded supports (times the
  discrete candidates, or with them relaxed to class probabilities and enumerated
  after) given those already placed and the unplaced ones left out of the sum; then
  ``greedy_sweeps`` passes re-place each observable given all the others.  The first
  pass scores a partial scene, which is the right model only when concept terms add
  up (composed training, Eq. 5.5); the backfitting passes score the whole scene, so
  they also repair starts under a weighted background (tested on the analytic
  projective scene) (:mod:`.placement`).
* **Relocation** (``relocate``): after the descent, a backfitting sweep on the best
  restart: each concept observable's grid scan (on the search draws, the others at their
  refined places) gives its 4 best grid points, each refined off the grid by 10 optimiser
  steps on those draws, and the best of them replaces the current place only if it
  scores lower on all ``draws`` shared draws.  A short descent follows, and the round is
  kept only if the re-scored loss drops.  With the others refined, the residual shows the
  object no concept explains, which the start, scored with the others still on the grid,
  can miss (in object discovery: two concepts on one blob whose colours add up to its
  colour, and a blob nobody visits) (:mod:`.placement`).
* **Scoring an answer**: :meth:`ConceptInversion.loss` gives ``L(c)`` of any concepts on
  the draws a run with the same seed re-scores on, e.g. to tell a search failure (the
  truth scores lower than the answer) from a model failure (it scores higher).
* **Choosing K** (Eq. 5.9, Alg. 6): :meth:`ConceptInversion.choose_k` inverts one
  scene per ``K`` and keeps the ``K`` whose minimised loss, re-scored on the same
  shared draws for every ``K``, is lowest.

Priors enter through their support and initialisation: a continuous control is
drawn from its prior and projected back into an interval support after each step;
the unweighted denoising loss is not on the log-likelihood scale, so the prior's
density is not added to it.

A run returns a :class:`~probcomp.results.Result` whose ``point`` is the answer (see
:meth:`ConceptInversion.run`).
"""

from .engine import ConceptInversion

__all__ = ["ConceptInversion"]

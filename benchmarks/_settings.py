"""Engine settings the recorded benchmark runs used, named so that a run stays reproducible
when an engine's defaults change."""

from __future__ import annotations

from typing import Any

#: AnnealedMCMC's defaults before the cost-accuracy frontier (``frontier.py``) changed them:
#: three leapfrog steps, a DDPM step between levels, no weights, 100 levels uniform on
#: ``[1e-3, 1]``.  Every committed result of annealed MCMC written before that change used these
#: (the number of levels and transitions each script passes itself).
EARLIER_ANNEALED: dict[str, Any] = {
    "leapfrog_steps": 3,
    "reverse_step": True,
    "resample": None,
    "spacing": "uniform",
    "t_max": 1.0,
    "t_min": 1e-3,
}

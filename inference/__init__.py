"""Inference engines (installed as ``probcomp.inference``).

Each engine compiles a :class:`probcomp.Scene` once (``engine.compile(scene)``)
and runs the compiled loop (``engine.run(scene_or_compiled, ...)``).
"""

from .annealed_mcmc import AnnealedMCMC
from .concept_inversion import ConceptInversion, InversionResult
from .per_step_em import PerStepEM
from .reverse_diffusion import ReverseDiffusion

__all__ = ["AnnealedMCMC", "ConceptInversion", "InversionResult", "PerStepEM", "ReverseDiffusion"]

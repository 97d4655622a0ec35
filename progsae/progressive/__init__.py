"""Progressive coding: latent importance, its power law, sorting, pruning to any size, and cutting to any k."""

from progsae.progressive.importance import Importance, importance, sae_fingerprint
from progsae.progressive.power_law import PowerLawFit, PowerLawSettings, cumulative_share, fit_power_law
from progsae.progressive.prune import at_size, is_progressive, prune, sort_sae
from progsae.progressive.sparsity import at_k

__all__ = [
    "Importance", "importance", "sae_fingerprint", "PowerLawFit", "PowerLawSettings", "cumulative_share",
    "fit_power_law", "at_size", "at_k", "is_progressive", "prune", "sort_sae",
]

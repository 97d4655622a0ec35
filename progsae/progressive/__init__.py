"""Progressive coding: latent importance, its power law, sorting, and pruning to any size."""

from progsae.progressive.importance import Importance, importance, sae_fingerprint
from progsae.progressive.power_law import PowerLawFit, PowerLawSettings, cumulative_share, fit_power_law
from progsae.progressive.prune import at_size, is_progressive, prune, sort_sae

__all__ = [
    "Importance", "importance", "sae_fingerprint", "PowerLawFit", "PowerLawSettings", "cumulative_share",
    "fit_power_law", "at_size", "is_progressive", "prune", "sort_sae",
]

"""progsae: progressive coding of sparse autoencoders — one training run serves every SAE size."""

import os

# Idle OpenMP threads sleep instead of spinning: on a shared or small CPU, spinning made small ops 20-100x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from progsae.errors import ProgsaeError  # noqa: E402
from progsae.sae import SAE, SAEConfig, load_sae, save_sae
from progsae.progressive import Importance, PowerLawFit, at_k, at_size, fit_power_law, importance, prune, sort_sae
from progsae.splice import spliced

__version__ = "0.1.0"

__all__ = ["ProgsaeError", "SAE", "SAEConfig", "load_sae", "save_sae", "__version__"]
__all__ += ["Importance", "PowerLawFit", "at_k", "at_size", "fit_power_law", "importance", "prune", "sort_sae", "spliced"]

"""SAE architectures and their files. Importing this module registers every architecture."""

from progsae.sae.base import SAE, StepOutput, TrainContext
from progsae.sae.batchtopk import BatchTopKSAE
from progsae.sae.config import SAEConfig, check_prefixes
from progsae.sae.io import load_sae, save_sae
from progsae.sae.jumprelu import JumpReLUSAE
from progsae.sae.registry import REGISTRY, sae_class
from progsae.sae.relu import ReLUSAE
from progsae.sae.topk import TopKSAE

__all__ = [
    "SAE", "SAEConfig", "StepOutput", "TrainContext", "TopKSAE", "BatchTopKSAE", "ReLUSAE",
    "JumpReLUSAE", "REGISTRY", "sae_class", "load_sae", "save_sae", "check_prefixes",
]

"""Evaluations of SAEs at any size: each module has a config, a typed result record and an evaluate_* function.

    reconstruction  MSE, FVU, explained variance, cosine, L0, dead/dense fractions, shrinkage
    lm_loss         recaptured next-token CE (zero/mean ablations), ΔCE, KL, with a shared model prefix
    similarity      RSA and linear CKA against the original activations and the full-size reconstruction
    interp/         explain-then-simulate Pearson scores per importance band (token or LLM explainer)
    runner          all of them over SAEs × sizes × modes, written as one results JSON (`progsae eval`)
"""

from progsae.evals.common import Variant
from progsae.evals.interp.score import InterpConfig, InterpResult, evaluate_interp
from progsae.evals.lm_loss import LMLossConfig, LMLossResult, evaluate_lm_loss, evaluate_lm_loss_from_store
from progsae.evals.reconstruction import ReconstructionConfig, ReconstructionResult, evaluate_reconstruction
from progsae.evals.runner import EvalResults, EvalRunConfig, build_variants, format_table, run_evals
from progsae.evals.similarity import SimilarityConfig, SimilarityResult, evaluate_similarity, linear_cka, rsa

__all__ = [
    "Variant", "InterpConfig", "InterpResult", "evaluate_interp", "LMLossConfig", "LMLossResult", "evaluate_lm_loss",
    "evaluate_lm_loss_from_store", "ReconstructionConfig", "ReconstructionResult", "evaluate_reconstruction",
    "EvalResults", "EvalRunConfig", "build_variants", "format_table", "run_evals", "SimilarityConfig",
    "SimilarityResult", "evaluate_similarity", "linear_cka", "rsa",
]

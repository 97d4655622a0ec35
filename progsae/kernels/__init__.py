"""Fast sparse TopK kernels: autograd functions whose backward touches only the selected latents."""

from progsae.kernels.prefix_loss import grid_sq_errors, prefix_sq_errors
from progsae.kernels.sparse_topk import sparse_decode, sparse_decode_bags, sparse_encode, topk_encode

__all__ = ["grid_sq_errors", "prefix_sq_errors", "sparse_decode", "sparse_decode_bags", "sparse_encode", "topk_encode"]

"""Inference fast paths give the autograd path's numbers: sparse decode, in-place masking, addmm pre-activations."""

import pytest
import torch

from progsae.sae import SAEConfig, sae_class


def random_sae(arch: str, n: int = 512, d: int = 32, **cfg):
    torch.manual_seed(0)
    k = None if arch == "relu" else 8
    sae = sae_class(arch)(SAEConfig(architecture=arch, d_in=d, n_latents=n, k=k, **cfg))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
        sae.normalize_decoder()
    return sae


@pytest.mark.parametrize("arch, mask", [("topk", None), ("topk", 100), ("batchtopk", None), ("relu", None)])
def test_no_grad_encode_and_decode_equal_the_autograd_path(arch, mask):
    sae = random_sae(arch, mask_size=mask)
    x = torch.randn(300, 32)
    z_grad = sae.encode(x)  # parameters require grad: the autograd path (clone, dense decode)
    x_hat_grad = z_grad @ sae.W_dec + sae.b_dec
    with torch.no_grad():
        z = sae.encode(x)
        x_hat = sae.decode(z)
    assert torch.equal(z, z_grad.detach())
    if mask is not None:
        assert not z[:, mask:].any()
    torch.testing.assert_close(x_hat, x_hat_grad.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.pre_acts(x), (x - sae.b_dec) @ sae.W_enc + sae.b_enc, rtol=1e-5, atol=1e-5)


def test_sparse_decode_handles_empty_rows_and_dense_codes():
    sae = random_sae("topk")
    z = torch.zeros(5, 512)
    z[1, [3, 400]] = torch.tensor([1.5, 2.0])  # rows 0, 2, 3, 4 decode to b_dec alone
    with torch.no_grad():
        out = sae.decode(z)
        dense = sae.decode(torch.rand(5, 512))  # > 1/32 nonzero: the dense matmul
    torch.testing.assert_close(out, z @ sae.W_dec + sae.b_dec)
    assert torch.equal(out[0], sae.b_dec.detach())
    assert dense.shape == (5, 32)


def test_device_and_dtype_follow_the_weights():
    sae = random_sae("topk")
    assert sae.device == torch.device("cpu") and sae.dtype == torch.float32
    sae = sae.to(torch.float64)
    assert sae.dtype == torch.float64 and sae.encode(torch.randn(4, 32, dtype=torch.float64)).dtype == torch.float64

"""LayoutAdam equals plain fused Adam and its checkpointed state fits; W_enc is a contiguous [D, N] parameter."""

import pytest
import torch

from progsae.errors import ProgsaeError
from progsae.sae import SAEConfig, TrainContext, sae_class
from progsae.train.optimizer import LayoutAdam


def small_sae(seed: int = 0):
    torch.manual_seed(seed)
    sae = sae_class("topk")(SAEConfig(architecture="topk", d_in=24, n_latents=96, k=4))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
        sae.normalize_decoder()
    return sae


def train(sae, step, zero_grad, steps: int = 5):
    torch.manual_seed(1)
    for _ in range(steps):
        sae.training_step(torch.randn(64, 24), TrainContext()).loss.backward()
        step()
        zero_grad()


def test_w_enc_is_contiguous_so_state_dict_saves_as_is_and_views_flatten(tmp_path):
    from safetensors.torch import load_file, save_file

    sae = small_sae()
    assert sae.W_enc.is_contiguous() and sae.W_enc.shape == (24, 96)
    assert sae.W_enc.view(-1).shape == (24 * 96,)
    save_file(sae.state_dict(), str(tmp_path / "sd.safetensors"))  # raised on the old transposed view
    back = load_file(str(tmp_path / "sd.safetensors"))
    for name, t in sae.state_dict().items():
        assert torch.equal(back[name], t), name
    sae.training_step(torch.randn(64, 24), TrainContext()).loss.backward()
    assert sae.W_enc.grad.is_contiguous()  # the sparse backward's [N, D] gradient lands in W_enc's layout


def test_layout_adam_equals_plain_fused_adam():
    ours, ref = small_sae(), small_sae()
    layout = LayoutAdam(ours.parameters(), lr=1e-2)
    train(ours, layout.step, layout.zero_grad)
    plain = torch.optim.Adam(ref.parameters(), lr=1e-2, fused=True)
    train(ref, plain.step, plain.zero_grad)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    assert (ours.W_enc - small_sae().W_enc).abs().max() > 1e-3  # the steps moved W_enc


def test_state_round_trips_in_the_parameters_shapes_and_misfits_are_refused():
    sae = small_sae()
    opt = LayoutAdam(sae.parameters(), lr=1e-2)
    train(sae, opt.step, opt.zero_grad, steps=2)
    state = opt.state_tensors()
    assert state["0/exp_avg"].shape == sae.W_enc.shape  # logical [D, N], as plain Adam would save it
    again = LayoutAdam(sae.parameters(), lr=1e-2)
    again.load_state_tensors(state)
    for k, v in again.state_tensors().items():
        assert torch.equal(v, state[k]), k
    bad = dict(state, **{"0/exp_avg": state["0/exp_avg"].t()})
    with pytest.raises(ProgsaeError, match=r"Adam state 0/exp_avg has shape \(96, 24\), the parameter \(24, 96\)"):
        again.load_state_tensors(bad)

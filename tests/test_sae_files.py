"""SAE folders: exact save/load round trips and one-line errors for bad files."""

import json

import pytest
import torch

from progsae import ProgsaeError, SAEConfig, load_sae
from progsae.sae import REGISTRY, sae_class


def random_sae(arch: str, d: int = 16, n: int = 48, k: int = 6, seed: int = 0):
    torch.manual_seed(seed)
    sae = sae_class(arch)(SAEConfig(architecture=arch, d_in=d, n_latents=n, k=k))
    for p in sae.parameters():
        p.data.normal_(0, 0.3)
    sae.normalize_decoder()
    for name in sae.extra_tensors:
        getattr(sae, name).data.uniform_(0.1, 0.5)
    return sae


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_save_load_reproduces_outputs_exactly(arch, tmp_path):
    sae = random_sae(arch)
    x = torch.randn(32, 16)
    sae.save(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert type(loaded) is type(sae)
    assert torch.equal(loaded(x), sae(x))
    assert torch.equal(loaded.encode(x), sae.encode(x))


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_permutation_leaves_outputs_unchanged(arch):
    sae = random_sae(arch)
    x = torch.randn(32, 16)
    perm = torch.randperm(sae.n_latents)
    permuted = sae.permute(perm)
    assert (permuted(x) - sae(x)).abs().max() <= 1e-5
    assert torch.equal(permuted.encode(x), sae.encode(x)[:, perm])


def test_missing_folder_is_one_line_error(tmp_path):
    with pytest.raises(ProgsaeError, match="no such SAE folder"):
        load_sae(tmp_path / "nope")


def test_truncated_weights_are_refused(tmp_path):
    random_sae("topk").save(tmp_path / "s")
    w = tmp_path / "s" / "sae.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(ProgsaeError, match="truncated|unreadable"):
        load_sae(tmp_path / "s")


def test_shape_mismatch_names_the_tensor(tmp_path):
    random_sae("topk").save(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    cfg["d_in"] = 17
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ProgsaeError, match="W_enc has shape"):
        load_sae(tmp_path / "s")


def test_prefixes_that_do_not_nest_are_refused():
    with pytest.raises(ProgsaeError, match="strictly increase"):
        SAEConfig(architecture="topk", d_in=4, n_latents=64, k=4, prefixes=[32, 16, 64]).validate()
    with pytest.raises(ProgsaeError, match="exceeds the dictionary"):
        SAEConfig(architecture="topk", d_in=4, n_latents=64, k=4, prefixes=[16, 128]).validate()

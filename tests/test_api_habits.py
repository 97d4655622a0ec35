"""The API a SAELens user reaches for: load_from_disk / from_pretrained / load_sae of a Hub path, a state_dict that
safetensors saves as is, .device/.dtype, and progsae.spliced (the LM-loss eval's own splice)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import progsae
import progsae.interop.hub as hub
from fixtures.models import torch_threads
from progsae import SAE, ProgsaeError, load_sae
from progsae.data.hooks import resolve_hook
from progsae.data.models import load_model
from progsae.evals.common import Variant
from progsae.evals.lm_loss import evaluate_lm_loss, position_stats
from progsae.sae import SAEConfig, TopKSAE


def random_topk(d: int = 16, n: int = 48, k: int = 4, seed: int = 0) -> TopKSAE:
    torch.manual_seed(seed)
    sae = TopKSAE(SAEConfig(architecture="topk", d_in=d, n_latents=n, k=k))
    for p in sae.parameters():
        p.data.normal_(0, 0.3)
    sae.normalize_decoder()
    return sae


def test_state_dict_saves_with_safetensors_and_load_from_disk_round_trips(tmp_path):
    sae = random_topk()
    assert sae.W_enc.is_contiguous() and sae.W_enc.view(-1).numel() == 16 * 48
    assert sae.device == torch.device("cpu") and sae.dtype == torch.float32
    save_file(sae.state_dict(), str(tmp_path / "sd.safetensors"))
    again = random_topk(seed=1)
    again.load_state_dict(load_file(str(tmp_path / "sd.safetensors")))
    x = torch.randn(5, 16)
    assert torch.equal(again(x), sae(x))
    sae.save(tmp_path / "sae")
    loaded = SAE.load_from_disk(tmp_path / "sae")
    assert isinstance(loaded, TopKSAE) and torch.equal(loaded(x), sae(x))
    for name, t in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    with pytest.raises(ProgsaeError, match="no such SAE folder"):
        SAE.load_from_disk(tmp_path / "missing")


@pytest.fixture()
def fake_hub(tmp_path, monkeypatch):
    """snapshot_download (the one network call) replaced by a local repo holding one progsae SAE folder."""
    sae = random_topk()
    sae.save(tmp_path / "repo" / "layer_3" / "topk")
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, revision=None, cache_dir=None):
        calls.append((repo_id, allow_patterns, revision))
        if repo_id != "owner/saes":
            raise OSError("404 Client Error: Repository Not Found")
        return str(tmp_path / "repo")

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.chdir(tmp_path)
    return sae, calls


def test_from_pretrained_and_load_sae_take_a_hub_path_through_the_import_download(fake_hub):
    sae, calls = fake_hub
    x = torch.randn(5, 16)
    a = SAE.from_pretrained("owner/saes/layer_3/topk", revision="v2")
    b = progsae.load_sae("owner/saes/layer_3/topk")
    assert calls == [("owner/saes", ["layer_3/topk/*", "layer_3/config.json"], "v2"),
                     ("owner/saes", ["layer_3/topk/*", "layer_3/config.json"], None)]  # import --from-hub's patterns
    assert torch.equal(a(x), sae(x)) and torch.equal(b(x), sae(x))
    assert a.cfg.provenance["source_hub"] == {"spec": "owner/saes/layer_3/topk", "revision": "v2"}
    with pytest.raises(ProgsaeError, match="could not fetch 'nobody/none/x'"):
        load_sae("nobody/none/x")


def test_a_mistyped_local_path_never_goes_to_the_hub(fake_hub, tmp_path):
    _, calls = fake_hub
    (tmp_path / "runs").mkdir()
    for path in ("runs/typo", "./x/y", str(tmp_path / "nothing" / "here"), "single"):
        with pytest.raises(ProgsaeError, match="no such SAE folder"):
            load_sae(path)
    assert calls == []


def test_spliced_is_what_the_lm_loss_eval_measures(tiny_model_dirs):
    with torch_threads(1):
        model = load_model(str(tiny_model_dirs["llama"]))[0]
        d = model.config.hidden_size
        sae = random_topk(d=d, n=64, k=8)
        g = torch.Generator().manual_seed(0)
        ids_BT = torch.randint(4, model.config.vocab_size, (3, 20), generator=g)
        site = resolve_hook(model, "resid_post.1")
        with torch.no_grad():
            clean = model(input_ids=ids_BT).logits
            with progsae.spliced(model, "blocks.1.hook_resid_post", sae) as got:  # any accepted spelling of the site
                logits = model(input_ids=ids_BT).logits
            after = model(input_ids=ids_BT).logits
        assert got.kind == "resid_post" and got.layer == 1
        assert torch.equal(after, clean)  # the hook is gone on exit
        assert (logits - clean).abs().max() > 1e-3
        torch.testing.assert_close(logits[:, 0], clean[:, 0])  # BOS keeps its activation
        lse, tgt, _ = position_stats(logits, ids_BT)
        ce_by_hand = float((lse - tgt).sum() / lse.numel())
        steps: list[float] = []
        (rec,) = evaluate_lm_loss(model, site, [ids_BT], [Variant.of(sae, "sae")], torch.zeros(d), progress=steps.append)
    assert rec.ce_sae == pytest.approx(ce_by_hand, rel=1e-5)
    assert steps == [1, 1, 1, 1]  # the bar moves one whole forward at a time (clean, zero, mean, SAE)

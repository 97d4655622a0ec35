"""Interoperability: SAEs built and saved by SAELens / sparsify (and dictionary_learning's documented layout)
import with the same outputs; progsae SAEs exported to SAELens load there with the same outputs;
foreign, corrupt and pickled files are refused with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import progsae
from progsae import ProgsaeError, SAEConfig, load_sae
from progsae.cli import main as cli_main
from progsae.interop import detect_format, export_sae
from progsae.sae import sae_class

D, N, K = 16, 48, 5
TOL = 1e-5


@pytest.fixture(scope="module")
def sl():
    """sae_lens, imported once (it is slow to import)."""
    return pytest.importorskip("sae_lens")


@pytest.fixture(scope="module")
def sp():
    return pytest.importorskip("sparsify")


def x_BD(seed: int = 1, rows: int = 64) -> torch.Tensor:
    return torch.randn(rows, D, generator=torch.Generator().manual_seed(seed)) * 2


def randomize(module: torch.nn.Module, seed: int = 0, threshold_range=(-0.05, 0.3)) -> torch.nn.Module:
    """Random weights and biases everywhere, thresholds in a range that makes some latents fire."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if isinstance(getattr(module, "threshold", None), torch.Tensor):
            lo, hi = threshold_range
            module.threshold.copy_(torch.rand(module.threshold.shape, generator=g) * (hi - lo) + lo)
    return module


def assert_same(ours, z_ref: torch.Tensor, x_hat_ref: torch.Tensor, x: torch.Tensor) -> None:
    with torch.no_grad():
        z = ours.encode(x)
        assert (z - z_ref).abs().max().item() <= TOL
        assert (ours.decode(z_ref) - x_hat_ref).abs().max().item() <= TOL
        assert (ours(x) - x_hat_ref).abs().max().item() <= TOL
    assert (z_ref != 0).any(), "test data must make some latents fire"


def progsae_sae(arch: str, seed: int = 0, **cfg) -> torch.nn.Module:
    cfg.setdefault("k", K if arch in ("topk", "batchtopk") else None)
    sae = sae_class(arch)(SAEConfig(architecture=arch, d_in=D, n_latents=N, **cfg))
    randomize(sae, seed, threshold_range=(0.05, 0.3))
    return sae


# ---- SAELens -> progsae ---------------------------------------------------------------------
def _saelens_inference_sae(sl, kind: str):
    s = sl.saes
    if kind == "standard":
        return s.StandardSAE(s.StandardSAEConfig(d_in=D, d_sae=N, metadata=sl.saes.sae.SAEMetadata(model_name="m", hook_name="blocks.3.hook_resid_post")))
    if kind == "gemmascope_jumprelu":
        return s.JumpReLUSAE(s.JumpReLUSAEConfig(d_in=D, d_sae=N, apply_b_dec_to_input=False))
    if kind == "topk":
        return s.TopKSAE(s.TopKSAEConfig(d_in=D, d_sae=N, k=K))
    if kind == "topk_rescaled":
        return s.TopKSAE(s.TopKSAEConfig(d_in=D, d_sae=N, k=K, rescale_acts_by_decoder_norm=True))
    raise KeyError(kind)


@pytest.mark.parametrize("kind,arch", [("standard", "relu"), ("gemmascope_jumprelu", "jumprelu"), ("topk", "topk"), ("topk_rescaled", "topk")])
def test_saelens_saved_sae_imports_with_same_outputs(sl, kind, arch, tmp_path):
    ref = randomize(_saelens_inference_sae(sl, kind))
    ref.save_model(tmp_path / "sl")
    assert detect_format(tmp_path / "sl") == "saelens"
    ours = load_sae(tmp_path / "sl")
    x = x_BD()
    with torch.no_grad():
        z_ref = ref.encode(x)
        assert_same(ours, z_ref, ref.decode(z_ref), x)
    assert ours.cfg.architecture == arch
    assert ours.cfg.provenance["source_format"] == "saelens"
    assert ours.cfg.subtract_b_dec is (kind != "gemmascope_jumprelu")
    if kind == "standard":
        assert (ours.cfg.model, ours.cfg.hook) == ("m", "resid_post.3")  # TransformerLens name -> progsae hook site
        assert ours.cfg.provenance["source_hook"] == "blocks.3.hook_resid_post"
    if kind == "gemmascope_jumprelu":  # some thresholds were negative: SAELens ReLUs first, progsae clamps them to 0
        assert float(ref.threshold.detach().min()) < 0 <= float(ours.threshold.min())


@pytest.mark.parametrize("matryoshka", [False, True])
def test_saelens_batchtopk_and_matryoshka_import_as_batchtopk(sl, matryoshka, tmp_path):
    s = sl.saes
    if matryoshka:
        ref = s.MatryoshkaBatchTopKTrainingSAE(s.MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=N, k=K, matryoshka_widths=[8, 24, N]))
    else:
        ref = s.BatchTopKTrainingSAE(s.BatchTopKTrainingSAEConfig(d_in=D, d_sae=N, k=K))
    randomize(ref)
    ref.topk_threshold = torch.tensor(0.4, dtype=torch.double)
    ref.save_inference_model(tmp_path / "inference")  # SAELens' convention: a JumpReLU with a uniform threshold
    ref.save_model(tmp_path / "training")  # the training folder keeps topk_threshold and the training config
    inference = sl.SAE.load_from_disk(tmp_path / "inference")
    x = x_BD()
    with torch.no_grad():
        z_ref = inference.encode(x)
        x_hat_ref = inference.decode(z_ref)
    for folder in ("inference", "training"):
        ours = load_sae(tmp_path / folder)
        assert ours.cfg.architecture == "batchtopk" and ours.cfg.k == K
        assert ours.cfg.prefixes == ([8, 24, N] if matryoshka else None)
        assert abs(float(ours.threshold) - 0.4) < 1e-6
        assert_same(ours, z_ref, x_hat_ref, x)


def test_saelens_pre_v6_config_imports(sl, tmp_path):
    """Old SAELens folders: hook_point at the top level, TopK via activation_fn_kwargs."""
    ref = randomize(_saelens_inference_sae(sl, "topk"))
    ref.save_model(tmp_path / "old")
    old = {
        "d_in": D, "d_sae": N, "dtype": "torch.float32", "device": "cpu", "model_name": "gpt2",
        "hook_point": "blocks.8.hook_resid_pre", "hook_point_layer": 8, "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K}, "apply_b_dec_to_input": True, "normalize_activations": False,
        "sae_lens_training_version": "3.2.0",
    }
    (tmp_path / "old" / "cfg.json").write_text(json.dumps(old))
    ours = load_sae(tmp_path / "old")
    assert (ours.cfg.architecture, ours.cfg.k, ours.cfg.hook, ours.cfg.model) == ("topk", K, "resid_pre.8", "gpt2")
    theirs = sl.SAE.load_from_disk(tmp_path / "old")
    x = x_BD()
    with torch.no_grad():
        z_ref = theirs.encode(x)
        assert_same(ours, z_ref, theirs.decode(z_ref), x)


# ---- progsae -> SAELens ---------------------------------------------------------------------
EXPORT_CASES = {
    "relu": lambda: progsae_sae("relu"),
    "topk": lambda: progsae_sae("topk"),
    "jumprelu_no_bdec": lambda: progsae_sae("jumprelu", subtract_b_dec=False),
    "batchtopk": lambda: progsae_sae("batchtopk"),
    "matryoshka_topk": lambda: progsae_sae("topk", prefixes=[8, 24, N]),
    "matryoshka_batchtopk": lambda: progsae_sae("batchtopk", prefixes=[12, N]),
    "pruned_retopk": lambda: progsae_sae("topk").select(torch.randperm(N, generator=torch.Generator().manual_seed(3))[:20], k=K),
    "mask_jumprelu": lambda: progsae_sae("jumprelu").select(torch.arange(N), mask_size=20),
    "mask_batchtopk": lambda: progsae_sae("batchtopk").select(torch.arange(N), mask_size=30),
    "matryoshka_prefix_mask": lambda: progsae.at_size(progsae_sae("batchtopk", prefixes=[12, 24, N]), 24, mode="mask"),
    "matryoshka_prefix_retopk": lambda: progsae.at_size(progsae_sae("topk", prefixes=[12, 24, N]), 24, mode="retopk"),
    "batchtopk_untrained": lambda: progsae_sae("batchtopk").select(torch.arange(N), mask_size=None),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_loads_in_saelens_with_same_outputs(sl, case, tmp_path):
    ours = EXPORT_CASES[case]()
    if case == "batchtopk_untrained":  # no threshold learned yet: progsae encodes with per-row TopK
        ours.threshold.fill_(-1.0)
    ours.cfg.model, ours.cfg.hook = "HuggingFaceTB/SmolLM2-135M", "resid_post.5"
    ours.save(tmp_path / "ours")
    assert cli_main(["export", str(tmp_path / "ours"), "--to", "saelens", "--out", str(tmp_path / "sl")]) == 0
    theirs = sl.SAE.load_from_disk(tmp_path / "sl")
    assert (theirs.cfg.metadata.model_name, theirs.cfg.metadata.hook_name) == ("HuggingFaceTB/SmolLM2-135M", "blocks.5.hook_resid_post")
    x = x_BD()
    with torch.no_grad():
        z = ours.encode(x)
        kept = ours.cfg.mask_size or ours.n_latents  # a mask-mode SAE exports as its kept latents
        assert (z[:, kept:] == 0).all()
        z_theirs = theirs.encode(x)
        assert z_theirs.shape == (x.shape[0], kept)
        assert (z_theirs - z[:, :kept]).abs().max().item() <= TOL
        assert (theirs(x) - ours(x)).abs().max().item() <= TOL
    assert (z != 0).any()
    back = load_sae(tmp_path / "sl")  # and back again: same architecture, k and (kept) prefixes
    kept_prefixes = [p for p in ours.cfg.prefixes if p < kept] + [kept] if ours.cfg.prefixes else None
    arch = "topk" if case == "batchtopk_untrained" else ours.cfg.architecture
    assert (back.cfg.architecture, back.cfg.k, back.cfg.prefixes, back.cfg.hook) == (arch, ours.cfg.k, kept_prefixes, "resid_post.5")
    assert (back(x) - ours(x)).abs().max().item() <= TOL
    if "prune" in ours.cfg.provenance:
        assert back.cfg.provenance["prune"] == ours.cfg.provenance["prune"]


def test_mask_mode_topk_export_is_refused_or_retopk_on_request(sl, tmp_path):
    masked = progsae_sae("topk").select(torch.arange(N), mask_size=12)
    with pytest.raises(ProgsaeError, match="--allow-retopk"):
        export_sae(masked, "saelens", tmp_path / "no")
    assert not (tmp_path / "no").exists()
    export_sae(masked, "saelens", tmp_path / "yes", allow_retopk=True)
    theirs = sl.SAE.load_from_disk(tmp_path / "yes")
    retopk = masked.select(torch.arange(12), k=K)  # the retopk equivalent: TopK k among the 12 kept latents
    x = x_BD()
    with torch.no_grad():
        assert (theirs(x) - retopk(x)).abs().max().item() <= TOL
    meta = json.loads((tmp_path / "yes" / "cfg.json").read_text())["metadata"]["progsae"]
    assert meta["mask_size"] == 12 and "retopk" in meta["mask_export"]
    negative = progsae_sae("jumprelu")
    negative.threshold.data[3] = -0.1  # passes negative codes, which SAELens' ReLU-then-gate cannot produce
    with pytest.raises(ProgsaeError, match="negative thresholds"):
        export_sae(negative, "saelens", tmp_path / "neg")


# ---- sparsify -------------------------------------------------------------------------------
def _sparse_coder(sp, seed: int = 0, **cfg):
    torch.manual_seed(seed)
    coder = sp.SparseCoder(D, sp.SparseCoderConfig(num_latents=N, k=K, **cfg))
    with torch.no_grad():
        coder.encoder.bias.normal_(0, 0.3)
        coder.b_dec.normal_(0, 0.3)
        coder.W_dec.normal_(0, 0.3)
    return coder


@pytest.mark.parametrize("multi_topk", [False, True])
def test_sparsify_saved_coder_imports_with_same_outputs(sp, multi_topk, tmp_path):
    coder = _sparse_coder(sp, multi_topk=multi_topk)
    coder.save_to_disk(tmp_path / "run" / "layers.6")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m"}))
    folder = tmp_path / "run" / "layers.6"
    assert detect_format(folder) == "sparsify"
    ours = load_sae(folder)
    x = x_BD()
    with torch.no_grad():
        enc = coder.encode(x)
        z_ref = torch.zeros(x.shape[0], N).scatter(-1, enc.top_indices, enc.top_acts)
        assert_same(ours, z_ref, coder.decode(enc.top_acts, enc.top_indices), x)
        if not multi_topk:  # with multi_topk, sparsify's forward returns the 4k training reconstruction
            assert (ours(x) - coder(x).sae_out).abs().max().item() <= TOL
    assert (ours.cfg.architecture, ours.cfg.k, ours.cfg.hook, ours.cfg.model) == ("topk", K, "resid_post.6", "EleutherAI/pythia-70m")
    assert ours.cfg.provenance["source_format"] == "sparsify"


def test_sparsify_folder_exports_straight_to_saelens(sl, sp, tmp_path):
    coder = _sparse_coder(sp, seed=3)
    coder.save_to_disk(tmp_path / "sp")
    assert cli_main(["export", str(tmp_path / "sp"), "--to", "saelens", "--out", str(tmp_path / "sl")]) == 0
    theirs = sl.SAE.load_from_disk(tmp_path / "sl")
    x = x_BD()
    with torch.no_grad():
        assert (theirs(x) - coder(x).sae_out).abs().max().item() <= TOL


def test_sparsify_run_folder_and_unsupported_coders_are_named(sp, tmp_path):
    _sparse_coder(sp).save_to_disk(tmp_path / "run" / "layers.0")
    _sparse_coder(sp).save_to_disk(tmp_path / "run" / "layers.1")
    with pytest.raises(ProgsaeError, match=r"holds 2 SAE folders \(layers.0, layers.1\); pass one"):
        load_sae(tmp_path / "run")
    _sparse_coder(sp, transcode=True).save_to_disk(tmp_path / "tc")
    with pytest.raises(ProgsaeError, match="transcoder"):
        load_sae(tmp_path / "tc")


# ---- dictionary_learning (its documented ae.pt layouts; the package itself pulls in a CUDA torch) ----
def _dl_folder(path: Path, dict_class: str, state: dict, **trainer) -> Path:
    path.mkdir(parents=True)
    torch.save(state, path / "ae.pt")
    config = {"trainer": {"dict_class": dict_class, "activation_dim": D, "dict_size": N, "lm_name": "EleutherAI/pythia-70m-deduped", "layer": 3, **trainer}, "buffer": {"ctx_len": 128}}
    (path / "config.json").write_text(json.dumps(config))
    return path


def _dl_cases():
    """state dict and the reference encode (transcribed from dictionary_learning) for each class."""
    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3  # noqa: E731
    relu = torch.nn.functional.relu
    cases = {}
    s = {"bias": r(D), "encoder.weight": r(N, D), "encoder.bias": r(N), "decoder.weight": r(D, N)}
    cases["AutoEncoder"] = (s, lambda x, s=s: relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"]),
                            lambda f, s=s: f @ s["decoder.weight"].T + s["bias"], "relu")
    s = {"encoder.weight": r(N, D), "encoder.bias": r(N), "decoder.weight": r(D, N), "decoder.bias": r(D)}
    cases["AutoEncoderNew"] = (s, lambda x, s=s: relu(x @ s["encoder.weight"].T + s["encoder.bias"]),
                               lambda f, s=s: f @ s["decoder.weight"].T + s["decoder.bias"], "relu")

    def topk(x, s):
        post = relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
        v, i = post.topk(int(s["k"]), dim=-1)
        return torch.zeros_like(post).scatter(-1, i, v)

    s = {"encoder.weight": r(N, D), "encoder.bias": r(N), "decoder.weight": r(D, N), "b_dec": r(D),
         "k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(0.2)}
    cases["AutoEncoderTopK"] = (s, lambda x, s=s: topk(x, s), lambda f, s=s: f @ s["decoder.weight"].T + s["b_dec"], "topk")

    def gated(x, s, enc):
        post = relu(enc(x, s))
        return post * (post > s["threshold"])

    s = {"encoder.weight": r(N, D), "encoder.bias": r(N), "decoder.weight": r(D, N), "b_dec": r(D),
         "k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(0.2)}
    lin = lambda x, s: (x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"]  # noqa: E731
    cases["BatchTopKSAE"] = (s, lambda x, s=s: gated(x, s, lin), lambda f, s=s: f @ s["decoder.weight"].T + s["b_dec"], "batchtopk")
    s = {"W_enc": r(D, N), "b_enc": r(N), "W_dec": r(N, D), "b_dec": r(D), "k": torch.tensor(K, dtype=torch.int),
         "threshold": torch.tensor(0.15), "group_sizes": torch.tensor([8, 16, N - 24])}
    mat = lambda x, s: (x - s["b_dec"]) @ s["W_enc"] + s["b_enc"]  # noqa: E731
    cases["MatryoshkaBatchTopKSAE"] = (s, lambda x, s=s: gated(x, s, mat), lambda f, s=s: f @ s["W_dec"] + s["b_dec"], "batchtopk")
    s = {"W_enc": r(D, N), "b_enc": r(N), "W_dec": r(N, D), "b_dec": r(D), "threshold": torch.rand(N, generator=g) * 0.35 - 0.05}

    def jump(x, s):
        pre = x @ s["W_enc"] + s["b_enc"]  # apply_b_dec_to_input defaults to False
        return relu(pre * (pre > s["threshold"]))

    cases["JumpReluAutoEncoder"] = (s, lambda x, s=s: jump(x, s), lambda f, s=s: f @ s["W_dec"] + s["b_dec"], "jumprelu")
    return cases


@pytest.mark.parametrize("dict_class", sorted(_dl_cases()))
def test_dictionary_learning_layout_imports_exactly(dict_class, tmp_path):
    state, encode, decode, arch = _dl_cases()[dict_class]
    folder = _dl_folder(tmp_path / "trainer_0", dict_class, state, k=K, submodule_name="resid_post_layer_3")
    assert detect_format(folder) == "dictionary_learning"
    ours = load_sae(folder)
    assert ours.cfg.architecture == arch
    assert ours.cfg.provenance["source_format"] == "dictionary_learning"
    assert (ours.cfg.model, ours.cfg.hook) == ("EleutherAI/pythia-70m-deduped", "resid_post.3")
    if dict_class == "MatryoshkaBatchTopKSAE":
        assert ours.cfg.prefixes == [8, 24, N]
    x = x_BD()
    z_ref = encode(x)
    assert_same(ours, z_ref, decode(z_ref), x)


def test_dictionary_learning_pickled_objects_are_refused(tmp_path):
    """A file whose loading would call arbitrary code (here: create a file) is refused, and nothing runs."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    folder = tmp_path / "evil"
    folder.mkdir()
    state = {"encoder.weight": torch.zeros(N, D), "payload": Payload()}
    torch.save(state, folder / "ae.pt")
    with pytest.raises(ProgsaeError, match=r"ae.pt: refused, loading it would unpickle arbitrary Python objects") as err:
        load_sae(folder)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    torch.save(torch.nn.Linear(2, 2), folder / "ae.pt")  # a whole pickled module, as old checkpoints do
    with pytest.raises(ProgsaeError, match="refused"):
        load_sae(folder)


def test_gemma_scope_params_npz_imports_without_bdec_subtraction(tmp_path):
    import numpy as np

    g = torch.Generator().manual_seed(11)
    p = {"W_enc": torch.randn(D, N, generator=g) * 0.3, "W_dec": torch.randn(N, D, generator=g) * 0.3,
         "b_enc": torch.randn(N, generator=g) * 0.3, "b_dec": torch.randn(D, generator=g), "threshold": torch.rand(N, generator=g) * 0.3}
    (tmp_path / "layer_3" / "width_16k").mkdir(parents=True)
    np.savez(tmp_path / "layer_3" / "width_16k" / "params.npz", **{k: v.numpy() for k, v in p.items()})
    ours = load_sae(tmp_path / "layer_3" / "width_16k")
    x = x_BD()
    pre = x @ p["W_enc"] + p["b_enc"]  # Gemma Scope: no b_dec subtraction, JumpReLU gate
    z_ref = torch.relu(pre) * (pre > p["threshold"])
    assert_same(ours, z_ref, z_ref @ p["W_dec"] + p["b_dec"], x)
    assert ours.cfg.architecture == "jumprelu" and not ours.cfg.subtract_b_dec
    with pytest.raises(ProgsaeError, match=r"holds 1 SAE folder \(width_16k\); pass one of them"):
        load_sae(tmp_path / "layer_3")


# ---- errors -----------------------------------------------------------------------------------
def test_unknown_corrupt_and_unsupported_folders_give_one_line_errors(sl, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProgsaeError, match="not an SAE folder progsae recognises"):
        load_sae(tmp_path / "empty")
    ref = randomize(_saelens_inference_sae(sl, "topk"))
    ref.save_model(tmp_path / "trunc")
    w = tmp_path / "trunc" / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:-64])
    with pytest.raises(ProgsaeError, match="truncated"):
        load_sae(tmp_path / "trunc")
    ref.save_model(tmp_path / "gated")
    cfg = json.loads((tmp_path / "gated" / "cfg.json").read_text())
    (tmp_path / "gated" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(ProgsaeError, match="'gated' has no progsae equivalent"):
        load_sae(tmp_path / "gated")
    (tmp_path / "gated" / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    with pytest.raises(ProgsaeError, match="layer_norm"):
        load_sae(tmp_path / "gated")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "ae.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(ProgsaeError, match="unreadable or truncated torch file"):
        load_sae(tmp_path / "junk")
    rc = cli_main(["import", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert rc == 2 and not (tmp_path / "o").exists()


# ---- CLI and the hub path ---------------------------------------------------------------------
def test_cli_import_writes_a_progsae_folder(sl, tmp_path, capsys):
    ref = randomize(_saelens_inference_sae(sl, "gemmascope_jumprelu"))
    ref.save_model(tmp_path / "sl")
    assert cli_main(["import", str(tmp_path / "sl"), "--out", str(tmp_path / "ours")]) == 0
    assert "imported saelens SAE" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "ours" / "cfg.json").read_text())
    assert cfg["format"] == "progsae-sae" and cfg["provenance"]["source_format"] == "saelens"
    assert cfg["subtract_b_dec"] is False
    assert detect_format(tmp_path / "ours") == "progsae"
    x = x_BD()
    with torch.no_grad():
        assert (load_sae(tmp_path / "ours")(x) - ref(x)).abs().max().item() <= TOL
    assert cli_main(["import", str(tmp_path / "sl"), "--out", str(tmp_path / "ours")]) == 2  # no silent overwrite
    assert "already holds an SAE" in capsys.readouterr().err


def test_from_hub_downloads_only_the_requested_folder(tmp_path, monkeypatch, capsys):
    """The network call is replaced by a fake snapshot_download serving a local folder."""
    import progsae.interop.hub as hub

    _, encode, decode, _ = _dl_cases()["JumpReluAutoEncoder"]
    state = _dl_cases()["JumpReluAutoEncoder"][0]
    _dl_folder(tmp_path / "repo" / "trainer_2", "JumpReluAutoEncoder", state)
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, revision=None, cache_dir=None):
        calls.append((repo_id, allow_patterns, revision))
        if repo_id != "owner/saes":
            raise OSError("404 Client Error: Repository Not Found\nmore details")
        return str(tmp_path / "repo")

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    assert cli_main(["import", "--from-hub", "owner/saes/trainer_2", "--revision", "v1", "--out", str(tmp_path / "ours")]) == 0
    assert calls == [("owner/saes", ["trainer_2/*", "config.json"], "v1")]
    cfg = json.loads((tmp_path / "ours" / "cfg.json").read_text())
    assert cfg["provenance"]["source_hub"] == {"spec": "owner/saes/trainer_2", "revision": "v1"}
    assert cfg["provenance"]["source_format"] == "dictionary_learning"
    x = x_BD()
    z_ref = encode(x)
    assert_same(load_sae(tmp_path / "ours"), z_ref, decode(z_ref), x)
    assert cli_main(["import", "--from-hub", "nobody/none/x", "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "could not fetch 'nobody/none/x'" in err and "\n" not in err
    with pytest.raises(ProgsaeError, match="owner/repo"):
        hub.split_spec("justone")


# ---- progressive coding of an imported SAE ------------------------------------------------------
def test_imported_jumprelu_is_sorted_and_pruned_like_any_other(sl, tmp_path):
    ref = randomize(_saelens_inference_sae(sl, "gemmascope_jumprelu"), threshold_range=(0.0, 0.3))
    ref.save_model(tmp_path / "sl")
    sae = load_sae(tmp_path / "sl")
    acts = x_BD(seed=5, rows=512)
    imp = progsae.importance(sae, acts)
    ef2 = imp.score("ef2")
    assert ef2.shape == (N,) and (ef2 > 0).sum() >= N // 2
    g = 12
    x = x_BD(seed=6)
    for mode in ("mask", "retopk"):
        pruned = progsae.prune(sae, size=g, order="ef2", mode=mode, importance=imp)
        with torch.no_grad():
            z_full = sae.encode(x)
            top = torch.argsort(ef2, descending=True, stable=True)[:g]
            z_p = pruned.encode(x)[:, :g]
            # JumpReLU is per-latent: both modes keep the top-G latents' codes exactly
            assert (z_p - z_full[:, top]).abs().max().item() <= TOL
        pruned.save(tmp_path / f"p_{mode}")
        assert cli_main(["export", str(tmp_path / f"p_{mode}"), "--to", "saelens", "--out", str(tmp_path / f"sl_{mode}")]) == 0
        theirs = sl.SAE.load_from_disk(tmp_path / f"sl_{mode}")
        with torch.no_grad():
            assert (theirs(x) - pruned(x)).abs().max().item() <= TOL
    # sorting is a permutation: outputs unchanged, importance descending, and the sorted SAE is a progressive family
    ordered = progsae.sort_sae(sae, "ef2", importance=imp)
    with torch.no_grad():
        assert (ordered(x) - sae(x)).abs().max().item() <= TOL
    assert bool((progsae.importance(ordered, acts).score("ef2").diff() <= 1e-6).all())
    small = progsae.at_size(ordered, g, mode="retopk")
    with torch.no_grad():
        assert (small.encode(x) - ordered.encode(x)[:, :g]).abs().max().item() <= TOL

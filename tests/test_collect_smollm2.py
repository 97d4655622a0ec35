"""Integration: the embedded SmolLM2 loads offline and its stored resid_post.14 equals output_hidden_states[15]."""

import numpy as np
import pytest
import torch

from fixtures.models import torch_threads
from progsae.data.collect import CollectConfig, collect
from progsae.data.models import load_model
from progsae.data.store import ActivationStore


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2")


@pytest.mark.slow
def test_smollm2_store_equals_output_hidden_states(smollm2, tmp_path):
    model, tok = smollm2
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    cfg = CollectConfig(model="smollm2", hook="resid_post.14", corpus="embedded", tokens=3 * 127, test_tokens=127,
                        context_length=128, batch_size=4)
    with torch_threads(1):
        store = ActivationStore(collect(cfg, tmp_path / "acts", model=model, tokenizer=tok, progress=False))
        assert store.d_model == 576 and store.num_tokens("train") == 381 and store.num_tokens("test") == 127
        worst = 0.0
        for split in ("train", "test"):
            sh = store.shard(split, 0)
            ids = torch.from_numpy(np.array(sh["token_ids"])).long()
            assert (ids[:, 0] == tok.bos_token_id).all()
            with torch.no_grad():
                ref = model(ids, output_hidden_states=True).hidden_states[15][:, 1:].reshape(-1, 576)
            got = torch.from_numpy(np.array(sh["acts"]))
            assert ref.norm(dim=-1).mean() > 10  # real residual-stream magnitudes, not zeros
            worst = max(worst, (got - ref).abs().max().item())
        assert worst <= 1e-4, worst
        # the text the contexts came from decodes back to the embedded corpus (KJV / Python)
        text = tok.decode(np.array(store.shard("train", 0)["token_ids"]).ravel().tolist())
        assert any(w in text for w in ("LORD", "def ", "return", "the"))


@pytest.mark.slow
def test_smollm2_completes_a_fact(smollm2):
    model, tok = smollm2
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch_threads(1), torch.no_grad():
        out = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])

"""A store collected from a model trains an SAE through a reader given less memory than the store."""

import json

import numpy as np
import pytest
import torch

from fixtures.models import torch_threads
from progsae.data.collect import CollectConfig, collect
from progsae.data.models import load_model
from progsae.data.store import ActivationStore
from progsae.train import TrainConfig, train_sae

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def collected_store(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("collect_train")
    with open(root / "docs.jsonl", "w") as f:
        rng = np.random.default_rng(1)
        words = "in the beginning was word and light darkness water earth heaven said let there be".split()
        for i in range(400):
            f.write(json.dumps({"text": " ".join(rng.choice(words, 30))}) + "\n")
    cfg = CollectConfig(model=str(tiny_llama), hook="resid_post.1", corpus=str(root / "docs.jsonl"), tokens=6000,
                        test_tokens=1500, context_length=16, batch_size=16, shard_tokens=300)
    model, tok = load_model(str(tiny_llama))
    with torch_threads(1):
        return ActivationStore(collect(cfg, root / "store", model=model, tokenizer=tok, progress=False))


def test_training_from_a_store_larger_than_the_reader_memory(collected_store, tmp_path, monkeypatch):
    store = collected_store
    row_bytes = store.d_model * 4
    store_bytes = store.num_tokens("train") * row_bytes
    shard_bytes = max(s.tokens for s in store.shards("train")) * row_bytes
    budget = 64 * 1024
    assert store_bytes > 20 * budget and len(store.shards("train")) >= 20

    loaded_rows = []
    original = ActivationStore._load_group

    def spy(self, *args, **kwargs):
        rows = original(self, *args, **kwargs)
        loaded_rows.append(rows.shape[0])
        return rows

    monkeypatch.setattr(ActivationStore, "_load_group", spy)
    cfg = TrainConfig(arch="topk", n_latents=128, k=8, batch_size=128, tokens=3 * store.num_tokens("train"), buffer_bytes=budget,
                      init_sample=2048, log_every=50, checkpoint_every=10_000)
    sae = train_sae(store, tmp_path / "sae", cfg, progress=False)
    # the reader never held more than the budget plus one shard plus one batch of carried-over rows
    assert loaded_rows and max(loaded_rows) * row_bytes <= budget + shard_bytes + cfg.batch_size * row_bytes
    assert sum(loaded_rows) >= 2 * store.num_tokens("train")  # it streamed the store several times
    x = torch.cat(list(store.iter_batches("test", 4096)))
    with torch.no_grad():
        fvu = ((sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    assert fvu < 0.3, fvu

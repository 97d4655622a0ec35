"""Streamed training on the embedded SmolLM2: the rows it trains on are those `collect` stores, one forward pass
feeds several SAEs and hooks, its held-out FVU matches cached training, and kill -9 then resume ends on the same weights."""

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from progsae.cli import main as cli_main
from progsae.data.collect import CollectConfig, collect, heldout_only, store_folders
from progsae.data.models import load_model
from progsae.data.store import ActivationStore
from progsae.data.stream import ActivationStream, Batcher, StreamPosition
from progsae.sae.io import load_sae
from progsae.train import TrainConfig, train_sae
from progsae.train.streamed import StreamJob, stream_train, train_streamed

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread_module")]

HOOK = "resid_post.3"  # shallow: the forward stops after 4 of 30 blocks


def small_data(**changes) -> CollectConfig:
    base = dict(model="smollm2", hook=HOOK, corpus="embedded", tokens=3000, test_tokens=400, validation_tokens=400,
                context_length=32, batch_size=8)
    return CollectConfig(**{**base, **changes})


def tiny_sae(**changes) -> TrainConfig:
    base = dict(arch="topk", n_latents=64, k=8, tokens=1, batch_size=128, lr=2e-3, aux_coef=0.25, log_every=5,
                checkpoint_every=5, heldout_rows=256, keep_checkpoint=True)
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2")


@pytest.fixture(scope="module")
def forwards(smollm2):
    """A counter of the model's forward calls."""
    count = {"n": 0}
    handle = smollm2[0].register_forward_pre_hook(lambda *_: count.__setitem__("n", count["n"] + 1))
    yield count
    handle.remove()


@pytest.fixture(scope="module")
def stored(smollm2, tmp_path_factory):
    """collect of small_data(): the store a streamed run must reproduce."""
    model, tok = smollm2
    return ActivationStore(collect(small_data(), tmp_path_factory.mktemp("stored") / "acts", model=model, tokenizer=tok, progress=False))


@pytest.fixture(scope="module")
def heldout(smollm2, tmp_path_factory):
    model, tok = smollm2
    return ActivationStore(collect(heldout_only(small_data()), tmp_path_factory.mktemp("heldout") / "acts", model=model, tokenizer=tok,
                                   progress=False))


def store_tokens(store: ActivationStore, rows: np.ndarray) -> np.ndarray:
    """The token id at each stored train row of a store."""
    ids = np.concatenate([np.asarray(store.shard("train", i)["token_ids"]) for i in range(len(store.shards("train")))])
    rpc, fp = store.rows_per_context, store.first_position
    return ids[rows // rpc, rows % rpc + fp].astype(np.int64)


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.int64).tobytes()).hexdigest()


def test_training_sees_exactly_the_rows_collect_stores(smollm2, stored, heldout, tmp_path, forwards):
    """Three SAEs from one pass (keep-outliers rule): every stored row once, same token ids, same values; one forward per batch."""
    model, tok = smollm2
    cfg = small_data()
    stream = ActivationStream(cfg, model, tok, {HOOK: None}, chunk_contexts=24, seed=0)
    seen = []
    jobs = [StreamJob(tmp_path / "vanilla", tiny_sae(), HOOK), StreamJob(tmp_path / "matryoshka", tiny_sae(matryoshka=[16, 64]), HOOK),
            StreamJob(tmp_path / "small", tiny_sae(n_latents=32, seed=1), HOOK)]
    before = forwards["n"]
    saes = train_streamed(stream, jobs, {HOOK: heldout}, resume=False, progress=False,
                          on_batch=lambda hook, b: seen.append((b.row_ids_B.numpy(), b.token_ids_B.numpy(), b.x_BD)))
    n_ctx = cfg.contexts_for("train")
    expected_forwards = sum(math.ceil(min(24, n_ctx - c) / cfg.batch_size) for c in range(0, n_ctx, 24))
    assert forwards["n"] - before == expected_forwards  # one pass, however many SAEs
    rows = np.concatenate([r for r, _, _ in seen])
    tokens = np.concatenate([t for _, t, _ in seen])
    x = torch.cat([b for _, _, b in seen])
    total = stored.stored_tokens("train")
    assert rows.shape[0] == total and np.array_equal(np.sort(rows), np.arange(total))  # each stored row exactly once
    assert digest(np.sort(tokens)) == digest(np.sort(store_tokens(stored, np.arange(total))))
    assert np.array_equal(tokens, store_tokens(stored, rows))
    ref = torch.from_numpy(np.concatenate([np.asarray(stored.shard("train", i)["acts"]) for i in range(len(stored.shards("train")))]))
    assert torch.equal(x, ref[torch.from_numpy(rows)])  # the very values a store holds
    assert not np.array_equal(rows, np.sort(rows))  # shuffled
    for job in jobs:
        sae = saes[job.out_dir]
        assert sae.cfg.provenance["tokens"] == total and (job.out_dir / "cfg.json").exists()
        assert (job.out_dir / "metrics.jsonl").read_text().count("\n") > 3


def test_the_stream_drops_exactly_the_rows_the_store_readers_drop(smollm2, stored):
    model, tok = smollm2
    rule = stored.outlier_rule
    stream = ActivationStream(small_data(), model, tok, {HOOK: rule}, chunk_contexts=40, seed=3)
    chunks = list(stream.chunks())
    kept = np.sort(np.concatenate([c.row_ids[HOOK].numpy() for c in chunks]))
    keep = np.concatenate([stored.keep_mask("train", i) if stored.keep_mask("train", i) is not None
                           else np.ones(stored.shards("train")[i].tokens, bool) for i in range(len(stored.shards("train")))])
    assert sum(c.dropped[HOOK] for c in chunks) == int((~keep).sum()) > 0  # resid_post.3 has massive rows to drop
    assert np.array_equal(kept, np.flatnonzero(keep))
    again = ActivationStream(small_data(), model, tok, {HOOK: rule}, chunk_contexts=40, seed=3)
    last = list(again.chunks(start=len(chunks) - 1))  # a resumed stream regenerates a chunk exactly
    assert len(last) == 1 and torch.equal(last[0].rows[HOOK], chunks[-1].rows[HOOK])


def test_batcher_resumes_mid_chunk(smollm2):
    """Batches from a saved position are the batches an uninterrupted batcher emits from there on."""
    model, tok = smollm2
    stream = ActivationStream(small_data(tokens=1200), model, tok, {HOOK: None}, chunk_contexts=10, seed=0)
    chunks = list(stream.chunks())
    full = Batcher(HOOK, 100)
    batches = [b for c in chunks for b in full.feed(c)] + [full.tail(stream.n_chunks)]
    cut = 4
    resumed = Batcher(HOOK, 100, batches[cut - 1].next, cut)
    again = [b for c in chunks for b in resumed.feed(c)] + [resumed.tail(stream.n_chunks)]
    assert [b.index for b in again] == [b.index for b in batches[cut:]]
    assert all(torch.equal(a.x_BD, b.x_BD) for a, b in zip(again, batches[cut:]))
    assert batches[-1].x_BD.shape[0] == stream.stored_rows - 100 * (len(batches) - 1)


def test_two_hooks_in_one_forward_equal_two_single_hook_collects(smollm2, tmp_path, forwards):
    model, tok = smollm2
    cfg = small_data(tokens=600, test_tokens=100, validation_tokens=100, shard_tokens=200)
    counts = {}
    for name, hook in (("both", "resid_post.1,resid_post.3"), ("one", "resid_post.1"), ("three", "resid_post.3")):
        before = forwards["n"]
        collect(small_data(**{**cfg.__dict__, "hook": hook}), tmp_path / name, model=model, tokenizer=tok, progress=False)
        counts[name] = forwards["n"] - before
    assert counts["both"] == counts["one"] == counts["three"]  # the two-hook collect runs the model once per batch
    for single, hook in (("one", "resid_post.1"), ("three", "resid_post.3")):
        a, b = tmp_path / "both" / hook, tmp_path / single
        files = sorted(p.name for p in a.iterdir())
        assert files == sorted(p.name for p in b.iterdir()) and len(files) > 4
        for f in files:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_streamed_fvu_matches_cached_training_on_the_same_tokens(smollm2, tmp_path):
    """Held-out FVU of a streamed SAE within 2% of one trained on the collected store of the same options."""
    model, tok = smollm2
    data = small_data(tokens=20_000, test_tokens=3000, validation_tokens=3000, batch_size=16)
    store = ActivationStore(collect(data, tmp_path / "store", model=model, tokenizer=tok, progress=False))
    cfg = tiny_sae(n_latents=256, k=16, batch_size=128, log_every=50, checkpoint_every=1000, keep_checkpoint=False)
    streamed = stream_train(data, [StreamJob(tmp_path / "streamed", cfg, HOOK)], tmp_path / "heldout", outlier_factor=5.0,
                            buffer_bytes=1 << 30, seed=0, resume=False, progress=False, model=model, tokenizer=tok)
    streamed = streamed[tmp_path / "streamed"]
    cached = train_sae(store, tmp_path / "cached", TrainConfig(**{**cfg.to_dict(), "tokens": store.num_tokens("train"),
                                                                   "adam_betas": tuple(cfg.adam_betas)}), progress=False)
    assert not any(p.name.startswith("train-") for p in (tmp_path / "heldout").iterdir())  # no train rows on disk

    def fvu(sae) -> float:
        x = torch.cat(list(store.iter_rows("test")))
        with torch.no_grad():
            return float((x - sae(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())

    a, b = fvu(streamed), fvu(cached)
    assert 0.05 < b < 0.9
    assert abs(a / b - 1) < 0.02, (a, b)
    assert abs(streamed.cfg.provenance["steps"] - cached.cfg.provenance["steps"]) <= 1


KILL_SCRIPT = """
import os, signal, sys, json, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[2])
from test_stream import kill_run_args
from progsae.train.streamed import stream_train
data, jobs, kwargs = kill_run_args(sys.argv[1])
stream_train(data, jobs, sys.argv[1] + "/acts", on_batch=lambda h, b: os.kill(os.getpid(), signal.SIGKILL) if b.index == 17 else None,
             resume=False, progress=False, **kwargs)
"""


def kill_run_args(out: str):
    """A streamed run over 3 chunks with two SAEs that checkpoint at different steps (shared by the kill test's processes)."""
    data = small_data(tokens=4000)
    jobs = [StreamJob(Path(out) / "a", tiny_sae(checkpoint_every=5), HOOK),
            StreamJob(Path(out) / "b", tiny_sae(checkpoint_every=7, matryoshka_random=3, seed=1), HOOK)]
    row_bytes = 576 * 4
    return data, jobs, dict(outlier_factor=5.0, buffer_bytes=60 * data.rows_per_context * row_bytes, seed=0)


def test_kill_then_resume_ends_on_the_weights_of_an_uninterrupted_run(smollm2, tmp_path):
    model, tok = smollm2
    data, jobs, kwargs = kill_run_args(str(tmp_path / "full"))
    full = stream_train(data, jobs, tmp_path / "full" / "acts", resume=False, progress=False, model=model, tokenizer=tok, **kwargs)
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(out), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    states = {name: json.loads((out / name / "checkpoint" / "state.json").read_text()) for name in ("a", "b")}
    assert states["a"]["step"] == 15 and states["b"]["step"] == 14  # killed at batch 17, between checkpoints
    assert states["a"]["stream"]["position"]["chunk"] >= 1  # past the first chunk: the resume regenerates a later one
    data, jobs, kwargs = kill_run_args(str(out))
    resumed = stream_train(data, jobs, out / "acts", resume=True, progress=False, model=model, tokenizer=tok, **kwargs)
    for name in ("a", "b"):
        got, want = resumed[out / name], full[tmp_path / "full" / name]
        diff = max(float((got.state_dict()[k] - want.state_dict()[k]).abs().max()) for k in want.state_dict())
        assert diff <= 1e-6, (name, diff)
        assert got.cfg.provenance["steps"] == want.cfg.provenance["steps"] > 20


def test_cli_streams_two_hooks_and_several_saes(tmp_path, capsys):
    saes = tmp_path / "saes.json"
    saes.write_text(json.dumps({"v1": {"hook": "resid_post.1"}, "m1": {"hook": "resid_post.1", "matryoshka": [16, 64]},
                                "v3": {"hook": HOOK, "n_latents": 32}}))
    argv = ["train", "--model", "smollm2", "--hook", f"resid_post.1,{HOOK}", "--tokens", "1500", "--test-tokens", "200",
            "--context-length", "32", "--latents", "64", "--k", "8", "--batch-size", "128", "--saes", str(saes),
            "--out", str(tmp_path / "run"), "--no-progress"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("streamed tokens") == 3
    for name, hook in (("v1", "resid_post.1"), ("m1", "resid_post.1"), ("v3", HOOK)):
        assert load_sae(tmp_path / "run" / name).cfg.hook == hook
    held = store_folders(small_data(hook=f"resid_post.1,{HOOK}"), tmp_path / "run" / "acts")
    for path in held.values():
        assert sorted(json.loads((path / "meta.json").read_text())["splits"]) == ["test", "validation"]
    assert cli_main(["train", "--model", "smollm2", "--latents", "8", "--k", "2", "--out", str(tmp_path / "x"), "--steps", "3"]) == 2
    assert "give --tokens, not --steps" in capsys.readouterr().err

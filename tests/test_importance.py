"""Latent importance: exact statistics, stores vs tensors, files, CLI, and bounded memory over big stores."""

import json
import tracemalloc
from pathlib import Path

import pytest
import torch

from progsae import ProgsaeError, SAEConfig
from progsae.cli import main
from progsae.data.store import ActivationStore, StoreWriter
from progsae.progressive import Importance, importance
from progsae.progressive.importance import ORDERINGS, iter_activation_rows, rows_per_batch
from progsae.sae import sae_class

pytestmark = pytest.mark.usefixtures("one_thread")  # small torch ops: a 2nd thread only spins on a busy machine

D, N, K = 16, 40, 5


def hand_sae(arch="topk", d=D, n=N, k=K, prefixes=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    sae = sae_class(arch)(SAEConfig(architecture=arch, d_in=d, n_latents=n, k=k, prefixes=prefixes))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d, n, generator=g) * torch.logspace(0, -1, n))
        sae.W_dec.copy_(torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g).add(0.5))  # non-unit rows
        sae.b_enc.copy_(torch.randn(n, generator=g) * 0.1)
        for name in sae.extra_tensors:
            getattr(sae, name).uniform_(0.05, 0.3, generator=g)
    return sae


def write_store(path: Path, splits: dict[str, torch.Tensor], shard_tokens: int) -> Path:
    meta = {"model": "test", "hook": None, "d_model": next(iter(splits.values())).shape[1], "context_length": None}
    for split, acts in splits.items():
        w = StoreWriter(path, meta, split, shard_tokens=shard_tokens)
        for s in range(0, acts.shape[0], shard_tokens):
            w.add(acts[s : s + shard_tokens])
        w.close()
    return path


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "batchtopk", "relu", "matryoshka"])
def test_statistics_match_a_dense_computation(arch):
    sae = hand_sae("topk", prefixes=[10, 20, N]) if arch == "matryoshka" else hand_sae(arch)
    x = torch.randn(300, D, generator=torch.Generator().manual_seed(1))
    imp = importance(sae, x, batch_size=64)  # several batches, last one ragged
    z = sae.encode(x).double()
    norm = sae.W_dec.double().norm(dim=1)
    assert torch.allclose(imp.score("ef2"), z.pow(2).mean(0) * norm**2, rtol=1e-6, atol=1e-9)
    assert torch.allclose(imp.score("freq"), (z != 0).double().mean(0))
    assert torch.allclose(imp.score("mean"), z.mean(0) * norm, rtol=1e-6, atol=1e-9)
    assert imp.n_tokens == 300 and imp.score("freq").max() > 0
    assert torch.equal(imp.ordering("ef2"), torch.sort(imp.score("ef2"), descending=True, stable=True).indices)
    assert torch.equal(imp.ordering("unsorted"), torch.arange(N))
    assert sorted(imp.ordering("random").tolist()) == list(range(N))
    assert not torch.equal(imp.ordering("random"), torch.arange(N))


def test_store_gives_the_same_numbers_as_a_tensor_and_defaults_to_validation_then_train(tmp_path):
    g = torch.Generator().manual_seed(2)
    train, test, val = torch.randn(500, D, generator=g) + 3, torch.randn(700, D, generator=g), torch.randn(600, D, generator=g)
    write_store(tmp_path / "acts", {"train": train, "test": test, "validation": val}, shard_tokens=128)
    write_store(tmp_path / "old", {"train": train, "test": test}, shard_tokens=128)
    sae = hand_sae()
    from_store = importance(sae, tmp_path / "acts", batch_size=100)
    from_tensor = importance(sae, val)
    assert from_store.n_tokens == 600 and from_store.source["split"] == "validation"
    assert importance(sae, tmp_path / "old").source["split"] == "train"  # a store without validation: never test
    for stat in ("ef2", "freq", "mean"):
        assert torch.allclose(from_store.score(stat), from_tensor.score(stat), rtol=1e-6, atol=1e-9)
    on_train = importance(sae, ActivationStore(tmp_path / "acts"), split="train")
    write_store(tmp_path / "test-only", {"test": test}, shard_tokens=128)
    with pytest.raises(ProgsaeError, match="no validation or train split"):
        importance(sae, tmp_path / "test-only")
    assert on_train.n_tokens == 500 and not torch.allclose(on_train.score("ef2"), from_store.score("ef2"))
    with pytest.raises(ProgsaeError, match="no 'valid' split"):
        importance(sae, tmp_path / "acts", split="valid")


def test_importance_file_round_trip_and_random_ordering_is_seeded(tmp_path):
    sae = hand_sae()
    x = torch.randn(200, D)
    imp = importance(sae, x, seed=7)
    imp.save(tmp_path / "imp.json")
    raw = json.loads((tmp_path / "imp.json").read_text())
    assert set(raw["orderings"]) == set(ORDERINGS) and len(raw["statistics"]["ef2"]) == N
    back = Importance.load(tmp_path / "imp.json")
    for order in ORDERINGS:
        assert torch.equal(back.ordering(order), imp.ordering(order)), order
        assert raw["orderings"][order] == imp.ordering(order).tolist()
    assert torch.equal(importance(sae, x, seed=7).ordering("random"), imp.ordering("random"))
    assert not torch.equal(importance(sae, x, seed=8).ordering("random"), imp.ordering("random"))
    raw["statistics"]["sq_mean"] = raw["statistics"]["sq_mean"][:-1]
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(ProgsaeError, match="'sq_mean' has 39 values, n_latents is 40"):
        Importance.load(tmp_path / "bad.json")
    with pytest.raises(ProgsaeError, match="no such importance file"):
        Importance.load(tmp_path / "missing.json")


def test_width_mismatch_is_a_one_line_error():
    with pytest.raises(ProgsaeError, match="width 8, the SAE expects d_in=16"):
        importance(hand_sae(), torch.randn(10, 8))


def test_cli_writes_statistics_orderings_power_law_and_figure(tmp_path, capsys):
    g = torch.Generator().manual_seed(3)
    write_store(tmp_path / "acts", {"validation": torch.randn(600, D, generator=g)}, shard_tokens=256)
    hand_sae().save(tmp_path / "sae")
    rc = main(["importance", str(tmp_path / "sae"), "--acts", str(tmp_path / "acts"), "--out", str(tmp_path / "imp.json"), "--bootstrap", "20"])
    assert rc == 0
    raw = json.loads((tmp_path / "imp.json").read_text())
    assert raw["n_tokens"] == 600 and set(raw["orderings"]) == set(ORDERINGS)
    pl = raw["power_law"]
    assert pl["statistic"] == "ef2" and pl["alpha"] > 0 and 0 <= pl["r2"] <= 1 and len(pl["cumulative_share"]) == N
    assert set(pl["mle"]["comparisons"]) == {"lognormal", "exponential"}
    png = (tmp_path / "imp.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "alpha=" in capsys.readouterr().out
    rc = main(["importance", str(tmp_path / "sae"), "--acts", str(tmp_path / "nope"), "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "no such activation store" in err


def _rss_peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise OSError("no VmHWM")


def test_importance_over_a_store_larger_than_the_cap_runs_in_bounded_memory(tmp_path):
    """A 16 MiB store measured under a 1 MiB cap: every batch (activations + dense codes) fits the cap,
    the reader's allocations stay near it (tracemalloc), the process's peak RSS grows far less than the
    store, and the numbers equal an unbounded pass."""
    d, n, rows = 128, 64, 32768
    cap = 1 << 20
    store_bytes = rows * d * 4
    acts = torch.randn(rows, d, generator=torch.Generator().manual_seed(4))
    path = write_store(tmp_path / "big", {"validation": acts}, shard_tokens=rows // 2)  # two 8 MiB shards
    sae = hand_sae(d=d, n=n, k=8)
    widest = 0
    encode = sae.encode

    def spying_encode(x_BD):
        nonlocal widest
        z = encode(x_BD)
        widest = max(widest, x_BD.nbytes + 2 * z.nbytes)  # x, pre-acts and codes are alive together
        return z

    sae.encode = spying_encode
    per_batch = rows_per_batch(d, n, cap)
    chunks, total, _ = iter_activation_rows(path, "validation", per_batch)
    assert total == rows and max(c.nbytes for c in chunks) <= cap
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (Linux)
        rss_tracked = True
    except OSError:
        rss_tracked = False
    base_rss = _rss_peak_kib()
    tracemalloc.start()
    imp = importance(sae, path, max_memory_bytes=cap)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = (_rss_peak_kib() - base_rss) * 1024
    assert imp.n_tokens == rows and imp.source["rows_per_batch"] == per_batch
    assert widest <= cap, widest
    assert traced_peak <= 2 * cap, traced_peak  # numpy buffers the reader allocated
    if rss_tracked:
        assert rss_growth <= store_bytes // 4, (rss_growth, store_bytes)
    sae.encode = encode
    unbounded = importance(sae, acts, batch_size=rows // 4)
    for stat in ("ef2", "freq", "mean"):
        assert torch.allclose(imp.score(stat), unbounded.score(stat), rtol=1e-9, atol=1e-12), stat
    print(f"bounded importance: store {store_bytes >> 20} MiB, cap {cap >> 10} KiB, widest batch {widest >> 10} KiB, "
          f"traced peak {traced_peak >> 10} KiB, peak-RSS growth {rss_growth >> 10} KiB")

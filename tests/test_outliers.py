"""Massive-activation rows: every reader drops them by default, so the numbers equal those of a store that never had
them; --keep-outliers keeps them; choices never read test rows."""

import numpy as np
import pytest
import torch

from progsae.cli import main
from progsae.data.store import ActivationStore, StoreWriter
from progsae.evals.common import Variant
from progsae.splice import keep_first
from progsae.evals.reconstruction import evaluate_reconstruction
from progsae.progressive.importance import importance
from progsae.sae import SAEConfig, TopKSAE
from progsae.sae.io import load_sae
from progsae.train import TrainConfig, train_sae

D, SHARD = 16, 500
SPLITS = {"train": 3000, "validation": 1000, "test": 1000}
PLANTED = {"train": [5, 600, 2999], "validation": [0, 501], "test": [3, 4, 700]}


def _rows(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) * torch.linspace(0.5, 2, D) + 1.0


def _write(path, splits: dict[str, list[torch.Tensor]]):
    meta = {"model": "none", "hook": None, "d_model": D, "context_length": None}
    for split, shards in splits.items():
        w = StoreWriter(path, meta, split, shard_tokens=10**9)
        for part in shards:
            w.add(part)
            w.flush()  # one shard per part: the clean store has the same shards less the planted rows
        w.close()
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("outliers")
    dirty, clean = {}, {}
    for i, (split, n) in enumerate(SPLITS.items()):
        x = _rows(n, i)
        median = float(x.norm(dim=1).median())
        keep = torch.ones(n, dtype=torch.bool)
        for r in PLANTED[split]:
            x[r] = x[r] / x[r].norm() * 100 * median  # 100x the median norm
            keep[r] = False
        dirty[split] = [x[s : s + SHARD] for s in range(0, n, SHARD)]
        clean[split] = [x[s : s + SHARD][keep[s : s + SHARD]] for s in range(0, n, SHARD)]
    return _write(root / "dirty", dirty), _write(root / "clean", clean), root


def _sae(seed=0) -> TopKSAE:
    torch.manual_seed(seed)
    sae = TopKSAE(SAEConfig(architecture="topk", d_in=D, n_latents=48, k=4))
    for p in sae.parameters():
        p.data.normal_(0, 0.3)
    sae.normalize_decoder()
    return sae


def test_store_drops_the_planted_rows_and_reports_them(stores):
    dirty, clean, _ = stores
    store = ActivationStore(dirty)
    for split, planted in PLANTED.items():
        assert store.num_tokens(split) == SPLITS[split] - len(planted)
        summary = store.outliers(split)
        assert summary["dropped"] == len(planted) and summary["rows"] == SPLITS[split]
        assert summary["variance_share"] > 0.9  # 100x rows hold nearly all the variance
    assert store.outlier_rule.reference_split == "train"
    assert ActivationStore(dirty, outlier_factor=None).num_tokens("test") == SPLITS["test"]
    assert ActivationStore(clean).outliers("test")["dropped"] == 0


def test_fvu_and_importance_equal_the_store_without_the_rows(stores):
    dirty, clean, _ = stores
    sae = _sae()
    [a] = evaluate_reconstruction(ActivationStore(dirty), [Variant.of(sae, "s")])
    [b] = evaluate_reconstruction(ActivationStore(clean), [Variant.of(sae, "s")])
    [kept] = evaluate_reconstruction(ActivationStore(dirty, outlier_factor=None), [Variant.of(sae, "s")])
    assert a.tokens == b.tokens == SPLITS["test"] - 3
    assert a.fvu == pytest.approx(b.fvu, rel=1e-6) and a.l0 == pytest.approx(b.l0, rel=1e-6)
    assert abs(kept.fvu - a.fvu) > 0.05
    ia, ib = importance(sae, dirty), importance(sae, clean)
    ikept = importance(sae, ActivationStore(dirty, outlier_factor=None))
    assert torch.allclose(ia.score("ef2"), ib.score("ef2"), rtol=1e-6, atol=0)
    assert not torch.allclose(ikept.score("ef2"), ia.score("ef2"), rtol=1e-2)


def test_training_sees_the_same_rows_as_on_the_clean_store(stores):
    dirty, clean, root = stores
    cfg = TrainConfig(arch="topk", n_latents=32, k=4, steps=6, batch_size=256, seed=3, checkpoint_every=10**6, log_every=3)
    a = train_sae(dirty, root / "sae-dirty", cfg, progress=False)
    b = train_sae(clean, root / "sae-clean", cfg, progress=False)
    for name in ("W_dec", "b_dec", "b_enc"):
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-6), name


def test_verbs_print_how_many_rows_they_dropped_and_keep_outliers_changes_the_numbers(stores, capsys):
    dirty, _, root = stores
    _sae().save(root / "sae")
    assert main(["importance", str(root / "sae"), "--acts", str(dirty), "--out", str(root / "imp.json"), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "validation: dropped 2 of 1000 rows" in out
    assert main(["eval", str(root / "sae"), "--acts", str(dirty), "--metrics", "recon", "--out", str(root / "r1.json"), "--no-progress"]) == 0
    assert "test: dropped 3 of 1000 rows" in capsys.readouterr().out
    assert main(["eval", str(root / "sae"), "--acts", str(dirty), "--metrics", "recon", "--keep-outliers",
                 "--out", str(root / "r2.json"), "--no-progress"]) == 0
    assert "kept all 1000 rows" in capsys.readouterr().out
    import json

    f1 = json.loads((root / "r1.json").read_text())["records"][0]["fvu"]
    f2 = json.loads((root / "r2.json").read_text())["records"][0]["fvu"]
    assert abs(f1 - f2) > 0.05
    assert main(["train", "--acts", str(dirty), "--out", str(root / "t"), "--arch", "topk", "--latents", "32", "--k", "4",
                 "--steps", "2", "--batch-size", "128", "--quiet"]) == 0
    assert "train: dropped 3 of 3000 rows" in capsys.readouterr().out
    assert main(["eval", str(root / "sae"), "--acts", str(dirty), "--outlier-factor", "0.5", "--out", str(root / "r3.json")]) == 2
    assert "--outlier-factor must exceed 1" in capsys.readouterr().err


def test_importance_reads_no_test_row(stores):
    """Replace every test row: the orderings stay the same (they are chosen on validation)."""
    dirty, _, root = stores
    store = ActivationStore(dirty)
    splits = {s: [torch.from_numpy(np.array(store.shard(s, i)["acts"])) for i in range(len(store.shards(s)))] for s in SPLITS}
    splits["test"] = [torch.randn_like(t) * 7 for t in splits["test"]]
    other = _write(root / "other-test", splits)
    sae = _sae(1)
    a, b = importance(sae, dirty), importance(sae, other)
    assert torch.equal(a.ordering("ef2"), b.ordering("ef2")) and torch.equal(a.score("ef2"), b.score("ef2"))


def test_lm_loss_splice_leaves_outlier_positions_in_place():
    acts = torch.ones(2, 5, 3)
    acts[0, 2] *= 1000
    out = keep_first(lambda a: torch.zeros_like(a), max_norm=10.0)(acts)
    assert torch.equal(out[:, 0], acts[:, 0]) and torch.equal(out[0, 2], acts[0, 2])
    assert out[0, 1].abs().sum() == 0 and out[1, 2].abs().sum() == 0

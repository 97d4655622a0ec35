"""`progsae eval`: every metric over SAEs at several sizes and modes on a store collected from a tiny model."""

import json

import numpy as np
import pytest
import torch

from progsae.cli import main
from progsae.data.collect import CollectConfig, collect
from progsae.data.models import load_model
from progsae.data.store import ActivationStore
from progsae.evals.reconstruction import evaluate_reconstruction
from progsae.evals.common import Variant
from progsae.progressive.prune import sort_sae
from progsae.sae import SAEConfig, TopKSAE, load_sae


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny matmuls: a 2nd thread only spin-waits


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("evalrun")
    words = "the of and to in is that for it as with was on be by this are from at or an".split()
    rng = np.random.default_rng(0)
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Doc {i}: " + " ".join(rng.choice(words, 40))}) + "\n" for i in range(120)))
    model, tok = load_model(str(tiny_llama))
    cfg = CollectConfig(model=str(tiny_llama), hook="resid_post.1", corpus=str(corpus), tokens=600, test_tokens=600,
                        context_length=16, batch_size=8, shard_tokens=300)
    store_path = collect(cfg, root / "acts", model=model, tokenizer=tok, progress=False)
    torch.manual_seed(0)
    saes = {}
    for name, prefixes in (("matryoshka", [16, 32, 64]), ("vanilla", None)):
        sae = TopKSAE(SAEConfig(architecture="topk", d_in=64, n_latents=64, k=6, prefixes=prefixes))
        for p in sae.parameters():
            p.data.normal_(0, 0.2)
        sae.normalize_decoder()
        if prefixes is None:
            sae = sort_sae(sae, "ef2", acts=str(store_path))
        sae.save(root / name)
        saes[name] = root / name
    return root, store_path, saes, (model, tok)


def test_cli_eval_writes_every_metric_for_every_size_and_mode(setup, capsys):
    root, store_path, saes, _ = setup
    out = root / "results.json"
    code = main(["eval", f"matryoshka={saes['matryoshka']}", f"vanilla={saes['vanilla']}", "--acts", str(store_path),
                 "--sizes", "16,32,64", "--mode", "mask,retopk", "--ce-contexts", "6", "--ce-batch-size", "3",
                 "--rsa-tokens", "200", "--interp-latents", "5", "--out", str(out), "--no-progress"])
    assert code == 0
    res = json.loads(out.read_text())
    names = [v["name"] for v in res["variants"]]
    assert names == [f"{m}@{g}/{mode}" for m in ("matryoshka", "vanilla") for g in (16, 32) for mode in ("mask", "retopk")][:4] + ["matryoshka@64"] + \
        [f"vanilla@{g}/{mode}" for g in (16, 32) for mode in ("mask", "retopk")] + ["vanilla@64"]
    assert len(res["reconstruction"]) == len(res["lm_loss"]) == len(res["similarity"]) == 10
    assert len(res["records"]) == 12  # the full size is listed under both modes
    for r in res["records"]:
        for key in ("fvu", "l0", "ce_recaptured_zero", "ce_recaptured_mean", "delta_ce", "kl", "rsa", "cka", "interp"):
            assert r[key] is not None and np.isfinite(r[key]), (r["variant"], key)
    # same clean CE for every variant: one token set; the full-size RSA-vs-full is empty, smaller sizes have one
    assert len({round(r["ce_clean"], 9) for r in res["lm_loss"]}) == 1
    sim = {r["variant"]: r for r in res["similarity"]}
    assert sim["vanilla@64"]["rsa_full"] is None and sim["vanilla@16/mask"]["full_variant"] == "vanilla@64"
    # interp bands are cut at the sizes; the report reads bands[method][band] = {mean, lo, hi}
    assert list(res["bands"]["matryoshka"]) == ["0-16", "16-32", "32-64"]
    assert all({"mean", "lo", "hi"} <= set(b) for b in res["bands"]["vanilla"].values())
    printed = capsys.readouterr().out
    assert "matryoshka@16/retopk" in printed and "fvu" in printed and "wrote" in printed


def test_variant_numbers_match_a_direct_evaluation_of_at_size(setup):
    root, store_path, saes, _ = setup
    from progsae.evals.runner import EvalRunConfig, run_evals

    sae = load_sae(saes["vanilla"])
    res = run_evals(ActivationStore(store_path), {"v": sae}, EvalRunConfig(metrics=["recon"], sizes=[16], modes=["retopk"]), progress=False)
    [direct] = evaluate_reconstruction(ActivationStore(store_path), [Variant.of(sae.at_size(16, mode="retopk"), "d")])
    assert res.reconstruction[0].fvu == pytest.approx(direct.fvu, rel=1e-12)
    assert 5.0 < res.reconstruction[0].l0 <= 6.0  # retopk keeps k latents active (fewer only when pre-activations are <= 0)


def test_cli_errors_are_one_line(setup, capsys, tmp_path):
    root, store_path, saes, _ = setup
    assert main(["eval", str(saes["vanilla"]), "--acts", str(store_path), "--sizes", "100", "--metrics", "recon", "--out", str(tmp_path / "r.json")]) == 2
    assert "outside 1..64" in capsys.readouterr().err
    assert main(["eval", str(saes["vanilla"]), "--acts", str(store_path), "--metrics", "recon,bogus", "--out", str(tmp_path / "r.json")]) == 2
    assert "unknown metrics" in capsys.readouterr().err


def test_sae_from_another_hook_is_refused(tmp_path):
    from progsae.data.store import StoreWriter, ActivationStore
    from progsae.errors import ProgsaeError
    from progsae.evals.runner import EvalRunConfig, run_evals
    from progsae.progressive import importance

    w = StoreWriter(tmp_path / "acts", {"d_model": 8, "model": "m", "hook": "resid_post.3", "context_length": None}, "test")
    w.add(torch.randn(64, 8))
    w.close()
    sae = TopKSAE(SAEConfig(architecture="topk", d_in=8, n_latents=16, k=2, model="m", hook="resid_post.14"))
    store = ActivationStore(tmp_path / "acts")
    with pytest.raises(ProgsaeError, match="trained on hook 'resid_post.14' but the store .* holds 'resid_post.3'"):
        run_evals(store, {"s": sae}, EvalRunConfig(metrics=["recon"]), progress=False)
    with pytest.raises(ProgsaeError, match="trained on hook"):
        importance(sae, tmp_path / "acts")
    sae.cfg.hook = "resid_post.3"
    assert run_evals(store, {"s": sae}, EvalRunConfig(metrics=["recon"]), progress=False).records


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_every_metric_on_cuda_matches_cpu(setup):
    """SAEs loaded on the GPU: rows, the LM and the splices follow them there, and the numbers agree with CPU."""
    from progsae.evals.interp.score import InterpConfig
    from progsae.evals.lm_loss import LMLossConfig
    from progsae.evals.runner import EvalRunConfig, run_evals
    from progsae.evals.similarity import SimilarityConfig

    _, store_path, saes, _ = setup
    store = ActivationStore(store_path)
    cfg = EvalRunConfig(metrics=["recon", "ce", "rsa", "interp"], sizes=[16, 32, 64], modes=["mask", "retopk"],
                        ce=LMLossConfig(contexts=6, batch_size=3), rsa=SimilarityConfig(tokens=200),
                        interp=InterpConfig(latents_per_band=3))
    cpu = run_evals(store, {n: load_sae(p) for n, p in saes.items()}, cfg, progress=False)
    gpu = run_evals(store, {n: load_sae(p, device="cuda") for n, p in saes.items()}, cfg, progress=False)
    assert [r["variant"] for r in cpu.records] == [r["variant"] for r in gpu.records]
    for a, b in zip(cpu.records, gpu.records):
        for key in ("fvu", "l0", "rsa", "cka", "ce_recaptured_zero", "delta_ce", "kl", "interp"):
            if a.get(key) is not None:
                assert abs(a[key] - b[key]) <= 1e-3 * max(1.0, abs(a[key])), (a["variant"], key, a[key], b[key])

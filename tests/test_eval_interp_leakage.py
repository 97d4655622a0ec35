"""Explain-then-simulate without leakage: explain and score contexts are disjoint, random windows are per
latent and held out, outlier rows are not present, and bands with too few scored latents are not measured."""

import numpy as np
import pytest
import torch

from progsae.data.store import ActivationStore, StoreWriter
from progsae.evals.common import Variant
from progsae.evals.interp.deterministic import TokenExplainer, TokenSimulator
from progsae.evals.interp.examples import context_sides, window_examples
from progsae.evals.interp.score import BandScore, InterpConfig, Scan, collect_latent_examples, evaluate_interp, latent_examples
from progsae.sae import ReLUSAE, SAEConfig
from test_eval_interp import FP, L, NOISE, VOCAB, planted_sae

RARE = VOCAB - 1  # a token that appears only where a test puts it


def build_store(path, contexts: dict[str, int], seed=0, rare: dict | None = None, outliers: dict | None = None):
    """Splits of random-token contexts, acts = 2·onehot(token) (+ noise) and NOISE noise dims, two shards per split.

    rare[split]: contexts whose position 5 holds RARE (it appears nowhere else); outliers[split]:
    (context, position) rows scaled by 100, far above the store's outlier threshold."""
    ids_by = {}
    for k, (split, n) in enumerate(contexts.items()):
        g = torch.Generator().manual_seed(1000 * seed + k)
        ids = torch.randint(0, RARE, (n, L), generator=g, dtype=torch.int32)
        for c in (rare or {}).get(split, []):
            ids[c, 5] = RARE
        tok = ids[:, FP:].reshape(-1).long()
        acts = torch.cat([2 * torch.nn.functional.one_hot(tok, VOCAB).float() + 0.05 * torch.randn(tok.numel(), VOCAB, generator=g),
                          torch.randn(tok.numel(), NOISE, generator=g)], 1)
        for c, p in (outliers or {}).get(split, []):
            acts[c * (L - FP) + p - FP] *= 100
        meta = {"model": "hand", "hook": "none", "d_model": VOCAB + NOISE, "context_length": L, "first_position": FP}
        w = StoreWriter(path, meta, split, shard_tokens=10**9)
        half = n // 2
        for c0, c1 in ((0, half), (half, n)):
            w.add(acts[c0 * (L - FP) : c1 * (L - FP)], ids[c0:c1])
            w.flush()
        w.close()
        ids_by[split] = ids
    return ActivationStore(path), ids_by


def random_sae(n_latents=64, seed=0):
    """Latents that read random directions: most fire often, on different tokens."""
    torch.manual_seed(seed)
    sae = ReLUSAE(SAEConfig(architecture="relu", d_in=VOCAB + NOISE, n_latents=n_latents))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.b_enc.fill_(-2.0)
    return sae


@pytest.fixture(scope="module")
def split_store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("vt") / "store", {"validation": 80, "test": 80})


@pytest.fixture(scope="module")
def test_only_store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("t") / "store", {"test": 120}, seed=1)


LOOSE = InterpConfig(explain_top=6, score_top=3, score_random=5, min_explain_contexts=1, n_bootstrap=50)


def check_windows(ids_by, le, explain_ids: set, score_ids: set):
    """Each window's tokens are those of the (split, context) it names; explain and score windows stay on their side."""
    for ex in le.explain + le.score:
        lo = max(FP, ex.position - LOOSE.window_left)
        assert ex.tokens == ids_by[ex.split][ex.context, lo : lo + len(ex.tokens)].tolist()
    assert {(e.split, e.context) for e in le.explain} <= explain_ids
    assert {(e.split, e.context) for e in le.score} <= score_ids
    assert not {(e.split, e.context) for e in le.score} & explain_ids


@pytest.mark.parametrize("which", ["split_store", "test_only_store"])
def test_no_scoring_window_of_any_latent_lies_in_an_explanation_context(which, request):
    store, ids_by = request.getfixturevalue(which)
    explain, score = context_sides(store, LOOSE.explain_split, LOOSE.score_split, LOOSE.seed)
    explain_ids = {(explain.split, int(c)) for c in explain.contexts}
    score_ids = {(score.split, int(c)) for c in score.contexts}
    assert not explain_ids & score_ids
    examples, kept = collect_latent_examples(store, random_sae(), list(range(64)), LOOSE)
    assert len(kept) >= 40  # many latents checked
    random_sets = set()
    for le in examples:
        check_windows(ids_by, le, explain_ids, score_ids)
        rnd = [e for e in le.score if e.kind == "random"]
        assert len(rnd) == LOOSE.score_random
        random_sets.add(tuple(sorted((e.context, e.position) for e in rnd)))
    assert len(random_sets) == len(examples)  # drawn per latent, not the same windows for every latent


def test_explanations_from_validation_and_scores_from_test(split_store):
    store, ids_by = split_store
    examples, _ = collect_latent_examples(store, planted_sae(), list(range(16)), LOOSE)
    assert examples
    for le in examples:
        assert {e.split for e in le.explain} == {"validation"}
        assert {e.split for e in le.score} == {"test"}
    res = evaluate_interp(store, Variant.of(planted_sae(), "p"), TokenExplainer(), TokenSimulator(),
                          InterpConfig(bands=[(0, 8), (8, 16)], latents_per_band=8, n_bootstrap=100))
    assert (res.explain_on, res.score_on) == ("validation", "test")
    assert (res.explain_contexts, res.score_contexts, res.score_tokens) == (80, 80, 80 * (L - FP))
    assert res.explainer == "deterministic" and "token-identity" in res.explainer_description
    planted = res.bands[0]
    assert planted.measured and planted.mean > 0.8 and min(planted.scores) > 0.8  # token-identity latents stay explained
    expected = float((ids_by["test"][:, FP:] == 1).float().mean())  # latent 0 fires exactly on token 1
    assert next(ls for ls in res.latents if ls.latent == 0).firing_frequency == pytest.approx(expected)


def test_fallback_halves_of_test_are_disjoint_and_recorded(test_only_store):
    store, _ = test_only_store
    explain, score = context_sides(store, "validation", "test", seed=3)
    assert explain.split == score.split == "test"
    assert not set(explain.contexts.tolist()) & set(score.contexts.tolist())
    assert sorted([*explain.contexts.tolist(), *score.contexts.tolist()]) == list(range(120))
    assert explain.contexts.size == score.contexts.size == 60
    assert not np.array_equal(explain.contexts, np.arange(60))  # a seeded shuffle, not the first half
    again, _ = context_sides(store, "validation", "test", seed=3)
    assert np.array_equal(again.contexts, explain.contexts)
    # asking to explain on the score split itself also gives halves, never the same contexts
    same_e, same_s = context_sides(store, "test", "test", seed=3)
    assert not set(same_e.contexts.tolist()) & set(same_s.contexts.tolist())
    res = evaluate_interp(store, Variant.of(planted_sae(), "p"), TokenExplainer(), TokenSimulator(),
                          InterpConfig(bands=[(0, 8)], latents_per_band=8, n_bootstrap=100))
    assert (res.explain_on, res.score_on) == ("test:half-1", "test:half-2")
    assert res.bands[0].mean > 0.8


def test_a_band_with_too_few_scored_latents_is_not_measured_and_enters_no_mean(test_only_store):
    store, _ = test_only_store
    cfg = InterpConfig(bands=[(0, 8), (8, 10)], band_names=["planted", "small"], latents_per_band=8, n_bootstrap=100)
    res = evaluate_interp(store, Variant.of(planted_sae(), "p"), TokenExplainer(), TokenSimulator(), cfg)
    planted, small = res.bands
    assert planted.measured and (planted.sampled, planted.eligible, planted.scored, planted.latents) == (8, 8, 8, 8)
    assert planted.lo <= planted.mean <= planted.hi and len(planted.scores) == 8
    assert not small.measured and small.scored == 2 and len(small.scores) == 2
    assert small.mean is None and small.lo is None and small.hi is None
    assert 0 < small.firing_frequency < 1 and 0 < planted.firing_frequency < 0.05
    assert res.mean == pytest.approx(np.mean(planted.scores))  # the small band does not move it
    lowered = evaluate_interp(store, Variant.of(planted_sae(), "p"), TokenExplainer(), TokenSimulator(), cfg.model_copy(update={"min_scored": 2}))
    assert lowered.bands[1].measured and lowered.mean == pytest.approx(np.mean(planted.scores + lowered.bands[1].scores))


def test_eligibility_needs_enough_firing_contexts_on_both_sides(tmp_path):
    """A latent on a token found in 4 validation contexts is not eligible under the default of 5."""
    store, _ = build_store(tmp_path / "s", {"validation": 40, "test": 40}, rare={"validation": [1, 7, 20, 33], "test": list(range(0, 40, 4))})
    sae = planted_sae()
    with torch.no_grad():
        sae.W_enc[:, 15] = 0
        sae.W_enc[RARE, 15] = 1.0
        sae.b_enc[15] = -0.5
        sae.W_enc[:, 14] = 0  # never fires
        sae.b_enc[14] = -1.0
    scan = Scan(store, sae, [0, 14, 15], InterpConfig())
    assert scan.explain.fired_contexts.tolist()[1:] == [0, 4] and scan.score.fired_contexts.tolist()[1:] == [0, 10]
    assert scan.eligible == {0}
    assert Scan(store, sae, [0, 14, 15], InterpConfig(min_explain_contexts=4)).eligible == {0, 15}
    res = evaluate_interp(store, Variant.of(sae, "p"), TokenExplainer(), TokenSimulator(),
                          InterpConfig(bands=[(14, 16)], latents_per_band=2, min_scored=1, n_bootstrap=20))
    assert (res.bands[0].sampled, res.bands[0].eligible, res.bands[0].scored) == (2, 0, 0) and not res.bands[0].measured


def test_outlier_rows_never_make_a_top_context_and_are_not_scored(tmp_path):
    """Token-1 rows scaled ×100 would be latent 0's top contexts; the store drops them, so they are not."""
    ids_probe = build_store(tmp_path / "probe", {"validation": 60, "test": 60})[1]
    outliers = {}
    for split, ids in ids_probe.items():  # the first token-1 row of the first 12 contexts holding one
        rows = [(c, int(np.flatnonzero(ids[c, FP:].numpy() == 1)[0]) + FP) for c in range(ids.shape[0]) if (ids[c, FP:] == 1).any()]
        outliers[split] = rows[:12]
    store, ids_by = build_store(tmp_path / "s", {"validation": 60, "test": 60}, outliers=outliers)
    assert store.keep_mask("test", 0) is not None  # the rule drops them
    bad = {(s, c, p) for s, rows in outliers.items() for c, p in rows}
    cfg = InterpConfig(explain_top=10, score_top=5, score_random=20, window_left=40, window_right=40)
    [le], _ = collect_latent_examples(store, planted_sae(), [0], cfg)
    assert le.max_act < 2.0  # an outlier row would give ~150
    for ex in le.explain + le.score:
        if ex.kind == "top":
            assert (ex.split, ex.context, ex.position) not in bad
            centre = ex.position - max(FP, ex.position - cfg.window_left)
            assert ex.kept(centre) and ex.tokens[centre] == 1 and 1.0 < ex.acts[centre] < 2.0
        for i in range(len(ex.tokens)):
            lo = max(FP, ex.position - cfg.window_left)
            if (ex.split, ex.context, lo + i) in bad:
                assert not ex.kept(i) and ex.acts[i] == 0.0
            else:
                assert ex.kept(i)
    assert any(ex.keep is not None for ex in le.explain + le.score)  # some window did hold an outlier row
    # without the rule the same rows are the top contexts: the test is sensitive to it
    raw = ActivationStore(tmp_path / "s", outlier_factor=None)
    [le_raw], _ = collect_latent_examples(raw, planted_sae(), [0], cfg)
    assert le_raw.max_act > 100
    # a window requested straight at an outlier row shows it as not present
    c, p = outliers["test"][0]
    [ex] = window_examples(store, planted_sae(), [(0, c, p, "top")], 2, 2, split="test")
    assert ex.keep[p - max(FP, p - 2)] is False and ex.acts[p - max(FP, p - 2)] == 0.0
    # the fired-token count leaves the outliers out
    scan = Scan(store, planted_sae(), [0], cfg)
    assert int(scan.score.fired_tokens[0]) == int((ids_by["test"][:, FP:] == 1).sum()) - len(outliers["test"])
    res = evaluate_interp(store, Variant.of(planted_sae(), "p"), TokenExplainer(), TokenSimulator(),
                          InterpConfig(bands=[(0, 8)], latents_per_band=8, n_bootstrap=50))
    assert res.bands[0].mean > 0.8


def test_latent_examples_use_only_scanned_latents_and_old_names_still_load(split_store):
    store, _ = split_store
    cfg = InterpConfig(split="test")  # the old field name
    assert cfg.score_split == "test" and cfg.split == "test"
    scan = Scan(store, planted_sae(), [0, 1], cfg)
    assert [le.latent for le in latent_examples(store, planted_sae(), scan, [1], cfg)] == [1]
    old = BandScore.model_validate({"band": "b", "start": 0, "end": 4, "latents": 3, "mean": 0.5, "lo": 0.4, "hi": 0.6})
    assert old.measured and old.scored == 3


def test_scores_below_leave_out_unmeasured_bands(test_only_store):
    store, _ = test_only_store
    cfg = InterpConfig(bands=[(0, 8), (8, 10)], latents_per_band=8, n_bootstrap=50)
    res = evaluate_interp(store, Variant.of(planted_sae(), "p"), TokenExplainer(), TokenSimulator(), cfg)
    assert res.scores_below() == res.bands[0].scores
    assert res.scores_below(4) == [ls.score for ls in res.latents if ls.latent < 4]
    assert len(res.scores_below(10)) == 8


def test_eligibility_reads_only_the_explain_side(tmp_path):
    """A latent that fires in 5 validation contexts and in no test context is eligible: which latents are scored
    never depends on the contexts they are scored on; moving its test firings changes nothing."""
    eligible = []
    for test_rare in ([], list(range(0, 40, 4))):
        store, _ = build_store(tmp_path / f"s{len(test_rare)}", {"validation": 40, "test": 40},
                               rare={"validation": [1, 7, 20, 33, 38], "test": test_rare})
        sae = planted_sae()
        with torch.no_grad():
            sae.W_enc[:, 15] = 0
            sae.W_enc[RARE, 15] = 1.0
            sae.b_enc[15] = -0.5
        scan = Scan(store, sae, [0, 15], InterpConfig())
        eligible.append(scan.eligible)
        assert scan.score.fired_contexts.tolist()[1] == len(test_rare)
    assert eligible == [{0, 15}, {0, 15}]


def test_by_default_every_eligible_latent_of_a_band_is_scored(split_store):
    store, _ = split_store
    res = evaluate_interp(store, Variant.of(random_sae(), "r"), TokenExplainer(), TokenSimulator(),
                          InterpConfig(bands=[(0, 40), (40, 64)], n_bootstrap=20))
    scan = Scan(store, random_sae(), list(range(64)), InterpConfig())
    for band, (lo, hi) in zip(res.bands, [(0, 40), (40, 64)]):
        assert band.sampled == hi - lo
        assert band.eligible == len([lat for lat in range(lo, hi) if lat in scan.eligible]) > 16
        assert band.scored + sum(ls.score is None for ls in res.latents if ls.band == band.band) == band.eligible

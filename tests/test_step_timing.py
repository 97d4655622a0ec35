"""Training time measured over interleaved repeats: the statistics on planted timings, and the verdict it drives."""

import numpy as np
import pytest
import torch

from progsae.report.findings import training_time_finding
from progsae.sae import SAEConfig, TopKSAE
from progsae.train.step_timing import measure_ratio, ratio_of_medians, time_steps


def planted(ratio: float, noise: float, repeats=10, steps=6, seed=0):
    g = np.random.default_rng(seed)
    den = 0.10 * (1 + noise * g.standard_normal((repeats, steps)))
    num = ratio * 0.10 * (1 + noise * g.standard_normal((repeats, steps)))
    return num, den


def test_ratio_of_medians_recovers_a_planted_ratio_with_an_interval_around_it():
    num, den = planted(1.2, 0.05)
    ratio, (lo, hi) = ratio_of_medians(num, den)
    assert ratio == pytest.approx(np.median(num) / np.median(den))
    assert lo <= ratio <= hi and lo < 1.2 < hi and hi - lo < 0.1
    noisy = ratio_of_medians(*planted(1.2, 0.4))[1]
    assert noisy[1] - noisy[0] > hi - lo  # more step-to-step noise, a wider interval


def step_timing(num, den):
    ratio, ci = ratio_of_medians(num, den)
    return {"numerator": "matryoshka-64", "denominator": "vanilla-64", "median_num": float(np.median(num)),
            "median_den": float(np.median(den)), "ratio": ratio, "ratio_ci": ci, "repeats": num.shape[0],
            "steps": num.shape[1], "batch_size": 256, "hardware": "planted CPU", "dtype": "float32"}


@pytest.mark.parametrize("ratio, noise, verdict", [(1.1, 0.05, "supported"), (1.5, 0.3, "inconclusive"),
                                                  (2.0, 0.05, "contradicted")])
def test_training_time_verdict_reads_the_interval_against_the_limit(ratio, noise, verdict):
    f = training_time_finding({"n_latents": 64, "step_timing": step_timing(*planted(ratio, noise))})
    assert f.verdict == verdict
    assert "planted CPU" in f.evidence and "interleaved" in f.evidence


def test_old_runs_fall_back_to_single_wall_times_that_are_not_counted():
    f = training_time_finding({"n_latents": 64, "train": {"0": {"vanilla-64": 10.0, "matryoshka-64": 11.0}}})
    assert f.verdict == "inconclusive" and (f.wins, f.ties, f.losses) == (0, 0, 0)
    assert "1.10×" in f.evidence and not f.comparisons[0]["counted"]


def test_time_steps_interleaves_every_sae_and_leaves_their_weights_trained():
    torch.manual_seed(0)
    saes = {name: TopKSAE(SAEConfig(architecture="topk", d_in=16, n_latents=64, k=4, prefixes=prefixes))
            for name, prefixes in (("vanilla", None), ("matryoshka", [16, 64]))}
    with torch.no_grad():  # SAEs start at zero; the trainer initialises them
        for sae in saes.values():
            sae.W_dec.copy_(torch.randn(64, 16))
            sae.normalize_decoder()
            sae.W_enc.copy_(sae.W_dec.t())
    before = {name: sae.W_dec.detach().clone() for name, sae in saes.items()}
    batches = [torch.randn(128, 16) for _ in range(2)]
    times = time_steps(saes, batches, repeats=3, steps=2)
    assert {k: v.shape for k, v in times.items()} == {"vanilla": (3, 2), "matryoshka": (3, 2)}
    assert all((v > 0).all() for v in times.values())
    assert all(not torch.equal(before[n], saes[n].W_dec) for n in saes)
    t = measure_ratio(("matryoshka", saes["matryoshka"]), ("vanilla", saes["vanilla"]), batches, repeats=3, steps=2)
    assert t.ratio_ci[0] <= t.ratio <= t.ratio_ci[1] and "cpu" in t.hardware and t.batch_size == 128

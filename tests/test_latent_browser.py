"""latents.html: each scored latent's top contexts are the ones where it fires most, shaded by activation."""

import re

import torch

from progsae.data.store import ActivationStore, StoreWriter
from progsae.report.latents import latent_cards, write_latent_browser
from progsae.sae import SAEConfig, TopKSAE

L, C, D = 9, 12, 4


def _store(path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(C, L - 1, D, generator=g) * 0.1
    x[3, 4, 0] = 5.0  # latent 0 fires most in context 3, stored row 4 = position 5
    x[7, 1, 0] = 2.0
    ids = torch.arange(C * L).reshape(C, L) % 50 + 10
    w = StoreWriter(path, {"model": "none", "hook": None, "d_model": D, "context_length": L, "first_position": 1}, "test",
                    shard_tokens=10**6)
    w.add(x.reshape(-1, D), ids)
    w.close()
    return ActivationStore(path, outlier_factor=None), ids  # the planted peaks are far above 5x the median norm


def test_cards_show_the_top_contexts_in_order_and_shade_the_peak(tmp_path):
    store, ids = _store(tmp_path / "s")
    sae = TopKSAE(SAEConfig(architecture="topk", d_in=D, n_latents=D, k=D))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(D))
        sae.W_dec.copy_(torch.eye(D))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    detok = lambda t: [f"<t{i}>" for i in t]  # noqa: E731 - tokens with characters that must be escaped
    [card] = latent_cards(store, sae, [{"latent": 0, "band": "0-2", "score": 0.5, "explanation": "x"}], detok)
    first, second = card.index(f"&lt;t{int(ids[3, 5])}&gt;"), card.index(f"&lt;t{int(ids[7, 2])}&gt;")
    assert first < second  # context 3 (activation 5) before context 7 (activation 2)
    assert f'rgba(230,80,20,1.00)" title="5">&lt;t{int(ids[3, 5])}&gt;' in card
    assert "score <b>0.500</b>" in card and not re.search(r"<t\d", card)  # token text is escaped
    out = write_latent_browser(tmp_path / "latents.html", [("sae", "note", [card])])
    assert out.read_text().count('class="card"') == 1

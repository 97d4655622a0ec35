"""latents.html: a self-contained latent browser for the latents the interpretability eval scored.

For each scored latent of an SAE: its top-activating test contexts with every token shaded by the
latent's activation, a histogram of its non-zero activations, its firing frequency and rank (its
index in an importance-sorted or Matryoshka SAE), the explanation and the explain-then-simulate score.
The interpretability claim can then be checked by eye.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from progsae.evals.common import sae_input
from progsae.sae.io import atomic_write_bytes

TOP_CONTEXTS = 5
WINDOW = 24  # tokens shown around the peak of each context


@torch.no_grad()
def latent_activations(store, sae, latents: list[int], split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activations [T, M] of the given latents on the kept rows of a split, with each row's context and position."""
    idx = torch.as_tensor(latents, dtype=torch.long, device=sae.W_enc.device)
    acts, ctxs, poss = [], [], []
    for x, ctx, pos in store.iter_context_rows(split, None, 4096):
        acts.append(sae.encode(sae_input(sae, x)).index_select(1, idx).float().cpu().numpy())
        ctxs.append(ctx)
        poss.append(pos)
    return np.concatenate(acts), np.concatenate(ctxs), np.concatenate(poss)


def _shade(tokens: list[str], values: list[float], vmax: float) -> str:
    spans = []
    for tok, v in zip(tokens, values):
        a = 0.0 if vmax <= 0 else min(1.0, max(0.0, v / vmax))
        title = f"{v:.3g}"
        spans.append(f'<span style="background:rgba(230,80,20,{a:.2f})" title="{title}">{html.escape(tok)}</span>')
    return "".join(spans)


def _histogram_svg(values: np.ndarray, width: int = 220, height: int = 60, bins: int = 24) -> str:
    if values.size == 0:
        return "<em>never fires</em>"
    counts, _ = np.histogram(values, bins=bins, range=(0.0, float(values.max())))
    top = counts.max() or 1
    bw = width / bins
    bars = "".join(f'<rect x="{i * bw:.1f}" y="{height - c / top * height:.1f}" width="{bw - 1:.1f}" height="{c / top * height:.1f}" fill="#4a78b5"/>'
                   for i, c in enumerate(counts))
    return (f'<svg width="{width}" height="{height + 14}" role="img"><title>non-zero activations, max {values.max():.3g}</title>{bars}'
            f'<text x="0" y="{height + 12}" font-size="10">0</text><text x="{width - 30}" y="{height + 12}" font-size="10">{values.max():.3g}</text></svg>')


def latent_cards(store, sae, scored: list[dict], detokenize: Callable[[list[int]], list[str]], split: str = "test") -> list[str]:
    """One HTML card per scored latent (dicts with latent, band, score, explanation, firing_frequency)."""
    if not scored:
        return []
    latents = [int(s["latent"]) for s in scored]
    A, ctx, pos = latent_activations(store, sae, latents, split)
    contexts = store.sample_contexts(split, None)
    cards = []
    for j, s in enumerate(scored):
        col = A[:, j]
        fired = col > 0
        best_per_ctx: dict[int, int] = {}
        for r in np.flatnonzero(fired):
            c = int(ctx[r])
            if c not in best_per_ctx or col[r] > col[best_per_ctx[c]]:
                best_per_ctx[c] = r
        top = sorted(best_per_ctx.values(), key=lambda r: -col[r])[:TOP_CONTEXTS]
        vmax = float(col.max()) if fired.any() else 0.0
        rows = []
        for r in top:
            c = int(ctx[r])
            ids = store.context_tokens(split, contexts[c : c + 1])[0].tolist()
            in_ctx = np.flatnonzero(ctx == c)
            values = np.zeros(len(ids))
            values[pos[in_ctx]] = col[in_ctx]
            peak = int(pos[r])
            lo, hi = max(0, peak - WINDOW + 4), min(len(ids), peak + 5)
            rows.append(f"<li>{_shade(detokenize(ids[lo:hi]), values[lo:hi].tolist(), vmax)}</li>")
        score = "n/a" if s.get("score") is None else f"{s['score']:.3f}"
        freq = float(fired.mean())
        cards.append(
            f'<div class="card"><h3>latent {s["latent"]} <small>band {html.escape(str(s["band"]))}, rank {s["latent"] + 1}</small></h3>'
            f"<p>score <b>{score}</b> · fires on {100 * freq:.3f}% of {split} tokens · max {vmax:.3g}</p>"
            f"<p class=expl>{html.escape(s.get('explanation') or '')}</p>{_histogram_svg(col[fired])}"
            f"<ol>{''.join(rows) or '<li><em>no context</em></li>'}</ol></div>")
    return cards


def write_latent_browser(path: Path, sections: list[tuple[str, str, list[str]]], title: str = "progsae latent browser") -> Path:
    """sections: (heading, note, cards); one self-contained HTML file."""
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             ".cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:12px}"
             ".card{border:1px solid #ccc;border-radius:6px;padding:8px;font-size:13px}"
             ".card ol{padding-left:1.2em;font-family:monospace;white-space:pre-wrap;word-break:break-word}"
             ".expl{color:#444}small{color:#666;font-weight:normal}")
    parts = [f'<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
             f"<title>{html.escape(title)}</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
             "<p>Latents sampled per importance band by the interpretability evaluation. Tokens are shaded by the "
             "latent's activation (hover for the value); contexts come from the test split, explanations from validation.</p>"]
    for heading, note, cards in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(note)}</p><div class=cards>{''.join(cards)}</div>")
    parts.append("</body></html>")
    atomic_write_bytes(Path(path), "".join(parts).encode())
    return Path(path)

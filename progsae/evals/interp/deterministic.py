"""The LLM-free explainer and simulator: a token-identity baseline, not an LLM's explanation.

The "explanation" is a list of the tokens (and previous-token → token pairs) seen at the latent's
top activations, each weighed by the latent's mean normalised activation over its occurrences in
the explain windows, so a token that often appears without firing gets a low weight. The simulator
predicts activation wherever those tokens appear: the pair weight when the pair is listed, else the
token weight, else 0. It measures how far a latent is explained by token identity (plus one token
of context); a latent about meaning beyond that scores low here even if an LLM could describe it.
Deterministic and fast enough for the embedded run. Rows the store drops as outliers
(`Example.keep` False) are not counted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from progsae.evals.interp.base import Detokenize, Explanation, default_detokenize
from progsae.evals.interp.examples import Example


@dataclass
class TokenExplainer:
    """Token-identity baseline: explanation = up to `max_tokens` tokens and `max_contexts` pairs with the highest weights."""

    max_tokens: int = 8
    max_contexts: int = 8
    min_weight: float = 0.05
    detokenize: Detokenize = default_detokenize
    name: str = "deterministic"
    description: str = "token-identity baseline: lists the tokens at top activations; the simulator predicts activation where they appear (no LLM)"

    def explain(self, latent: int, examples: list[Example], max_act: float) -> Explanation:
        scale = max(max_act, max((max(e.acts, default=0.0) for e in examples), default=0.0), 1e-12)
        tok_sum: dict[int, float] = defaultdict(float)
        tok_n: dict[int, int] = defaultdict(int)
        pair_sum: dict[tuple[int, int], float] = defaultdict(float)
        pair_n: dict[tuple[int, int], int] = defaultdict(int)
        for e in examples:
            for i, (t, a) in enumerate(zip(e.tokens, e.acts)):
                if not e.kept(i):  # an outlier row: its activation is not known
                    continue
                w = max(a, 0.0) / scale
                tok_sum[t] += w
                tok_n[t] += 1
                if i > 0:
                    pair = (e.tokens[i - 1], t)
                    pair_sum[pair] += w
                    pair_n[pair] += 1
        tokens = {t: tok_sum[t] / tok_n[t] for t in tok_sum}
        pairs = {p: pair_sum[p] / pair_n[p] for p in pair_sum}
        top_t = sorted(((w, t) for t, w in tokens.items() if w >= self.min_weight), reverse=True)[: self.max_tokens]
        # a pair is worth listing only when it says more than its last token alone
        top_p = sorted(
            ((w, p) for p, w in pairs.items() if w >= self.min_weight and abs(w - tokens[p[1]]) > self.min_weight),
            reverse=True,
        )[: self.max_contexts]
        data = {"tokens": [[t, round(w, 4)] for w, t in top_t], "contexts": [[list(p), round(w, 4)] for w, p in top_p]}
        words = ", ".join(f"{self.detokenize([t])[0]!r} ({w:.2f})" for w, t in top_t)
        ctx = ", ".join(f"{''.join(self.detokenize(list(p)))!r} ({w:.2f})" for w, p in top_p)
        text = f"fires on {words or 'nothing recognisable'}" + (f"; in contexts {ctx}" if ctx else "")
        return Explanation(text=text, data=data)


@dataclass
class TokenSimulator:
    """Predicts a token's activation from the weighted tokens and pairs of a TokenExplainer explanation (token identity only)."""

    name: str = "deterministic"

    def simulate(self, explanation: Explanation, tokens: list[int]) -> list[float]:
        tok_w = {int(t): float(w) for t, w in explanation.data.get("tokens", [])}
        pair_w = {(int(p[0]), int(p[1])): float(w) for p, w in explanation.data.get("contexts", [])}
        out = []
        for i, t in enumerate(tokens):
            pair = (tokens[i - 1], t) if i > 0 else None
            out.append(pair_w[pair] if pair in pair_w else tok_w.get(t, 0.0))
        return out

"""Explain-then-simulate interpretability: contexts from a text store, pluggable explainer and simulator, Pearson scores.

Explanations come from validation contexts and scores from test contexts (or two seeded halves of
test when a store has no validation split); outlier rows are treated as not present.

    examples       explain/score context sides; top-activating and per-latent random windows (rows mapped back to token_ids)
    deterministic  the LLM-free token-identity baseline explainer and simulator (default)
    llm            an LLM explainer/simulator over a local HF chat model or an OpenAI-compatible endpoint, cached on disk
    score          per-latent Pearson, per-band means with bootstrap intervals, eligibility, measured bands (evaluate_interp)
"""

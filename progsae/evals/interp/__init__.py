"""Explain-then-simulate interpretability: contexts from a text store, pluggable explainer and simulator, Pearson scores.

    examples       top-activating and random windows of chosen latents (rows mapped back to token_ids)
    deterministic  the LLM-free token explainer and simulator (default)
    llm            an LLM explainer/simulator over a local HF chat model or an OpenAI-compatible endpoint, cached on disk
    score          per-latent Pearson, per-band means with bootstrap intervals (evaluate_interp)
"""

"""The explainer and simulator interfaces: explanation from top examples, per-token prediction from the explanation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from progsae.evals.interp.examples import Example

Detokenize = Callable[[list[int]], list[str]]  # token ids -> one printable string per token


def default_detokenize(ids: list[int]) -> list[str]:
    return [f"#{t}" for t in ids]


def tokenizer_detokenize(tokenizer) -> Detokenize:
    """Per-token strings from a Hugging Face tokenizer (each id decoded on its own)."""

    def detok(ids: list[int]) -> list[str]:
        return [tokenizer.decode([int(t)]) for t in ids]

    return detok


@dataclass
class Explanation:
    """What the simulator may see: a text, plus structured data for explainers that produce it."""

    text: str
    data: dict[str, Any] = field(default_factory=dict)


class Explainer(Protocol):
    """Writes an explanation from a latent's explain windows. `name` goes into the result (and an
    optional `description` attribute says what kind of explainer it is)."""

    name: str

    def explain(self, latent: int, examples: list[Example], max_act: float) -> Explanation: ...


class Simulator(Protocol):
    name: str

    def simulate(self, explanation: Explanation, tokens: list[int]) -> list[float]:
        """Predicted activation for every token of one window, from the explanation alone."""
        ...


def explainer_label(explainer: str, llm_model: str | None = None) -> str:
    """What the report calls an explainer: the deterministic one is a token-identity baseline, not an LLM."""
    return "token-identity baseline" if explainer == "deterministic" else f"llm ({llm_model or 'smollm2'})"

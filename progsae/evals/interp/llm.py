"""LLM explainer and simulator: a local Hugging Face chat model or any OpenAI-compatible endpoint.

Every prompt and answer goes through a JSON cache on disk (one file per request, keyed by a hash
of the model id, messages and settings), so re-running an evaluation asks the model nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from progsae.errors import ProgsaeError
from progsae.evals.interp.base import Detokenize, Explanation, default_detokenize
from progsae.evals.interp.examples import Example
from progsae.sae.io import atomic_write_json

Messages = list[dict[str, str]]


class ChatModel(Protocol):
    ident: str  # names the model in cache keys

    def complete(self, messages: Messages, max_tokens: int) -> str: ...


# ---- backends ----------------------------------------------------------------------------------
@dataclass
class OpenAIChat:
    """Chat completions over HTTP (OpenAI, vLLM, Ollama, llama.cpp server...), greedy decoding.

    `url` may be the server root, its /v1 base, or the full /chat/completions address. The API
    key comes from `api_key` or $OPENAI_API_KEY and is never written to the cache.
    """

    url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0

    @property
    def ident(self) -> str:
        return f"openai:{self.model}"

    def endpoint(self) -> str:
        u = self.url.rstrip("/")
        if u.endswith("/chat/completions"):
            return u
        return u + ("/chat/completions" if u.endswith("/v1") else "/v1/chat/completions")

    def complete(self, messages: Messages, max_tokens: int) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"}
        key = self.api_key or os.environ.get("OPENAI_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.endpoint(), data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise ProgsaeError(f"LLM endpoint {self.endpoint()} answered HTTP {e.code}: {e.read()[:200].decode(errors='replace')}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise ProgsaeError(f"cannot reach LLM endpoint {self.endpoint()}: {getattr(e, 'reason', e)}") from None
        except json.JSONDecodeError:
            raise ProgsaeError(f"LLM endpoint {self.endpoint()} did not answer JSON") from None
        try:
            return str(data["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise ProgsaeError(f"LLM endpoint {self.endpoint()} answered without choices[0].message.content") from None


@dataclass
class HFChat:
    """A local Hugging Face causal LM used as a chat model (greedy decoding)."""

    model: object
    tokenizer: object
    name: str = "hf"

    @property
    def ident(self) -> str:
        return f"hf:{self.name}"

    def prompt_ids(self, messages: Messages):
        import torch

        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        else:  # a base model: plain role-prefixed text
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            ids = tok(text, return_tensors="pt")["input_ids"]
        return torch.as_tensor(ids).reshape(1, -1)

    def complete(self, messages: Messages, max_tokens: int) -> str:
        import torch

        ids = self.prompt_ids(messages)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id,
            )
        return self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@dataclass
class CachedChat:
    """Wraps a chat model with an on-disk JSON cache: {model, messages, max_tokens, answer} per request."""

    inner: ChatModel
    folder: Path
    hits: int = 0
    misses: int = 0

    @property
    def ident(self) -> str:
        return self.inner.ident

    def path_for(self, messages: Messages, max_tokens: int) -> Path:
        key = hashlib.sha256(json.dumps([self.inner.ident, messages, max_tokens], sort_keys=True).encode()).hexdigest()
        return Path(self.folder) / key[:2] / f"{key}.json"

    def complete(self, messages: Messages, max_tokens: int) -> str:
        path = self.path_for(messages, max_tokens)
        if path.is_file():
            try:
                answer = json.loads(path.read_text())["answer"]
                self.hits += 1
                return answer
            except (json.JSONDecodeError, KeyError):
                pass  # a damaged entry is asked again and rewritten
        answer = self.inner.complete(messages, max_tokens)
        self.misses += 1
        atomic_write_json(path, {"model": self.inner.ident, "messages": messages, "max_tokens": max_tokens, "answer": answer})
        return answer


# ---- prompts -----------------------------------------------------------------------------------
def _scale(acts: list[float], max_act: float) -> list[int]:
    """Activations as integers 0..10 relative to the latent's max (Bills et al.'s scale)."""
    m = max(max_act, 1e-12)
    return [max(0, min(10, round(10 * a / m))) for a in acts]


def explain_messages(examples: list[Example], max_act: float, detok: Detokenize) -> Messages:
    lines = []
    for i, ex in enumerate(examples, 1):
        toks = detok(ex.tokens)
        marked = "".join(f"<<{t}>>" if s > 0 else t for t, s in zip(toks, _scale(ex.acts, max_act)))
        strong = ", ".join(f"{t!r}={s}" for t, s in zip(toks, _scale(ex.acts, max_act)) if s > 0)
        lines.append(f"Example {i}: {marked}\nActivations (0-10): {strong or 'none'}")
    return [
        {"role": "system", "content": "You explain what a feature of a language model responds to."},
        {
            "role": "user",
            "content": "Here are text excerpts where a feature fires. Tokens where it fires are marked <<like this>>.\n\n"
            + "\n".join(lines)
            + "\n\nIn one short phrase, what does this feature respond to? Answer with the phrase only.",
        },
    ]


def simulate_messages(explanation: str, tokens: list[str]) -> Messages:
    listing = "\n".join(f"{i}\t{t!r}" for i, t in enumerate(tokens))
    return [
        {"role": "system", "content": "You predict how strongly a language-model feature fires on each token."},
        {
            "role": "user",
            "content": f"The feature responds to: {explanation}\n\nTokens (index, token):\n{listing}\n\n"
            "For every token write one line `index<TAB>activation` with an activation from 0 (not at all) to 10 (strongly), "
            "and nothing else. For example:\n0\t0\n1\t7\n2\t0",
        },
    ]


_LINE = re.compile(r"^\s*(\d+)\b.*?(-?\d+(?:\.\d+)?)\s*$")


def parse_simulation(answer: str, n: int) -> list[float]:
    """Per-token activations from `index<TAB>value` lines; tokens the answer misses get 0."""
    out = [0.0] * n
    for line in answer.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        i = int(m.group(1))
        if 0 <= i < n and m.end(1) < m.start(2):
            out[i] = max(0.0, min(10.0, float(m.group(2))))
    return out


# ---- explainer and simulator -------------------------------------------------------------------
@dataclass
class LLMExplainer:
    chat: ChatModel
    detokenize: Detokenize = default_detokenize
    max_tokens: int = 48
    name: str = "llm"
    description: str = "an LLM writes a one-phrase explanation from the marked top windows"

    def explain(self, latent: int, examples: list[Example], max_act: float) -> Explanation:
        answer = self.chat.complete(explain_messages(examples, max_act, self.detokenize), self.max_tokens)
        text = next((ln.strip() for ln in answer.splitlines() if ln.strip()), "")
        return Explanation(text=text or "(no explanation)")


@dataclass
class LLMSimulator:
    chat: ChatModel
    detokenize: Detokenize = default_detokenize
    max_tokens_per_token: int = 6
    name: str = "llm"

    def simulate(self, explanation: Explanation, tokens: list[int]) -> list[float]:
        msgs = simulate_messages(explanation.text, self.detokenize(tokens))
        answer = self.chat.complete(msgs, self.max_tokens_per_token * len(tokens) + 8)
        return parse_simulation(answer, len(tokens))

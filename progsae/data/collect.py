"""Collect a language model's activations at one hook site into an activation store, resumably.

Contexts come from `corpus.iter_contexts` (deterministic); each shard holds a fixed number of whole
contexts, so a collect that is interrupted and re-run skips the contexts already stored and ends
with exactly the store an uninterrupted run writes.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from progsae.data.corpus import iter_contexts
from progsae.data.hooks import capture, parse_hook_name, resolve_hook, to_progsae_hook
from progsae.data.models import load_model
from progsae.data.store import META_FILE, StoreWriter
from progsae.errors import ProgsaeError

STORAGE_DTYPES = ("float32", "float16")


@dataclass
class CollectConfig:
    """What to collect. `tokens`/`validation_tokens`/`test_tokens` count stored rows (positions >= first_position).

    Documents go to test, validation or train by a seeded hash; validation (default: as many rows as
    test) is what data-driven choices read (importance orderings, the mean-ablation vector,
    interpretability explanations), so that test is read only for reported numbers."""

    model: str = "smollm2"
    hook: str = "resid_post.14"
    corpus: str = "embedded"
    tokens: int = 300_000
    test_tokens: int = 20_000
    validation_tokens: int | None = None  # None: as many as test_tokens
    context_length: int = 128
    batch_size: int = 16
    storage_dtype: str = "float32"
    first_position: int = 1
    seed: int = 0
    test_fraction: float | None = None  # share of documents in the test split; default from the token counts
    validation_fraction: float | None = None  # share in the validation split; default from the token counts
    shard_tokens: int = 65_536
    device: str = "cpu"
    text_field: str = "text"
    dataset_config: str | None = None
    dataset_split: str = "train"

    @property
    def resolved_validation_tokens(self) -> int:
        return self.test_tokens if self.validation_tokens is None else int(self.validation_tokens)

    def _share(self, tokens: int) -> float:
        ratio = tokens / max(1, self.tokens + self.resolved_validation_tokens + self.test_tokens)
        return round(min(0.4, max(0.02, ratio)), 4)

    def resolved_test_fraction(self) -> float:
        return float(self.test_fraction) if self.test_fraction is not None else self._share(self.test_tokens)

    def resolved_validation_fraction(self) -> float:
        if self.validation_fraction is not None:
            return float(self.validation_fraction)
        return self._share(self.resolved_validation_tokens) if self.resolved_validation_tokens else 0.0

    def validate(self) -> None:
        from progsae.device import resolve_device

        self.hook = to_progsae_hook(self.hook)  # the store records progsae's name of the site, whatever name was typed
        parse_hook_name(self.hook)
        resolve_device(self.device)
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ProgsaeError(f"unknown storage dtype '{self.storage_dtype}' (use {' or '.join(STORAGE_DTYPES)})")
        if not 0 <= self.first_position < self.context_length:
            raise ProgsaeError(f"first position {self.first_position} must be in 0..{self.context_length - 1}")
        if self.tokens < 0 or self.test_tokens < 0 or self.resolved_validation_tokens < 0 or self.tokens + self.test_tokens == 0:
            raise ProgsaeError("ask for a positive number of --tokens and/or --test-tokens (and --validation-tokens >= 0)")
        if self.batch_size < 1:
            raise ProgsaeError(f"batch size must be positive (got {self.batch_size})")
        if not 0 < self.resolved_test_fraction() < 1:
            raise ProgsaeError(f"test fraction must be between 0 and 1 (got {self.test_fraction})")
        v = self.resolved_validation_fraction()
        if not 0 <= v < 1 or self.resolved_test_fraction() + v >= 1:
            raise ProgsaeError(f"validation fraction must be in [0, 1) and leave room for train (got {v} with test {self.resolved_test_fraction()})")

    @property
    def rows_per_context(self) -> int:
        return self.context_length - self.first_position

    @property
    def shard_contexts(self) -> int:
        return max(1, self.shard_tokens // self.rows_per_context)

    def contexts_for(self, split: str) -> int:
        rows = {"train": self.tokens, "validation": self.resolved_validation_tokens, "test": self.test_tokens}[split]
        return math.ceil(rows / self.rows_per_context)


# Settings that change what a store contains: a resumed collect must agree on all of them.
_DETERMINANTS = ("model", "hook", "corpus", "context_length", "storage_dtype", "first_position", "seed", "text_field",
                 "dataset_config", "dataset_split", "shard_tokens")


def store_meta(cfg: CollectConfig, d_model: int, n_layers: int, tokenizer) -> dict:
    """The meta.json fields of a store collected with `cfg` (no timestamps: resumed stores compare equal)."""
    return {
        "model": cfg.model,
        "hook": cfg.hook,
        "d_model": d_model,
        "n_layers": n_layers,
        "context_length": cfg.context_length,
        "first_position": cfg.first_position,
        "corpus": cfg.corpus,
        "seed": cfg.seed,
        "test_fraction": cfg.resolved_test_fraction(),
        "validation_fraction": cfg.resolved_validation_fraction(),
        "bos_token_id": tokenizer.bos_token_id,
        "source": "text",
        "collect": {k: v for k, v in asdict(cfg).items() if k in _DETERMINANTS},
    }


def check_resumable(out: Path, cfg: CollectConfig) -> None:
    """Refuse to append to a store collected with different settings."""
    meta_path = out / META_FILE
    if not meta_path.exists():
        return
    try:
        old = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        raise ProgsaeError(f"{meta_path}: not valid JSON; use a new --out") from None
    prev = old.get("collect")
    if prev is None:
        raise ProgsaeError(f"{out}: holds a store not written by collect; use a new --out")
    now = {k: v for k, v in asdict(cfg).items() if k in _DETERMINANTS}
    for key in _DETERMINANTS:
        if prev.get(key) != now[key]:
            raise ProgsaeError(f"{out}: existing store was collected with {key}={prev.get(key)!r}, this run has {now[key]!r}; use a new --out")
    if old.get("test_fraction") != cfg.resolved_test_fraction():
        raise ProgsaeError(
            f"{out}: existing store split documents with test_fraction={old.get('test_fraction')}, this run {cfg.resolved_test_fraction()}; pass --test-fraction {old.get('test_fraction')} or use a new --out"
        )
    if old.get("validation_fraction", 0.0) != cfg.resolved_validation_fraction():
        raise ProgsaeError(
            f"{out}: existing store split documents with validation_fraction={old.get('validation_fraction', 0.0)}, this run {cfg.resolved_validation_fraction()}; pass --validation-fraction {old.get('validation_fraction', 0.0)} or use a new --out"
        )


ProgressFn = Callable[[str, int, int], None]  # (split, contexts stored or queued, rows in this step)


def collect(cfg: CollectConfig, out, *, model=None, tokenizer=None, progress: bool = True, on_batch: ProgressFn | None = None) -> Path:
    """Fill (or finish) the store at `out` with the train, validation and test rows cfg asks for."""
    typed_hook = cfg.hook.strip() if cfg.hook else cfg.hook
    cfg.validate()
    out = Path(out)
    check_resumable(out, cfg)
    if model is None:
        model, tokenizer = load_model(cfg.model, device=cfg.device)
    site = resolve_hook(model, cfg.hook)
    probe = torch.tensor([[tokenizer.bos_token_id or 0, tokenizer.eos_token_id or 0]], device=cfg.device)
    d_model = int(capture(model, site, probe).shape[-1])
    meta = store_meta(cfg, d_model, site.n_layers, tokenizer)
    if typed_hook != cfg.hook:  # another tool's name of the site ('blocks.3.hook_resid_post'): kept as provenance
        meta["hook_as_typed"] = typed_hook
    for stale in out.glob(".*.safetensors.*"):  # half-written shard of a killed run (atomic writes leave only these)
        stale.unlink()
    splits = [s for s in ("train", "validation", "test") if cfg.contexts_for(s) > 0]
    bar = _progress_bar(cfg, out, splits) if progress else None
    try:
        for split in splits:
            _collect_split(cfg, out, split, meta, model, tokenizer, site, bar, on_batch)
    finally:
        if bar is not None:
            bar.close()
    return out


def _progress_bar(cfg: CollectConfig, out: Path, splits: list[str]):
    from tqdm import tqdm

    done = 0
    meta_path = out / META_FILE
    if meta_path.exists():
        old = json.loads(meta_path.read_text())["splits"]
        done = sum(min(old.get(s, {}).get("contexts", 0), cfg.contexts_for(s)) for s in splits) * cfg.rows_per_context
    total = sum(cfg.contexts_for(s) for s in splits) * cfg.rows_per_context
    return tqdm(total=total, initial=done, unit="tok", unit_scale=True, desc=f"collect {cfg.hook}", smoothing=0.1)


def _collect_split(cfg, out, split, meta, model, tokenizer, site, bar, on_batch) -> None:
    target = cfg.contexts_for(split)
    shard_contexts = cfg.shard_contexts
    writer = StoreWriter(out, meta, split, shard_tokens=shard_contexts * cfg.rows_per_context, storage_dtype=cfg.storage_dtype)
    start = writer.contexts_written
    if start >= target:
        if not writer.split_meta["complete"]:
            writer.close()
        return
    writer.split_meta["complete"] = False
    contexts = iter_contexts(cfg.corpus, tokenizer, split, cfg.context_length, seed=cfg.seed,
                             test_fraction=cfg.resolved_test_fraction(), validation_fraction=cfg.resolved_validation_fraction(),
                             text_field=cfg.text_field,
                             dataset_config=cfg.dataset_config, dataset_split=cfg.dataset_split)
    for _ in range(start):  # contexts already stored (the stream is deterministic)
        if next(contexts, None) is None:
            break
    done = start
    while done < target:
        # batches never cross a shard boundary, so shards hold the same contexts however the run was cut
        room = shard_contexts - done % shard_contexts
        rows = list(itertools.islice(contexts, min(cfg.batch_size, room, target - done)))
        if not rows:
            if bar is not None:
                bar.write(f"progsae collect: the corpus ran out of {split} text after {done} contexts ({done * cfg.rows_per_context} tokens)")
            break
        ids_BL = torch.tensor(rows, dtype=torch.long)
        acts_BLD = capture(model, site, ids_BL.to(cfg.device))
        rows_TD = acts_BLD[:, cfg.first_position :].reshape(-1, acts_BLD.shape[-1])
        writer.add(rows_TD, ids_BL)
        done += ids_BL.shape[0]
        if bar is not None:
            bar.update(rows_TD.shape[0])
        if on_batch is not None:
            on_batch(split, done, rows_TD.shape[0])
    writer.close()

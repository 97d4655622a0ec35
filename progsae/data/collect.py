"""Collect a language model's activations at one or more hook sites into activation stores, resumably.

Contexts come from `corpus.iter_contexts` (deterministic) and go through `iter_context_batches`, the one
code path from text to activation rows that `collect` (which writes shards) and `progsae.data.stream`
(which trains from them) share. Each shard holds a fixed number of whole contexts, so a collect that is
interrupted and re-run skips the contexts already stored and ends with exactly the store an
uninterrupted run writes. Several hooks (`resid_post.6,resid_post.14`) run the model once per batch, up
to the deepest site, and write one store per hook (`OUT/<hook>/`).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from progsae.data.corpus import iter_contexts
from progsae.data.hooks import HookSite, capture_many, parse_hook_name, resolve_hook, to_progsae_hook
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
    hook: str = "resid_post.14"  # one site, or several separated by commas (one store per site)
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
    # study only (`progsae reproduce`): train every SAE from the live model and store only validation and test
    stream: bool = False

    @property
    def hooks(self) -> list[str]:
        """The hook sites, in the order given (progsae names once validated)."""
        return [h.strip() for h in self.hook.split(",") if h.strip()]

    def for_hook(self, hook: str) -> CollectConfig:
        """This config restricted to one of its hooks: what one store records."""
        return replace(self, hook=hook)

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

        hooks = [to_progsae_hook(h) for h in self.hooks]  # stores record progsae's name of a site, whatever name was typed
        if not hooks:
            raise ProgsaeError("give at least one hook site (e.g. resid_post.14)")
        for h in hooks:
            parse_hook_name(h)
        if len(set(hooks)) != len(hooks):
            raise ProgsaeError(f"hook sites repeat in '{self.hook}'")
        self.hook = ",".join(hooks)
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


def determinants(cfg: CollectConfig) -> dict:
    """The settings of cfg that decide what a store (or a stream) holds."""
    return {k: v for k, v in asdict(cfg).items() if k in _DETERMINANTS}


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
        "collect": determinants(cfg),
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
    now = determinants(cfg)
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


def heldout_only(cfg: CollectConfig) -> CollectConfig:
    """The collect of a streamed run: no train rows, the validation and test splits of the full config's document split."""
    return replace(cfg, tokens=0, test_fraction=cfg.resolved_test_fraction(), validation_fraction=cfg.resolved_validation_fraction())


def store_folders(cfg: CollectConfig, out) -> dict[str, Path]:
    """Where each hook's store goes: `out` itself for one hook, `out/<hook>` for several."""
    out = Path(out)
    hooks = cfg.hooks
    return {hooks[0]: out} if len(hooks) == 1 else {h: out / h for h in hooks}


@dataclass
class ContextBatch:
    """Contexts first..first+B-1 of a split with their activation rows at every hook site."""

    first: int
    ids_BL: torch.Tensor  # token ids (CPU, int64)
    rows: dict[str, torch.Tensor]  # hook -> rows [B * rows_per_context, D] on the model's device, context-major


def iter_context_batches(cfg: CollectConfig, split: str, model, tokenizer, sites: list[HookSite], *,
                         start: int, stop: int, block: int) -> Iterator[ContextBatch]:
    """Contexts start..stop-1 of a split, `cfg.batch_size` per forward, with their rows at every site.

    Rows are positions first_position..L-1 of each context, in order. Batches never cross a multiple of
    `block` contexts (a shard of `collect`, a shuffle chunk of the stream). Stops early if the corpus runs out."""
    contexts = iter_contexts(cfg.corpus, tokenizer, split, cfg.context_length, seed=cfg.seed,
                             test_fraction=cfg.resolved_test_fraction(), validation_fraction=cfg.resolved_validation_fraction(),
                             text_field=cfg.text_field, dataset_config=cfg.dataset_config, dataset_split=cfg.dataset_split)
    for _ in range(start):  # contexts before `start` (the stream is deterministic): tokenised, never run
        if next(contexts, None) is None:
            return
    done = start
    while done < stop:
        room = block - done % block
        rows = list(itertools.islice(contexts, min(cfg.batch_size, room, stop - done)))
        if not rows:
            return
        ids_BL = torch.tensor(rows, dtype=torch.long)
        acts = capture_many(model, sites, ids_BL.to(cfg.device))
        yield ContextBatch(done, ids_BL, {name: a[:, cfg.first_position:].reshape(-1, a.shape[-1]) for name, a in acts.items()})
        done += ids_BL.shape[0]


ProgressFn = Callable[[str, int, int], None]  # (split, contexts stored or queued, rows in this step)


def collect(cfg: CollectConfig, out, *, model=None, tokenizer=None, progress: bool = True, on_batch: ProgressFn | None = None) -> Path:
    """Fill (or finish) the store at `out` (one per hook under `out/` for several hooks) with the train,
    validation and test rows cfg asks for."""
    typed_hooks = [h.strip() for h in cfg.hook.split(",")] if cfg.hook else []
    cfg.validate()
    out = Path(out)
    folders = store_folders(cfg, out)
    for hook, folder in folders.items():
        check_resumable(folder, cfg.for_hook(hook))
    if model is None:
        model, tokenizer = load_model(cfg.model, device=cfg.device)
    sites = [resolve_hook(model, h) for h in cfg.hooks]
    probe = torch.tensor([[tokenizer.bos_token_id or 0, tokenizer.eos_token_id or 0]], device=cfg.device)
    widths = {name: int(a.shape[-1]) for name, a in capture_many(model, sites, probe).items()}
    metas = {h: store_meta(cfg.for_hook(h), widths[h], sites[0].n_layers, tokenizer) for h in cfg.hooks}
    for typed, hook in zip(typed_hooks, cfg.hooks):
        if typed != hook:  # another tool's name of the site ('blocks.3.hook_resid_post'): kept as provenance
            metas[hook]["hook_as_typed"] = typed
    for folder in folders.values():
        for stale in folder.glob(".*.safetensors.*"):  # half-written shard of a killed run (atomic writes leave only these)
            stale.unlink()
    splits = [s for s in ("train", "validation", "test") if cfg.contexts_for(s) > 0]
    bar = _progress_bar(cfg, folders, splits) if progress else None
    try:
        for split in splits:
            _collect_split(cfg, folders, split, metas, model, tokenizer, sites, bar, on_batch)
    finally:
        if bar is not None:
            bar.close()
    return out


def _progress_bar(cfg: CollectConfig, folders: dict[str, Path], splits: list[str]):
    from tqdm import tqdm

    done = None
    for folder in folders.values():  # contexts every hook's store already holds
        meta_path = folder / META_FILE
        old = json.loads(meta_path.read_text())["splits"] if meta_path.exists() else {}
        mine = sum(min(old.get(s, {}).get("contexts", 0), cfg.contexts_for(s)) for s in splits)
        done = mine if done is None else min(done, mine)
    total = sum(cfg.contexts_for(s) for s in splits) * cfg.rows_per_context
    return tqdm(total=total, initial=(done or 0) * cfg.rows_per_context, unit="tok", unit_scale=True,
                desc=f"collect {cfg.hook}", smoothing=0.1)


def _collect_split(cfg, folders, split, metas, model, tokenizer, sites, bar, on_batch) -> None:
    target = cfg.contexts_for(split)
    shard_contexts = cfg.shard_contexts
    writers = {h: StoreWriter(folders[h], metas[h], split, shard_tokens=shard_contexts * cfg.rows_per_context,
                              storage_dtype=cfg.storage_dtype) for h in cfg.hooks}
    start = min(w.contexts_written for w in writers.values())  # whole shards: every writer stops at a shard boundary
    if start >= target:
        for w in writers.values():
            if not w.split_meta["complete"]:
                w.close()
        return
    for w in writers.values():
        w.split_meta["complete"] = False
    done = start
    # batches never cross a shard boundary, so shards hold the same contexts however the run was cut
    for batch in iter_context_batches(cfg, split, model, tokenizer, sites, start=start, stop=target, block=shard_contexts):
        for hook, w in writers.items():
            if batch.first >= w.contexts_written:  # a store that is ahead (killed between two hooks' shards) skips it
                w.add(batch.rows[hook], batch.ids_BL)
        done = batch.first + batch.ids_BL.shape[0]
        n_rows = batch.ids_BL.shape[0] * cfg.rows_per_context
        if bar is not None:
            bar.update(n_rows)
        if on_batch is not None:
            on_batch(split, done, n_rows)
    if done < target and bar is not None:
        bar.write(f"progsae collect: the corpus ran out of {split} text after {done} contexts ({done * cfg.rows_per_context} tokens)")
    for w in writers.values():
        w.close()

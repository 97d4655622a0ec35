"""Train rows straight from the running model: exactly the rows `collect` would store, never written to disk.

The stream reads the train split's contexts through `collect.iter_context_batches` (the code path
`collect` writes shards from: same documents, split hash, contexts and positions), in chunks of
`chunk_contexts` contexts. Each chunk's rows are rounded to the storage dtype (as a store holds them),
the outlier rule drops the rows its readers would drop (`OutlierRule.keep` on `row_norms`), and the
rest are shuffled by a generator seeded with (seed, chunk index). A `StreamPosition` (chunk, row)
therefore names one row for good: a resumed run regenerates that chunk and skips the rows before it.
With `epochs` > 1 the model reads the split again, each pass reshuffled: chunk numbers run on across
passes (chunk g is chunk g mod n_chunks of pass g div n_chunks), so a position is still one number pair.
Peak memory is a few chunks, whatever the number of tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from progsae.data.collect import CollectConfig, ContextBatch, determinants, iter_context_batches
from progsae.data.hooks import resolve_hook
from progsae.data.outliers import OutlierRule, row_norms

STORAGE_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class StreamPosition:
    """The next row of one hook's stream: row `row` of chunk `chunk`'s shuffled kept rows (chunks numbered across passes)."""

    chunk: int = 0
    row: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StreamPosition:
        return cls(int(d["chunk"]), int(d["row"]))


@dataclass
class Chunk:
    """One chunk of the stream: per hook, its kept rows in shuffled order and where each came from."""

    index: int  # across passes: pass * n_chunks + chunk of the pass
    first_context: int  # in its pass
    token_ids_CL: torch.Tensor  # CPU int64
    rows: dict[str, torch.Tensor]  # hook -> [R, D] float32 on the model's device
    row_ids: dict[str, torch.Tensor]  # hook -> [R] int64: the row's index in a store's train split (context * rpc + offset)
    dropped: dict[str, int]  # hook -> rows the outlier rule dropped
    rows_per_context: int
    first_position: int

    def token_ids(self, hook: str) -> torch.Tensor:
        """The token [R] whose activation each row of `hook` is."""
        local = self.row_ids[hook] - self.first_context * self.rows_per_context
        return self.token_ids_CL[local // self.rows_per_context, local % self.rows_per_context + self.first_position]


def chunk_contexts_for(buffer_bytes: int, cfg: CollectConfig, row_bytes: int) -> int:
    """Contexts per chunk: as many as fit `buffer_bytes` of rows (every hook's), at least one forward's worth."""
    return max(cfg.batch_size, buffer_bytes // max(1, row_bytes * cfg.rows_per_context))


class ActivationStream:
    """The train split of `cfg` as seeded, shuffled chunks of activation rows at each of its hooks."""

    def __init__(self, cfg: CollectConfig, model, tokenizer, rules: dict[str, OutlierRule | None], *,
                 chunk_contexts: int, seed: int, epochs: int = 1):
        cfg.validate()
        self.cfg = cfg
        self.model, self.tokenizer = model, tokenizer
        self.sites = [resolve_hook(model, h) for h in cfg.hooks]
        self.rules = rules
        self.chunk_contexts = int(chunk_contexts)
        self.seed = int(seed)
        self.epochs = int(epochs)
        self.storage = STORAGE_TORCH_DTYPES[cfg.storage_dtype]

    @property
    def n_contexts(self) -> int:
        """Train contexts: those `collect` of the same config stores."""
        return self.cfg.contexts_for("train")

    @property
    def stored_rows(self) -> int:
        """Rows before the outlier rule: what a store's train split would hold on disk."""
        return self.n_contexts * self.cfg.rows_per_context

    @property
    def n_chunks(self) -> int:
        """Chunks of one pass."""
        return math.ceil(self.n_contexts / self.chunk_contexts)

    @property
    def total_chunks(self) -> int:
        return self.epochs * self.n_chunks

    def identity(self) -> dict:
        """What fixes every row of the stream: a resumed run must agree on all of it."""
        c = self.cfg
        return {"collect": {k: v for k, v in determinants(c).items() if k != "shard_tokens"},
                "test_fraction": c.resolved_test_fraction(), "validation_fraction": c.resolved_validation_fraction(),
                "contexts": self.n_contexts, "chunk_contexts": self.chunk_contexts, "seed": self.seed, "epochs": self.epochs,
                "rules": {h: None if r is None else r.to_dict() for h, r in self.rules.items()}}

    def chunks(self, start: int = 0) -> Iterator[Chunk]:
        """Chunks start, start+1, ... to the end of the last pass (contexts before `start` in its pass are tokenised, never run)."""
        k = self.chunk_contexts
        for epoch in range(start // self.n_chunks, self.epochs):
            first_chunk = start % self.n_chunks if epoch == start // self.n_chunks else 0
            pending: list[ContextBatch] = []
            batches = iter_context_batches(self.cfg, "train", self.model, self.tokenizer, self.sites,
                                           start=first_chunk * k, stop=self.n_contexts, block=k)
            for batch in batches:
                pending.append(batch)
                end = batch.first + batch.ids_BL.shape[0]
                if end % k == 0 or end == self.n_contexts:
                    yield self._chunk(pending, epoch)
                    pending = []
            if pending:  # the corpus ran out inside a chunk
                yield self._chunk(pending, epoch)

    def _chunk(self, batches: list[ContextBatch], epoch: int) -> Chunk:
        first = batches[0].first
        index = epoch * self.n_chunks + first // self.chunk_contexts
        rpc = self.cfg.rows_per_context
        ids_CL = torch.cat([b.ids_BL for b in batches])
        gen = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, index]).integers(2**62)))
        rows, row_ids, dropped = {}, {}, {}
        for h in self.cfg.hooks:
            x_TD = torch.cat([b.rows[h] for b in batches]).to(self.storage)  # as a store holds them
            ids_T = torch.arange(first * rpc, first * rpc + x_TD.shape[0])
            rule = self.rules.get(h)
            if rule is not None:
                keep_T = rule.keep(row_norms(x_TD)).cpu()
                dropped[h] = int((~keep_T).sum())
                ids_T = ids_T[keep_T]
            else:
                dropped[h] = 0
            order = torch.randperm(ids_T.shape[0], generator=gen)
            ids_T = ids_T[order]
            rows[h] = x_TD[(ids_T - first * rpc).to(x_TD.device)].float()
            row_ids[h] = ids_T
        for b in batches:
            b.rows.clear()  # the chunk's rows are the only copy held from here on
        return Chunk(index, first, ids_CL, rows, row_ids, dropped, rpc, self.cfg.first_position)


@dataclass
class Batch:
    """One training batch of one hook's stream."""

    index: int  # batches of this hook before it
    x_BD: torch.Tensor
    row_ids_B: torch.Tensor  # each row's index in a store's train split
    token_ids_B: torch.Tensor
    next: StreamPosition  # where the stream continues after it


class Batcher:
    """Fixed-size batches of one hook's rows across chunk boundaries, from `start` (batch number `first_index`)."""

    def __init__(self, hook: str, batch_size: int, start: StreamPosition = StreamPosition(), first_index: int = 0):
        self.hook, self.batch_size, self.start = hook, int(batch_size), start
        self.index = first_index
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._pending = 0

    def feed(self, chunk: Chunk) -> Iterator[Batch]:
        """The batches completed by this chunk's rows (none for chunks before the start)."""
        if chunk.index < self.start.chunk:
            return
        x, ids, toks = chunk.rows[self.hook], chunk.row_ids[self.hook], chunk.token_ids(self.hook)
        offset = self.start.row if chunk.index == self.start.chunk else 0
        n = x.shape[0]
        while offset < n:
            take = min(self.batch_size - self._pending, n - offset)
            self._parts.append((x[offset : offset + take], ids[offset : offset + take], toks[offset : offset + take]))
            self._pending += take
            offset += take
            if self._pending == self.batch_size:
                nxt = StreamPosition(chunk.index, offset) if offset < n else StreamPosition(chunk.index + 1, 0)
                yield self._emit(nxt)
        if self._parts:  # a partial batch waits for the next chunk: copy it so this chunk can be freed
            self._parts = [(a.clone(), b.clone(), c.clone()) for a, b, c in self._parts]

    def tail(self, n_chunks: int) -> Batch | None:
        """The last, partial batch at the end of the stream (None if the rows divided evenly)."""
        return self._emit(StreamPosition(n_chunks, 0)) if self._pending else None

    def _emit(self, nxt: StreamPosition) -> Batch:
        xs, ids, toks = zip(*self._parts)
        batch = Batch(self.index, torch.cat(xs), torch.cat(ids), torch.cat(toks), nxt)
        self.index += 1
        self._parts, self._pending = [], 0
        return batch

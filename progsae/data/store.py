"""The activation store: sharded safetensors plus meta.json, memory-mapped for reading.

Layout of a store folder:
    meta.json                        model, hook, d_model, context_length, dtype, splits
    train-00000.safetensors ...      tensor "acts" [T, D] (+ "token_ids" [C, L] int32 when from text)
    test-00000.safetensors ...
Rows of a text shard follow its contexts in order: context c contributes rows for positions
first_position..L-1, so row r maps back to (context, position) without storing positions.

Readers never see outlier rows unless asked to: a row whose norm exceeds `outlier_factor` × the
median row norm of the reference split (train, else validation, else test) is dropped by every
reader of the store (see `progsae.data.outliers`). The store on disk keeps every row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from progsae.data.outliers import DEFAULT_OUTLIER_FACTOR, OutlierRule, outlier_summary, row_norms
from progsae.errors import ProgsaeError
from progsae.sae.io import atomic_save_safetensors, atomic_write_json
from progsae.validation import first_nonfinite, read_json_object, safetensors_header

META_FILE = "meta.json"
CONTEXT_BLOCK = 128  # rows per sampling/bootstrap unit of a store without contexts
STORE_FORMAT = "progsae-activations"
SPLITS = ("train", "validation", "test")
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "I32": np.int32, "I64": np.int64}


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.safetensors"


def mmap_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file as a read-only numpy array (no copy, no RAM)."""
    if not path.exists():
        raise ProgsaeError(f"{path}: shard listed in meta.json is missing")
    base, header = safetensors_header(path)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ProgsaeError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        out[name] = np.memmap(path, dtype=dtype, mode="r", offset=base + start, shape=shape) if end > start else np.zeros(shape, dtype)
    return out


def check_rows_finite(rows_RD, shard: Path, row_ids: np.ndarray | int) -> None:
    """Refuse stored rows holding NaN or inf, naming the shard and row (readers would report NaN metrics).

    row_ids: the shard row of each of rows_RD, or the first one of a contiguous chunk."""
    bad = first_nonfinite(rows_RD)
    if bad is not None:
        row = row_ids + bad[0] if isinstance(row_ids, int) else int(row_ids[bad[0]])
        raise ProgsaeError(f"{shard}: row {row} holds NaN or inf; the store is corrupt (collect it again)")


def as_tensor(arr: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A torch tensor of (part of) a memory-mapped array, read into memory."""
    return torch.from_numpy(np.array(arr)).to(dtype)


def read_store_meta(meta_path: Path) -> dict:
    """meta.json of a store, with every field readers rely on checked (types, shard names inside the folder)."""
    meta = read_json_object(meta_path, "store meta.json")
    if meta.get("format") != STORE_FORMAT:
        raise ProgsaeError(f"{meta_path}: not a progsae activation store (no \"format\": \"{STORE_FORMAT}\")")
    d = meta.get("d_model")
    if not (isinstance(d, int) and not isinstance(d, bool) and d > 0):
        raise ProgsaeError(f"{meta_path}: 'd_model' must be a positive integer, got {d!r}"[:200])
    for key in ("context_length", "first_position"):
        v = meta.get(key)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            raise ProgsaeError(f"{meta_path}: '{key}' must be a non-negative integer or null, got {v!r}"[:200])
    splits = meta.get("splits")
    if not isinstance(splits, dict):
        raise ProgsaeError(f"{meta_path}: 'splits' must be an object of split records")
    for split, rec in splits.items():
        shards = rec.get("shards") if isinstance(rec, dict) else None
        if not isinstance(shards, list):
            raise ProgsaeError(f"{meta_path}: split '{split}' needs a list of 'shards'"[:200])
        for i, sh in enumerate(shards):
            ok = (isinstance(sh, dict) and set(sh) <= {"file", "tokens", "contexts"} and isinstance(sh.get("file"), str)
                  and Path(sh["file"]).name == sh["file"] and sh["file"] not in ("", ".", "..")
                  and all(isinstance(sh.get(k, 0), int) and not isinstance(sh.get(k, 0), bool) and sh.get(k, 0) >= 0
                          for k in ("tokens", "contexts")) and "tokens" in sh)
            if not ok:
                raise ProgsaeError(f"{meta_path}: shard {i} of split '{split}' must be {{\"file\": NAME in the store, "
                                   f"\"tokens\": N, \"contexts\": N}}"[:300])
    return meta


@dataclass
class ShardInfo:
    file: str
    tokens: int
    contexts: int = 0


class ActivationStore:
    """Read access to a store folder: per-split shards, memory-mapped, and batch iterators."""

    def __init__(self, path, outlier_factor: float | None = DEFAULT_OUTLIER_FACTOR):
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not self.path.is_dir():
            raise ProgsaeError(f"{self.path}: no such activation store folder")
        if not meta_path.exists():
            raise ProgsaeError(f"{meta_path}: no such file (not an activation store)")
        self.meta = read_store_meta(meta_path)
        self.d_model: int = int(self.meta["d_model"])
        self.outlier_factor = outlier_factor  # None keeps every row
        self._norms: dict[tuple[str, int], np.ndarray] = {}
        self._keep: dict[tuple[str, int], np.ndarray | None] = {}
        self._rule: OutlierRule | None = None

    def check_sae(self, sae, name: str = "SAE") -> None:
        """Refuse an SAE made for other activations: a different width or hook site.

        Model names are not compared: libraries spell the same model differently (gemma-2-2b, google/gemma-2-2b).
        """
        if sae.cfg.d_in != self.d_model:
            raise ProgsaeError(f"{name}: SAE d_in={sae.cfg.d_in} but the store {self.path} has d_model={self.d_model}")
        mine, theirs = getattr(sae.cfg, "hook", None), self.meta.get("hook")
        if mine and theirs and mine != theirs:
            raise ProgsaeError(f"{name}: SAE was trained on hook '{mine}' but the store {self.path} holds '{theirs}'")

    def shards(self, split: str) -> list[ShardInfo]:
        if split not in self.meta["splits"]:
            raise ProgsaeError(f"{self.path}: store has no '{split}' split (has {sorted(self.meta['splits'])})")
        return [ShardInfo(**s) for s in self.meta["splits"][split]["shards"]]

    def has_split(self, split: str) -> bool:
        return split in self.meta["splits"] and self.stored_tokens(split) > 0

    def choice_split(self) -> str:
        """The split data-driven choices (orderings, ablation means) read: validation, else train, never test."""
        for split in ("validation", "train"):
            if self.has_split(split):
                return split
        raise ProgsaeError(f"{self.path}: no validation or train split to choose on; pass the split explicitly "
                           "(choosing on test rows that are then scored flatters the choice)")

    def stored_tokens(self, split: str) -> int:
        """Rows on disk, outliers included."""
        return sum(s.tokens for s in self.shards(split))

    def num_tokens(self, split: str) -> int:
        """Rows a reader sees: the stored rows less the dropped outliers."""
        return sum(self.kept_counts(split))

    # ---- outlier rows ---------------------------------------------------------------------------
    def row_norms(self, split: str, index: int) -> np.ndarray:
        """‖x‖ of every stored row of one shard [T] (float32; computed once per store object)."""
        key = (split, index)
        if key not in self._norms:
            out = np.empty(self.shards(split)[index].tokens, dtype=np.float32)
            for s0, part in self.read_chunks(split, index, self.summary_rows()):
                out[s0 : s0 + part.shape[0]] = row_norms(torch.from_numpy(part)).numpy()
            self._norms[key] = out
        return self._norms[key]

    @property
    def outlier_rule(self) -> OutlierRule | None:
        """The norm threshold readers apply (None when every row is kept)."""
        if self.outlier_factor is None:
            return None
        if self._rule is None:
            ref = next((s for s in SPLITS if self.has_split(s)), None)
            if ref is None:
                raise ProgsaeError(f"{self.path}: the store holds no rows")
            norms = np.concatenate([self.row_norms(ref, i) for i in range(len(self.shards(ref)))])
            finite = norms[np.isfinite(norms)]  # non-finite rows are kept, so that readers refuse them by name
            self._rule = OutlierRule(factor=float(self.outlier_factor), median_norm=float(np.median(finite)) if finite.size else float("inf"),
                                     reference_split=ref)
        return self._rule

    def keep_mask(self, split: str, index: int) -> np.ndarray | None:
        """Which stored rows of a shard readers see [T] bool; None when all of them."""
        rule = self.outlier_rule
        if rule is None:
            return None
        key = (split, index)
        if key not in self._keep:  # read by every batch buffer and context chunk: computed once per shard
            keep = rule.keep(self.row_norms(split, index))
            self._keep[key] = None if keep.all() else keep
        return self._keep[key]

    def kept_counts(self, split: str) -> list[int]:
        """Rows readers see, per shard."""
        if self.outlier_factor is None:
            return [s.tokens for s in self.shards(split)]
        out = []
        for i, info in enumerate(self.shards(split)):
            keep = self.keep_mask(split, i)
            out.append(info.tokens if keep is None else int(keep.sum()))
        return out

    def outliers(self, split: str) -> dict:
        """What the outlier rule drops from a split: count, positions, variance share (see outlier_summary)."""
        return outlier_summary(self, split)

    # ---- contexts -------------------------------------------------------------------------------
    @property
    def rows_per_context(self) -> int:
        """Stored rows per context; stores with no contexts (synthetic) are read in blocks of CONTEXT_BLOCK rows."""
        length = self.meta.get("context_length")
        return int(length) - self.first_position if length else CONTEXT_BLOCK

    def context_counts(self, split: str) -> list[int]:
        """Contexts (or blocks of rows) per shard."""
        rpc = self.rows_per_context
        return [-(-s.tokens // rpc) for s in self.shards(split)]

    def num_contexts(self, split: str) -> int:
        return sum(self.context_counts(split))

    def sample_contexts(self, split: str, max_rows: int | None, seed: int = 0) -> np.ndarray:
        """Sorted global indices of a seeded random sample of whole contexts holding about `max_rows` rows.

        None (or a budget at least the split) takes every context, in store order."""
        total = self.num_contexts(split)
        if max_rows is None or max_rows >= self.stored_tokens(split):
            return np.arange(total)
        n = min(total, max(1, -(-max_rows // self.rows_per_context)))
        return np.sort(np.random.default_rng([seed, total]).choice(total, size=n, replace=False))

    def iter_context_rows(self, split: str, contexts: np.ndarray | None = None, max_rows: int = 8192,
                          dtype: torch.dtype = torch.float32) -> Iterator[tuple[torch.Tensor, np.ndarray, np.ndarray]]:
        """Kept rows of the given contexts (all when None), in store order, in chunks of whole contexts.

        Yields (x [B, D], context [B] = position of each row's context in `contexts`, position [B] in
        its context). Outlier rows are left out, so a context can yield fewer rows than it stores."""
        rpc = self.rows_per_context
        contexts = np.arange(self.num_contexts(split)) if contexts is None else np.asarray(contexts)
        per_chunk = max(1, max_rows // rpc)
        infos = self.shards(split)
        for i, lo, hi, start in self._contexts_by_shard(split, contexts):
            acts, keep, tokens = self.shard(split, i)["acts"], self.keep_mask(split, i), infos[i].tokens
            for c0 in range(lo, hi, per_chunk):
                local = contexts[c0 : min(hi, c0 + per_chunk)] - start
                rows = (local[:, None] * rpc + np.arange(rpc)[None, :]).reshape(-1)
                ctx = np.repeat(np.arange(c0, c0 + local.shape[0]), rpc)
                pos = np.tile(np.arange(rpc), local.shape[0]) + self.first_position
                ok = rows < tokens
                if keep is not None:
                    ok &= keep[np.minimum(rows, tokens - 1)]
                rows, ctx, pos = rows[ok], ctx[ok], pos[ok]
                if rows.shape[0]:
                    x = as_tensor(acts[rows], dtype)
                    check_rows_finite(x, self.path / infos[i].file, rows)
                    yield x, ctx, pos

    def _contexts_by_shard(self, split: str, contexts: np.ndarray) -> Iterator[tuple[int, int, int, int]]:
        """(shard, lo, hi, first context of the shard) for each shard holding contexts[lo:hi] (sorted global indices)."""
        start = 0
        for i, n_ctx in enumerate(self.context_counts(split)):
            lo, hi = np.searchsorted(contexts, [start, start + n_ctx])
            if hi > lo:
                yield i, int(lo), int(hi), start
            start += n_ctx

    def context_tokens(self, split: str, contexts: np.ndarray) -> np.ndarray:
        """Token ids [len(contexts), L] (int64) of the given global context indices of a text store."""
        parts = []
        contexts = np.asarray(contexts)
        for i, lo, hi, start in self._contexts_by_shard(split, contexts):
            sh = self.shard(split, i)
            if "token_ids" not in sh:
                raise ProgsaeError(f"{self.path}: shard {i} of '{split}' has no token_ids; the LM loss needs a store collected from text")
            parts.append(np.asarray(sh["token_ids"][contexts[lo:hi] - start], dtype=np.int64))
        if not parts:
            raise ProgsaeError(f"{self.path}: no contexts to read from '{split}'")
        return np.concatenate(parts)

    def read_chunks(self, split: str, index: int, max_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows [<= max_rows, D]) of every stored row of one shard, in its storage dtype.

        Plain file reads (np.fromfile at an offset), not the memory map: the process holds one chunk at
        a time however large the shards are, and no mapped page stays resident."""
        d = self.d_model
        info = self.shards(split)[index]
        if info.tokens == 0:
            return
        arr = self.shard(split, index)["acts"]
        if arr.ndim != 2 or arr.shape[1] != d:
            raise ProgsaeError(f"{self.path / info.file}: acts has shape {arr.shape}, meta.json says d_model={d}")
        filename, base, itemsize, np_dtype, rows = arr.filename, arr.offset, arr.dtype.itemsize, arr.dtype, arr.shape[0]
        del arr
        for s0 in range(0, rows, max_rows):
            count = min(max_rows, rows - s0)
            part = np.fromfile(filename, dtype=np_dtype, count=count * d, offset=base + s0 * d * itemsize).reshape(count, d)
            check_rows_finite(part, self.path / info.file, s0)
            yield s0, part

    def summary_rows(self) -> int:
        """Rows per chunk for whole-split passes (norms, sums): about 512 KiB of float32."""
        return max(1, (1 << 19) // (4 * self.d_model))

    def iter_rows(self, split: str, max_rows: int = 8192, dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
        """Every kept row of a split in store order, in chunks of at most `max_rows` stored rows."""
        for i in range(len(self.shards(split))):
            keep = self.keep_mask(split, i)
            for s0, part in self.read_chunks(split, i, max_rows):
                if keep is not None:
                    part = part[keep[s0 : s0 + part.shape[0]]]
                if part.shape[0]:
                    yield torch.from_numpy(part).to(dtype)

    def shard(self, split: str, index: int) -> dict[str, np.ndarray]:
        """Memory-mapped arrays of one shard ("acts", and "token_ids" for text stores), every stored row."""
        return mmap_safetensors(self.path / self.shards(split)[index].file)

    @property
    def first_position(self) -> int:
        return int(self.meta.get("first_position", 0))

    def _load_group(self, split, group, carry, shuffle, seed, epoch, g, dtype) -> torch.Tensor:
        """Rows of a buffer of shards (after the previous buffer's leftover), shuffled if asked.

        Each shard is read straight into its shuffled places in one buffer, so peak memory is the buffer
        plus one shard (not the rows, their concatenation and a shuffled copy at once).
        """
        kept = self.kept_counts(split)
        sizes = ([carry.shape[0]] if carry is not None else []) + [kept[i] for i in group]
        rows = torch.empty(sum(sizes), self.d_model, dtype=dtype)
        dest = torch.arange(rows.shape[0])
        if shuffle:
            gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, epoch, g]).integers(2**62)))
            dest = torch.argsort(torch.randperm(rows.shape[0], generator=gen))  # row i goes to dest[i]
        def parts():  # read one shard at a time
            if carry is not None:
                yield carry
            for i in group:
                acts, keep = self.shard(split, i)["acts"], self.keep_mask(split, i)
                yield as_tensor(acts if keep is None else acts[keep], dtype)

        start = 0
        for size, part in zip(sizes, parts()):
            if part.shape[0] != size:
                raise ProgsaeError(f"{self.path}: a shard of '{split}' holds {part.shape[0]} rows, meta.json says {size}")
            rows.index_copy_(0, dest[start : start + size], part)
            start += size
        return rows

    def iter_batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        start_batch: int = 0,
        max_memory_bytes: int | None = None,
        dtype: torch.dtype = torch.float32,
        loop: bool = False,
        drop_last: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Batches of activations [batch, d_model].

        With shuffle, each epoch takes shards in a seeded random order, loads as many as fit in
        `max_memory_bytes` into a buffer and yields its rows in a seeded random order; the stream
        is a pure function of (seed, batch index), so `start_batch` resumes it exactly.
        """
        infos = self.shards(split)
        kept = self.kept_counts(split)
        if not infos or sum(kept) == 0:
            raise ProgsaeError(f"{self.path}: the '{split}' split is empty")
        row_bytes = self.d_model * 4
        epoch = 0
        produced = 0  # batches emitted or skipped so far
        while True:
            order = list(range(len(infos)))
            if shuffle:
                order = np.random.default_rng([seed, epoch]).permutation(len(infos)).tolist()
            groups: list[list[int]] = [[]]
            budget = max_memory_bytes or (1 << 62)
            used = 0
            for i in order:
                need = kept[i] * row_bytes
                if groups[-1] and used + need > budget:
                    groups.append([])
                    used = 0
                groups[-1].append(i)
                used += need
            carry: torch.Tensor | None = None
            for g, group in enumerate(groups):
                n_rows = sum(kept[i] for i in group) + (0 if carry is None else carry.shape[0])
                n_full = n_rows // batch_size
                if produced + n_full <= start_batch:  # skip whole buffers without reading their rows
                    produced += n_full
                    tail = n_rows % batch_size
                    carry = self._load_group(split, group, carry, shuffle, seed, epoch, g, dtype)[n_rows - tail :].clone() if tail else None
                    continue
                rows = self._load_group(split, group, carry, shuffle, seed, epoch, g, dtype)
                for b in range(n_full):
                    if produced >= start_batch:
                        yield rows[b * batch_size : (b + 1) * batch_size].clone()  # a view would pin the buffer
                    produced += 1
                rest = rows[n_full * batch_size :]
                carry = rest.clone() if rest.shape[0] else None  # a copy: the buffer itself can be freed
                del rows
            if carry is not None and not drop_last and not loop:
                if produced >= start_batch:
                    yield carry
                produced += 1
            if not loop:
                return
            epoch += 1


class StoreWriter:
    """Append activations to one split of a store, one atomically written shard at a time.

    meta.json is rewritten after every shard, so an interrupted writer loses at most the shard
    in progress; reopening with the same meta resumes after the last complete shard.
    """

    def __init__(self, path, meta: dict, split: str, shard_tokens: int = 65536, storage_dtype: str = "float32"):
        if split not in SPLITS:
            raise ProgsaeError(f"unknown split '{split}' (use {', '.join(SPLITS)})")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.shard_tokens = shard_tokens
        self.np_dtype = {"float32": torch.float32, "float16": torch.float16}[storage_dtype]
        meta_path = self.path / META_FILE
        if meta_path.exists():
            self.meta = read_store_meta(meta_path)
            for key in ("model", "hook", "d_model", "context_length"):
                if key in meta and self.meta.get(key) != meta.get(key):
                    raise ProgsaeError(
                        f"{meta_path}: existing store has {key}={self.meta.get(key)!r}, this run wants {meta.get(key)!r}; use a new --out"
                    )
        else:
            self.meta = {"format": STORE_FORMAT, "version": 1, **meta, "dtype": storage_dtype, "splits": {}}
        self.meta["splits"].setdefault(split, {"shards": [], "tokens": 0, "contexts": 0, "complete": False})
        self._acts: list[torch.Tensor] = []
        self._ids: list[torch.Tensor] = []
        self._pending = 0
        atomic_write_json(meta_path, self.meta)

    @property
    def split_meta(self) -> dict:
        return self.meta["splits"][self.split]

    @property
    def tokens_written(self) -> int:
        return int(self.split_meta["tokens"])

    @property
    def contexts_written(self) -> int:
        return int(self.split_meta["contexts"])

    def add(self, acts_TD: torch.Tensor, token_ids_CL: torch.Tensor | None = None) -> None:
        """Queue rows (and the contexts they came from); writes a shard each time enough rows are queued."""
        stored = acts_TD.detach().to(self.np_dtype)  # checked where it lives (the GPU, when collecting there)
        if not torch.isfinite(stored).all():
            if torch.isfinite(acts_TD).all():
                raise ProgsaeError(f"activations overflow {str(self.np_dtype).removeprefix('torch.')} (max |a| = {float(acts_TD.abs().max()):.4g}); collect with storage dtype float32")
            raise ProgsaeError("activations contain NaN or inf; refusing to store them")
        self._acts.append(stored.cpu())
        if token_ids_CL is not None:
            self._ids.append(token_ids_CL.detach().to("cpu", torch.int32))
        self._pending += acts_TD.shape[0]
        if self._pending >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        """Write the queued rows as one shard and record it in meta.json."""
        if not self._pending:
            return
        index = len(self.split_meta["shards"])
        tensors = {"acts": torch.cat(self._acts)}
        contexts = 0
        if self._ids:
            tensors["token_ids"] = torch.cat(self._ids)
            contexts = tensors["token_ids"].shape[0]
        name = shard_name(self.split, index)
        atomic_save_safetensors(tensors, self.path / name)
        self.split_meta["shards"].append({"file": name, "tokens": int(tensors["acts"].shape[0]), "contexts": contexts})
        self.split_meta["tokens"] += int(tensors["acts"].shape[0])
        self.split_meta["contexts"] += contexts
        atomic_write_json(self.path / META_FILE, self.meta)
        self._acts, self._ids, self._pending = [], [], 0

    def close(self) -> None:
        """Flush and mark the split complete."""
        self.flush()
        self.split_meta["complete"] = True
        atomic_write_json(self.path / META_FILE, self.meta)

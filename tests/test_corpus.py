"""Text sources, packing, and the by-document train/test split."""

import json
import re

import pytest

from progsae.data import corpus as C
from progsae.errors import ProgsaeError


def _write_jsonl(path, n_docs: int, words: int = 30):
    with open(path, "w") as f:
        for i in range(n_docs):
            f.write(json.dumps({"text": f"doc{i}x " + " ".join(f"w{(i * 7 + j) % 50}" for j in range(words))}) + "\n")
    return path


@pytest.fixture()
def jsonl_corpus(tmp_path):
    return _write_jsonl(tmp_path / "docs.jsonl", 120)


def _markers(contexts, tokenizer) -> set[str]:
    return {m for ctx in contexts for m in re.findall(r"doc(\d+)x", tokenizer.decode(ctx))}


def test_pack_cuts_fixed_length_contexts_starting_with_bos():
    packing = C.Packing(context_length=5, bos_id=0, separator_id=9)
    docs = [[1, 2, 3], [4, 5, 6, 7, 8], [10, 11]]
    out = list(C.pack(docs, packing))
    stream = [1, 2, 3, 9, 4, 5, 6, 7, 8, 9, 10, 11, 9]
    assert out == [[0] + stream[0:4], [0] + stream[4:8], [0] + stream[8:12]]
    no_bos = list(C.pack(docs, C.Packing(5, None, 9)))
    assert no_bos == [stream[0:5], stream[5:10]]


def test_splits_share_no_document_and_cover_all(jsonl_corpus, tiny_tokenizer):
    train = list(C.iter_contexts(str(jsonl_corpus), tiny_tokenizer, "train", 24, seed=3, test_fraction=0.25))
    test = list(C.iter_contexts(str(jsonl_corpus), tiny_tokenizer, "test", 24, seed=3, test_fraction=0.25))
    assert all(len(c) == 24 and c[0] == tiny_tokenizer.bos_token_id for c in train + test)
    tr, te = _markers(train, tiny_tokenizer), _markers(test, tiny_tokenizer)
    assert tr and te and not tr & te
    assert 0.1 < len(te) / (len(tr) + len(te)) < 0.4
    ids = [d for d, _ in C.local_documents(jsonl_corpus)]
    in_test = [d for d in ids if C.in_test_split(d, 3, 0.25)]
    assert {d for d, _ in C.split_documents(C.local_documents(jsonl_corpus), "test", 3, 0.25)} == set(in_test)


def test_contexts_are_deterministic_given_the_seed(jsonl_corpus, tiny_tokenizer):
    a = list(C.iter_contexts(str(jsonl_corpus), tiny_tokenizer, "train", 16, seed=0, test_fraction=0.2))
    b = list(C.iter_contexts(str(jsonl_corpus), tiny_tokenizer, "train", 16, seed=0, test_fraction=0.2))
    c = list(C.iter_contexts(str(jsonl_corpus), tiny_tokenizer, "train", 16, seed=1, test_fraction=0.2))
    assert a == b and a != c


def test_pieces_of_one_document_stay_in_one_split():
    assert C.split_key("pysrc/os.py|3") == "pysrc/os.py"
    for seed in range(20):
        assert C.in_test_split("pysrc/os.py|0", seed, 0.3) == C.in_test_split("pysrc/os.py|7", seed, 0.3)
    refs = [[C.DocRef("a", lambda: "x\n" * 30)], [C.DocRef("b", lambda: "y\n" * 4)]]
    got = list(C.interleave_by_characters(refs, max_chars=20))
    assert [d for d, _ in got][:3] == ["a|0", "b", "a|1"]
    assert "".join(t for d, t in got if d.startswith("a")) == "x\n" * 30


def test_txt_file_and_folder_sources(tmp_path, tiny_tokenizer):
    block = "A paragraph of text about sparse autoencoders and features. " * 20
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("\n\n".join([block] * 12))
    _write_jsonl(tmp_path / "b.jsonl", 3)
    docs = list(C.local_documents(tmp_path))
    ids = [d for d, _ in docs]
    assert ids[:3] == ["b.jsonl:1", "b.jsonl:2", "b.jsonl:3"]
    txt = [t for d, t in docs if d.startswith("sub/a.txt#")]
    assert len(txt) > 1 and all(len(t) >= C.TXT_DOC_CHARS for t in txt[:-1])
    assert "\n\n".join(txt) == "\n\n".join([block] * 12)


def test_huggingface_dataset_streams_from_a_local_dataset_folder(tmp_path, tiny_tokenizer):
    folder = tmp_path / "ds"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", 40)
    docs = list(C.iter_documents(f"hf:{folder}"))
    assert len(docs) == 40 and docs[5][1].startswith("doc5x ")
    ctx = list(C.iter_contexts(f"hf:{folder}", tiny_tokenizer, "test", 16, seed=0, test_fraction=0.3))
    assert ctx and all(len(c) == 16 for c in ctx)


def test_corpus_errors_are_one_line(tmp_path):
    with pytest.raises(ProgsaeError, match="no such corpus"):
        list(C.iter_documents(str(tmp_path / "missing.jsonl")))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ProgsaeError, match="unsupported corpus file"):
        list(C.iter_documents(str(tmp_path / "x.csv")))
    (tmp_path / "y.jsonl").write_text(json.dumps({"body": "hi"}) + "\n")
    with pytest.raises(ProgsaeError, match="--text-field"):
        list(C.iter_documents(str(tmp_path / "y.jsonl")))
    with pytest.raises(ProgsaeError, match="cannot load dataset") as e:
        list(C.iter_documents(f"hf:{tmp_path / 'nope'}"))
    assert "\n" not in str(e.value)


def test_docstrings_are_extracted_from_python_source():
    src = 'def f():\n    """Return the answer to everything."""\n    return 42\nx = """a b"""\n'
    assert C.docstrings(src) == "Return the answer to everything."


def test_embedded_corpus_mixes_bible_english_and_code():
    docs = []
    for doc in C.embedded_documents(seed=0):
        docs.append(doc)
        if len(docs) == 90:
            break
    chars = {k: sum(len(t) for d, t in docs if d.startswith(k + "/")) for k in ("kjv", "pydoc", "pysrc")}
    assert min(chars.values()) > 0.5 * max(chars.values()), chars
    assert any("LORD" in t for d, t in docs if d.startswith("kjv/"))
    assert any("def " in t for d, t in docs if d.startswith("pysrc/"))
    assert next(iter(C.embedded_documents(seed=1)))[0] != docs[0][0]


@pytest.mark.slow
def test_embedded_corpus_has_at_least_3m_smollm2_tokens():
    from transformers import AutoTokenizer

    from progsae.data.models import embedded_model_folder

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_folder())
    total = 0
    for ids in C.tokenize_documents(C.embedded_documents(seed=0), tokenizer):
        total += len(ids)
        if total >= 3_000_000:
            break
    assert total >= 3_000_000

"""Every writing verb fed hostile inputs and outputs: exit 2, one line on stderr, no traceback, nothing it read changed.

The table CASES holds (id, verb arguments, a fragment the line must contain). Each case builds its
hostile files in its own folder from a tiny synthetic store and SAE; everything under that folder and
the shared store and SAE is hashed before and after the run. `python tests/test_hostile_inputs.py`
prints the table with what each case prints now.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from progsae.cli import main
from progsae.data.synthetic import make_synthetic
from progsae.train import TrainConfig, train_sae

D, N = 16, 32
TINY_TRAIN = ["--latents", "32", "--k", "4", "--steps", "5", "--batch-size", "256", "--no-progress"]


@dataclass
class World:
    """The shared inputs: a tiny synthetic store and a TopK SAE trained on it."""

    store: Path
    sae: Path


def build_world(root: Path) -> World:
    store = make_synthetic(root / "store", d_model=D, n_features=N, tokens=4096, test_tokens=1024, seed=0, spread_steps=0)
    sae = root / "sae"
    train_sae(store, sae, TrainConfig(arch="topk", n_latents=N, k=4, steps=10, batch_size=256, seed=0), progress=False)
    return World(store, sae)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.mktemp("hostile"))


# ---- hostile files --------------------------------------------------------------------------------
def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def copy_with_file(src: Path, dst: Path, name: str, text: str | bytes) -> Path:
    """A copy of the folder `src` at `dst` whose file `name` holds `text`."""
    bad = copy(src, dst)
    (bad / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return bad


def sae_with_cfg(w: World, tmp: Path, text: str | bytes) -> Path:
    return copy_with_file(w.sae, tmp / "bad_sae", "cfg.json", text)


def sae_with_cfg_change(w: World, tmp: Path, change: Callable[[dict], None]) -> Path:
    cfg = json.loads((w.sae / "cfg.json").read_text())
    change(cfg)
    return sae_with_cfg(w, tmp, json.dumps(cfg))


def sae_with_weight(w: World, tmp: Path, value: float) -> Path:
    bad = copy(w.sae, tmp / "bad_sae")
    state = load_file(str(bad / "sae.safetensors"))
    state["W_dec"][3, 5] = value
    save_file(state, str(bad / "sae.safetensors"), metadata={"format": "progsae-sae"})
    return bad


def overflowing_header(path: Path) -> None:
    """A safetensors file whose 8-byte header length claims far more than the file holds."""
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**62) + data[8:])


def offsets_past_end(path: Path) -> None:
    """A valid header whose tensor offsets point beyond the end of the file."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    for name, info in header.items():
        if name != "__metadata__":
            info["data_offsets"] = [0, 1 << 40]
            info["shape"] = [1 << 38]
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])


def sae_with_weights_file(w: World, tmp: Path, spoil: Callable[[Path], None]) -> Path:
    bad = copy(w.sae, tmp / "bad_sae")
    spoil(bad / "sae.safetensors")
    return bad


def store_with_meta(w: World, tmp: Path, text: str | bytes) -> Path:
    return copy_with_file(w.store, tmp / "bad_store", "meta.json", text)


def store_with_meta_change(w: World, tmp: Path, change: Callable[[dict], None]) -> Path:
    meta = json.loads((w.store / "meta.json").read_text())
    change(meta)
    return store_with_meta(w, tmp, json.dumps(meta))


def store_with_shard(w: World, tmp: Path, split: str, spoil: Callable[[Path], None]) -> Path:
    bad = copy(w.store, tmp / "bad_store")
    spoil(bad / f"{split}-00000.safetensors")
    return bad


def nan_row(row: int, value: float = float("nan")) -> Callable[[Path], None]:
    def spoil(path: Path) -> None:
        acts = load_file(str(path))["acts"]
        acts[row, 2] = value
        save_file({"acts": acts}, str(path))
    return spoil


def read_only_target(tmp: Path, name: str) -> Path:
    """A path no one may create: under a mode-555 folder, or (root ignores modes) under /sys."""
    if os.geteuid() == 0:
        return Path("/sys") / f"progsae-test-{name}"
    ro = tmp / "read_only"
    ro.mkdir()
    ro.chmod(0o555)
    return ro / name


def a_file(tmp: Path, name: str = "taken") -> Path:
    (tmp / name).write_text("not a folder\n")
    return tmp / name


def foreign_folder(tmp: Path) -> Path:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("my notes\n")
    return tmp / "mine"


def results_file(tmp: Path) -> Path:
    (tmp / "results.json").write_text('{"earlier": "results"}\n')
    return tmp / "results.json"


def config_file(tmp: Path, text: str | bytes) -> Path:
    p = tmp / "study.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


DEEP = "[" * 100_000 + "]" * 100_000
RANDOM_BYTES = bytes(range(256)) * 4

# ---- the table ------------------------------------------------------------------------------------
# (id, argv(world, tmp), fragment of the one line printed)
Argv = Callable[[World, Path], list]
CASES: list[tuple[str, Argv, str]] = [
    # prune: outputs
    ("prune --out over a trained SAE", lambda w, t: ["prune", w.sae, "--size", "8", "--order", "unsorted", "--out", copy(w.sae, t / "other")],
     "already holds a training run"),
    ("prune --out an existing file", lambda w, t: ["prune", w.sae, "--size", "8", "--order", "unsorted", "--out", a_file(t)], "is a file"),
    ("prune --out a read-only location", lambda w, t: ["prune", w.sae, "--size", "8", "--order", "unsorted", "--out", read_only_target(t, "p")],
     "cannot create this folder"),
    ("prune --out its own input --overwrite", lambda w, t: ["prune", copy(w.sae, t / "s"), "--size", "8", "--order", "unsorted",
                                                            "--out", t / "s", "--overwrite"], "is the input"),
    ("prune --out a folder of other files --overwrite", lambda w, t: ["prune", w.sae, "--size", "8", "--order", "unsorted",
                                                                      "--out", foreign_folder(t), "--overwrite"], "progsae did not write"),
    # prune: hostile cfg.json
    ("cfg.json is a list", lambda w, t: ["prune", sae_with_cfg(w, t, "[1, 2]"), "--size", "8", "--out", t / "o"], "expected a JSON object, got a list"),
    ("cfg.json is a string", lambda w, t: ["prune", sae_with_cfg(w, t, '"sae"'), "--size", "8", "--out", t / "o"], "got a string"),
    ("cfg.json is random bytes", lambda w, t: ["prune", sae_with_cfg(w, t, RANDOM_BYTES), "--size", "8", "--out", t / "o"], "not valid JSON"),
    ("cfg.json is empty", lambda w, t: ["prune", sae_with_cfg(w, t, ""), "--size", "8", "--out", t / "o"], "not valid JSON"),
    ("cfg.json nested 100000 deep", lambda w, t: ["prune", sae_with_cfg(w, t, DEEP), "--size", "8", "--out", t / "o"], "nested too deeply"),
    ("cfg.json lacks n_latents", lambda w, t: ["prune", sae_with_cfg_change(w, t, lambda c: c.pop("n_latents")), "--size", "8", "--out", t / "o"],
     "missing required key 'n_latents'"),
    ("cfg.json d_in is a string", lambda w, t: ["prune", sae_with_cfg_change(w, t, lambda c: c.update(d_in="16")), "--size", "8", "--out", t / "o"],
     "'d_in' must be int"),
    ("cfg.json k is a list", lambda w, t: ["eval", sae_with_cfg_change(w, t, lambda c: c.update(k=[4])), "--acts", w.store, "--metrics", "recon",
                                           "--out", t / "r.json"], "'k' must be int | None"),
    ("cfg.json provenance nested in a list", lambda w, t: ["prune", sae_with_cfg_change(w, t, lambda c: c.update(provenance=[[[]]])),
                                                           "--size", "8", "--out", t / "o"], "'provenance' must be dict"),
    # hostile weights
    ("sae.safetensors header length past the end", lambda w, t: ["prune", sae_with_weights_file(w, t, overflowing_header), "--size", "8",
                                                                 "--out", t / "o"], "corrupt safetensors header"),
    ("sae.safetensors offsets past the end", lambda w, t: ["prune", sae_with_weights_file(w, t, offsets_past_end), "--size", "8",
                                                           "--out", t / "o"], "truncated or corrupt safetensors file"),
    ("sae.safetensors random bytes", lambda w, t: ["prune", sae_with_weights_file(w, t, lambda p: p.write_bytes(RANDOM_BYTES)), "--size", "8",
                                                   "--out", t / "o"], "corrupt safetensors header"),
    ("NaN in W_dec", lambda w, t: ["eval", sae_with_weight(w, t, float("nan")), "--acts", w.store, "--metrics", "recon", "--out", t / "r.json"],
     "tensor W_dec holds NaN or inf (first at index (3, 5))"),
    ("inf in W_dec", lambda w, t: ["importance", sae_with_weight(w, t, float("inf")), "--acts", w.store, "--out", t / "i.json"],
     "tensor W_dec holds NaN or inf"),
    ("prune --importance is a list", lambda w, t: ["prune", w.sae, "--size", "8", "--importance", config_file(t, "[]"), "--out", t / "o"],
     "expected a JSON object"),
    # sort
    ("sort --out over a trained SAE", lambda w, t: ["sort", w.sae, "--order", "unsorted", "--out", copy(w.sae, t / "other")],
     "already holds a training run"),
    ("sort --out an existing file", lambda w, t: ["sort", w.sae, "--order", "unsorted", "--out", a_file(t)], "is a file"),
    ("sort an SAE with NaN weights", lambda w, t: ["sort", sae_with_weight(w, t, float("nan")), "--order", "unsorted", "--out", t / "o"],
     "tensor W_dec holds NaN or inf"),
    # export / import
    ("export --out over a progsae SAE", lambda w, t: ["export", w.sae, "--to", "saelens", "--out", copy(w.sae, t / "other")],
     "already holds a training run"),
    ("export --out an existing file", lambda w, t: ["export", w.sae, "--to", "saelens", "--out", a_file(t)], "is a file"),
    ("import --out over another SAE", lambda w, t: ["import", w.sae, "--out", copy(w.sae, t / "other")], "already holds a training run"),
    ("import a folder whose cfg.json is a list", lambda w, t: ["import", sae_with_cfg(w, t, "[]"), "--out", t / "o"], "neither a progsae config"),
    # train: outputs and arguments
    ("train --out an activation store", lambda w, t: ["train", "--acts", w.store, *TINY_TRAIN, "--out", copy(w.store, t / "other")],
     "already holds an activation store"),
    ("train --out a folder of other files", lambda w, t: ["train", "--acts", w.store, *TINY_TRAIN, "--out", foreign_folder(t)],
     "already holds files (notes.txt)"),
    ("train --out an existing file", lambda w, t: ["train", "--acts", w.store, *TINY_TRAIN, "--out", a_file(t)], "is a file"),
    ("train --out under a file", lambda w, t: ["train", "--acts", w.store, *TINY_TRAIN, "--out", a_file(t) / "sub"], "is a file, not a folder"),
    ("train --out a read-only location", lambda w, t: ["train", "--acts", w.store, *TINY_TRAIN, "--out", read_only_target(t, "t")],
     "cannot create this folder"),
    ("train --out the store itself", lambda w, t: ["train", "--acts", copy(w.store, t / "s"), *TINY_TRAIN, "--out", t / "s"], "is the input"),
    ("train --k-aux -1", lambda w, t: ["train", "--acts", w.store, *TINY_TRAIN, "--k-aux", "-1", "--out", t / "o"], "--k-aux must be a positive"),
    ("train --matryoshka-weights -1,2", lambda w, t: ["train", "--acts", w.store, *TINY_TRAIN, "--matryoshka", "16,32",
                                                      "--matryoshka-weights=-1,2", "--out", t / "o"], "--matryoshka-weights must be non-negative"),
    ("train --matryoshka-weights 0,0", lambda w, t: ["train", "--acts", w.store, *TINY_TRAIN, "--matryoshka", "16,32", "--matryoshka-weights",
                                                     "0,0", "--out", t / "o"], "not all zero"),
    ("train --lr nan", lambda w, t: ["train", "--acts", w.store, *TINY_TRAIN, "--lr", "nan", "--out", t / "o"], "--lr must be positive"),
    ("train --aux-coef -1", lambda w, t: ["train", "--acts", w.store, *TINY_TRAIN, "--aux-coef", "-1", "--out", t / "o"], "must be non-negative"),
    ("train --latents abc", lambda w, t: ["train", "--acts", w.store, "--latents", "abc", "--out", t / "o"], "invalid int value: 'abc'"),
    ("train --resume --overwrite", lambda w, t: ["train", "--acts", w.store, *TINY_TRAIN, "--resume", "--overwrite", "--out", t / "o"], "not both"),
    ("train --config is a list", lambda w, t: ["train", "--acts", w.store, "--config", config_file(t, "[1]"), "--out", t / "o"],
     "expected a JSON object, got a list"),
    ("train --config is random bytes", lambda w, t: ["train", "--acts", w.store, "--config", config_file(t, RANDOM_BYTES), "--out", t / "o"],
     "not valid JSON"),
    ("train --config nested 100000 deep", lambda w, t: ["train", "--acts", w.store, "--config", config_file(t, DEEP), "--out", t / "o"],
     "nested too deeply"),
    # train: hostile stores
    ("meta.json is a list", lambda w, t: ["train", "--acts", store_with_meta(w, t, "[]"), *TINY_TRAIN, "--out", t / "o"], "got a list"),
    ("meta.json is a string", lambda w, t: ["train", "--acts", store_with_meta(w, t, '"store"'), *TINY_TRAIN, "--out", t / "o"], "got a string"),
    ("meta.json is random bytes", lambda w, t: ["train", "--acts", store_with_meta(w, t, RANDOM_BYTES), *TINY_TRAIN, "--out", t / "o"],
     "not valid JSON"),
    ("meta.json nested 100000 deep", lambda w, t: ["train", "--acts", store_with_meta(w, t, DEEP), *TINY_TRAIN, "--out", t / "o"],
     "nested too deeply"),
    ("meta.json lacks d_model", lambda w, t: ["train", "--acts", store_with_meta_change(w, t, lambda m: m.pop("d_model")), *TINY_TRAIN,
                                              "--out", t / "o"], "'d_model' must be a positive integer"),
    ("meta.json d_model is a string", lambda w, t: ["train", "--acts", store_with_meta_change(w, t, lambda m: m.update(d_model="16")),
                                                    *TINY_TRAIN, "--out", t / "o"], "'d_model' must be a positive integer"),
    ("meta.json splits is a list", lambda w, t: ["train", "--acts", store_with_meta_change(w, t, lambda m: m.update(splits=[])), *TINY_TRAIN,
                                                 "--out", t / "o"], "'splits' must be an object"),
    ("meta.json shard file outside the store", lambda w, t: ["train", "--acts", store_with_meta_change(
        w, t, lambda m: m["splits"]["train"]["shards"][0].update(file="../../etc/passwd")), *TINY_TRAIN, "--out", t / "o"], "shard 0 of split 'train'"),
    ("meta.json shard tokens is a string", lambda w, t: ["train", "--acts", store_with_meta_change(
        w, t, lambda m: m["splits"]["train"]["shards"][0].update(tokens="many")), *TINY_TRAIN, "--out", t / "o"], "shard 0 of split 'train'"),
    ("shard header length past the end", lambda w, t: ["train", "--acts", store_with_shard(w, t, "train", overflowing_header), *TINY_TRAIN,
                                                       "--out", t / "o"], "corrupt safetensors header"),
    ("shard offsets past the end", lambda w, t: ["train", "--acts", store_with_shard(w, t, "train", offsets_past_end), *TINY_TRAIN,
                                                 "--out", t / "o"], "truncated or corrupt safetensors file"),
    ("shard truncated to 4 bytes", lambda w, t: ["train", "--acts", store_with_shard(w, t, "train", lambda p: p.write_bytes(b"\0\0\0\0")),
                                                 *TINY_TRAIN, "--out", t / "o"], "truncated safetensors file (4 bytes)"),
    ("NaN in the train split", lambda w, t: ["train", "--acts", store_with_shard(w, t, "train", nan_row(700)), *TINY_TRAIN, "--out", t / "o"],
     "row 700 holds NaN or inf"),
    # collect
    ("collect --model ./no/such/folder", lambda w, t: ["collect", "--model", "./no/such/folder", "--out", t / "o", "--no-progress"],
     "./no/such/folder: no such model folder"),
    ("collect --out over an SAE", lambda w, t: ["collect", "--model", "./no/such/folder", "--out", copy(w.sae, t / "other")],
     "already holds a training run"),
    ("collect --out an existing file", lambda w, t: ["collect", "--out", a_file(t)], "is a file"),
    ("collect --tokens -5", lambda w, t: ["collect", "--tokens", "-5", "--out", t / "o"], "positive number of --tokens"),
    # eval
    ("eval --out an existing results file", lambda w, t: ["eval", w.sae, "--acts", w.store, "--metrics", "recon", "--out", results_file(t)],
     "already exists; choose another --out or pass --overwrite"),
    ("eval --out a folder", lambda w, t: ["eval", w.sae, "--acts", w.store, "--metrics", "recon", "--out", t], "is a folder"),
    ("eval --out a read-only location", lambda w, t: ["eval", w.sae, "--acts", w.store, "--metrics", "recon",
                                                      "--out", read_only_target(t, "r") / "results.json"], "cannot create its folder"),
    ("NaN in the test split read by eval", lambda w, t: ["eval", w.sae, "--acts", store_with_shard(w, t, "test", nan_row(10)), "--metrics", "recon",
                                                         "--out", t / "r.json"], "row 10 holds NaN or inf"),
    ("inf in the test split read by eval --keep-outliers", lambda w, t: ["eval", w.sae, "--acts", store_with_shard(w, t, "test", nan_row(11, float("inf"))),
                                                                         "--metrics", "recon", "--keep-outliers", "--out", t / "r.json"],
     "row 11 holds NaN or inf"),
    ("eval --max-tokens -1", lambda w, t: ["eval", w.sae, "--acts", w.store, "--metrics", "recon", "--max-tokens", "-1", "--out", t / "r.json"],
     "--max-tokens must be positive"),
    ("eval --rsa-tokens 0", lambda w, t: ["eval", w.sae, "--acts", w.store, "--metrics", "rsa", "--rsa-tokens", "0", "--out", t / "r.json"],
     "--rsa-tokens must be positive"),
    ("eval --bands 5-2", lambda w, t: ["eval", w.sae, "--acts", w.store, "--metrics", "interp", "--bands", "5-2", "--out", t / "r.json"],
     "--bands must be LO-HI ranges"),
    ("eval shard header length past the end", lambda w, t: ["eval", w.sae, "--acts", store_with_shard(w, t, "test", overflowing_header),
                                                            "--metrics", "recon", "--out", t / "r.json"], "corrupt safetensors header"),
    # importance
    ("NaN in the split read by importance", lambda w, t: ["importance", w.sae, "--acts", store_with_shard(w, t, "validation", nan_row(5)),
                                                          "--out", t / "i.json"], "row 5 holds NaN or inf"),
    ("importance --out a folder", lambda w, t: ["importance", w.sae, "--acts", w.store, "--out", t], "is a folder"),
    ("importance --out an existing file", lambda w, t: ["importance", w.sae, "--acts", w.store, "--out", results_file(t)], "already exists"),
    ("importance --figure an existing file", lambda w, t: ["importance", w.sae, "--acts", w.store, "--out", t / "i.json",
                                                           "--figure", a_file(t, "fig.png")], "already exists; choose another --figure"),
    ("importance --out inside the SAE over cfg.json", lambda w, t: ["importance", copy(w.sae, t / "s"), "--acts", w.store,
                                                                    "--out", t / "s" / "cfg.json", "--overwrite"], "would replace a part of the input"),
    ("importance --fit-range 0.9 0.1", lambda w, t: ["importance", w.sae, "--acts", w.store, "--fit-range", "0.9", "0.1", "--out", t / "i.json"],
     "--fit-range must be two fractions"),
    ("importance --bootstrap -1", lambda w, t: ["importance", w.sae, "--acts", w.store, "--bootstrap", "-1", "--out", t / "i.json"],
     "--bootstrap must be 0 or more"),
    # reproduce
    ("reproduce --config is a list", lambda w, t: ["reproduce", "--config", config_file(t, "[]"), "--out", t / "o"], "got a list"),
    ("reproduce --config is random bytes", lambda w, t: ["reproduce", "--config", config_file(t, RANDOM_BYTES), "--out", t / "o"], "not valid JSON"),
    ("reproduce --config nested 100000 deep", lambda w, t: ["reproduce", "--config", config_file(t, '{"train": ' + DEEP + "}"), "--out", t / "o"],
     "nested too deeply"),
    ("reproduce --config train.k is a string", lambda w, t: ["reproduce", "--config", config_file(t, '{"train": {"k": "32"}}'), "--out", t / "o"],
     "'train.k' must be int"),
    ("reproduce --config data is a list", lambda w, t: ["reproduce", "--config", config_file(t, '{"data": []}'), "--out", t / "o"],
     "data must be a JSON object"),
    ("reproduce --config granularities hold a string", lambda w, t: ["reproduce", "--config", config_file(t, '{"train": {"granularities": [1, "2"]}}'),
                                                                     "--out", t / "o"], "'train.granularities' must be list[int]"),
    ("reproduce --out an existing file", lambda w, t: ["reproduce", "--preset", "quick", "--out", a_file(t)], "is a file"),
    ("reproduce --out over an SAE", lambda w, t: ["reproduce", "--preset", "quick", "--out", copy(w.sae, t / "other")], "already holds a training run"),
    # synth
    ("synth --out over an SAE", lambda w, t: ["synth", "--out", copy(w.sae, t / "other"), "--tokens", "100"], "already holds a training run"),
    ("synth --out over a store", lambda w, t: ["synth", "--out", copy(w.store, t / "other"), "--tokens", "100"], "already holds an activation store"),
    ("synth --out an existing file", lambda w, t: ["synth", "--out", a_file(t), "--tokens", "100"], "is a file"),
    ("synth --d-model -1", lambda w, t: ["synth", "--out", t / "o", "--d-model", "-1"], "must be positive"),
]


def tree_digest(*roots: Path) -> dict[str, str]:
    """sha256 of every file (and a marker for every folder) under the roots, by path."""
    out = {}
    for root in roots:
        if not root.exists():
            continue
        for p in sorted([root, *root.rglob("*")]):
            out[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_case(w: World, tmp: Path, argv: Argv, capsys) -> tuple[int, list[str], dict, dict]:
    """(exit code, stderr lines, digest before, digest after) of one case."""
    args = [str(a) for a in argv(w, tmp)]
    capsys.readouterr()
    before = tree_digest(tmp, w.store, w.sae)
    try:
        rc = main(args)
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    return rc, err.splitlines(), before, tree_digest(tmp, w.store, w.sae)


@pytest.mark.parametrize("case_id,argv,fragment", CASES, ids=[c[0] for c in CASES])
def test_hostile_case_gives_one_line_and_changes_nothing(world, tmp_path, capsys, case_id, argv, fragment):
    rc, lines, before, after = run_case(world, tmp_path, argv, capsys)
    assert rc == 2, (case_id, rc, lines)
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0] and fragment in lines[0], lines[0]
    assert after == before, "a hostile case changed its inputs or left files behind"


# ---- locks ----------------------------------------------------------------------------------------
HOLD_LOCK = """
import sys, time
from pathlib import Path
from progsae.outputs import claim_file, claim_folder
kind, path = sys.argv[1], sys.argv[2]
if kind == "folder":
    claim_folder(path, sys.argv[3], resumable=("training run", "activation store", "study run"))
else:
    claim_file(path, overwrite=True)
print("held", flush=True)
if sys.argv[-1] == "die":
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(120)
"""


def hold_lock(kind: str, path: Path, verb: str = "", then: str = "sleep") -> subprocess.Popen:
    """A process that claims `path` (as `verb` would) and sleeps, or dies by SIGKILL holding it."""
    p = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, kind, str(path), verb or "-", then], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


LOCKED = [
    ("train", lambda w, t: ["train", "--acts", w.store, *TINY_TRAIN, "--out", t / "o"], "folder", "o"),
    ("collect", lambda w, t: ["collect", "--model", "./no/such/folder", "--out", t / "o"], "folder", "o"),
    ("reproduce", lambda w, t: ["reproduce", "--preset", "quick", "--out", t / "o"], "folder", "o"),
    ("eval", lambda w, t: ["eval", w.sae, "--acts", w.store, "--metrics", "recon", "--out", t / "r.json", "--overwrite"], "file", "r.json"),
    ("prune", lambda w, t: ["prune", w.sae, "--size", "8", "--order", "unsorted", "--out", t / "o"], "folder", "o"),
]


@pytest.mark.parametrize("verb,argv,kind,target", LOCKED, ids=[c[0] for c in LOCKED])
def test_a_locked_output_is_refused_at_once_naming_the_holder(world, tmp_path, capsys, verb, argv, kind, target):
    holder = hold_lock(kind, tmp_path / target, verb)
    try:
        rc, lines, before, after = run_case(world, tmp_path, argv, capsys)
    finally:
        holder.kill()
        holder.wait()
    assert rc == 2 and len(lines) == 1, lines
    assert f"is in use by another progsae process (pid {holder.pid} on " in lines[0], lines[0]
    assert after == before


def test_a_lock_left_by_a_dead_process_is_taken_over(world, tmp_path, capsys):
    out = tmp_path / "o"
    dead = hold_lock("folder", out, "train", then="die")
    dead.wait()
    assert (out / ".progsae-lock").exists() and str(dead.pid) in (out / ".progsae-lock").read_text()
    assert main(["train", "--acts", str(world.store), *TINY_TRAIN, "--out", str(out)]) == 0
    assert (out / "sae.safetensors").exists() and not (out / ".progsae-lock").exists()


def test_two_concurrent_trains_into_one_out_give_exactly_one_run(world, tmp_path):
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "progsae.cli", "train", "--acts", str(world.store), "--k", "4", "--steps", "1500", "--batch-size", "64",
           "--log-every", "100", "--no-progress", "--out", str(out)]
    procs = {n: subprocess.Popen([*cmd, "--latents", str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in (32, 48)}
    while all(p.poll() is None for p in procs.values()):
        time.sleep(0.05)
    first = next(n for n, p in procs.items() if p.poll() is not None)
    other = next(n for n in procs if n != first)
    still_running = procs[other].poll() is None  # the loser exits at once, while the winner trains
    results = {n: (p.wait(), *p.communicate()) for n, p in procs.items()}
    loser, winner = first, other
    rc, _, err = results[loser]
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"is in use by another progsae process (pid {procs[winner].pid} on " in err and "train" in err
    assert still_running
    assert results[winner][0] == 0, results[winner][2]
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["n_latents"] == winner
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 1500  # one run's lines, none interleaved or repeated


# ---- overwrite, resume and the same job ---------------------------------------------------------------
def test_overwrite_replaces_a_progsae_output_whole(world, tmp_path, capsys):
    """prune --overwrite over a trained SAE: the pruned SAE alone remains, not the old run's checkpoint/ and metrics."""
    out = copy(world.sae, tmp_path / "target")
    (out / "checkpoint").mkdir()
    assert main(["prune", str(world.sae), "--size", "8", "--order", "unsorted", "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae.safetensors"]
    assert json.loads((out / "cfg.json").read_text())["provenance"]["prune"]["size"] == 8


def test_a_finished_output_is_refused_even_to_the_same_command(world, tmp_path, capsys):
    argv = ["prune", str(world.sae), "--size", "8", "--order", "unsorted", "--out", str(tmp_path / "p")]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert "already holds an SAE (cfg.json, sae.safetensors); choose another --out or pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_resume_removes_partial_writes_of_a_killed_save(world, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--acts", str(world.store), *TINY_TRAIN, "--keep-checkpoint", "--out", str(out)]
    assert main(argv) == 0
    stale = [out / ".sae.safetensors.k1ll3d00.partial", out / "checkpoint" / ".checkpoint.safetensors.abcd_123"]
    for p in stale:
        p.write_bytes(b"half a file")
    assert main([*argv, "--resume"]) == 0
    assert not any(p.exists() for p in stale)


def test_eval_removes_partial_writes_of_its_results_only(world, tmp_path, capsys):
    mine = [tmp_path / ".r.json.k1ll3d00.partial", tmp_path / ".r.replicates.safetensors.abcdefgh.partial"]
    theirs = tmp_path / ".r2.json.abcdefgh.partial"  # another results file's write, perhaps in progress
    for p in [*mine, theirs]:
        p.write_bytes(b"half a file")
    assert main(["eval", str(world.sae), "--acts", str(world.store), "--metrics", "recon", "--out", str(tmp_path / "r.json")]) == 0
    assert not any(p.exists() for p in mine) and theirs.exists()
    assert json.loads((tmp_path / "r.json").read_text())


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_follow_the_umask(world, tmp_path, capsys, umask):
    old = os.umask(umask)
    try:
        assert main(["train", "--acts", str(world.store), *TINY_TRAIN, "--out", str(tmp_path / "o")]) == 0
        assert main(["synth", "--out", str(tmp_path / "s"), "--d-model", "8", "--features", "16", "--tokens", "200"]) == 0
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    modes = {p.name: p.stat().st_mode & 0o777 for p in files}
    assert {"sae.safetensors", "cfg.json", "metrics.jsonl", "meta.json", "train-00000.safetensors"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_a_disk_that_fills_is_one_line_and_leaves_no_partial_file(world, tmp_path, capsys, monkeypatch):
    import errno

    import progsae.sae.io as sae_io

    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sae_io, "save_file", full)
    before = tree_digest(tmp_path, world.sae)
    assert main(["prune", str(world.sae), "--size", "8", "--order", "unsorted", "--out", str(tmp_path / "p")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["progsae prune: error: No space left on device"]
    assert tree_digest(tmp_path, world.sae) == before  # no partial file, no empty output folder


if __name__ == "__main__":  # print the table of cases and what each prints now (for the note)
    import contextlib
    import io
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        w = build_world(Path(root))
        print("| case | exit | what it prints now (stderr) |\n|---|---|---|")
        for i, (case_id, argv, _) in enumerate(CASES):
            tmp = Path(root) / f"case{i}"
            tmp.mkdir()
            args = [str(a) for a in argv(w, tmp)]
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    rc = main(args)
                except SystemExit as e:
                    rc = e.code
            line = err.getvalue().strip().replace(str(tmp), "$CASE").replace(root, "$TMP").replace("|", "\\|")
            print(f"| {case_id} | {rc} | `{line}` |")

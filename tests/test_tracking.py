"""--wandb PROJECT: wandb's offline run folder holds the metrics.jsonl history and feature densities; no wandb import otherwise."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from progsae.cli import main as cli_main
from progsae.train.metrics import read_metrics

wandb = pytest.importorskip("wandb")  # the [test] extra installs it


def wandb_records(path: Path) -> list:
    """The records of a .wandb transaction log, read with wandb's own protobuf schema.

    The file is a LevelDB-style log: a 7-byte header (':W&B', magic 0xBEE1, version), then 32 KiB blocks of
    chunks, each with a 7-byte header (crc32, little-endian length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            records.append(rec)
    return records


def history(records) -> list[dict]:
    rows = []
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in rec.history.item})
    return rows


def test_offline_wandb_run_holds_the_loss_and_fvu_history(tmp_path, synth_store, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "sae"
    argv = ["train", "--acts", str(synth_store), "--out", str(out), "--latents", "64", "--k", "3", "--steps", "40",
            "--batch-size", "512", "--log-every", "10", "--quiet", "--wandb", "test"]
    assert cli_main(argv) == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logs = list(runs[0].glob("run-*.wandb"))
    assert len(logs) == 1
    rows = [r for r in history(wandb_records(logs[0])) if "loss" in r]
    metrics = read_metrics(out)
    assert [r["_step"] for r in rows] == [m["step"] for m in metrics]  # every metrics.jsonl line, at its step
    for row, line in zip(rows, metrics):
        assert row["loss"] == pytest.approx(line["loss"], rel=1e-6)
        assert row["fvu"] == pytest.approx(line["fvu"], rel=1e-6)
        assert row["l0"] == pytest.approx(line["l0"], rel=1e-6)
    dens = [r for r in rows if "feature_density/log10/values" in r]  # wandb flattens the histogram's fields
    assert dens and dens[-1]["_step"] == 40 and all("heldout_fvu" in r for r in dens)  # at the held-out steps
    assert dens[-1]["feature_density/log10/_type"] == "histogram"
    assert sum(dens[-1]["feature_density/log10/values"]) == 64  # one count per latent
    assert -10 <= dens[-1]["feature_density/log10/bins"][0] < dens[-1]["feature_density/log10/bins"][-1] <= 0
    assert metrics[-1]["fvu"] < metrics[0]["fvu"]


def test_wandb_is_not_imported_without_the_flag(tmp_path, synth_store):
    code = (
        "import sys\nfrom progsae.cli import main\n"
        f"rc = main(['train', '--acts', {str(synth_store)!r}, '--out', {str(tmp_path / 'sae')!r}, '--latents', '32', '--k', '3',"
        " '--steps', '3', '--batch-size', '256', '--quiet'])\n"
        "assert rc == 0, rc\nprint('wandb' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_a_missing_wandb_is_a_one_line_error(tmp_path, synth_store, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    argv = ["train", "--acts", str(synth_store), "--out", str(tmp_path / "sae"), "--latents", "32", "--k", "3",
            "--steps", "3", "--batch-size", "256", "--quiet", "--wandb", "p"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'progsae[wandb]'" in err and "\n" not in err

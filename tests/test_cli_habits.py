"""CLI habits: train --config (typed options override it), sort (the walk-through's sorted SAE), info (any SAE or store)."""

from __future__ import annotations

import json

import torch

from progsae.cli import main as cli_main
from progsae.data.store import ActivationStore
from progsae.progressive.importance import Importance
from progsae.sae.io import load_sae


def test_train_config_file_with_typed_options_overriding_it(tmp_path, synth_store, capsys):
    settings = {"arch": "batchtopk", "n_latents": 48, "k": 3, "steps": 6, "batch_size": 256, "lr": 0.004, "seed": 5, "decay_frac": 0.5}
    (tmp_path / "train.json").write_text(json.dumps(settings))
    out = tmp_path / "sae"
    assert cli_main(["train", "--acts", str(synth_store), "--config", str(tmp_path / "train.json"), "--seed", "0",
                     "--tokens", "1024", "--out", str(out), "--quiet"]) == 0
    tc = load_sae(out).cfg.provenance["train_config"]
    assert (tc["arch"], tc["n_latents"], tc["k"], tc["batch_size"], tc["lr"], tc["decay_frac"]) == ("batchtopk", 48, 3, 256, 0.004, 0.5)
    assert tc["seed"] == 0  # typed, though it equals the flag's default: it overrides the file's 5
    assert tc["steps"] == 4  # the typed --tokens 1024 replaced the file's steps (1024 / 256)
    # a trained SAE's provenance.train_config is itself a config file
    (tmp_path / "again.json").write_text(json.dumps(tc))
    assert cli_main(["train", "--acts", str(synth_store), "--config", str(tmp_path / "again.json"), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert torch.equal(load_sae(tmp_path / "b").W_dec, load_sae(out).W_dec)
    capsys.readouterr()
    (tmp_path / "bad.json").write_text(json.dumps({"n_latent": 48}))
    for cfg, needle in [("bad.json", "unknown training settings ['n_latent']"), ("missing.json", "no such file")]:
        assert cli_main(["train", "--acts", str(synth_store), "--config", str(tmp_path / cfg), "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err
    assert cli_main(["train", "--acts", str(synth_store), "--k", "3", "--out", str(tmp_path / "x")]) == 2
    assert "give --latents" in capsys.readouterr().err


def test_sort_writes_the_importance_sorted_full_size_sae_and_info_describes_it(tmp_path, trained_topk, synth_store, capsys):
    imp_path = tmp_path / "importance.json"
    assert cli_main(["importance", str(trained_topk), "--acts", str(synth_store), "--out", str(imp_path), "--figure", "none",
                     "--bootstrap", "0", "--no-progress"]) == 0
    sorted_dir = tmp_path / "sorted"
    assert cli_main(["sort", str(trained_topk), "--importance", str(imp_path), "--out", str(sorted_dir)]) == 0
    parent, child = load_sae(trained_topk), load_sae(sorted_dir)
    order = Importance.load(imp_path).ordering("ef2")
    assert torch.equal(child.W_dec, parent.W_dec[order]) and child.n_latents == parent.n_latents
    x = torch.randn(64, parent.d_in)
    torch.testing.assert_close(child(x), parent(x), rtol=1e-5, atol=1e-6)  # sorting changes no output
    assert cli_main(["sort", str(trained_topk), "--importance", str(imp_path), "--out", str(sorted_dir)]) == 2  # no overwrite
    capsys.readouterr()
    assert cli_main(["info", str(sorted_dir), "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert (desc["format"], desc["architecture"], desc["n_latents"], desc["d_in"]) == ("progsae", "topk", 512, 64)
    assert desc["provenance"]["sorted_by"]["order"] == "ef2" and desc["parameters"] == 2 * 512 * 64 + 512 + 64
    assert cli_main(["info", str(synth_store), "--json"]) == 0
    desc = json.loads(capsys.readouterr().out)
    store = ActivationStore(synth_store)
    assert desc["kind"] == "activation store" and desc["d_model"] == 64
    for split in ("train", "validation", "test"):
        assert desc["splits"][split]["rows"] == store.stored_tokens(split)
        assert desc["splits"][split]["dropped"] == store.stored_tokens(split) - store.num_tokens(split)
    assert cli_main(["info", str(synth_store)]) == 0 and "splits:" in capsys.readouterr().out
    assert cli_main(["info", str(tmp_path / "nothing")]) == 2

"""An unusable --device is refused in one line naming it, by every verb, before anything is loaded or written."""

import json

import pytest
import torch

from progsae.cli import main
from progsae.device import resolve_device
from progsae.errors import ProgsaeError

MISSING = ["bogus", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from progsae.data.synthetic import make_synthetic
    from progsae.sae import SAEConfig, TopKSAE

    root = tmp_path_factory.mktemp("dev")
    make_synthetic(root / "acts", d_model=16, n_features=32, tokens=2000, test_tokens=500, seed=0)
    TopKSAE(SAEConfig(architecture="topk", d_in=16, n_latents=32, k=4)).save(root / "sae")
    return root


@pytest.mark.parametrize("device", MISSING)
@pytest.mark.parametrize("verb", ["train", "eval", "importance", "prune", "collect", "reproduce", "import"])
def test_every_verb_refuses_a_missing_device(folders, tmp_path, capsys, verb, device):
    acts, sae, out = str(folders / "acts"), str(folders / "sae"), str(tmp_path / "out")
    argv = {
        "train": ["train", "--acts", acts, "--out", out, "--arch", "topk", "--latents", "32", "--k", "4", "--steps", "2", "--quiet"],
        "eval": ["eval", f"a={sae}", "--acts", acts, "--metrics", "recon", "--no-progress"],
        "importance": ["importance", sae, "--acts", acts, "--out", out + ".json"],
        "prune": ["prune", sae, "--size", "8", "--order", "ef2", "--acts", acts, "--out", out],
        "collect": ["collect", "--model", "smollm2", "--hook", "resid_post.1", "--tokens", "10", "--out", out],
        "reproduce": ["reproduce", "--preset", "quick", "--out", out, "--no-progress"],
        "import": ["import", sae, "--out", out],
    }[verb]
    assert main([*argv, "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert f"device '{device}'" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_available_devices_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ProgsaeError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_auto_picks_the_best_device_present(folders, tmp_path):
    from progsae.commands.arguments import device_name

    want = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert device_name("auto") == want and device_name("cuda:1") == "cuda:1"
    out = tmp_path / "sae"
    assert main(["train", "--acts", str(folders / "acts"), "--out", str(out), "--latents", "32", "--k", "4", "--steps", "2",
                 "--batch-size", "256", "--quiet", "--device", "auto"]) == 0
    assert json.loads((out / "cfg.json").read_text())["provenance"]["train_config"]["device"] == want

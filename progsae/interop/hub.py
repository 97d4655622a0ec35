"""Fetch one SAE folder from the Hugging Face Hub, only when the user asks: `import --from-hub owner/repo/sub/folder`,
`SAE.from_pretrained(...)`, or `load_sae(...)` of a path that does not exist locally."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import snapshot_download

from progsae.errors import ProgsaeError
from progsae.sae.base import SAE


def split_spec(spec: str) -> tuple[str, str]:
    """'owner/repo/sub/folder' -> ('owner/repo', 'sub/folder'); the folder part may be empty."""
    parts = [p for p in spec.strip().strip("/").split("/") if p]
    if len(parts) < 2 or any(p in (".", "..") for p in parts):
        raise ProgsaeError(f"--from-hub expects owner/repo[/path/to/sae], got '{spec}'")
    return "/".join(parts[:2]), "/".join(parts[2:])


def looks_like_hub_spec(path: str | Path) -> bool:
    """Whether a path that does not exist here reads as 'owner/repo[/path]' rather than a mistyped local path:
    relative, at least two parts, and its first part is not a local folder (so 'runs/typo' never goes online)."""
    text = str(path)
    parts = [p for p in text.strip("/").split("/") if p]
    return (
        not Path(text).exists() and not text.startswith(("/", ".", "~")) and "\\" not in text
        and len(parts) >= 2 and not Path(parts[0]).exists() and all(p not in (".", "..") for p in parts)
    )


def allow_patterns(sub: str) -> list[str]:
    """Only the SAE's own folder (plus a run-level config.json, where sparsify keeps the model name)."""
    if not sub:
        return ["cfg.json", "config.json", "*.safetensors", "ae.pt", "params.npz"]
    parent = sub.rsplit("/", 1)[0] if "/" in sub else ""
    return [f"{sub}/*", f"{parent}/config.json" if parent else "config.json"]


def fetch(spec: str, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Download (or reuse from the cache) the files of one SAE folder and return its local path."""
    repo_id, sub = split_spec(spec)
    try:
        root = snapshot_download(repo_id=repo_id, allow_patterns=allow_patterns(sub), revision=revision, cache_dir=cache_dir)
    except Exception as e:  # network, auth, offline mode, missing repo: all reported as one line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ProgsaeError(f"could not fetch '{spec}' from the Hugging Face Hub ({type(e).__name__}: {first})") from None
    folder = Path(root) / sub if sub else Path(root)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise ProgsaeError(f"'{sub or '.'}' holds no files in Hub repo {repo_id}")
    return folder


def load_from_hub(spec: str, device: str = "cpu", revision: str | None = None) -> SAE:
    """The SAE in one Hub folder (any format progsae reads), with its Hub id recorded in cfg.provenance."""
    from progsae.interop import load_foreign

    sae = load_foreign(fetch(spec, revision=revision), device=device)
    sae.cfg.provenance = {**sae.cfg.provenance, "source_hub": {"spec": spec, "revision": revision}}
    return sae

"""Describe an SAE folder (any format progsae reads) or an activation store.

SAE: format, architecture, sizes (d_in, n_latents, k, prefixes, mask size), parameters, source model and hook,
and its provenance (training run, sort or prune record, source library or Hub id).
Store: model, hook, d_model, contexts and storage dtype, and per split the stored rows, the contexts and
the rows the outlier rule drops. --json prints the whole description as JSON.

Examples:
  progsae info runs/vanilla
  progsae info runs/acts --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from progsae.commands.arguments import add_outlier_arguments
from progsae.errors import ProgsaeError

_PROVENANCE_SHOWN = ("trainer", "steps", "tokens", "store", "source_format", "source_hub", "sorted_by", "prune", "matryoshka")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="an SAE folder or an activation store folder")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    add_outlier_arguments(p)


def describe_store(path: Path, outlier_factor: float | None) -> dict[str, Any]:
    """What a store holds, per split, with the rows its outlier rule drops."""
    from progsae.data.store import SPLITS, ActivationStore

    store = ActivationStore(path, outlier_factor=outlier_factor)
    meta = store.meta
    splits = {}
    for split in SPLITS:
        if split not in meta["splits"]:
            continue
        summary = store.outliers(split) if store.has_split(split) else None
        splits[split] = {
            "shards": len(store.shards(split)), "rows": store.stored_tokens(split), "contexts": store.num_contexts(split),
            "dropped": None if summary is None else summary["dropped"],
            "dropped_variance_share": None if summary is None else summary["variance_share"],
        }
    keys = ("model", "hook", "hook_as_typed", "d_model", "n_layers", "context_length", "first_position", "corpus", "source", "seed")
    out = {"kind": "activation store", "format": meta.get("format"), **{k: meta[k] for k in keys if k in meta}}
    out["storage_dtype"] = meta.get("dtype") or (meta.get("collect") or {}).get("storage_dtype")
    rule = store.outlier_rule
    out["outlier_rule"] = None if rule is None else rule.to_dict()
    out["splits"] = splits
    return out


def describe_sae(path: Path) -> dict[str, Any]:
    """An SAE folder's format, architecture, sizes and provenance."""
    from progsae.interop import detect_format
    from progsae.sae.io import load_sae

    fmt = detect_format(path)
    sae = load_sae(path)
    cfg = sae.cfg
    prov = cfg.provenance or {}
    return {
        "kind": "SAE", "format": fmt, "architecture": cfg.architecture, "d_in": cfg.d_in, "n_latents": cfg.n_latents,
        "k": cfg.k, "prefixes": cfg.prefixes, "mask_size": cfg.mask_size, "subtract_b_dec": cfg.subtract_b_dec,
        "dtype": cfg.dtype, "parameters": sum(t.numel() for t in sae.state_dict().values()),
        "model": cfg.model, "hook": cfg.hook, "normalization": cfg.normalization,
        "provenance": {k: prov[k] for k in _PROVENANCE_SHOWN if k in prov},
        "train_config": prov.get("train_config"),
    }


def _lines(d: dict[str, Any], indent: str = "") -> list[str]:
    out = []
    for key, value in d.items():
        if value is None or value == {} or value == []:
            continue
        if isinstance(value, dict) and key != "train_config":
            out.append(f"{indent}{key}:")
            out += _lines(value, indent + "  ")
        else:
            out.append(f"{indent}{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return out


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.is_dir():
        raise ProgsaeError(f"{path}: no such SAE or store folder")
    if (path / "meta.json").exists():
        if not args.keep_outliers and not args.outlier_factor > 1:
            raise ProgsaeError(f"--outlier-factor must exceed 1, got {args.outlier_factor}")
        desc = describe_store(path, None if args.keep_outliers else args.outlier_factor)
    else:
        desc = describe_sae(path)
    print(json.dumps(desc, indent=2) if args.json else "\n".join(_lines({"path": str(path), **desc})))
    return 0

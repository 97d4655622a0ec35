"""The (G, k') grid of the study (train.k_levels): every method cut to every size G and sparsity k'.

Trained per seed besides the main SAEs: `hierarchical-n` (the multi-k objective over train.k_levels),
`matryoshka-hierarchical-n` (Matryoshka prefixes x k levels) and k-matched vanilla SAEs `vanilla-n-k<j>` (n latents
trained at each level j < k). Each method's (G, k') member is `at_size(G, mode)` then `at_k(k')` (they commute):
vanilla and hierarchical sorted by their own E[f²] importance (validation rows), the Matryoshka ones by prefix.
The size-matched vanilla-G (k) and k-matched vanilla-n-k<j> SAEs are the trained baselines of the L0–FVU frontier.
"""

from __future__ import annotations

from typing import Any

from progsae.config import StudyConfig

GRID_METHODS = ("vanilla", "hierarchical", "matryoshka", "matryoshka-hierarchical")
BASELINES = ("vanilla-size-matched", "vanilla-k-matched")
GRID_METRICS = ("recon", "ce")  # the grid's evaluations: FVU (and L0) and recaptured CE
RECORD_METRICS = ("fvu", "l0", "ce_recaptured_zero", "ce_recaptured_mean", "delta_ce")


def k_level_specs(cfg: StudyConfig) -> dict[str, dict]:
    """The extra SAEs train.k_levels adds, by folder name: TrainConfig overrides for each (none without levels)."""
    levels, g, n = cfg.train.k_levels, cfg.train.granularities, cfg.n_latents
    if not levels:
        return {}
    specs: dict[str, dict] = {
        f"hierarchical-{n}": {"n_latents": n, "k_levels": list(levels)},
        f"matryoshka-hierarchical-{n}": {"n_latents": n, "matryoshka": list(g), "k_levels": list(levels)},
    }
    specs.update({f"vanilla-{n}-k{j}": {"n_latents": n, "k": j} for j in levels[:-1]})
    return specs


def parent_folders(cfg: StudyConfig) -> dict[str, str]:
    """Each grid method's full-size SAE folder, relative to a seed's folder."""
    n = cfg.n_latents
    return {"vanilla": f"saes/vanilla-{n}", "hierarchical": f"saes/hierarchical-{n}",
            "matryoshka": f"saes/matryoshka-{n}", "matryoshka-hierarchical": f"saes/matryoshka-hierarchical-{n}"}


def grid_members(cfg: StudyConfig, seed_dir: str) -> list[dict[str, Any]]:
    """Every (method, G, k', mode) of one seed, with a unique variant name, plus the trained baselines."""
    g, n, levels = cfg.train.granularities, cfg.n_latents, cfg.train.k_levels or []
    out = []
    for method in GRID_METHODS:
        for size in g:
            for mode in (["full"] if size == n else cfg.eval.modes):
                out += [{"method": method, "size": size, "k": k, "mode": mode, "name": f"{seed_dir}/{method}/G{size}-k{k}-{mode}"}
                        for k in levels]
    if cfg.train.size_matched_baselines:
        out += [{"method": "vanilla-size-matched", "size": size, "k": cfg.train.k, "mode": "full",
                 "name": f"{seed_dir}/saes/vanilla-{size}", "folder": f"saes/vanilla-{size}"} for size in g[:-1]]
    out += [{"method": "vanilla-k-matched", "size": n, "k": j, "mode": "full", "name": f"{seed_dir}/saes/vanilla-{n}-k{j}",
             "folder": f"saes/vanilla-{n}-k{j}"} for j in levels[:-1]]
    return out


def cut(parents: dict, member: dict, calibration) -> Any:
    """A grid member's SAE from its method's (sorted or Matryoshka) parent: at_size(G, mode), then at_k(k')."""
    sae = parents[member["method"]]
    if member["mode"] != "full":
        sae = sae.at_size(member["size"], mode=member["mode"])
    return sae.at_k(member["k"], calibration)


def grid_records(seed, members: list[dict], flat: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per member: seed, method, size, k, mode, folder (its variant name, which keys its replicates), metrics."""
    rows = []
    for m in members:
        vals = flat.get(m["name"], {})
        row = {"seed": seed, "method": m["method"], "size": m["size"], "k": m["k"], "mode": m["mode"], "folder": m["name"]}
        for key in RECORD_METRICS:
            row[key], row[f"{key}_ci"] = vals.get(key), vals.get(f"{key}_ci")
        rows.append(row)
    return rows


__all__ = ["k_level_specs", "grid_members", "grid_records", "cut", "parent_folders", "GRID_METHODS", "BASELINES"]

"""`progsae reproduce`: the study of PAPER.md as six resumable stages over one run folder.

    acts/                 activation store (train + test)                      [collect]
    saes/<name>/          vanilla-n, matryoshka-n, vanilla-G baselines       [train]
    importance.json, power_law.json, figures/power_law.png                    [importance]
    families/<method>-<G>-<mode>/  pruned and prefix SAEs, families.json      [families]
    evals/*.json, results.json                                                [evaluate]
    report.md, report.html, figures/*.png, timings.json                       [report]
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from progsae.config import StudyConfig
from progsae.sae.io import atomic_write_json, load_sae
from progsae.study.stages import RunContext, Stage, read_marker

if TYPE_CHECKING:
    from progsae.evals.runner import EvalResults

PRUNE_ORDERS = ("ef2", "freq", "unsorted", "random")


def store_path(ctx: RunContext) -> Path:
    return ctx.path("acts")


def sae_specs(cfg: StudyConfig) -> dict[str, dict]:
    """The SAEs the study trains, by folder name: TrainConfig overrides for each."""
    g, n = cfg.train.granularities, cfg.n_latents
    specs = {f"vanilla-{n}": {"n_latents": n}, f"matryoshka-{n}": {"n_latents": n, "matryoshka": list(g)}}
    if cfg.train.size_matched_baselines:
        specs.update({f"vanilla-{size}": {"n_latents": size} for size in g[:-1]})
    return specs


# ---- 1. collect ---------------------------------------------------------------------------------
def run_collect(ctx: RunContext) -> dict:
    from dataclasses import replace

    from progsae.data.collect import collect

    collect(replace(ctx.cfg.data, device=ctx.cfg.device), store_path(ctx), progress=ctx.progress)
    return {}


# ---- 2. train -----------------------------------------------------------------------------------
def run_train(ctx: RunContext) -> dict:
    from progsae.data.store import ActivationStore
    from progsae.train import TrainConfig, train_sae

    t = ctx.cfg.train
    store = ActivationStore(store_path(ctx))
    tokens = int(t.epochs * store.num_tokens("train"))
    seconds = {}
    for name, spec in sae_specs(ctx.cfg).items():
        folder = ctx.path("saes", name)
        if (folder / "cfg.json").exists():  # finished earlier
            sae = load_sae(folder)
        else:
            cfg = TrainConfig(arch=t.arch, k=t.k, tokens=tokens, batch_size=t.batch_size, lr=t.lr, seed=t.seed,
                              aux_coef=t.aux_coef, dead_window=t.dead_window, device=ctx.cfg.device,
                              buffer_bytes=int(t.shuffle_buffer_gb * 2**30), **spec)
            sae = train_sae(store, folder, cfg, resume=True, progress=ctx.progress)
        seconds[name] = sae.cfg.provenance.get("wall_time_s")
    return {"train_seconds": seconds}


# ---- 3. importance ------------------------------------------------------------------------------
def run_importance(ctx: RunContext) -> dict:
    from progsae.progressive import fit_power_law, importance
    from progsae.report.figures import power_law_figure

    sae = load_sae(ctx.path("saes", f"vanilla-{ctx.cfg.n_latents}"), device=ctx.cfg.device)
    imp = importance(sae, store_path(ctx), split="test", progress=ctx.progress)
    values = imp.score("ef2")
    fit = fit_power_law(values, seed=ctx.cfg.train.seed)  # defaults: LS over the middle of the live ranks, MLE + LR tests
    imp.save(ctx.path("importance.json"), power_law=fit.to_dict())
    atomic_write_json(ctx.path("power_law.json"), {"statistic": "ef2", "sae": f"vanilla-{ctx.cfg.n_latents}", **fit.to_dict()})
    power_law_figure(values, ctx.path("figures", "power_law.png"), fit=fit, title=f"{ctx.cfg.data.model} {ctx.cfg.data.hook}")
    return {"alpha": fit.alpha, "r2": fit.r2}


# ---- 4. families --------------------------------------------------------------------------------
def family_members(cfg: StudyConfig) -> list[dict]:
    """Every (method, size, mode) the study evaluates, with the folder that holds it."""
    g, n = cfg.train.granularities, cfg.n_latents
    out = [{"method": "vanilla", "size": size, "mode": "full", "folder": f"saes/vanilla-{size}"}
           for size in (g if cfg.train.size_matched_baselines else [n])]
    out.append({"method": "matryoshka", "size": n, "mode": "full", "folder": f"saes/matryoshka-{n}"})
    for size in g[:-1]:
        for mode in cfg.eval.modes:
            out += [{"method": f"pruned-{o}", "size": size, "mode": mode, "order": o, "folder": f"families/pruned-{o}-{size}-{mode}"}
                    for o in PRUNE_ORDERS]
            out.append({"method": "matryoshka", "size": size, "mode": mode, "order": "prefix", "folder": f"families/matryoshka-{size}-{mode}"})
    return out


def run_families(ctx: RunContext) -> dict:
    from progsae.progressive import prune

    n = ctx.cfg.n_latents
    parents = {"vanilla": load_sae(ctx.path("saes", f"vanilla-{n}")), "matryoshka": load_sae(ctx.path("saes", f"matryoshka-{n}"))}
    members = family_members(ctx.cfg)
    for m in members:
        if "order" not in m or ctx.path(m["folder"], "cfg.json").exists():
            continue
        parent_name = "matryoshka" if m["order"] == "prefix" else "vanilla"
        pruned = prune(parents[parent_name], m["size"], order=m["order"], mode=m["mode"],
                       importance=ctx.path("importance.json") if m["order"] != "prefix" else None,
                       seed=ctx.cfg.train.seed, parent=f"saes/{parent_name}-{n}")
        pruned.save(ctx.path(m["folder"]))
    atomic_write_json(ctx.path("families", "families.json"), members)
    return {"members": len(members)}


# ---- 5. evaluate --------------------------------------------------------------------------------
def eval_run_config(cfg: StudyConfig, metrics: list[str], sizes: list[int] | None = None):
    from progsae.evals.interp.score import InterpConfig
    from progsae.evals.lm_loss import LMLossConfig
    from progsae.evals.reconstruction import ReconstructionConfig
    from progsae.evals.runner import EvalRunConfig
    from progsae.evals.similarity import SimilarityConfig

    e = cfg.eval
    return EvalRunConfig(
        metrics=metrics, sizes=sizes, modes=list(e.modes),
        explainer=e.interp_explainer, llm_url=e.interp_llm_url, llm_model=e.interp_llm_model,
        recon=ReconstructionConfig(max_tokens=e.recon_tokens),
        ce=LMLossConfig(contexts=e.ce_contexts, batch_size=e.ce_batch_size),
        rsa=SimilarityConfig(tokens=e.rsa_tokens, seed=e.seed),
        interp=InterpConfig(latents_per_band=e.interp_latents_per_band, seed=e.seed),
    )


def evaluate_metric(ctx: RunContext, metric: str, names: list[str], saes: Callable[[], dict], sizes: list[int] | None) -> EvalResults:
    """One metric over the SAEs `names` (loaded by `saes()` only if needed), written to evals/<metric>.json.

    A file an interrupted attempt left is reused when it holds this metric with this config for these
    SAEs; anything else there is evaluated again."""
    from pydantic import ValidationError

    from progsae.data.store import ActivationStore
    from progsae.evals.runner import EvalResults, run_evals  # noqa: F811

    path = ctx.path("evals", f"{metric}.json")
    run_cfg = eval_run_config(ctx.cfg, [metric], sizes)
    if path.exists():
        try:
            done = EvalResults.model_validate_json(path.read_text())
            if done.config == run_cfg and {v.source for v in done.variants} == set(names):
                return done
        except (ValidationError, ValueError):
            pass  # torn or foreign: evaluate again
        path.unlink()
    # the LM for recaptured CE is the store's model, loaded by run_evals on the SAEs' device
    return run_evals(ActivationStore(store_path(ctx)), saes(), run_cfg, out_path=path, progress=ctx.progress)


def run_evaluate(ctx: RunContext) -> dict:
    """Each metric over every family member, then interpretability by band over the two full-size parents.

    Metrics are written one file each as they finish (evals/<metric>.json), so an interrupted stage
    resumes at the first unfinished metric.
    """
    cfg = ctx.cfg
    members = json.loads(ctx.path("families", "families.json").read_text())
    folders = sorted({m["folder"] for m in members})

    @functools.cache
    def family() -> dict:  # loaded once, for the first metric not already on disk
        return {f: load_sae(ctx.path(f), device=cfg.device) for f in folders}

    by_folder: dict[str, dict] = {f: {} for f in folders}
    for metric in [m for m in cfg.eval.metrics if m != "interp"]:
        res = evaluate_metric(ctx, metric, folders, family, None)
        for r in res.records:  # the runner's "method" is the dict key: the folder
            by_folder[r["method"]].update(r)
    bands, interp_by_method = {}, {}
    if "interp" in cfg.eval.metrics:
        def parents():
            from progsae.progressive import sort_sae

            n = cfg.n_latents
            vanilla = load_sae(ctx.path("saes", f"vanilla-{n}"), device=cfg.device)
            return {"pruned-ef2": sort_sae(vanilla, "ef2", importance=ctx.path("importance.json")),
                    "matryoshka": load_sae(ctx.path("saes", f"matryoshka-{n}"), device=cfg.device)}

        ires = evaluate_metric(ctx, "interp", ["pruned-ef2", "matryoshka"], parents, cfg.train.granularities)
        bands = ires.bands
        interp_by_method = {(r["method"], r["size"]): r.get("interp") for r in ires.records}
    records = []
    for m in members:
        vals = by_folder[m["folder"]]
        rec = {"method": m["method"], "size": m["size"], "mode": m["mode"]}
        rec.update({k: vals.get(k) for k in ("fvu", "mse", "l0", "ce_recaptured_zero", "ce_recaptured_mean", "delta_ce", "kl", "rsa", "cka")})
        rec["interp"] = interp_by_method.get((m["method"], m["size"]))
        records.append(rec)
    records += full_size_rows(records, cfg)
    atomic_write_json(ctx.path("results.json"), records)
    atomic_write_json(ctx.path("evals", "bands.json"), bands)
    return {"records": len(records)}


def full_size_rows(records: list[dict], cfg: StudyConfig) -> list[dict]:
    """Each pruned family (and the Matryoshka prefixes) at G = n is the full SAE itself: repeat its row per mode."""
    n = cfg.n_latents
    full = {r["method"]: r for r in records if r["size"] == n and r["mode"] == "full"}
    rows = []
    for mode in cfg.eval.modes:
        rows += [{**full["vanilla"], "method": f"pruned-{o}", "mode": mode} for o in PRUNE_ORDERS]
        rows.append({**full["matryoshka"], "mode": mode})
    return rows


# ---- 6. report ----------------------------------------------------------------------------------
def run_report(ctx: RunContext) -> dict:
    from progsae.report.study_report import write_study_report

    write_study_report(ctx)
    return {}


def timings(ctx: RunContext) -> dict:
    """Seconds per finished stage and per SAE trained (from the stage markers)."""
    stages = {name: (read_marker(ctx.out, name) or {}).get("seconds") for name in STAGE_NAMES}
    train = (read_marker(ctx.out, "train") or {}).get("train_seconds", {})
    return {"n_latents": ctx.cfg.n_latents, "stages": stages, "train": train, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}


STAGES = [
    # "device" is in no stage's key: moving a finished run to another device must not redo (or delete) it
    Stage("collect", ("data",), (), lambda cfg: ("acts/meta.json",), run_collect, owns=("acts",)),
    Stage("train", ("train",), ("collect",), lambda cfg: tuple(f"saes/{s}/cfg.json" for s in sae_specs(cfg)),
          run_train, owns=("saes",)),
    Stage("importance", (), ("train",), lambda cfg: ("importance.json", "power_law.json", "figures/power_law.png"),
          run_importance, owns=("importance.json", "power_law.json")),
    Stage("families", ("eval",), ("importance",), lambda cfg: ("families/families.json",), run_families, owns=("families",)),
    Stage("evaluate", ("eval",), ("families",), lambda cfg: ("results.json", "evals/bands.json"), run_evaluate,
          owns=("evals", "results.json")),
    Stage("report", (), ("evaluate",), lambda cfg: ("report.md", "report.html", "timings.json"), run_report,
          owns=("report.md", "report.html", "timings.json", "findings.json")),
]
STAGE_NAMES = [s.name for s in STAGES]

"""`progsae reproduce`: the study of docs/method.md as eight resumable stages over one run folder.

    acts/                         activation store (train, validation, test; with data.stream only
                                  validation and test: the SAEs train from the running model)  [collect]
    rows.json                     rows each split loses to the outlier rule                   [train]
    seed-<s>/saes/<name>/         vanilla-n, matryoshka-n, vanilla-G baselines, per seed      [train]
    step_timing.json              Matryoshka-n / vanilla-n per-step time, interleaved repeats  [timing]
    seed-<s>/importance.json, seed-<s>/power_law.json, figures/power_law-seed-<s>.png        [importance]
    seed-<s>/families/<method>-<G>-<mode>/   pruned and prefix SAEs; families.json             [families]
    evals/<metric>.json (+ .replicates.safetensors), evals/bands.json, results.json          [evaluate]
    kgrid/<metric>.json, kgrid/results.json: every method on the (G, k') grid (train.k_levels) [kgrid]
    report.md, report.html, figures/*.png, timings.json, findings.json                        [report]

Choices read validation rows (importance orderings, the mean-ablation vector, interpretability
explanations); every reported number reads test rows, with bootstrap intervals over test contexts.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from progsae.config import StudyConfig
from progsae.device import resolve_device
from progsae.evals.interp.base import explainer_label
from progsae.report.size_plots import CONTROL_METHODS
from progsae.sae.io import atomic_write_json, load_sae
from progsae.study.k_grid import GRID_METRICS, cut, grid_members, grid_records, k_level_specs, parent_folders
from progsae.study.stages import RunContext, Stage, read_marker
from progsae.train.step_timing import measure_ratio

if TYPE_CHECKING:
    from progsae.evals.runner import EvalResults

PRUNE_ORDERS = ("ef2", "freq", "unsorted", "random")


def store_path(ctx: RunContext) -> Path:
    return ctx.path("acts")


def open_store(ctx: RunContext):
    """The run's store under the study's outlier rule."""
    from progsae.data.store import ActivationStore

    return ActivationStore(store_path(ctx), outlier_factor=ctx.cfg.outlier_factor)


def seed_dir(seed: int) -> str:
    return f"seed-{seed}"


def sae_specs(cfg: StudyConfig) -> dict[str, dict]:
    """The SAEs the study trains per seed, by folder name: TrainConfig overrides for each."""
    g, n = cfg.train.granularities, cfg.n_latents
    specs = {f"vanilla-{n}": {"n_latents": n}, f"matryoshka-{n}": {"n_latents": n, "matryoshka": list(g)}}
    if cfg.train.size_matched_baselines:
        specs.update({f"vanilla-{size}": {"n_latents": size} for size in g[:-1]})
    specs.update(k_level_specs(cfg))
    return specs


def sae_folders(cfg: StudyConfig) -> list[str]:
    return [f"{seed_dir(s)}/saes/{name}" for s in cfg.seeds for name in sae_specs(cfg)]


# ---- 1. collect ---------------------------------------------------------------------------------
def run_collect(ctx: RunContext) -> dict:
    from dataclasses import replace

    from progsae.data.collect import collect, heldout_only

    data = replace(ctx.cfg.data, device=ctx.cfg.device)
    collect(heldout_only(data) if data.stream else data, store_path(ctx), progress=ctx.progress)
    return {}


# ---- 2. train -----------------------------------------------------------------------------------
def run_train(ctx: RunContext) -> dict:
    from progsae.data.outliers import describe
    from progsae.data.store import SPLITS
    from progsae.train import TrainConfig, train_sae

    t = ctx.cfg.train
    store = open_store(ctx)
    rows = {s: store.outliers(s) for s in SPLITS if store.has_split(s)}
    atomic_write_json(ctx.path("rows.json"), rows)
    for summary in rows.values():
        print(f"[train] {describe(summary)}")
    if ctx.cfg.data.stream:
        return run_streamed_train(ctx)
    tokens = int(t.epochs * store.num_tokens("train"))
    seconds: dict[str, dict] = {}
    for seed in ctx.cfg.seeds:
        for name, spec in sae_specs(ctx.cfg).items():
            folder = ctx.path(seed_dir(seed), "saes", name)
            if (folder / "cfg.json").exists():  # finished earlier
                sae = load_sae(folder)
            else:
                cfg = TrainConfig(arch=t.arch, tokens=tokens, batch_size=t.batch_size, lr=t.lr, seed=seed,
                                  aux_coef=t.aux_coef, dead_window=t.dead_window, device=ctx.cfg.device,
                                  buffer_bytes=int(t.shuffle_buffer_gb * 2**30), **{"k": t.k, **spec})
                sae = train_sae(store, folder, cfg, resume=True, progress=ctx.progress, wandb=ctx.wandb,
                                wandb_group=f"{ctx.out.name}/seed-{seed}")
            seconds.setdefault(str(seed), {})[name] = sae.cfg.provenance.get("wall_time_s")
    return {"train_seconds": seconds}


def run_streamed_train(ctx: RunContext) -> dict:
    """Every SAE of every seed from one stream of the running model (data.stream; train.epochs passes); finished folders are kept."""
    from dataclasses import replace

    from progsae.train import TrainConfig
    from progsae.train.streamed import StreamJob, stream_train

    t, cfg = ctx.cfg.train, ctx.cfg
    jobs = []
    for seed in cfg.seeds:
        for name, spec in sae_specs(cfg).items():
            folder = ctx.path(seed_dir(seed), "saes", name)
            if not (folder / "cfg.json").exists():
                train_cfg = TrainConfig(arch=t.arch, tokens=1, batch_size=t.batch_size, lr=t.lr, seed=seed,  # tokens: one pass
                                        aux_coef=t.aux_coef, dead_window=t.dead_window, device=cfg.device,
                                        buffer_bytes=int(t.shuffle_buffer_gb * 2**30), keep_checkpoint=False, **{"k": t.k, **spec})
                jobs.append(StreamJob(folder, train_cfg, cfg.data.hook))
    if jobs:
        stream_train(replace(cfg.data, device=cfg.device), jobs, store_path(ctx), outlier_factor=cfg.outlier_factor,
                     buffer_bytes=int(t.shuffle_buffer_gb * 2**30), seed=t.seed, epochs=int(t.epochs), resume=True,
                     progress=ctx.progress)
    seconds: dict[str, dict] = {}
    for seed in cfg.seeds:
        for name in sae_specs(cfg):
            seconds.setdefault(str(seed), {})[name] = load_sae(ctx.path(seed_dir(seed), "saes", name)).cfg.provenance.get("wall_time_s")
    return {"train_seconds": seconds, "streamed": True}


# ---- 2b. timing ---------------------------------------------------------------------------------
TIMING_REPEATS, TIMING_STEPS, TIMING_BATCHES = 8, 6, 4


def run_timing(ctx: RunContext) -> dict:
    """Per-step time of Matryoshka-n over vanilla-n (the first seed's trained SAEs, copies in memory) on the store's
    rows, over interleaved order-randomised repeats: the training-time claim's measurement (step_timing.json)."""
    cfg, n = ctx.cfg, ctx.cfg.n_latents
    store = open_store(ctx)
    split = "train" if store.has_split("train") else "validation"
    bs = cfg.train.batch_size
    rows = torch.cat([x for x, _, _ in itertools.islice(store.iter_context_rows(split, max_rows=bs), 2 * TIMING_BATCHES)])
    batches = [b for b in rows.to(resolve_device(cfg.device)).split(bs) if b.shape[0] == bs][:TIMING_BATCHES] or [rows]
    sd = seed_dir(cfg.seeds[0])
    vanilla = load_sae(ctx.path(sd, "saes", f"vanilla-{n}"), device=cfg.device)
    matryoshka = load_sae(ctx.path(sd, "saes", f"matryoshka-{n}"), device=cfg.device)
    t = measure_ratio((f"matryoshka-{n}", matryoshka), (f"vanilla-{n}", vanilla), batches, TIMING_REPEATS, TIMING_STEPS,
                      seed=cfg.train.seed)
    atomic_write_json(ctx.path("step_timing.json"), t.to_dict())
    print(f"[timing] matryoshka-{n} / vanilla-{n} per-step time {t.ratio:.3f}× [{t.ratio_ci[0]:.3f}, {t.ratio_ci[1]:.3f}] "
          f"over {t.repeats} interleaved repeats of {t.steps} steps (batch {t.batch_size}) on {t.hardware}")
    return {"ratio": t.ratio}


# ---- 3. importance ------------------------------------------------------------------------------
def run_importance(ctx: RunContext) -> dict:
    """Importance of each seed's vanilla SAE on the validation split (else train), and its power law."""
    from progsae.progressive import fit_power_law, importance
    from progsae.report.figures import power_law_figure

    store = open_store(ctx)
    n = ctx.cfg.n_latents
    fits = {}
    for seed in ctx.cfg.seeds:
        sd = seed_dir(seed)
        sae = load_sae(ctx.path(sd, "saes", f"vanilla-{n}"), device=ctx.cfg.device)
        imp = importance(sae, store, split=store.choice_split(), seed=seed, progress=ctx.progress)
        values = imp.score("ef2")
        fit = fit_power_law(values, seed=seed)
        imp.save(ctx.path(sd, "importance.json"), power_law=fit.to_dict())
        atomic_write_json(ctx.path(sd, "power_law.json"), {"statistic": "ef2", "sae": f"{sd}/saes/vanilla-{n}",
                                                          "split": imp.source.get("split"), **fit.to_dict()})
        power_law_figure(values, ctx.path("figures", f"power_law-{sd}.png"), fit=fit,
                         title=f"{ctx.cfg.data.model} {ctx.cfg.data.hook}, seed {seed}")
        fits[str(seed)] = {"alpha": fit.alpha, "r2": fit.r2}
    return {"power_law": fits}


# ---- 4. families --------------------------------------------------------------------------------
def family_members(cfg: StudyConfig) -> list[dict]:
    """Every (seed, method, size, mode) the study evaluates, with the folder that holds it."""
    g, n = cfg.train.granularities, cfg.n_latents
    out = []
    for seed in cfg.seeds:
        sd = seed_dir(seed)
        out += [{"seed": seed, "method": "vanilla", "size": size, "mode": "full", "folder": f"{sd}/saes/vanilla-{size}"}
                for size in (g if cfg.train.size_matched_baselines else [n])]
        out.append({"seed": seed, "method": "matryoshka", "size": n, "mode": "full", "folder": f"{sd}/saes/matryoshka-{n}"})
        for size in g[:-1]:
            for mode in cfg.eval.modes:
                out += [{"seed": seed, "method": f"pruned-{o}", "size": size, "mode": mode, "order": o,
                         "folder": f"{sd}/families/pruned-{o}-{size}-{mode}"} for o in PRUNE_ORDERS]
                out.append({"seed": seed, "method": "matryoshka", "size": size, "mode": mode, "order": "prefix",
                            "folder": f"{sd}/families/matryoshka-{size}-{mode}"})
    return out


def run_families(ctx: RunContext) -> dict:
    from progsae.progressive import prune

    n = ctx.cfg.n_latents
    members = family_members(ctx.cfg)
    for seed in ctx.cfg.seeds:
        sd = seed_dir(seed)
        parents = {"vanilla": load_sae(ctx.path(sd, "saes", f"vanilla-{n}")), "matryoshka": load_sae(ctx.path(sd, "saes", f"matryoshka-{n}"))}
        for m in members:
            if m["seed"] != seed or "order" not in m or ctx.path(m["folder"], "cfg.json").exists():
                continue
            parent_name = "matryoshka" if m["order"] == "prefix" else "vanilla"
            pruned = prune(parents[parent_name], m["size"], order=m["order"], mode=m["mode"],
                           importance=ctx.path(sd, "importance.json") if m["order"] != "prefix" else None,
                           seed=seed, parent=f"{sd}/saes/{parent_name}-{n}")
            pruned.save(ctx.path(m["folder"]))
    atomic_write_json(ctx.path("families", "families.json"), members)
    return {"members": len(members)}


# ---- 5. evaluate --------------------------------------------------------------------------------
def rsa_references(cfg: StudyConfig) -> dict[str, str]:
    """Each cut SAE's full-size parent: the reference of its rsa_full (the family's own full-size reconstruction)."""
    n = cfg.n_latents
    return {m["folder"]: f"{seed_dir(m['seed'])}/saes/{'matryoshka' if m['order'] == 'prefix' else 'vanilla'}-{n}"
            for m in family_members(cfg) if "order" in m}


def eval_run_config(cfg: StudyConfig, metrics: list[str], sizes: list[int] | None = None):
    from progsae.evals.bootstrap import BootstrapConfig
    from progsae.evals.interp.score import InterpConfig
    from progsae.evals.lm_loss import LMLossConfig
    from progsae.evals.reconstruction import ReconstructionConfig
    from progsae.evals.runner import EvalRunConfig
    from progsae.evals.similarity import SimilarityConfig

    e = cfg.eval
    boot = BootstrapConfig(replicates=e.bootstrap_replicates, seed=e.seed)
    return EvalRunConfig(
        metrics=metrics, sizes=sizes, modes=list(e.modes),
        explainer=e.interp_explainer, llm_url=e.interp_llm_url, llm_model=e.interp_llm_model,
        recon=ReconstructionConfig(max_tokens=e.recon_tokens, seed=e.seed, bootstrap=boot),
        ce=LMLossConfig(contexts=e.ce_contexts, batch_size=e.ce_batch_size, seed=e.seed, bootstrap=boot),
        rsa=SimilarityConfig(tokens=e.rsa_tokens, seed=e.seed, bootstrap=boot, references=rsa_references(cfg)),
        interp=InterpConfig(latents_per_band=e.interp_latents_per_band, seed=e.seed),
    )


def evaluate_metric(ctx: RunContext, metric: str, names: list[str], saes: Callable[[], dict], sizes: list[int] | None) -> EvalResults:
    """One metric over the SAEs `names` (loaded by `saes()` only if needed), written to evals/<metric>.json.

    A file an interrupted attempt left is reused when it holds this metric with this config for these
    SAEs (and its replicates); anything else there is evaluated again."""
    from pydantic import ValidationError

    from progsae.evals.runner import load_results, replicates_path, run_evals

    path = ctx.path("evals", f"{metric}.json")
    run_cfg = eval_run_config(ctx.cfg, [metric], sizes)
    if path.exists():
        try:
            done = load_results(path)
            if done.config == run_cfg and {v.source for v in done.variants} == set(names) and replicates_path(path).exists():
                return done
        except (ValidationError, ValueError, OSError):
            pass  # torn or foreign: evaluate again
        path.unlink()
    # the LM for recaptured CE is the store's model, loaded by run_evals on the SAEs' device
    return run_evals(open_store(ctx), saes(), run_cfg, out_path=path, progress=ctx.progress)


RECORD_METRICS = ("fvu", "mse", "l0", "dead", "ce_recaptured_zero", "ce_recaptured_mean", "delta_ce", "kl", "rsa", "rsa_full", "cka")


def run_evaluate(ctx: RunContext) -> dict:
    """Each metric over every family member of every seed, then interpretability by band over each seed's parents.

    Metrics are written one file each as they finish (evals/<metric>.json), so an interrupted stage
    resumes at the first unfinished metric. Every variant is named by its folder."""
    cfg = ctx.cfg
    members = json.loads(ctx.path("families", "families.json").read_text())
    folders = sorted({m["folder"] for m in members})

    @functools.cache
    def family() -> dict:  # loaded once, for the first metric not already on disk
        return {f: load_sae(ctx.path(f), device=cfg.device) for f in folders}

    by_folder: dict[str, dict] = {f: {} for f in folders}
    controls = {m["folder"] for m in members if m["method"] in CONTROL_METHODS}
    for metric in [m for m in cfg.eval.metrics if m != "interp"]:
        if metric == "ce" and not cfg.eval.ce_controls:
            main = [f for f in folders if f not in controls]
            res = evaluate_metric(ctx, metric, main, lambda: {f: family()[f] for f in main}, None)
        else:
            res = evaluate_metric(ctx, metric, folders, family, None)
        for r in res.records:  # the runner's "method" is the dict key: the folder
            by_folder[r["method"]].update(r)
    bands, interp_by_method = {}, {}
    if "interp" in cfg.eval.metrics:
        n = cfg.n_latents

        def parents():
            from progsae.progressive import sort_sae

            out = {}
            for seed in cfg.seeds:
                sd = seed_dir(seed)
                vanilla = load_sae(ctx.path(sd, "saes", f"vanilla-{n}"), device=cfg.device)
                out[f"{sd}/pruned-ef2"] = sort_sae(vanilla, "ef2", importance=ctx.path(sd, "importance.json"))
                out[f"{sd}/matryoshka"] = load_sae(ctx.path(sd, "saes", f"matryoshka-{n}"), device=cfg.device)
            return out

        names = [f"{seed_dir(s)}/{m}" for s in cfg.seeds for m in ("pruned-ef2", "matryoshka")]
        ires = evaluate_metric(ctx, "interp", names, parents, cfg.train.granularities)
        for source, per_band in ires.bands.items():
            sd, method = source.split("/", 1)
            bands.setdefault(sd.removeprefix("seed-"), {})[method] = per_band
        interp_by_method = {(r["method"], r["size"]): (r.get("interp"), r.get("interp_ci")) for r in ires.records}
    records = []
    for m in members:
        vals = by_folder[m["folder"]]
        rec = {"seed": m["seed"], "method": m["method"], "size": m["size"], "mode": m["mode"], "folder": m["folder"]}
        for k in RECORD_METRICS:
            rec[k], rec[f"{k}_ci"] = vals.get(k), vals.get(f"{k}_ci")
        method = m["method"] if m["method"] in ("pruned-ef2", "matryoshka") else None
        rec["interp"], rec["interp_ci"] = interp_by_method.get((f"{seed_dir(m['seed'])}/{method}", m["size"]), (None, None))
        records.append(rec)
    records += full_size_rows(records, cfg)
    atomic_write_json(ctx.path("results.json"), records)
    if bands:  # beside the seeds: which explainer wrote the explanations the scores rest on
        bands = {"explainer": explainer_label(cfg.eval.interp_explainer, cfg.eval.interp_llm_model), **bands}
    atomic_write_json(ctx.path("evals", "bands.json"), bands)
    return {"records": len(records)}


def full_size_rows(records: list[dict], cfg: StudyConfig) -> list[dict]:
    """Each pruned family (and the Matryoshka prefixes) at G = n is the full SAE itself: its row repeated per
    mode, marked `full_size_copy` so that plots draw it and verdicts never count it twice."""
    n = cfg.n_latents
    rows = []
    for seed in cfg.seeds:
        full = {r["method"]: r for r in records if r["seed"] == seed and r["size"] == n and r["mode"] == "full"}
        for mode in cfg.eval.modes:
            rows += [{**full["vanilla"], "method": f"pruned-{o}", "mode": mode, "full_size_copy": True} for o in PRUNE_ORDERS]
            rows.append({**full["matryoshka"], "mode": mode, "full_size_copy": True})
    return rows


def load_replicates(ctx: RunContext, folder: str = "evals") -> dict[str, dict]:
    """folder -> flat metric -> bootstrap replicates [R], from every <folder>/<metric>.replicates.safetensors
    (evals/, or kgrid/ whose variants are named by grid member)."""
    from progsae.evals.bootstrap import load_replicates as load_file

    out: dict[str, dict] = {}
    for path in sorted(ctx.path(folder).glob("*.replicates.safetensors")):
        for variant, per in load_file(path).items():
            out.setdefault(variant.split("@", 1)[0], {}).update(per)
    return out


# ---- 6. the (G, k') grid --------------------------------------------------------------------------
def run_k_grid(ctx: RunContext) -> dict:
    """Every method on the (G, k') grid with the trained baselines, on FVU and recaptured CE (train.k_levels;
    without it, an empty kgrid/results.json). One kgrid/<metric>.json per metric, per seed in one file."""
    from progsae.evals.runner import run_evals
    from progsae.progressive import importance, sort_sae

    cfg = ctx.cfg
    records: list[dict] = []
    metrics = [m for m in GRID_METRICS if m in cfg.eval.metrics] if cfg.train.k_levels else []
    if metrics:
        store = open_store(ctx)
        saes, members = {}, {}
        for seed in cfg.seeds:
            sd = seed_dir(seed)
            parents = {m: load_sae(ctx.path(sd, f), device=cfg.device) for m, f in parent_folders(cfg).items()}
            parents["vanilla"] = sort_sae(parents["vanilla"], "ef2", importance=ctx.path(sd, "importance.json"))
            imp = importance(parents["hierarchical"], store, split=store.choice_split(), seed=seed)
            parents["hierarchical"] = sort_sae(parents["hierarchical"], "ef2", importance=imp)
            members[seed] = grid_members(cfg, sd)
            for m in members[seed]:
                folder = m.get("folder")
                saes[m["name"]] = load_sae(ctx.path(sd, folder), device=cfg.device) if folder else cut(parents, m, store)
        flat: dict[str, dict] = {}
        for metric in metrics:
            res = run_evals(store, saes, eval_run_config(cfg, [metric]), out_path=ctx.path("kgrid", f"{metric}.json"),
                            progress=ctx.progress)
            for r in res.records:
                flat.setdefault(r["method"], {}).update(r)
        for seed in cfg.seeds:
            records += grid_records(seed, members[seed], flat)
    atomic_write_json(ctx.path("kgrid", "results.json"), records)
    return {"grid_records": len(records)}


# ---- 7. report ----------------------------------------------------------------------------------
def run_report(ctx: RunContext) -> dict:
    from progsae.report.study_report import write_study_report

    write_study_report(ctx)
    return {}


def timings(ctx: RunContext) -> dict:
    """Seconds per finished stage and per SAE trained, per seed (from the stage markers)."""
    stages = {name: (read_marker(ctx.out, name) or {}).get("seconds") for name in STAGE_NAMES}
    train = (read_marker(ctx.out, "train") or {}).get("train_seconds", {})
    step = ctx.path("step_timing.json")
    return {"n_latents": ctx.cfg.n_latents, "stages": stages, "train": train,
            "step_timing": json.loads(step.read_text()) if step.exists() else None, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}


STAGES = [
    # "device" is in no stage's key: moving a finished run to another device must not redo (or delete) it
    Stage("collect", ("data",), (), lambda cfg: ("acts/meta.json",), run_collect, owns=("acts",)),
    Stage("train", ("train", "outlier_factor"), ("collect",), lambda cfg: ("rows.json", *(f"{f}/cfg.json" for f in sae_folders(cfg))),
          run_train, owns=lambda cfg: ("rows.json", *(f"{seed_dir(s)}/saes" for s in cfg.seeds))),
    Stage("timing", (), ("train",), lambda cfg: ("step_timing.json",), run_timing, owns=("step_timing.json",)),
    Stage("importance", (), ("train",),
          lambda cfg: tuple(p for s in cfg.seeds for p in (f"{seed_dir(s)}/importance.json", f"{seed_dir(s)}/power_law.json")),
          run_importance, owns=lambda cfg: tuple(p for s in cfg.seeds for p in (f"{seed_dir(s)}/importance.json", f"{seed_dir(s)}/power_law.json"))),
    Stage("families", ("eval",), ("importance",), lambda cfg: ("families/families.json",), run_families,
          owns=lambda cfg: ("families", *(f"{seed_dir(s)}/families" for s in cfg.seeds))),
    Stage("evaluate", ("eval",), ("families",), lambda cfg: ("results.json", "evals/bands.json"), run_evaluate,
          owns=("evals", "results.json")),
    Stage("kgrid", ("train", "eval"), ("importance",), lambda cfg: ("kgrid/results.json",), run_k_grid, owns=("kgrid",)),
    Stage("report", (), ("timing", "evaluate", "kgrid"), lambda cfg: ("report.md", "report.html", "timings.json", "provenance.json"), run_report,
          owns=("report.md", "report.html", "timings.json", "findings.json", "kgrid_findings.json", "provenance.json",
                "latents.html")),
]
STAGE_NAMES = [s.name for s in STAGES]

"""The study configuration (`progsae reproduce`): dataclasses loaded from JSON presets or user files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from progsae.data.collect import CollectConfig
from progsae.data.outliers import DEFAULT_OUTLIER_FACTOR
from progsae.errors import ProgsaeError
from progsae.validation import from_json_dict, read_json_object

PRESETS = ("embedded", "quick", "quick-k", "paper")


@dataclass
class TrainStudyConfig:
    """The SAEs the study trains: a vanilla and a Matryoshka SAE of size n, and vanilla baselines at each G."""

    arch: str = "topk"
    k: int = 32
    granularities: list[int] = field(default_factory=lambda: [4096, 8192, 16384])  # the last is n
    batch_size: int = 4096
    epochs: float = 1.0
    lr: float | None = None  # None: the trainer's default 2e-4/sqrt(n/2^14), tuned for long runs
    aux_coef: float = 1 / 32  # short runs need more AuxK pull to revive dead latents (e.g. 0.25)
    dead_window: int | None = None  # tokens without firing before a latent counts as dead; None: trainer default
    seed: int = 0
    seeds: list[int] | None = None  # every SAE is trained once per seed; None: [seed]
    size_matched_baselines: bool = True
    shuffle_buffer_gb: float = 1.0  # batches mix the shards that fit in this much RAM (raise it for large d_model)
    # sparsity levels (last = k): adds a hierarchical SAE and a Matryoshka x hierarchical one, k-matched vanilla
    # SAEs at the other levels, and the (G, k') grid stage (progsae/study/k_grid.py); None: none of these
    k_levels: list[int] | None = None


@dataclass
class EvalConfig:
    metrics: list[str] = field(default_factory=lambda: ["recon", "ce", "rsa", "interp"])
    modes: list[str] = field(default_factory=lambda: ["mask", "retopk"])
    recon_tokens: int | None = None  # held-out tokens for reconstruction metrics; None: the whole test split
    ce_contexts: int | None = None  # test contexts scored by recaptured CE; None: every test context
    ce_batch_size: int = 8
    # False: recaptured CE only for the main methods (vanilla, Matryoshka, pruned-ef2), not the freq/unsorted/random
    # controls. Every variant runs the rest of the LM, so CE is the costliest metric; the ordering claim reads FVU.
    ce_controls: bool = True
    rsa_tokens: int = 2000  # test rows for RSA/CKA, spread over every test context
    interp_latents_per_band: int | None = None  # None: every eligible latent of each band is scored
    interp_explainer: str = "deterministic"  # or "llm": a local HF chat model, or the endpoint below
    interp_llm_url: str | None = None  # an OpenAI-compatible endpoint for the "llm" explainer
    interp_llm_model: str | None = None  # the model it serves (or a local model id/folder; default smollm2)
    bootstrap_replicates: int = 1000  # resamples of test contexts behind every interval and paired comparison
    seed: int = 0  # of the eval samples (contexts, latents) and the bootstrap


@dataclass
class StudyConfig:
    """Everything `progsae reproduce` needs; its JSON form is what a user copies and edits."""

    name: str = "embedded"
    device: str = "cpu"
    outlier_factor: float | None = DEFAULT_OUTLIER_FACTOR  # rows above this x the median train norm are dropped; None keeps all
    data: CollectConfig = field(default_factory=CollectConfig)  # what `progsae collect` takes, minus the device
    train: TrainStudyConfig = field(default_factory=TrainStudyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def n_latents(self) -> int:
        return self.train.granularities[-1]

    @property
    def seeds(self) -> list[int]:
        return list(self.train.seeds) if self.train.seeds else [self.train.seed]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["data"]["device"]  # the top-level device is the one that applies
        if d["train"]["k_levels"] is None:  # unset, it leaves the stage keys of runs made before it existed unchanged
            del d["train"]["k_levels"]
        return d

    def section_hash(self, *sections: str) -> str:
        """A short digest of the named config sections: a stage re-runs when its inputs change."""
        d = self.to_dict()
        blob = json.dumps({s: d[s] for s in sections}, sort_keys=True)  # a section or a top-level key
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "StudyConfig":
        def build(kind, values, where):
            return from_json_dict(kind, values, source, where)

        if not isinstance(d, dict):
            raise ProgsaeError(f"{source}: a study config is a JSON object, got {type(d).__name__}")
        d = dict(d)
        if isinstance(d.get("data"), dict) and "device" in d["data"]:
            raise ProgsaeError(f"{source}: set 'device' at the top level, where it applies to every stage, not in 'data'")
        parts = {"data": CollectConfig, "train": TrainStudyConfig, "eval": EvalConfig}
        for key, kind in parts.items():
            d[key] = build(kind, d.get(key, {}), key)
        cfg = build(cls, d, "")
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        try:
            self.data.validate()
        except ProgsaeError as e:
            raise ProgsaeError(f"{source}: data: {e}") from None
        if len(self.data.hooks) != 1:
            raise ProgsaeError(f"{source}: data.hook: a study reads one hook site, got {self.data.hook}")
        if self.data.stream and (self.train.epochs != int(self.train.epochs) or self.train.epochs < 1):
            raise ProgsaeError(f"{source}: with data.stream, train.epochs counts passes of the model over the corpus: a whole number, got {self.train.epochs:g}")
        g = self.train.granularities
        if not g or any(b <= a for a, b in zip(g, g[1:])):
            raise ProgsaeError(f"{source}: train.granularities must strictly increase, got {g}")
        if self.train.shuffle_buffer_gb <= 0:
            raise ProgsaeError(f"{source}: train.shuffle_buffer_gb must be positive, got {self.train.shuffle_buffer_gb}")
        if self.outlier_factor is not None and not (isinstance(self.outlier_factor, (int, float)) and self.outlier_factor > 1):
            raise ProgsaeError(f"{source}: outlier_factor must be a number above 1, or null to keep every row (got {self.outlier_factor!r})")
        seeds = self.train.seeds
        if seeds is not None and (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
                                  or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)):
            raise ProgsaeError(f"{source}: train.seeds must be a non-empty list of distinct integers, got {seeds!r}")
        for name in ("ce_contexts", "interp_latents_per_band", "recon_tokens"):  # None: every context / latent / row
            v = getattr(self.eval, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ProgsaeError(f"{source}: eval.{name} must be a positive integer, or null for all, got {v!r}")
        if self.eval.bootstrap_replicates < 100:
            raise ProgsaeError(f"{source}: eval.bootstrap_replicates must be at least 100, got {self.eval.bootstrap_replicates}")
        if self.train.k > g[0]:
            raise ProgsaeError(f"{source}: train.k={self.train.k} exceeds the smallest granularity {g[0]}")
        levels = self.train.k_levels
        if levels is not None and (not isinstance(levels, list) or not levels or levels[-1] != self.train.k
                                   or not all(isinstance(j, int) and not isinstance(j, bool) and j > 0 for j in levels)
                                   or any(b <= a for a, b in zip(levels, levels[1:]))):
            raise ProgsaeError(f"{source}: train.k_levels must strictly increase from a positive level to train.k={self.train.k}, got {levels!r}")
        from progsae.evals.runner import METRICS

        e = self.eval
        for name, values, known in (("eval.metrics", e.metrics, METRICS),
                                    ("eval.modes", e.modes, ("mask", "retopk")),
                                    ("eval.interp_explainer", [e.interp_explainer], ("deterministic", "llm"))):
            unknown = [v for v in values if v not in known]
            if unknown:
                raise ProgsaeError(f"{source}: unknown {name} {unknown} (known: {', '.join(known)})")


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise ProgsaeError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return Path(str(resources.files("progsae") / "presets" / f"{name}.json"))


def load_study_config(path: str | Path | None = None, preset: str | None = None) -> StudyConfig:
    """A study config from a JSON file, else from a named preset (default: embedded)."""
    p = Path(path) if path else preset_path(preset or "embedded")
    if not p.exists():
        raise ProgsaeError(f"{p}: no such config file")
    return StudyConfig.from_dict(read_json_object(p, "study config"), source=str(p))

"""The training loop: one SAE, one activation store, no per-architecture branches.

Each step: batch -> sae.training_step -> backward -> (sync) -> remove parallel decoder grad -> clip
-> Adam -> normalize decoder -> dead tracking -> sae.after_step. Everything a data-parallel run must
reduce goes through `sync` (progsae/train/sync.py).
"""

from __future__ import annotations

import copy
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from progsae.allocator import keep_freed_blocks
from progsae.data.store import ActivationStore
from progsae.errors import ProgsaeError
from progsae.sae import SAE, SAEConfig, TrainContext, sae_class
from progsae.sae.io import CFG_FILE, load_sae
from progsae.train.checkpoint import (
    CHECKPOINT_DIR,
    Checkpoint,
    checkpoint_path,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from progsae.train.config import TrainConfig
from progsae.train.dead import DeadTracker
from progsae.train.init import init_sae, input_scale, strided_sample
from progsae.train.metrics import MetricsLog, Progress
from progsae.train.optimizer import LayoutAdam
from progsae.train.schedule import l1_at, lr_at
from progsae.train.sync import LocalSync
from progsae.train.tracking import WandbTracker, log10_density

# settings that may change between an interrupted run and its resumption (they do not change results)
RESUMABLE_CHANGES = {"checkpoint_every", "log_every", "device", "heldout_rows", "heldout_every", "keep_checkpoint"}


@dataclass
class RunState:
    """Counters that, with the tensors, define where a run is."""

    step: int = 0
    tokens: int = 0
    input_scale: float = 1.0
    wall_time_s: float = 0.0


def sae_config_for(cfg: TrainConfig, store: ActivationStore) -> SAEConfig:
    """The SAEConfig a run trains: architecture, sizes, Matryoshka prefixes/weights, k levels, source model and hook."""
    provenance: dict = {}
    if cfg.matryoshka:
        provenance["matryoshka"] = {"weights": list(cfg.matryoshka_weights or [1.0 / len(cfg.matryoshka)] * len(cfg.matryoshka))}
    elif cfg.matryoshka_random:
        provenance["matryoshka"] = {"random": int(cfg.matryoshka_random)}
    if cfg.k_levels:
        weights = cfg.k_level_weights or [1.0 / len(cfg.k_levels)] * len(cfg.k_levels)
        provenance["k_levels"] = {"levels": [int(j) for j in cfg.k_levels], "weights": [float(w) for w in weights]}
    return SAEConfig(
        architecture=cfg.arch,
        d_in=store.d_model,
        n_latents=cfg.n_latents,
        k=cfg.k,
        prefixes=list(cfg.matryoshka) if cfg.matryoshka else None,
        dtype=cfg.dtype,
        model=store.meta.get("model"),
        hook=store.meta.get("hook"),
        provenance=provenance,
    )


def changed_settings(saved: dict, cfg: TrainConfig) -> list[str]:
    """Settings of `cfg` that differ from a saved run's train_config, ignoring those a resumption may change."""
    now = cfg.to_dict()
    return sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))


def check_resumable(ckpt: Checkpoint, cfg: TrainConfig, store: ActivationStore) -> None:
    """Refuse to resume on different data or with a different configuration."""
    if ckpt.state["d_in"] != store.d_model:
        raise ProgsaeError(f"store {store.path} has d_model={store.d_model} but the checkpoint was trained on d_model={ckpt.state['d_in']}")
    if ckpt.state.get("train_tokens") != store.num_tokens("train"):
        raise ProgsaeError(
            f"store {store.path} has {store.num_tokens('train')} training tokens, the checkpoint's store had {ckpt.state.get('train_tokens')}; resume on the same store"
        )
    check_same_config(ckpt, cfg)


def check_same_config(ckpt: Checkpoint, cfg: TrainConfig) -> None:
    """Refuse to resume with a different configuration (settings a resumption may change aside)."""
    saved, now = ckpt.state["train_config"], cfg.to_dict()
    changed = changed_settings(saved, cfg)
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ProgsaeError(f"cannot resume with a different configuration ({diffs}); use the original settings or a new --out")


class InterruptFlag:
    """Turn Ctrl-C into a flag checked between steps, so the run stops on a consistent state and checkpoints it."""

    def __init__(self):
        self.set = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.set:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


class Trainer:
    """Holds one run's state; `run()` trains to the end, checkpointing as it goes."""

    def __init__(self, store: ActivationStore, out_dir: Path, cfg: TrainConfig, *, resume: bool, progress: bool, sync: LocalSync | None = None):
        self.store = store
        self.tracker: WandbTracker | None = None  # --wandb: receives every metrics line, with feature densities at held-out steps
        self.out_dir = Path(out_dir)
        self.sync = sync or LocalSync()
        self.cfg = cfg.resolved(store.d_model)
        self.total_steps = self.cfg.steps
        self.progress_enabled = progress and self.sync.is_main
        self._check_data()

        self.device = torch.device(self.cfg.device)
        if self.device.type == "cpu":
            keep_freed_blocks()
        self.sae_cfg = sae_config_for(self.cfg, store)
        self.sae: SAE = sae_class(self.cfg.arch)(self.sae_cfg, device=self.device)
        self.opt = LayoutAdam(self.sae.parameters(), lr=self.cfg.lr, betas=self.cfg.adam_betas, eps=self.cfg.adam_eps)
        self.dead = DeadTracker(self.cfg.n_latents, self.cfg.dead_window, self.device)
        self.prefix_gen = torch.Generator().manual_seed(self.cfg.seed + 2)
        self.state = RunState()
        use_heldout = self.cfg.heldout_rows > 0 and store.has_split("validation") and store.num_tokens("validation") > 0
        self.heldout_SD = strided_sample(store, self.cfg.heldout_rows, "validation").to(self.device) if use_heldout else None

        ckpt_exists = checkpoint_path(self.out_dir).exists()
        if not resume and (ckpt_exists or (self.out_dir / CFG_FILE).exists()):
            raise ProgsaeError(f"{self.out_dir} already holds a training run; pass --resume to continue it or choose a new --out")
        self.finished: SAE | None = None
        if resume and not ckpt_exists and (self.out_dir / CFG_FILE).exists():
            self.finished = self._finished_same_job()
        elif resume and ckpt_exists:
            self._restore(load_checkpoint(self.out_dir))
        else:
            self._fresh_start()
            self.sync.broadcast_module(self.sae)  # processes start from rank 0's initialisation, as DDP does

    # ---- what the run trains on (a streamed run, progsae/train/streamed.py, overrides these) ------
    def _check_data(self) -> None:
        if self.store.num_tokens("train") < self.cfg.batch_size:
            raise ProgsaeError(f"store {self.store.path} has {self.store.num_tokens('train')} training tokens, fewer than one batch of {self.cfg.batch_size}")

    def _init_sample(self) -> torch.Tensor:
        """Rows [S, D] that set the input scale and b_dec."""
        return strided_sample(self.store, self.cfg.init_sample)

    def _check_checkpoint(self, ckpt: Checkpoint) -> None:
        check_resumable(ckpt, self.cfg, self.store)

    def _data_state(self) -> dict:
        """The checkpoint's record of the data, which a resumption must match."""
        return {"d_in": self.store.d_model, "train_tokens": self.store.num_tokens("train"), "store": str(self.store.path.resolve())}

    def _data_provenance(self) -> dict:
        """What the exported SAE records about its training data."""
        return {"store": str(self.store.path.resolve()),
                "outlier_rule": None if self.store.outlier_rule is None else self.store.outlier_rule.to_dict()}

    # ---- state ---------------------------------------------------------------------------
    def _finished_same_job(self) -> SAE:
        """The saved SAE of a finished run whose checkpoint/ was deleted, if it is this same job; else a one-line error."""
        saved = load_sae(self.out_dir, device=self.device)
        prov = saved.cfg.provenance
        changed = changed_settings(prov.get("train_config") or {}, self.cfg)  # steps included: cfg is resolved
        changed += [k for k in ("store", "stream") if prov.get(k) != self._data_provenance().get(k)]
        if changed:
            raise ProgsaeError(f"{self.out_dir} holds an SAE of another run ({', '.join(changed)} differ) and no checkpoint/ to resume from; choose a new --out")
        return saved

    def _fresh_start(self) -> None:
        torch.manual_seed(self.cfg.seed)
        sample_SD = self._init_sample()
        scale = input_scale(sample_SD) if self.cfg.normalize_input else 1.0
        init_sae(self.sae, (sample_SD * scale).to(self.device), torch.Generator().manual_seed(self.cfg.seed + 1))
        self.state = RunState(input_scale=scale)

    def _restore(self, ckpt: Checkpoint) -> None:
        self._check_checkpoint(ckpt)
        self.sae.load_state_dict({k: v.to(self.device) for k, v in ckpt.group("sae").items()})
        self.opt.load_state_tensors(ckpt.group("adam"))
        self.dead.since_fired_N.copy_(ckpt.tensors["dead/since_fired_N"])
        torch.set_rng_state(ckpt.tensors["rng/torch"])
        self.prefix_gen.set_state(ckpt.tensors["rng/prefixes"])
        s = ckpt.state
        self.state = RunState(step=s["step"], tokens=s["tokens"], input_scale=s["input_scale"], wall_time_s=s["wall_time_s"])

    def save_checkpoint(self) -> None:
        self.sync.barrier()
        if self.sync.is_main:
            tensors = {f"sae/{k}": v for k, v in self.sae.state_dict().items()}
            tensors.update({f"adam/{k}": v for k, v in self.opt.state_tensors().items()})
            tensors["dead/since_fired_N"] = self.dead.since_fired_N
            tensors["rng/torch"] = torch.get_rng_state()
            tensors["rng/prefixes"] = self.prefix_gen.get_state()
            state = {
                "step": self.state.step,
                "tokens": self.state.tokens,
                "input_scale": self.state.input_scale,
                "wall_time_s": self.state.wall_time_s,
                "total_steps": self.total_steps,
                **self._data_state(),
                "train_config": self.cfg.to_dict(),
                "sae_config": self.sae.cfg.to_dict(),
            }
            save_checkpoint(self.out_dir, tensors, state)
        self.sync.barrier()

    # ---- the loop --------------------------------------------------------------------------
    def run(self, on_step: Callable[[int], None] | None = None) -> SAE:
        """Train to the last step; `on_step(step)` is called after each completed step."""
        if self.finished is not None:  # resumed after the end: nothing left to train
            return self.finished
        cfg, st = self.cfg, self.state
        batches = self.store.iter_batches(
            "train", cfg.batch_size, shuffle=True, seed=cfg.seed, start_batch=st.step, loop=True, max_memory_bytes=cfg.buffer_bytes
        )
        self.begin()
        try:
            with InterruptFlag() as interrupt:
                while st.step < self.total_steps:
                    self.advance(next(batches), interrupt.set)
                    if on_step is not None:
                        on_step(st.step)
        finally:
            self.end()
        return self.finish()

    def begin(self) -> None:
        """Open the metrics log and the progress bar; the run's clock starts."""
        st = self.state
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = MetricsLog(self.out_dir, resume_step=st.step if st.step > 0 else None) if self.sync.is_main else None
        self._ctx = TrainContext(aux_coef=self.cfg.aux_coef, k_aux=self.cfg.k_aux, generator=self.prefix_gen, global_mean=self.sync.mean)
        self._bar = Progress(self.total_steps * self.cfg.batch_size, st.tokens, self.progress_enabled)  # batch_size is global
        self._t_start, self._t_log, self._tokens_log = time.perf_counter(), time.perf_counter(), st.tokens
        self._wall_before = st.wall_time_s

    def advance(self, x_BD: torch.Tensor, stop_requested: bool = False, last: bool = False) -> None:
        """One step on a batch: log, checkpoint when due; KeyboardInterrupt (after a checkpoint) when a stop was requested (Ctrl-C).

        `last` marks the final batch of a stream that ended before total_steps (it is logged and checkpointed as the end)."""
        cfg, st, ctx = self.cfg, self.state, self._ctx
        x_BD = x_BD.to(self.device)
        if self.sync.any(not bool(torch.isfinite(x_BD).all())):
            raise ProgsaeError(f"batch {st.step} of {self.store.path} contains NaN or inf activations")
        if st.input_scale != 1.0:
            x_BD = x_BD * st.input_scale
        out = self._step(x_BD, ctx)
        st.step += 1
        st.tokens += self.sync.tokens(x_BD.shape[0])
        st.wall_time_s = self._wall_before + time.perf_counter() - self._t_start
        final = last or st.step == self.total_steps
        record = None
        heldout_due = self.heldout_SD is not None and (st.step % cfg.heldout_every == 0 or final)
        if st.step % cfg.log_every == 0 or final or heldout_due:
            now = time.perf_counter()
            record = self._record(out, x_BD, ctx, (st.tokens - self._tokens_log) / max(now - self._t_log, 1e-9))
            if heldout_due:
                record["heldout_fvu"] = self.heldout_fvu()
            self._t_log, self._tokens_log = now, st.tokens
            if self._metrics is not None:
                self._metrics.write(record)
            if self.tracker is not None:
                self.tracker.log(record, self.feature_density(x_BD) if heldout_due else None)
        self._bar.update(self.sync.tokens(x_BD.shape[0]), record)
        stop = self.sync.any(stop_requested)  # every process stops at the same step
        if st.step % cfg.checkpoint_every == 0 or final or stop:
            self.save_checkpoint()
        if stop:
            raise KeyboardInterrupt

    def end(self) -> None:
        """Close the progress bar and the metrics log (also after an interruption)."""
        self._bar.close()
        if self._metrics is not None:
            self._metrics.close()
        if self.tracker is not None:
            self.tracker.finish()

    def finish(self) -> SAE:
        """Export the SAE and, unless asked to keep it, delete the checkpoint."""
        sae = self.export()
        if not self.cfg.keep_checkpoint and self.sync.is_main:
            remove_checkpoint(self.out_dir)
        return sae

    def _step(self, x_BD: torch.Tensor, ctx: TrainContext):
        cfg, sae, step = self.cfg, self.sae, self.state.step
        ctx.dead_mask_N = self.dead.dead_mask()
        ctx.l1_coef = l1_at(step, cfg.l1_coef, cfg.l1_warmup_steps)
        out = sae.training_step(x_BD, ctx)
        if self.sync.any(not bool(torch.isfinite(out.loss))):
            raise ProgsaeError(f"the loss became non-finite (NaN or inf) at step {step}; lower --lr (now {cfg.lr:g})")
        out.loss.backward()
        self.sync.gradients(sae)
        sae.remove_parallel_decoder_grad()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip)
        lr = lr_at(step, cfg.lr, self.total_steps, cfg.warmup_steps, cfg.decay_frac)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.opt.zero_grad()
        sae.normalize_decoder()
        self.dead.update(self.sync.fired(out.fired_N.detach()), self.sync.tokens(x_BD.shape[0]))
        out.extras = self.sync.extras(out.extras)
        sae.after_step(out)
        out.extras["lr"] = torch.tensor(lr)
        return out

    @torch.no_grad()
    def _record(self, out, x_BD: torch.Tensor, ctx: TrainContext, tokens_per_s: float) -> dict:
        """One metrics line: step, tokens, loss terms, FVU, L0, dead fraction, lr, tokens/s."""
        x_hat = out.x_hat_BD.detach()
        fvu = (x_BD - x_hat).pow(2).sum() / (x_BD - x_BD.mean(0)).pow(2).sum().clamp_min(1e-12)
        rec = {
            "step": self.state.step,
            "tokens": self.state.tokens,
            "loss": float(self.sync.mean(out.loss.detach())),
            **{f"loss_{k}": float(self.sync.mean(v.detach())) for k, v in out.losses.items()},
            "fvu": float(self.sync.mean(fvu)),
            "l0": float(self.sync.mean(out.l0.detach().float())),
            "dead_frac": self.dead.dead_fraction(),
            "lr": float(out.extras["lr"]),
            "tokens_per_s": tokens_per_s,
            "elapsed_s": self.state.wall_time_s,
        }
        if self.cfg.l1_coef:
            rec["l1_coef"] = ctx.l1_coef
        return rec

    @torch.no_grad()
    def heldout_fvu(self) -> float:
        """FVU of the current SAE on the held-out validation sample, scaled as the SAE trains (FVU is scale-free)."""
        x_SD = self.heldout_SD * self.state.input_scale
        err = sum(float((x_BD - self.sae(x_BD)).pow(2).sum()) for x_BD in x_SD.split(4096))
        return err / max(float((x_SD - x_SD.mean(0)).pow(2).sum()), 1e-12)

    @torch.no_grad()
    def feature_density(self, x_BD: torch.Tensor) -> torch.Tensor:
        """log10 firing frequency [N] of each latent on the held-out sample (else this batch), for the tracker."""
        x_SD = self.heldout_SD * self.state.input_scale if self.heldout_SD is not None else x_BD
        return log10_density(torch.cat([self.sae.encode(x) > 0 for x in x_SD.split(4096)]))

    def export(self) -> SAE:
        """The trained SAE acting on raw (unscaled) inputs, with provenance; written to out_dir on the main process."""
        final = copy.deepcopy(self.sae)
        final.cfg = copy.deepcopy(self.sae.cfg)
        if self.cfg.normalize_input:
            final.fold_input_scale(self.state.input_scale)
        final.cfg.provenance = {
            **final.cfg.provenance,
            "trainer": "progsae",
            "train_config": self.cfg.to_dict(),
            "steps": self.state.step,
            "tokens": self.state.tokens,
            "wall_time_s": round(self.state.wall_time_s, 3),
            "input_scale": self.state.input_scale,
            **self._data_provenance(),
        }
        if self.sync.is_main:
            final.save(self.out_dir)
        return final


def train_sae(store_or_path, out_dir, cfg: TrainConfig, *, resume: bool = False, progress: bool = True,
              wandb: str | None = None, wandb_group: str | None = None) -> SAE:
    """Train an SAE on an activation store's train split; out_dir becomes an SAE folder (load_sae) plus
    metrics.jsonl and checkpoint/. With resume=True an interrupted run continues from its last checkpoint.
    `wandb`: a Weights & Biases project that also receives the metrics and feature densities (progsae.train.tracking)."""
    store = store_or_path if isinstance(store_or_path, ActivationStore) else ActivationStore(store_or_path)
    # under torchrun (or an initialised process group): this process's share of each batch, and its sync
    from progsae.train.distributed import data_parallel

    store, cfg, sync = data_parallel(store, cfg)
    trainer = Trainer(store, Path(out_dir), cfg, resume=resume, progress=progress, sync=sync)
    if wandb and sync.is_main and trainer.finished is None:  # opened once the run is known to train (run() finishes it)
        config = {**trainer.cfg.to_dict(), "store": str(store.path.resolve()), "model": store.meta.get("model"), "hook": store.meta.get("hook")}
        trainer.tracker = WandbTracker(wandb, Path(out_dir), config, resume=resume, group=wandb_group)
    return trainer.run()


__all__ = ["train_sae", "Trainer", "TrainConfig", "CHECKPOINT_DIR"]

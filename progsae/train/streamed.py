"""Streamed training: any number of SAEs, at one or more hooks, from one stream of the running model.

`train_streamed` reads the train split through one `ActivationStream` (no train activations are
written) and steps every SAE on every batch of its hook, each with its own optimiser, checkpoint,
metrics and progress; SAEs of one hook and batch size see the same batches. The validation/test store
(`collect` of `heldout_only(cfg)`) gives the held-out FVU and the outlier rule (its reference split is
validation, the median of the same documents' distribution as train).

Each epoch is one pass over the rows `collect` of the same config would store, less the rule's
outliers, reshuffled. The lr schedule needs the length before it starts, while the outliers are known only
as they stream: it is planned on the stored rows times the share the rule keeps of the held-out
reference split (`planned_rows`). A stream shorter than the plan ends on its last (partial) batch; a
longer one stops at the plan (the provenance records both). Each SAE's wall_time_s counts its own steps
only (the forward and the other SAEs are the stream's), so training-time ratios stay comparable. Each checkpoint records the stream position after
its step; a resumed run regenerates the chunk holding the earliest position among its SAEs and every
SAE continues at its own step, so a kill -9 anywhere ends on the weights of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from progsae.data.collect import CollectConfig, collect, heldout_only, store_folders
from progsae.data.models import load_model
from progsae.data.store import ActivationStore
from progsae.data.stream import ActivationStream, Batch, Batcher, Chunk, StreamPosition, chunk_contexts_for
from progsae.errors import ProgsaeError
from progsae.sae import SAE
from progsae.train.checkpoint import Checkpoint
from progsae.train.config import TrainConfig
from progsae.train.trainer import InterruptFlag, Trainer, check_same_config


@dataclass
class StreamJob:
    """One SAE of a streamed run: its folder, its settings and the hook it reads."""

    out_dir: Path
    cfg: TrainConfig
    hook: str


class StreamedTrainer(Trainer):
    """A Trainer whose batches come from a stream: the heldout store gives d_model, held-out rows and the source's name."""

    def __init__(self, store: ActivationStore, job: StreamJob, stream: ActivationStream, init_rows: Callable[[], torch.Tensor], *,
                 resume: bool):
        self.hook = job.hook
        self.source = {**stream.identity(), "hook": job.hook}
        self.position = StreamPosition()
        self._init_rows = init_rows
        super().__init__(store, job.out_dir, job.cfg, resume=resume, progress=False)

    def _check_data(self) -> None:
        pass  # rows arrive from the stream; its length is checked by train_streamed

    def advance(self, x_BD: torch.Tensor, stop_requested: bool = False, last: bool = False) -> None:
        """A step whose clock counts only this SAE's own steps: wall_time_s is what it cost, not the shared pass."""
        self._t_start = time.perf_counter() - (self.state.wall_time_s - self._wall_before)
        super().advance(x_BD, stop_requested, last)

    def _init_sample(self) -> torch.Tensor:
        return self._init_rows()[: self.cfg.init_sample]

    def _check_checkpoint(self, ckpt: Checkpoint) -> None:
        saved = (ckpt.state.get("stream") or {}).get("source")
        if saved != self.source:
            keys = sorted(k for k in set(saved or {}) | set(self.source) if (saved or {}).get(k) != self.source.get(k))
            raise ProgsaeError(f"{self.out_dir}: the checkpoint streamed other data ({', '.join(keys) or 'a stored run'} differ); "
                               "resume with the same model, hook, corpus and tokens, or choose a new --out")
        check_same_config(ckpt, self.cfg)
        self.position = StreamPosition.from_dict(ckpt.state["stream"]["position"])

    def _data_state(self) -> dict:
        return {"d_in": self.store.d_model, "stream": {"source": self.source, "position": self.position.to_dict()}}

    def _data_provenance(self) -> dict:
        rule = self.store.outlier_rule
        return {"stream": self.source, "heldout_store": str(self.store.path.resolve()),
                "outlier_rule": None if rule is None else rule.to_dict()}


class _Chunks:
    """The stream's chunks, the first kept once computed: it gives fresh SAEs their init rows and is then trained on."""

    def __init__(self, stream: ActivationStream):
        self.stream = stream
        self._it: Iterator[Chunk] | None = None
        self._first: Chunk | None = None

    def first(self) -> Chunk:
        if self._first is None:
            self._it = self.stream.chunks(0)
            self._first = next(self._it, None)
            if self._first is None:
                raise ProgsaeError(f"the corpus {self.stream.cfg.corpus} has no train text to stream")
        return self._first

    def init_rows(self, hook: str) -> Callable[[], torch.Tensor]:
        return lambda: self.first().rows[hook]

    def iterate(self, start: int) -> Iterator[Chunk]:
        if start == 0 and self._first is not None:
            first, self._first = self._first, None  # released once trained on
            return itertools.chain([first], self._it)
        return self.stream.chunks(start)


def stream_train(cfg: CollectConfig, jobs: list[StreamJob], acts, *, outlier_factor: float | None, buffer_bytes: int, seed: int,
                 epochs: int = 1, resume: bool = True, progress: bool = True, model=None, tokenizer=None,
                 on_batch: Callable[[str, Batch], None] | None = None) -> dict[Path, SAE]:
    """Collect (or finish) the validation/test store of `cfg` at `acts` (one per hook under it for several hooks),
    then train every job from one stream of cfg's train split (`epochs` passes), shuffled in chunks of about `buffer_bytes`."""
    cfg.validate()
    if cfg.test_tokens + cfg.resolved_validation_tokens == 0:
        raise ProgsaeError("a streamed run needs held-out rows: ask for --test-tokens and/or --validation-tokens")
    if model is None:
        model, tokenizer = load_model(cfg.model, device=cfg.device)
    collect(heldout_only(cfg), acts, model=model, tokenizer=tokenizer, progress=progress)
    stores = {h: ActivationStore(path, outlier_factor=outlier_factor) for h, path in store_folders(cfg, acts).items()}
    row_bytes = 4 * sum(s.d_model for s in stores.values())
    stream = ActivationStream(cfg, model, tokenizer, {h: s.outlier_rule for h, s in stores.items()},
                              chunk_contexts=chunk_contexts_for(buffer_bytes, cfg, row_bytes), seed=seed, epochs=epochs)
    return train_streamed(stream, jobs, stores, resume=resume, progress=progress, on_batch=on_batch)


def train_streamed(stream: ActivationStream, jobs: list[StreamJob], heldout: dict[str, ActivationStore], *, resume: bool = True,
                   progress: bool = True, on_batch: Callable[[str, Batch], None] | None = None) -> dict[Path, SAE]:
    """Train every job from one pass of `stream`; returns each job's SAE by folder.

    Every job trains the stream's rows (its `tokens`/`steps` are replaced by `planned_rows`). `on_batch(hook, batch)`
    is called once per batch after every SAE has stepped on it (tests read the rows trained on through it)."""
    if not jobs:
        raise ProgsaeError("no SAEs to train")
    unknown = sorted({j.hook for j in jobs} - set(stream.cfg.hooks))
    if unknown:
        raise ProgsaeError(f"SAE hook {unknown[0]} is not one of the streamed hooks {stream.cfg.hook}")
    chunks = _Chunks(stream)
    trainers = []
    for job in jobs:
        planned = planned_rows(stream, heldout[job.hook])
        cfg = dataclasses.replace(job.cfg, tokens=planned, steps=None)
        if planned < cfg.batch_size:
            raise ProgsaeError(f"{planned} streamed tokens are fewer than one batch of {cfg.batch_size}; ask for more --tokens")
        trainers.append(StreamedTrainer(heldout[job.hook], dataclasses.replace(job, cfg=cfg), stream, chunks.init_rows(job.hook), resume=resume))
    live = [t for t in trainers if t.finished is None]
    if live:
        _run(stream, chunks, live, progress, on_batch)
    return {t.out_dir: (t.finished if t.finished is not None else t.finish()) for t in trainers}


def planned_rows(stream: ActivationStream, heldout: ActivationStore) -> int:
    """The rows one pass will train on, as planned before it starts: the stored rows times the share of the held-out
    reference split's rows the outlier rule keeps (the pass itself is known only at its end)."""
    ref = next((s for s in ("validation", "test") if heldout.has_split(s)), None)
    share = 1.0 if ref is None or stream.rules.get(heldout.meta.get("hook")) is None else heldout.num_tokens(ref) / heldout.stored_tokens(ref)
    return max(1, round(stream.epochs * stream.stored_rows * share))


def _run(stream: ActivationStream, chunks: _Chunks, live: list[StreamedTrainer], progress: bool,
         on_batch: Callable[[str, Batch], None] | None) -> None:
    groups: dict[tuple[str, int], list[StreamedTrainer]] = {}
    for t in live:
        groups.setdefault((t.hook, t.cfg.batch_size), []).append(t)
    batchers = {}
    for (hook, batch_size), group in groups.items():
        lead = min(group, key=lambda t: t.state.step)  # the SAE furthest behind sets where the stream restarts
        batchers[(hook, batch_size)] = Batcher(hook, batch_size, lead.position, lead.state.step)
    start = min(b.start.chunk for b in batchers.values())
    held: dict[tuple[str, int], Batch | None] = {key: None for key in groups}  # each group's latest batch, stepped once the next arrives
    bar = _bar(stream, start, progress)
    for t in live:
        t.begin()
    try:
        with InterruptFlag() as interrupt:
            for chunk in chunks.iterate(start):
                for key, batcher in batchers.items():
                    for batch in batcher.feed(chunk):
                        if held[key] is not None:
                            _step(groups[key], held[key], False, on_batch)
                            _stop_if_asked(interrupt, live)
                        held[key] = batch
                bar.update(int(chunk.token_ids_CL.shape[0]) * stream.cfg.rows_per_context)
                if all(t.state.step >= t.total_steps for t in live):  # a pass longer than planned: the rest is not needed
                    break
            for key, batcher in batchers.items():  # the end of the pass: the held batch, then the partial tail
                tail = batcher.tail(stream.total_chunks)
                if held[key] is not None:
                    _step(groups[key], held[key], tail is None, on_batch)
                if tail is not None:
                    _step(groups[key], tail, True, on_batch)
    finally:
        bar.close()
        for t in live:
            t.end()


def _step(group: list[StreamedTrainer], batch: Batch, last: bool, on_batch) -> None:
    """Every SAE of a group that is at this batch steps on it (an SAE resumed from a later checkpoint waits for its own)."""
    for t in group:
        if t.state.step == batch.index and t.state.step < t.total_steps:
            t.position = batch.next
            t.advance(batch.x_BD, last=last)
    if on_batch is not None:
        on_batch(group[0].hook, batch)


def _stop_if_asked(interrupt: InterruptFlag, live: list[StreamedTrainer]) -> None:
    """After Ctrl-C: checkpoint every SAE where it stands, then stop."""
    if interrupt.set:
        for t in live:
            t.save_checkpoint()
        raise KeyboardInterrupt


def _bar(stream: ActivationStream, start_chunk: int, enabled: bool):
    from tqdm.auto import tqdm

    rows = stream.cfg.rows_per_context
    done = min(stream.epochs * stream.n_contexts, start_chunk * stream.chunk_contexts) * rows
    return tqdm(total=stream.epochs * stream.stored_rows, initial=done, unit="tok", unit_scale=True, dynamic_ncols=True, disable=not enabled,
                desc=f"stream {stream.cfg.hook}")

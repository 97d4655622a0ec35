"""Data-parallel training: 2 CPU processes with gloo on loopback match one process on the same global batches."""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from progsae.data.synthetic import make_synthetic
from progsae.sae.io import load_sae
from progsae.train.checkpoint import load_checkpoint
from progsae.train.config import TrainConfig
from progsae.train.trainer import train_sae

WORLD = 2
# dead_window of 2 global batches: latents die within the run, so AuxK and the fired_N reduction both matter
TOPK = dict(arch="topk", n_latents=512, k=2, steps=10, batch_size=256, dead_window=512, lr=3e-3, seed=3, log_every=5,
            keep_checkpoint=True)
BATCHTOPK = {**TOPK, "arch": "batchtopk"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, store: str, tmp: str) -> None:
    """One process of the job: check the reductions on known inputs, then train TopK and BatchTopK."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        from progsae.train.distributed import DistributedSync

        sync = DistributedSync()
        fired_N = torch.zeros(4, dtype=torch.bool)
        fired_N[rank] = True
        report = {
            "fired": sync.fired(fired_N).tolist(),
            "min_active": float(sync.extras({"min_active": torch.tensor(2.0 - rank)})["min_active"]),
            "mean": float(sync.mean(torch.tensor(float(3 * rank)))),
            "any": [sync.any(rank == 1), sync.any(False)],
        }
        train_sae(store, f"{tmp}/topk_dp", TrainConfig(**TOPK), progress=False)
        sae = train_sae(store, f"{tmp}/btk_dp", TrainConfig(**BATCHTOPK), progress=False)
        report["btk_threshold"] = float(sae.threshold)
        report["btk_W_dec_sum"] = float(sae.W_dec.detach().double().sum())
        report["ctrl_c"] = _ctrl_c_on_rank_1(rank, store, f"{tmp}/ctrl_c")
        with open(f"{tmp}/rank{rank}.json", "w") as f:
            json.dump(report, f)
    finally:
        dist.destroy_process_group()


def _ctrl_c_on_rank_1(rank: int, store: str, out: str) -> str:
    """Ctrl-C reaches only rank 1, after step 2: every process must stop at the same step (no hang)."""
    import signal

    from progsae.data.store import ActivationStore
    from progsae.train.distributed import data_parallel
    from progsae.train.trainer import Trainer

    local, cfg, sync = data_parallel(ActivationStore(store), TrainConfig(**TOPK))
    trainer = Trainer(local, out, cfg, resume=False, progress=False, sync=sync)

    def on_step(step: int) -> None:
        if rank == 1 and step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    try:
        trainer.run(on_step)
    except KeyboardInterrupt:
        return f"stopped at step {trainer.state.step}"
    return "ran to the end"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    store = make_synthetic(tmp / "store", d_model=32, n_features=128, tokens=6144, test_tokens=512, seed=1)
    train_sae(store, tmp / "topk_single", TrainConfig(**TOPK), progress=False)
    mp.start_processes(_worker, args=(_free_port(), str(store), str(tmp)), nprocs=WORLD, join=True, start_method="spawn")
    reports = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return tmp, reports


def test_two_gloo_processes_match_single_process_training(runs):
    tmp, _ = runs
    single, dp = load_sae(tmp / "topk_single"), load_sae(tmp / "topk_dp")
    for name, t in single.state_dict().items():
        diff = (t - dp.state_dict()[name]).abs().max().item()
        assert diff <= 1e-5, f"{name} differs by {diff}"
    assert single.b_enc.abs().max() > 1e-3  # b_enc starts at 0: training moved it far beyond the tolerance
    dead_single = load_checkpoint(tmp / "topk_single").tensors["dead/since_fired_N"]
    dead_dp = load_checkpoint(tmp / "topk_dp").tensors["dead/since_fired_N"]
    assert torch.equal(dead_single, dead_dp)  # fired_N was or-ed over processes: the same dead latents
    assert int((dead_single >= TOPK["dead_window"]).sum()) > 0  # ... and some latents were dead, so AuxK ran


def test_reductions_or_min_mean(runs):
    _, reports = runs
    for r in reports:
        assert r["fired"] == [True, True, False, False]
        assert r["min_active"] == 1.0
        assert r["mean"] == 1.5
        assert r["any"] == [True, False]


def test_ctrl_c_on_one_process_stops_every_process_at_the_same_step(runs):
    tmp, reports = runs
    assert [r["ctrl_c"] for r in reports] == ["stopped at step 3"] * WORLD
    assert load_checkpoint(tmp / "ctrl_c").state["step"] == 3


def test_batchtopk_threshold_and_weights_agree_across_processes(runs):
    _, (r0, r1) = runs
    assert r0["btk_threshold"] > 0
    assert r0["btk_threshold"] == r1["btk_threshold"]
    assert r0["btk_W_dec_sum"] == r1["btk_W_dec_sum"]

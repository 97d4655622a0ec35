"""Experiment tracking with Weights & Biases (`--wandb PROJECT`): the metrics.jsonl lines plus feature-density histograms.

wandb is an optional extra (`pip install progsae[wandb]`), imported only when a run asks for it. Offline
mode (`WANDB_MODE=offline`) writes the run folder under `<out>/wandb/` for a later `wandb sync`.
"""

from __future__ import annotations

import importlib
import secrets
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from progsae.errors import ProgsaeError

RUN_ID_FILE = "wandb-run-id"  # in the SAE folder: a resumed training run continues the same wandb run
DENSITY_EPS = 1e-10  # latents that never fire sit at log10(1e-10) = -10 in the histogram, as in SAELens


def log10_density(fired_SN: Tensor) -> Tensor:
    """log10 of each latent's firing frequency over the rows of `fired_SN` (bool [rows, N])."""
    return torch.log10(fired_SN.float().mean(0) + DENSITY_EPS)


class WandbTracker:
    """One wandb run of one SAE: `log(record, density_N)` per metrics line, `finish(summary)` at the end."""

    def __init__(self, project: str, out_dir: Path, config: dict[str, Any], *, resume: bool, group: str | None = None):
        try:
            self.wandb = importlib.import_module("wandb")
        except ImportError:
            raise ProgsaeError("--wandb needs the wandb package: pip install 'progsae[wandb]'") from None
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        id_file = out_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if resume and id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        self.run = self.wandb.init(project=project, dir=str(out_dir), id=run_id, resume="allow", name=out_dir.name,
                                   group=group, config=config, job_type="train")

    def log(self, record: dict[str, Any], density_N: Tensor | None = None) -> None:
        """One metrics.jsonl line at its step; with the latents' log10 firing frequency as a histogram."""
        data = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if density_N is not None:
            data["feature_density/log10"] = self.wandb.Histogram(density_N.detach().cpu().numpy())
            data["feature_density/dead_frac"] = float((density_N <= torch.log10(torch.tensor(DENSITY_EPS)) + 1e-6).float().mean())
        self.run.log(data, step=int(record["step"]))

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        for k, v in (summary or {}).items():
            self.run.summary[k] = v
        self.run.finish()

"""Training telemetry: metrics.jsonl (one JSON line per logged step) and a tqdm progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Append-only JSON lines; on resume, lines beyond the checkpoint's step are dropped (they will be redone)."""

    def __init__(self, out_dir: Path, resume_step: int | None = None):
        self.path = Path(out_dir) / METRICS_FILE
        if resume_step is None:
            self.path.write_text("")
        else:
            kept = []
            if self.path.exists():
                for line in self.path.read_text().splitlines():
                    try:
                        if json.loads(line)["step"] <= resume_step:
                            kept.append(line + "\n")
                    except (json.JSONDecodeError, KeyError, TypeError):
                        break  # a line cut by a kill: everything after it is unreliable
            self.path.write_text("".join(kept))
        self._f = self.path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl."""
    path = Path(out_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Progress:
    """A progress bar over tokens: tokens/s and ETA from tqdm, loss/FVU/L0/dead fraction as postfix."""

    def __init__(self, total_tokens: int, done_tokens: int, enabled: bool):
        self.bar = tqdm(
            total=total_tokens,
            initial=done_tokens,
            unit="tok",
            unit_scale=True,
            dynamic_ncols=True,
            disable=not enabled,
            desc="train",
        )

    def update(self, tokens: int, record: dict[str, Any] | None = None) -> None:
        if record is not None:
            self.bar.set_postfix(
                loss=f"{record['loss']:.4g}",
                fvu=f"{record['fvu']:.3f}",
                l0=f"{record['l0']:.1f}",
                dead=f"{record['dead_frac']:.3f}",
                refresh=False,
            )
        self.bar.update(tokens)

    def close(self) -> None:
        self.bar.close()

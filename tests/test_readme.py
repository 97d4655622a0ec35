"""The README's command-line walk-through and its Python API block run as written (so they cannot drift).

Each block is taken from the README as it stands, whatever commands it holds now or later, and run in a
fresh folder: the bash block with `set -euo pipefail` and this venv's `progsae`, the Python block as a script.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def block_after(heading: str, lang: str) -> str:
    """The first ```lang block of the README section that starts with `heading`."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    m = re.compile(rf"^```{lang}\n(.*?)^```$", re.S | re.M).search(text, start)
    assert m is not None, f"no ```{lang} block after {heading!r}"
    return m.group(1)


def readme_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this venv's progsae first
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"))
    return env


def run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=readme_env(), capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"{cmd[0]} exited {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")


def test_the_command_line_walk_through_runs_as_written(tmp_path):
    script = block_after("## The command line", "bash")
    assert "progsae sort" in script and "runs/vanilla-sorted" in script
    (tmp_path / "walkthrough.sh").write_text("set -euo pipefail\n" + script)
    run(["bash", "walkthrough.sh"], tmp_path)
    runs = tmp_path / "runs"
    records = json.loads((runs / "results.json").read_text())["records"]
    assert {r["method"] if "method" in r else r["source"] for r in records} >= {"matryoshka", "sorted"}
    sorted_cfg = json.loads((runs / "vanilla-sorted" / "cfg.json").read_text())
    assert sorted_cfg["n_latents"] == 1024 and sorted_cfg["provenance"]["sorted_by"]["order"] == "ef2"
    assert json.loads((runs / "imported" / "cfg.json").read_text())["provenance"]["source_format"] == "saelens"


def test_the_python_api_block_runs_as_written(tmp_path):
    (tmp_path / "api.py").write_text(block_after("## Python API", "python"))
    run([sys.executable, "api.py"], tmp_path)
    assert (tmp_path / "runs" / "api" / "vanilla-256" / "cfg.json").exists()

"""The README's command-line walk-through and its Python API block run as written (so they cannot drift).

Each block is taken from the README as it stands, whatever commands it holds now or later, and run in a
fresh folder: the bash block with `set -euo pipefail` and this venv's `progsae`, the Python block as a script.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from progsae.cli import main as cli_main

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


def shell_lines(script: str) -> list[str]:
    """The commands of a bash block: backslash continuations joined, blank and comment-only lines left out."""
    out, cur = [], ""
    for raw in script.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        if cur.strip() and not cur.strip().startswith("#"):
            out.append(cur.strip())
        cur = ""
    return out


def progsae_argv(line: str) -> list[str] | None:
    """The arguments of a plain `progsae ...` command (run in this process: no interpreter start-up per command),
    or None for anything the shell must run (pipes, redirections, variables, other programs)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words = list(lexer)
    if not words or words[0] != "progsae" or "$" in line or "`" in line or any(set(w) <= set("|&;<>()") for w in words):
        return None
    return words[1:]


def test_the_command_line_walk_through_runs_as_written(tmp_path, monkeypatch, capsys):
    script = block_after("## The command line", "bash")
    assert "progsae sort" in script and "runs/vanilla-sorted" in script
    monkeypatch.chdir(tmp_path)
    for k, v in readme_env().items():
        monkeypatch.setenv(k, v)
    for line in shell_lines(script):
        argv = progsae_argv(line)
        if argv is None:
            run(["bash", "-euo", "pipefail", "-c", line], tmp_path)
            continue
        rc = cli_main(argv)
        out = capsys.readouterr()
        assert rc == 0, f"{line}\nexited {rc}\n--- stdout\n{out.out[-3000:]}\n--- stderr\n{out.err[-3000:]}"
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

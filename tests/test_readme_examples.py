"""The README's command lines run as written after a demo, against a fresh data directory.

Every line of every ``sh`` block runs in a fresh directory (``.venv/bin/thrifty`` there is a
wrapper running this checkout) after ``thrifty demo --limit 20``, except the lines in SKIP,
each with its reason. A line that fails, or a report that finds no requests, fails the test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {
    "./run demo": "the demo runs below, with --limit",
    "./run test": "this is the test suite",
    ".venv/bin/thrifty serve": "a long-running server (tests/gateway/test_gw_serve.py runs it)",
    ".venv/bin/thrifty router": "trains and evaluates routers for minutes (tests/router covers them)",
}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not any(line.startswith(s) for s in SKIP):
                lines.append(line)
    return lines


def test_readme_examples_run_as_written_after_the_demo(tmp_path):
    commands = readme_commands()
    assert any("report" in c for c in commands) and any("keys create" in c for c in commands)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    wrapper = bin_dir / "thrifty"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m thrifty.cli "$@"\n')
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "THRIFTY_DATA_DIR"}
    env.update(COLUMNS="200", PYTHONPATH=str(ROOT))

    def sh(line: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300, check=False)

    demo = sh(".venv/bin/thrifty demo --limit 20")
    assert demo.returncode == 0, demo.stderr
    for line in commands:
        run = sh(line)
        assert run.returncode == 0, f"{line}\n{run.stdout}\n{run.stderr}"
        if " report " in line:
            assert re.search(r"\b40 requests\b", run.stdout), run.stdout  # both demo teams, 20 each
        if "requests list" in line:
            assert run.stdout.count("demo") >= 5, run.stdout

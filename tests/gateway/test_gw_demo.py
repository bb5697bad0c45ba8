"""`thrifty demo` as a newcomer runs it: offline, then `report` and `simulate` on the ledger it leaves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path


def thrifty(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "THRIFTY_DATA_DIR"}
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "thrifty.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_demo_routes_real_prompts_and_leaves_a_ledger(tmp_path):
    run = thrifty("demo", "--limit", "40", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    saved = re.search(r"([0-9]+)% saved vs all-frontier", out)
    assert saved and 0 < int(saved.group(1)) < 100, out
    assert "measured against a real all-" in out  # the other figure says what it measures
    assert "of frontier quality kept" in out

    data = tmp_path / ".thrifty" / "demo"
    report = thrifty("report", "--data-dir", str(data), "--by", "team", "--format", "json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    doc = json.loads(report.stdout)
    text = json.dumps(doc)
    # both teams' 40 requests are in the ledger
    assert '"demo"' in text and '"baseline"' in text
    totals = json.dumps(doc).count('"requests": 40')
    assert totals >= 2, text[:2000]

    # one headline: the demo's "saved vs all-frontier" is the report's for the same team
    team = thrifty("report", "--data-dir", str(data), "--team", "demo", "--format", "json", cwd=tmp_path)
    pct = json.loads(team.stdout)["totals"]["savings_pct"]
    assert round(pct) == int(saved.group(1)), (pct, out)

    sim = thrifty("simulate", "--data-dir", str(data), "--team", "demo", "--profile", "auto-cheap", cwd=tmp_path)
    assert sim.returncode == 0, sim.stderr
    assert "auto-cheap" in sim.stdout


def test_the_demo_runs_every_pipeline_stage_as_serve_does(tmp_path):
    """The demo's app is assembled as `thrifty serve` assembles it: the response cache, the
    auto-cascade profile and batch deferral are stages of its pipeline."""
    from thrifty.gateway.assemble import build_app
    from thrifty.gateway.demo import demo_config

    app, spend = build_app(demo_config(tmp_path))
    p = app.pipeline
    assert p.cache is not None and p.cascade is not None and p.defer is not None
    assert "auto-cascade" in app.extra_profiles
    spend.flush()


def test_demo_without_the_openai_client_says_how_to_install_it(tmp_path):
    """openai is the demo extra, not a runtime dependency: without it, one clear line."""
    (tmp_path / "openai.py").write_text("raise ImportError('not installed here')\n")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "THRIFTY_DATA_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-m", "thrifty.cli", "demo", "--limit", "5"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 2, run.stderr
    assert "pip install 'thrifty[demo]'" in run.stderr and "Traceback" not in run.stderr

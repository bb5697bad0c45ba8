"""``thrifty serve`` with no config: the embedded default starts fast, offline, with spend control on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from thrifty.testing.server import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def served(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(THRIFTY_DATA_DIR=str(tmp_path / "data"), THRIFTY_ADMIN_KEY="sk-thr-admin-serve-test")
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (the server writes to it until the fixture ends; closed in finally)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "thrifty.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() - t0 < 30, "did not start"
            time.sleep(0.05)
        yield url, time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_embedded_default(served):
    url, startup = served
    assert startup < 15  # generous for a noisy CI machine; the benchmark measures it properly
    ready = httpx.get(url + "/readyz").json()
    assert ready["router"] is True, ready
    # Spend control is on: listing the models needs a key, as on OpenAI's API.
    anon = httpx.get(url + "/v1/models")
    assert anon.status_code == 401 and anon.json()["error"]["code"] == "invalid_api_key"
    admin = {"authorization": "Bearer sk-thr-admin-serve-test"}
    ids = {m["id"] for m in httpx.get(url + "/v1/models", headers=admin).json()["data"]}
    assert {
        "gpt-4-1106-preview",
        "mistralai/mixtral-8x7b-chat",
        "auto",
        "auto-cheap",
        "auto-best",
    } <= ids
    assert not any(i.startswith("gpt-4o") for i in ids)  # no keys in the environment: offline only
    r = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "auto", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_key_from_admin_api_then_routed_replay(served):
    from thrifty.providers.replay_records import read_packaged

    url, _ = served
    admin = {"authorization": "Bearer sk-thr-admin-serve-test"}
    key = httpx.post(url + "/admin/keys", json={"name": "t"}, headers=admin, timeout=10).json()[
        "key"
    ]
    rec = next(iter(read_packaged()))
    r = httpx.post(
        url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
        json={"model": "auto", "messages": [{"role": "user", "content": rec.prompt}]},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-thrifty-route-reason"].startswith("auto: ")
    assert r.json()["choices"][0]["message"]["content"]
    assert float(r.headers["x-thrifty-cost-usd"]) > 0


def test_gc_tuned_for_serving():
    """Before serving, what exists is frozen out of the cyclic collector and the youngest
    generation is collected less often (in a fresh interpreter: the settings are global)."""
    code = (
        "import gc\n"
        "from thrifty.gateway.server import YOUNG_GC_THRESHOLD, tune_gc_for_serving\n"
        "older = gc.get_threshold()[1:]\n"
        "assert gc.get_freeze_count() == 0\n"
        "tune_gc_for_serving()\n"
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()\n"
        "assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, *older), gc.get_threshold()\n"
        "assert YOUNG_GC_THRESHOLD > 700\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)

"""`thrifty serve`'s app (make_app) with the multipliers from its TOML config: the response
cache and prefix affinity across a model's deployments, on real loopback servers."""

from __future__ import annotations

from collections import Counter

import openai
import pytest

from thrifty.gateway.app import GatewayApp
from thrifty.gateway.assemble import make_app
from thrifty.testing.fake_upstream import FakeUpstream
from thrifty.testing.server import running


@pytest.fixture(scope="module")
def pool():
    fakes = [FakeUpstream("ok"), FakeUpstream("ok")]
    for f in fakes:
        f.start()
    yield fakes
    for f in fakes:
        f.stop()


def test_serve_app_has_cache_and_prefix_affinity(pool, tmp_path):
    a, b = pool
    path = tmp_path / "thrifty.toml"
    path.write_text(f"""
data_dir = "{tmp_path}"
spend_enabled = false
frontier_model = "m-pool"

[providers.vllm-a]
type = "openai"
base_url = "{a.base_url}"

[providers.vllm-b]
type = "openai"
base_url = "{b.base_url}"

[models.m-pool]
deployments = [{{provider = "vllm-a", model = "llama"}}, {{provider = "vllm-b", model = "llama"}}]
input_cost_per_token = 1e-6
output_cost_per_token = 2e-6
route = false

[cache]
backend = "{tmp_path / "cache.sqlite3"}"

[affinity]
models = ["m-pool"]
""")
    app = make_app(str(path))
    assert isinstance(app, GatewayApp) and app.pipeline.cache is not None
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)

        def ask(system: str, question: str, **kw):
            return client.chat.completions.with_raw_response.create(
                model="m-pool",
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": question},
                ],
                **kw,
            )

        # One tenant's long shared prefix: every request on the same deployment.
        tenant = "You are ACME's support assistant. Policies: " + "refunds within 30 days. " * 40
        served = Counter(
            ask(tenant, f"question {i}").headers["x-thrifty-provider"] for i in range(20)
        )
        assert len(served) == 1 and sum(served.values()) == 20
        # Different prefixes spread over the pool.
        spread = Counter(
            ask(f"tenant {i} " + "x" * 600, "hi").headers["x-thrifty-provider"] for i in range(40)
        )
        assert set(spread) == {"vllm-a", "vllm-b"}

        # The response cache is on: a deterministic request is answered once upstream.
        first = ask(tenant, "cached?", temperature=0)
        assert first.headers["x-thrifty-cache"] == "miss"
        import time

        deadline = time.monotonic() + 5
        while app.pending_stores and time.monotonic() < deadline:
            time.sleep(0.01)
        before = a.hits + b.hits
        assert ask(tenant, "cached?", temperature=0).headers["x-thrifty-cache"] == "hit-exact"
        assert a.hits + b.hits == before

"""``auto`` and named profiles route with the learned router, under spend policy, and say why."""

from __future__ import annotations

import os
from pathlib import Path

import anthropic
import openai
import pytest
from gw_setup import gateway_doc, serve_gateway
from test_gw_spend import RecordingSpend

from thrifty.providers.replay_records import ROUTERBENCH_MODELS, read_packaged


def _router_dir() -> Path | None:
    try:
        from thrifty.router import default_router_path
    except ImportError:
        return None
    path = Path(os.environ.get("THRIFTY_ROUTER") or default_router_path())
    return path if (path / "router.json").is_file() else None


ROUTER = _router_dir()
needs_router = pytest.mark.skipif(
    ROUTER is None,
    reason="no trained router yet (thrifty.router default_router_path "
    "has no router.json); routing-specific checks skipped",
)
PROMPTS = list(dict.fromkeys(r.prompt for r in read_packaged()))[:30]


@pytest.fixture(scope="module")
def routed(upstreams, tmp_path_factory):
    doc = gateway_doc(upstreams, tmp_path_factory.mktemp("route"))
    doc["router_path"] = str(ROUTER) if ROUTER else str(tmp_path_factory.mktemp("no-router"))
    doc["profiles"] = {"penny-pincher": {"cost_weight": 1e9}}
    spend = RecordingSpend()
    with serve_gateway(doc, spend=spend) as (url, app):
        yield url, app, spend


def ask(url: str, model: str, prompt: str):
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}]
    )


def test_auto_without_router_serves_cheapest_allowed(upstreams, tmp_path):
    """No packaged router and nothing learnt, flat priors (``price_prior = 0``): the best
    estimate is the cheapest model policy allows (exploration off: no warm-up draws)."""
    doc = gateway_doc(upstreams, tmp_path)
    doc["router_path"] = str(tmp_path / "missing")
    doc["router"] = {"explore": False, "price_prior": 0.0}
    spend = RecordingSpend()
    spend.deny = {"mistralai/mistral-7b-chat"}  # the cheapest RouterBench model
    with serve_gateway(doc, spend=spend) as (url, app):
        assert app.gw.router.router is None
        raw = ask(url, "auto", PROMPTS[0])
    assert raw.headers["x-thrifty-model"] == "WizardLM/WizardLM-13B-V1.2"  # next cheapest
    assert "learned from 0 rating(s)" in raw.headers["x-thrifty-route-reason"]


def test_auto_without_ratings_prefers_the_dearer_models_by_default(upstreams, tmp_path):
    """The default prior tilts by price (knowing nothing else, the dearer model is the safer bet
    for a quality bar): with nothing learnt and exploration off, the dearest allowed model."""
    doc = gateway_doc(upstreams, tmp_path)
    doc["router_path"] = str(tmp_path / "missing")
    doc["router"] = {"explore": False}
    spend = RecordingSpend()
    spend.deny = {"gpt-4-1106-preview"}  # the dearest RouterBench model
    with serve_gateway(doc, spend=spend) as (url, _app):
        raw = ask(url, "auto", PROMPTS[0])
    assert raw.headers["x-thrifty-model"] in ("claude-v2", "claude-v1")  # the next dearest


@needs_router
def test_auto_routes_among_router_models_and_records_scores(routed):
    url, app, spend = routed
    served = set()
    for prompt in PROMPTS[:10]:
        raw = ask(url, "auto", prompt)
        served.add(raw.headers["x-thrifty-model"])
        assert raw.headers["x-thrifty-route-reason"].startswith("auto: ")
        assert float(raw.headers["x-thrifty-cost-usd"]) > 0
    assert served <= set(ROUTERBENCH_MODELS)
    assert spend.settled[-1].scores and set(spend.settled[-1].scores) == set(app.gw.router.models)


@needs_router
def test_profiles_trade_cost_for_quality(routed):
    url, _, _ = routed

    def total(profile: str) -> float:
        return sum(float(ask(url, profile, p).headers["x-thrifty-cost-usd"]) for p in PROMPTS)

    cheap, best, pincher = total("auto-cheap"), total("auto-best"), total("penny-pincher")
    assert pincher <= cheap <= best
    assert pincher < best


@needs_router
def test_policy_limits_router_candidates(routed):
    url, _, spend = routed
    spend.deny = {"gpt-4-1106-preview", "claude-v1", "claude-v2"}
    try:
        for prompt in PROMPTS[:10]:
            assert ask(url, "auto-best", prompt).headers["x-thrifty-model"] not in spend.deny
    finally:
        spend.deny = set()


@needs_router
def test_anthropic_client_can_route(routed):
    url, _, _ = routed
    rec = next(iter(read_packaged()))
    client = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="auto", max_tokens=100, messages=[{"role": "user", "content": rec.prompt}]
    )
    assert raw.headers["x-thrifty-model"] in ROUTERBENCH_MODELS
    assert raw.parse().content[0].text


@needs_router
def test_policy_routing_profile_replaces_auto(upstreams, tmp_path):
    from thrifty.spend.contract import Principal

    class CheapTeam(RecordingSpend):
        async def authenticate(self, authorization):
            return Principal(key_id="k", team_id="cheap", routing_profile="penny-pincher")

    doc = gateway_doc(upstreams, tmp_path)
    doc["router_path"] = str(ROUTER)
    doc["profiles"] = {"penny-pincher": {"cost_weight": 1e9}}
    with serve_gateway(doc, spend=CheapTeam()) as (url, _):
        raw = ask(url, "auto", PROMPTS[0])
    assert raw.headers["x-thrifty-route-reason"].startswith("penny-pincher: ")
    assert raw.headers["x-thrifty-model"] == "mistralai/mistral-7b-chat"  # the cheapest


@needs_router
def test_a_changed_router_directory_is_served_without_a_restart(upstreams, tmp_path):
    """``thrifty router calibrate`` adds a profile to a live gateway's router; a broken
    router.json afterwards leaves the loaded router serving."""
    import json
    import shutil
    import subprocess
    import sys
    import time

    router_dir = tmp_path / "router"
    shutil.copytree(ROUTER, router_dir)
    doc = gateway_doc(upstreams, tmp_path / "gw")
    doc["router_path"] = str(router_dir)
    doc["router_reload_s"] = 0.05
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    with serve_gateway(doc, spend=RecordingSpend()) as (url, app):
        with pytest.raises(openai.NotFoundError):
            ask(url, "live-profile", PROMPTS[0])
        done = subprocess.run(
            [sys.executable, "-m", "thrifty.cli", "router", "calibrate", "--router", str(router_dir),
             "--input", str(prompts), "--name", "live-profile", "--share", "0.5"],
            capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10
        while "live-profile" not in app.gw.router.profiles and time.monotonic() < deadline:
            time.sleep(0.05)
        raw = ask(url, "live-profile", PROMPTS[0])
        assert raw.headers["x-thrifty-model"] in ROUTERBENCH_MODELS
        loaded = app.gw.router.router
        (router_dir / "router.json").write_text("{not json")
        time.sleep(0.3)
        assert app.gw.router.router is loaded  # the broken file was not installed
        assert ask(url, "auto", PROMPTS[1]).headers["x-thrifty-model"] in ROUTERBENCH_MODELS

"""The auto-cascade profile through a real gateway replaying recorded GSM8K answers."""

from __future__ import annotations

from dataclasses import replace

import openai
import pytest

from thrifty.config import _replay_models, build_config
from thrifty.gateway.assemble import create_app
from thrifty.multipliers.cascade import check_answer
from thrifty.multipliers.settings import BatchSettings, CacheSettings, CascadeSettings
from thrifty.providers.replay_records import DEFAULT_SHARED, gsm8k_records
from thrifty.spend.contract import LedgerRecord, OpenSpendControl
from thrifty.testing.server import running

CHEAP, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"


class Ledger(OpenSpendControl):
    def __init__(self) -> None:
        self.records: list[LedgerRecord] = []

    async def settle(self, reservation, record: LedgerRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def prompts():
    if not (DEFAULT_SHARED / "routellm" / "gsm8k").is_dir():
        pytest.skip("GSM8K data not available")
    cheap = [r for r in gsm8k_records() if r.model == CHEAP]
    passing = next(r.prompt for r in cheap if check_answer(r.prompt, r.response, "math"))
    failing = next(r.prompt for r in cheap if not check_answer(r.prompt, r.response, "math"))
    return passing, failing


def replay_config(tmp_path):
    """The cheap and the strong model, answers replayed from ../shared."""
    models = {k: v for k, v in _replay_models().items() if k in (CHEAP, STRONG)}
    return build_config(
        {
            "data_dir": str(tmp_path),
            "providers": {"replay": {"type": "replay", "source": "shared"}},
            "models": models,
        },
        env={},
    )


def test_cascade_accepts_or_escalates_and_bills_every_call(prompts, tmp_path):
    passing, failing = prompts
    config = replay_config(tmp_path)
    spend = Ledger()
    app = create_app(
        replace(
            config,
            cache=CacheSettings(),
            batches=BatchSettings(enabled=False),
            cascade=CascadeSettings((CHEAP, STRONG)),
        ),
        spend=spend,
    )
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        listed = [m.id for m in client.models.list().data]
        assert "auto-cascade" in listed and CHEAP in listed
        ok = client.chat.completions.with_raw_response.create(
            model="auto-cascade", messages=[{"role": "user", "content": passing}]
        )
        assert ok.headers["x-thrifty-model"] == CHEAP
        assert ok.headers["x-thrifty-cascade"] == f"{CHEAP}:pass"
        up = client.chat.completions.with_raw_response.create(
            model="auto-cascade", messages=[{"role": "user", "content": failing}]
        )
        assert up.headers["x-thrifty-model"] == STRONG
        assert up.headers["x-thrifty-cascade"] == f"{CHEAP}:fail > {STRONG}:pass"
        stream = client.chat.completions.create(
            model="auto-cascade", stream=True, messages=[{"role": "user", "content": failing}]
        )
        assert (
            "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            == up.parse().choices[0].message.content
        )
        # A cascaded answer is cached like any other (deterministic request): no model is called again.
        first = client.chat.completions.with_raw_response.create(
            model="auto-cascade", temperature=0, messages=[{"role": "user", "content": failing}]
        )
        import time

        deadline = time.monotonic() + 5
        while app.pending_stores and time.monotonic() < deadline:
            time.sleep(0.01)
        again = client.chat.completions.with_raw_response.create(
            model="auto-cascade", temperature=0, messages=[{"role": "user", "content": failing}]
        )
        assert (first.headers["x-thrifty-cache"], again.headers["x-thrifty-cache"]) == (
            "miss",
            "hit-exact",
        )
        assert again.headers["x-thrifty-model"] == STRONG
    calls = [r for r in spend.records if not r.cache_hit]
    served = [r.served_model for r in calls]
    # The cheap call is billed even when escalated.
    assert served == [CHEAP, CHEAP, STRONG, CHEAP, STRONG, CHEAP, STRONG]
    assert all(r.cost_usd > 0 for r in calls)
    assert [r.served_model for r in spend.records if r.cache_hit] == [STRONG]


def test_cascade_settings():
    from thrifty.errors import UsageError
    from thrifty.multipliers.settings import parse_cascade

    assert parse_cascade({"cascade": {"models": ["a", "b"]}}).models == ("a", "b")
    assert parse_cascade({}).models == ()
    for bad in (["a"], "a,b", [1, 2]):
        with pytest.raises(UsageError):
            parse_cascade({"cascade": {"models": bad}})


def test_default_cascade_on_the_embedded_config():
    from thrifty.config import load_config

    app = create_app(load_config(None, env={}), spend=OpenSpendControl())
    # The cheapest model within 80% of the frontier's accuracy in the router's data, then the frontier.
    assert app.pipeline.cascade.models == ["mistralai/mixtral-8x7b-chat", "gpt-4-1106-preview"]


def test_routed_auto_requests_hit_the_cache(prompts, tmp_path):
    import time

    passing, _ = prompts
    config = replay_config(tmp_path)
    spend = Ledger()
    app = create_app(
        replace(config, cache=CacheSettings(), batches=BatchSettings(enabled=False)), spend=spend
    )
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)

        def ask():
            return client.chat.completions.with_raw_response.create(
                model="auto", temperature=0, messages=[{"role": "user", "content": passing}]
            )

        first = ask()
        deadline = time.monotonic() + 5
        while app.pending_stores and time.monotonic() < deadline:
            time.sleep(0.01)
        second = ask()
        assert (first.headers["x-thrifty-cache"], second.headers["x-thrifty-cache"]) == (
            "miss",
            "hit-exact",
        )
        assert second.headers["x-thrifty-model"] == first.headers["x-thrifty-model"]

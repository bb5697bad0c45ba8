"""The gateway calls spend control on every request: authenticate, allowed (router candidates
and every fallback), admit before the upstream call, settle exactly once and before the client
sees the end of the answer; spend errors come back in the API's own format."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
import openai
import orjson
import pytest
from gw_setup import gateway_doc, serve_gateway

from thrifty.catalog.model import ModelInfo
from thrifty.spend.contract import (
    AuthError,
    BudgetExceeded,
    LedgerRecord,
    PolicyDenied,
    Principal,
    Reservation,
)

MSG = [{"role": "user", "content": "Say hello."}]


class RecordingSpend:
    """A spend control that records every call (and can refuse), standing in for thrifty.spend."""

    def __init__(self) -> None:
        self.auth: list[str | None] = []
        self.admitted: list[tuple[str, int, float]] = []
        self.settled: list[LedgerRecord] = []
        self.settle_delay = 0.0
        self.deny: set[str] = set()
        self.budget_left: float | None = None
        self.settle_error: Exception | None = None

    async def authenticate(self, authorization: str | None) -> Principal:
        self.auth.append(authorization)
        if authorization in (None, "Bearer bad", "bad"):
            raise AuthError("Invalid API key.", headers={"www-authenticate": "Bearer"})
        return Principal(key_id="k1", team_id="t1")

    def allowed(self, principal: Principal, candidates: Sequence[ModelInfo]) -> list[ModelInfo]:
        kept = [m for m in candidates if m.name not in self.deny]
        if not kept:
            raise PolicyDenied("No allowed model.")
        return kept

    async def admit(self, principal, model, *, prompt_tokens, max_cost_usd, request_id=None) -> Reservation:
        if self.budget_left is not None and max_cost_usd > self.budget_left:
            raise BudgetExceeded(
                f"Team budget exceeded: ${self.budget_left} left.", headers={"retry-after": "3600"}
            )
        self.admitted.append((model.name, prompt_tokens, max_cost_usd))
        return Reservation(principal, model.name, max_cost_usd)

    async def settle(self, reservation, record: LedgerRecord) -> None:
        if self.settle_delay:
            await asyncio.sleep(self.settle_delay)
        if self.settle_error is not None:
            raise self.settle_error
        self.settled.append(record)

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def spend_gw(upstreams, tmp_path_factory):
    spend = RecordingSpend()
    with serve_gateway(gateway_doc(upstreams, tmp_path_factory.mktemp("spend")), spend=spend) as (
        url,
        _,
    ):
        yield url, spend


@pytest.fixture()
def spend(spend_gw):
    s = spend_gw[1]
    s.admitted.clear(), s.settled.clear(), s.auth.clear()
    s.deny, s.budget_left, s.settle_delay, s.settle_error = set(), None, 0.0, None
    return s


def client(url: str, key: str = "sk-good") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def test_settled_once_before_client_sees_the_answer(spend_gw, spend):
    spend.settle_delay = 0.2
    raw = client(spend_gw[0]).chat.completions.with_raw_response.create(
        model="m-ok", messages=MSG, max_tokens=100
    )
    assert len(spend.settled) == 1, "settled before the response was sent"
    rec = spend.settled[0]
    assert spend.auth == ["Bearer sk-good"]
    assert (rec.key_id, rec.team_id, rec.served_model, rec.status) == ("k1", "t1", "m-ok", 200)
    assert (rec.prompt_tokens, rec.completion_tokens) == (12, 9)
    assert rec.cost_usd == pytest.approx(float(raw.headers["x-thrifty-cost-usd"]))
    assert rec.request_id == raw.headers["x-request-id"]
    name, prompt_tokens, max_cost = spend.admitted[0]
    # The hold is a true maximum: every byte of the body sent a token, plus chat-template framing.
    sent = {"model": "m-ok", "messages": MSG, "max_tokens": 100}  # what the SDK posts
    bound = len(orjson.dumps(sent)) + 8 * len(MSG) + 64
    assert bound > prompt_tokens
    assert name == "m-ok" and max_cost == pytest.approx(bound * 1e-6 + 100 * 2e-6)


def test_stream_settled_before_done(spend_gw, spend):
    spend.settle_delay = 0.2
    chunks = list(
        client(spend_gw[0]).chat.completions.create(model="m-ok", messages=MSG, stream=True)
    )
    assert chunks and len(spend.settled) == 1
    assert spend.settled[0].stream and spend.settled[0].completion_tokens == 9


def test_failures_are_settled_once(spend_gw, spend):
    with pytest.raises(openai.APIStatusError):
        client(spend_gw[0]).chat.completions.create(model="m-500-alone", messages=MSG)
    with pytest.raises(openai.APIError):
        list(
            client(spend_gw[0]).chat.completions.create(model="m-break", messages=MSG, stream=True)
        )
    assert [r.status for r in spend.settled] == [502, 502]
    assert spend.settled[1].error_type == "stream_broken"
    assert len(spend.admitted) == 2


def test_x_api_key_and_auth_errors(spend_gw, spend):
    url = spend_gw[0]
    r = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "m-ok", "messages": MSG},
        headers={"x-api-key": "sk-other"},
    )
    assert r.status_code == 200 and spend.auth[-1] == "sk-other"
    with pytest.raises(openai.AuthenticationError) as info:
        client(url, "bad").chat.completions.create(model="m-ok", messages=MSG)
    assert info.value.code == "invalid_api_key"
    assert info.value.response.headers["www-authenticate"] == "Bearer"
    r = httpx.post(
        url + "/v1/messages",
        json={"model": "m-ok", "max_tokens": 5, "messages": MSG},
        headers={"x-api-key": "bad"},
    )
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert len(spend.settled) == 1  # only the admitted first request


def test_budget_exceeded_is_429_with_headers(spend_gw, spend):
    spend.budget_left = 1e-9
    with pytest.raises(openai.RateLimitError) as info:
        client(spend_gw[0]).chat.completions.create(model="m-ok", messages=MSG)
    assert info.value.code == "budget_exceeded" and "budget" in info.value.message
    assert info.value.response.headers["retry-after"] == "3600"


def test_policy_applies_to_model_and_fallbacks(spend_gw, spend):
    spend.deny = {"m-ok"}
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(spend_gw[0]).chat.completions.create(model="m-ok", messages=MSG)
    assert info.value.code == "policy_denied"
    # m-500 falls back to m-ok, which policy forbids: no fallback is tried
    with pytest.raises(openai.APIStatusError) as info:
        client(spend_gw[0]).chat.completions.create(model="m-500", messages=MSG)
    assert info.value.status_code == 502
    assert info.value.response.headers["x-thrifty-fallbacks"] == "0"


def test_a_request_the_ledger_cannot_record_does_not_complete(spend_gw, spend):
    spend.settle_error = OSError(28, "No space left on device")
    with pytest.raises(openai.APIStatusError) as exc:
        client(spend_gw[0]).chat.completions.create(model="m-ok", messages=MSG, max_tokens=10)
    assert exc.value.status_code == 503
    assert exc.value.body["type"] == "ledger_error" and "ledger" in exc.value.body["message"]
    # A stream's final chunks are held until the ledger has the request: it ends with an error.
    with pytest.raises(openai.APIError):
        for _ in client(spend_gw[0]).chat.completions.create(
            model="m-ok", messages=MSG, max_tokens=10, stream=True
        ):
            pass


def test_hold_covers_every_choice(spend_gw, spend):
    """With n choices each may use max_tokens: the hold is a true maximum only at n times it."""
    client(spend_gw[0]).chat.completions.create(model="m-ok", messages=MSG, max_tokens=100, n=3)
    _name, _prompt_tokens, max_cost = spend.admitted[0]
    sent = {"model": "m-ok", "messages": MSG, "max_tokens": 100, "n": 3}
    bound = len(orjson.dumps(sent)) + 8 * len(MSG) + 64
    assert max_cost == pytest.approx(bound * 1e-6 + 3 * 100 * 2e-6)


@pytest.mark.parametrize(
    "inp, most",
    [
        ("héllo wörld", len("héllo wörld".encode()) + 2),  # every UTF-8 byte may be a token
        (["ab", "é" * 40], 2 + (2 + 2) + (80 + 2)),
        ([[1] * 500], 2 + 500 + 2),  # token ids: one token each, not one per array
    ],
)
def test_embeddings_hold_is_a_true_maximum(spend_gw, spend, inp, most):
    r = httpx.post(
        spend_gw[0] + "/v1/embeddings",
        json={"model": "emb", "input": inp},
        headers={"authorization": "Bearer sk-good"},
    )
    assert r.status_code == 200, r.text
    _name, _prompt_tokens, max_cost = spend.admitted[0]
    assert max_cost == pytest.approx(most * 1e-7)

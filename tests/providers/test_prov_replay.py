"""The replay provider and its packaged records: real answers, consistent token counts, clear misses."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from thrifty.providers.base import UpstreamError
from thrifty.providers.config import ProviderConfig, Timeouts
from thrifty.providers.replay import ReplayProvider
from thrifty.providers.replay_records import (
    DEFAULT_SHARED,
    REPLAY_PRICES,
    ROUTERBENCH_MODELS,
    demo_sample_ids,
    load_demo_ids,
    read_packaged,
    routerbench_records,
)

RECORDS = list(read_packaged())


def test_packaged_demo_set_is_300_prompts_evenly_from_three_tasks_with_all_models():
    ids = load_demo_ids()
    assert len(ids) == 300
    assert Counter(i.split(".")[0] for i in ids) == {
        "arc-challenge": 100,
        "mbpp": 100,
        "winogrande": 100,
    }
    assert {r.sample_id for r in RECORDS} == ids
    per_prompt = Counter(r.sample_id for r in RECORDS)
    assert set(per_prompt.values()) == {len(ROUTERBENCH_MODELS)}


@pytest.mark.skipif(
    not (DEFAULT_SHARED / "routerbench").is_dir(), reason="../shared/data not present"
)
def test_packaged_records_match_the_source_data():
    assert set(demo_sample_ids()) == load_demo_ids()  # fixed seed: reproducible selection
    source = {(r.sample_id, r.model): r for r in routerbench_records(only=load_demo_ids())}
    for r in RECORDS[:200]:
        assert source[(r.sample_id, r.model)] == r


def test_token_counts_reproduce_the_recorded_real_cost():
    by_prompt: dict[str, set[int]] = {}
    for r in RECORDS:
        inp, out = REPLAY_PRICES[r.model]
        assert abs(r.prompt_tokens * inp + r.completion_tokens * out - r.cost_usd) <= out, r
        assert r.completion_tokens >= 1
        by_prompt.setdefault(r.sample_id, set()).add(r.prompt_tokens)
    assert all(len(counts) == 1 for counts in by_prompt.values())  # one prompt count, all models


def _provider() -> ReplayProvider:
    p = ReplayProvider(ProviderConfig("replay", "replay", options={"source": "packaged"}))
    asyncio.run(p.start())
    return p


def test_known_prompt_and_stream():
    p = _provider()
    rec = RECORDS[5]
    body = {
        "model": rec.model,
        "messages": [
            {"role": "system", "content": "x"},
            {"role": "user", "content": "  " + rec.prompt + "\n"},
        ],
    }
    out = asyncio.run(p.chat(body, Timeouts()))
    assert out["choices"][0]["message"]["content"] == rec.response
    assert out["usage"]["completion_tokens"] == rec.completion_tokens

    async def collect():
        return [c async for batch in p.chat_stream(body, Timeouts()) for c in batch]

    chunks = asyncio.run(collect())
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        == rec.response
    )
    assert chunks[-1]["usage"]["prompt_tokens"] == rec.prompt_tokens


def test_unknown_prompt_and_model_are_clear_errors():
    p = _provider()
    with pytest.raises(UpstreamError) as info:
        asyncio.run(
            p.chat(
                {"model": "claude-v1", "messages": [{"role": "user", "content": "novel"}]},
                Timeouts(),
            )
        )
    assert (
        info.value.status == 400
        and not info.value.retryable
        and "no recorded answer" in info.value.message
    )
    with pytest.raises(UpstreamError, match="no recordings of model 'gpt-5'"):
        asyncio.run(
            p.chat(
                {"model": "gpt-5", "messages": [{"role": "user", "content": RECORDS[0].prompt}]},
                Timeouts(),
            )
        )

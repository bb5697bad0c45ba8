"""Prefix-affinity balancing: stickiness, bounded load, minimal movement."""

from __future__ import annotations

import pytest

from thrifty.multipliers.affinity import PrefixAffinity, RoundRobin, prefix_text

DEPS = ["vllm-0", "vllm-1", "vllm-2", "vllm-3"]


def test_same_prefix_same_deployment_and_full_retry_order():
    pa = PrefixAffinity(DEPS, key_chars=64)
    system = "You are the support bot of ACME. Policies: " + "x" * 100
    first = {pa.order(pa.key(system + f" question {i}"))[0] for i in range(20)}
    assert len(first) == 1  # the question is past key_chars: one deployment for the tenant
    order = pa.order(pa.key(system))
    assert sorted(order) == sorted(DEPS)
    spread = {pa.order(pa.key(f"tenant {i} prompt"))[0] for i in range(200)}
    assert spread == set(DEPS)  # different prefixes spread over the pool


def test_bounded_load_spills_a_hot_prefix():
    pa = PrefixAffinity(DEPS, load_factor=1.25)
    key = pa.key("one very hot tenant")
    home = pa.order(key)[0]
    placed = []
    for _ in range(40):
        name = pa.order(key)[0]
        pa.acquire(name)
        placed.append(name)
    # Never more than ceil(1.25 * total / n) in flight on one deployment.
    assert max(pa.in_flight.values()) <= -(-1.25 * 40 // 4)
    assert placed[0] == home and placed.count(home) >= 10
    for name in placed:
        pa.release(name)
    assert pa.order(key)[0] == home  # load gone: back home


def test_removing_a_deployment_moves_only_its_keys():
    keys = [f"tenant {i}" for i in range(500)]
    before = PrefixAffinity(DEPS)
    after = PrefixAffinity(DEPS[:3])
    moved = [k for k in keys if before.order(before.key(k))[0] != after.order(after.key(k))[0]]
    assert all(before.order(before.key(k))[0] == "vllm-3" for k in moved)


def test_round_robin_and_prefix_text_and_validation():
    rr = RoundRobin(DEPS)
    assert [rr.order(0)[0] for _ in range(5)] == DEPS + DEPS[:1]
    text = prefix_text(
        [
            {"role": "system", "content": "abc"},
            {"role": "user", "content": [{"type": "text", "text": "def"}]},
        ],
        12,
    )
    assert text == "system:abc\nu"
    with pytest.raises(ValueError):
        PrefixAffinity([])
    with pytest.raises(ValueError):
        PrefixAffinity(DEPS, load_factor=0.5)


def test_deployment_affinity_orders_a_models_deployments():
    from thrifty.config import Deployment
    from thrifty.multipliers.affinity import DeploymentAffinity

    deps = [Deployment(f"vllm{i}", "llama") for i in range(3)]
    da = DeploymentAffinity({"llama": deps})
    assert "llama" in da and "other" not in da
    body = {
        "messages": [
            {"role": "system", "content": "tenant 7 policies " * 50},
            {"role": "user", "content": "q1"},
        ]
    }
    first = da.order("llama", body)
    assert sorted(d.key for d in first) == sorted(d.key for d in deps)
    other = {"messages": [body["messages"][0], {"role": "user", "content": "q2"}]}
    assert da.order("llama", other)[0] == first[0]  # same long prefix, same deployment
    da.acquire("llama", first[0])
    da.release("llama", first[0])
    assert da.order("llama", body) == first

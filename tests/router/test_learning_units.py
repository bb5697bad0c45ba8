"""The learner's parts on their own: estimates per kind of prompt, the calibrated knob,
exploration's caps and logged probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from thrifty.router.learning import AUTO, Knob, Learner
from thrifty.router.online import (
    CONTEXT_DIM,
    Label,
    LabelSet,
    context_of,
    decode_context,
    encode_context,
)
from thrifty.router.policy import Calibrated, Decision, ExplorationBudget, decide, weight_keeping


def contexts(centre: int, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Prompts of one kind: near one axis of the context space."""
    base = np.zeros(CONTEXT_DIM, dtype=np.float32)
    base[centre] = 1.0
    return [context_of(base + 0.05 * rng.standard_normal(CONTEXT_DIM).astype(np.float32)) for _ in range(n)]


def test_context_round_trips_through_its_ledger_text_and_rejects_garbage():
    ctx = context_of(np.arange(256, dtype=np.float32) - 100)
    back = decode_context(encode_context(ctx))
    assert back is not None and np.allclose(back, ctx, atol=2e-3)
    for bad in ("", "not base64!", encode_context(ctx)[:-8], "AAAA"):
        assert decode_context(bad) is None


def test_estimates_differ_by_kind_of_prompt_and_rerating_replaces():
    rng = np.random.default_rng(0)
    s = LabelSet()
    code, chat = contexts(0, 40, rng), contexts(1, 40, rng)
    for i, c in enumerate(code):
        s.add(Label(f"c{i}", "a", 1.0, c))
        s.add(Label(f"c{i}b", "b", 0.0, c))
    for i, c in enumerate(chat):
        s.add(Label(f"h{i}", "a", 0.0, c))
        s.add(Label(f"h{i}b", "b", 1.0, c))
    prior = np.array([0.5, 0.5])
    on_code = s.estimate(contexts(0, 1, rng)[0], ["a", "b"], prior).mean
    on_chat = s.estimate(contexts(1, 1, rng)[0], ["a", "b"], prior).mean
    assert on_code[0] > 0.8 and on_code[1] < 0.2
    assert on_chat[1] > 0.8 and on_chat[0] < 0.2
    overall = s.estimate(None, ["a", "b"], prior).mean
    assert overall == pytest.approx([0.5, 0.5], abs=0.02)
    # Rating again replaces the label: the sums move, the count does not.
    n = len(s)
    for i in range(40):
        s.add(Label(f"h{i}", "a", 1.0, chat[i]))
    assert len(s) == n
    assert s.estimate(None, ["a"], prior[:1]).mean[0] > 0.9


def test_a_model_never_rated_keeps_its_prior_and_unknown_models_are_fine():
    s = LabelSet()
    est = s.estimate(None, ["new"], np.array([0.7]), np.array([4.0]))
    assert est.mean[0] == pytest.approx(0.7) and est.labels[0] == 0


def test_forgetting_the_oldest_keeps_the_sums_right():
    rng = np.random.default_rng(1)
    s = LabelSet(max_labels=50)
    for i, c in enumerate(contexts(0, 120, rng)):
        s.add(Label(str(i), "a", float(i >= 100), c))
    assert len(s) <= 50
    total, count = s.overall("a")
    _, scores, _, _ = s.rows()
    assert count == len(s) and total == pytest.approx(scores.sum())


def test_the_knob_moves_to_a_cheap_model_only_when_it_keeps_the_bar():
    costs = np.tile([1.0, 10.0], (50, 1))
    near = np.tile([0.90, 0.91], (50, 1))  # 99% of the best: the cheap one
    assert weight_keeping(near, costs, 0.98).weight > 0.011  # 0.01 quality < w * 0.9 relative cost
    far = np.tile([0.60, 0.90], (50, 1))  # 67%: the dear one, or a mixture meeting 98% exactly
    cal = weight_keeping(far, costs, 0.98)
    kept = (1 - cal.mix) * 0.90 + cal.mix * 0.60
    assert kept == pytest.approx(0.98 * 0.90, abs=1e-9)
    best = weight_keeping(far, costs, 1.0)
    assert best.weight == 0.0 and best.mix == 0.0


def test_decisions_log_probabilities_that_sum_to_one_and_respect_the_candidates():
    rng = np.random.default_rng(2)
    a, b = np.array([5.0, 5.0, 2.0]), np.array([5.0, 5.0, 2.0])
    d = decide(a, b, np.array([1.0, 2.0, 3.0]), 0.05, rng, explore=True)
    assert d.probs is not None and d.probs.sum() == pytest.approx(1.0)
    assert 0 < d.propensity <= 1 and d.index in (0, 1, 2)
    greedy = decide(a, b, np.array([1.0, 2.0, 3.0]), 0.05, rng, explore=False)
    assert greedy == Decision(0, 1.0, 0, False)
    mixed = greedy.mixed_with_uniform(0.5, np.array([1, 2]), 3, rng)
    assert mixed.probs is not None and mixed.probs.sum() == pytest.approx(1.0)
    assert mixed.probs[0] == pytest.approx(0.5) and mixed.probs[1] == pytest.approx(0.25)


def test_a_randomised_weight_is_in_the_logged_probability():
    """A profile's weight mixes two weights (Calibrated): each decision's logged probability is
    the chance of its choice over both, exploring or not, and matches how often it is made."""
    a, b, costs = np.array([900.0, 950.0]), np.array([100.0, 50.0]), np.array([1.0, 10.0])
    cal = Calibrated(weight=0.0, cheaper=1.0, mix=0.3)  # 0 -> the dear model; 1 -> the cheap one
    rng = np.random.default_rng(5)
    greedy = [decide(a, b, costs, cal.draw(rng), rng, explore=False, weight_options=cal.options())
              for _ in range(2000)]
    cheap_share = np.mean([d.index == 0 for d in greedy])
    assert cheap_share == pytest.approx(0.3, abs=0.04)
    assert {round(d.propensity, 6) for d in greedy if d.index == 0} == {0.3}
    assert {round(d.propensity, 6) for d in greedy if d.index == 1} == {0.7}
    sampled = decide(a, b, costs, 0.0, rng, explore=True, sampled_weight=cal.draw(rng),
                     sampled_options=cal.options())
    assert sampled.probs is not None and sampled.probs.sum() == pytest.approx(1.0)
    assert 0.2 < sampled.probs[0] < 0.45  # about 0.3, not the near-certainty of one weight


def test_exploration_caps_hold_and_zero_turns_it_off():
    off = Learner(explore_share=0.0, seed=0)
    rng = np.random.default_rng(3)
    for c in contexts(0, 50, rng):
        choice = off.choose("*", c, ["a", "b", "c"], np.full(3, 0.5), np.full(3, 2.0), np.array([1.0, 5.0, 9.0]), AUTO)
        assert not choice.explored and choice.propensity == 1.0
    budget = ExplorationBudget(max_share=0.1, max_spend_share=1.0, window=100)
    capped = Learner(seed=0, warmup=0)
    capped._budgets["*"] = budget
    explored = 0
    for c in contexts(0, 600, rng):
        choice = capped.choose("*", c, ["a", "b", "c"], np.full(3, 0.5), np.full(3, 2.0), np.array([1.0, 5.0, 9.0]),
                               Knob(weight=0.0))
        explored += choice.explored
    assert explored / 600 <= 0.13  # the moving-average cap, with its lag


def test_spend_cap_is_a_share_of_the_all_frontier_cost():
    b = ExplorationBudget(max_share=1.0, max_spend_share=0.1, window=10)
    costs = np.array([1.0, 10.0])
    b.record(Decision(1, 0.5, 0, True), costs)  # explored the dear one: 9 extra of a 10 frontier
    assert not b.allows()
    for _ in range(40):
        b.record(Decision(0, 1.0, 0, False), costs)
    assert b.allows()


def test_a_target_profile_logs_the_probability_of_what_it_explored():
    """``target_quality`` decisions explore on draws too, and log each candidate's probability
    (so a warm-up mixed on top logs the mixture, not the greedy choice's certainty)."""
    from thrifty.router.policy import decide_target

    rng = np.random.default_rng(4)
    a, b = np.array([3.0, 3.0, 3.0]), np.array([3.0, 3.0, 3.0])
    d = decide_target(a, b, np.array([1.0, 2.0, 3.0]), 0.6, rng, explore=True)
    assert d.probs is not None and d.probs.sum() == pytest.approx(1.0)
    assert d.propensity == pytest.approx(d.probs[d.index])


def test_caution_on_traffic_gives_a_cheap_model_a_share_before_its_bound_passes_the_best():
    """Per model, a cheap model within 1% of the best needs its lower bound above 98% of the
    best's upper bound: with a spread of 0.02 on both, even the best alone misses that bar (0.90
    - 0.02 < 0.98 x 0.92), and the knob stays at 0. On the traffic as a whole, the best compared
    with itself cancels, and the cheap model gets the share the evidence allows."""
    costs = np.tile([1.0, 10.0], (50, 1))
    near = np.tile([0.89, 0.90], (50, 1))
    sd = np.full((50, 2), 0.02)
    per_model = weight_keeping(near, costs, 0.98, near - sd, near + sd)
    assert per_model.weight == 0.0
    traffic = weight_keeping(near, costs, 0.98, spread=sd)
    share = (1 - traffic.mix) * (traffic.weight > 0.011) + traffic.mix * (traffic.cheaper > 0.011)
    assert 0.2 < share < 1.0  # part of the traffic, not all: 0.89 is within 2% but not surely so
    kept = (1 - share) * 0.90 + share * 0.89
    margin = np.sqrt((share * 0.02) ** 2 + ((1 - share - 0.98) * 0.02) ** 2)
    # The bar, margin included: met, and nearly exactly (the margin is convex in the share, so
    # the mixture, interpolated linearly, meets it with a little to spare).
    assert 0.98 * 0.90 - 1e-9 <= kept - margin <= 0.98 * 0.90 + 1e-3
    settled = weight_keeping(near, costs, 0.98, spread=np.full((50, 2), 0.001))
    assert settled.weight > 0.011 and settled.mix == 0.0  # evidence: all of it to the cheap one
    # No spread (caution 0): the plain rule on the means.
    assert weight_keeping(near, costs, 0.98, spread=np.zeros((50, 2))).weight > 0.011


def test_caution_on_traffic_keeps_the_bar_where_an_uncertain_model_may_set_it():
    """A dear model with few ratings and a low mean may still be the best: its optimistic level
    sets the bar, and when no weight keeps it the decision goes on upper bounds (the traffic
    goes where the bar may be, and its ratings settle it)."""
    costs = np.tile([1.0, 10.0], (50, 1))
    means = np.tile([0.80, 0.75], (50, 1))  # the dear one rated unluckily: below the cheap one
    spread = np.tile([0.01, 0.25], (50, 1))
    cal = weight_keeping(means, costs, 0.98, spread=spread)
    assert cal.weight == 0.0 and cal.optimistic
    d = decide(np.array([80.0, 3.0]), np.array([20.0, 1.0]), np.array([1.0, 10.0]), cal.weight,
               np.random.default_rng(0), explore=False, lower=means[0] + spread[0])
    assert d.index == 1  # on the upper bounds: the dear one


def test_exploration_stops_when_its_estimated_quality_loss_exceeds_its_share():
    b = ExplorationBudget(max_share=1.0, max_spend_share=1.0, window=10, max_loss_share=0.01)
    costs, means = np.array([1.0, 1.0]), np.array([0.9, 0.5])
    b.record(Decision(0, 1.0, 0, False), costs, means)
    assert b.allows()
    b.record(Decision(1, 0.5, 0, True), costs, means)  # explored one estimated 0.4 worse
    assert not b.allows()
    for _ in range(60):
        b.record(Decision(0, 1.0, 0, False), costs, means)
    assert b.allows()
    loose = ExplorationBudget(max_share=1.0, max_spend_share=1.0, window=10)  # no loss cap
    loose.record(Decision(1, 0.5, 0, True), costs, means)
    assert loose.allows()


def test_the_learner_logs_probabilities_with_caution_on_traffic_or_per_model():
    rng = np.random.default_rng(6)
    for on in ("traffic", "models"):
        learner = Learner(seed=1, caution_on=on)
        for i, c in enumerate(contexts(0, 300, rng)):
            ch = learner.choose("*", c, ["a", "b", "c"], np.full(3, 0.5), np.full(3, 2.0),
                                np.array([1.0, 5.0, 9.0]), AUTO)
            assert ch.model in ("a", "b", "c") and 0 < ch.propensity <= 1.0
            learner.add("*", Label(str(i), ch.model, float(rng.random() < {"a": 0.6, "b": 0.8, "c": 0.9}[ch.model]), c))
    with pytest.raises(ValueError):
        Learner(caution_on="nowhere")

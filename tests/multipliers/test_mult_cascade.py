"""Cascade checks on real recorded responses and the cascade's escalation logic."""

from __future__ import annotations

import asyncio

import pytest

from thrifty.multipliers.cascade import Cascade, agree, check_answer, extract_answer, task_of

MC = "Which gas do plants absorb?\nA) Oxygen\nB) Carbon dioxide\nC) Nitrogen\nD) Helium\nAnswer:"
MATH = "Janet has 16 eggs and eats 3. How many are left?"


def test_task_detection():
    assert task_of(MC) == "choice"
    assert task_of(MATH) == "math"
    assert task_of("Write a python function to reverse a list.") == "code"


def test_choice_check():
    assert check_answer(MC, "B") and extract_answer("choice", " B) Carbon dioxide") == "B"
    assert not check_answer(MC, "I do not know")
    assert not check_answer(MC, "E")  # not an offered option
    assert agree(MC, "B", "B. Carbon dioxide") and not agree(MC, "A", "B")


def test_math_check_uses_final_number_and_arithmetic():
    good = "She has 16 - 3 = 13 eggs left.\n#### 13"
    bad_arith = "She has 16 - 3 = 12 eggs left.\n#### 12"
    bad_calc = "She has <<16-3=14>>14 eggs.\n#### 14"
    assert check_answer(MATH, good, "math")
    assert not check_answer(MATH, bad_arith, "math")
    assert not check_answer(MATH, bad_calc, "math")
    assert not check_answer(MATH, "I cannot tell.", "math")
    assert extract_answer("math", "so the answer is $1,250.") == "1250"
    assert agree(MATH, good, "Thirteen remain: 13") and not agree(MATH, good, bad_arith)


def test_code_check_parses_python():
    prompt = "Write a python function to add two numbers."
    assert check_answer(prompt, "Here:\n```python\ndef add(a, b):\n    return a + b\n```")
    assert not check_answer(prompt, "```python\ndef add(a, b)\n    return a + b\n```")
    assert not check_answer(prompt, "Use the + operator.")
    assert not agree(prompt, "```python\ndef f(): pass\n```", "```python\ndef f(): pass\n```")


def test_cascade_escalates_only_when_the_check_fails():
    answers = {"cheap": "I do not know", "strong": "B"}
    asked = []

    async def call(model: str) -> str:
        asked.append(model)
        return answers[model]

    cascade = Cascade(["cheap", "strong"])
    result = asyncio.run(cascade.run(MC, call))
    assert (result.model, result.called, result.escalated) == ("strong", ["cheap", "strong"], True)
    answers["cheap"] = "B"
    result = asyncio.run(cascade.run(MC, call))
    assert (result.model, result.called, result.escalated) == ("cheap", ["cheap"], False)
    with pytest.raises(ValueError):
        Cascade(["one"])


def test_on_recorded_gsm8k_responses():
    from thrifty.providers.replay_records import DEFAULT_SHARED, gsm8k_records

    if not (DEFAULT_SHARED / "routellm" / "gsm8k").is_dir():
        pytest.skip("GSM8K data not available")
    records = [r for r in gsm8k_records() if r.model.startswith("mistralai")][:200]
    passed = [r for r in records if check_answer(r.prompt, r.response, "math")]
    rejected = [r for r in records if r not in passed]
    # The check rejects some answers, and those are wrong far more often than the accepted ones.
    assert rejected and passed
    wrong_rejected = sum(not r.correct for r in rejected) / len(rejected)
    wrong_passed = sum(not r.correct for r in passed) / len(passed)
    assert wrong_rejected > wrong_passed


def test_open_ended_answers_escalate_only_when_empty_or_refused():
    prompt = "Tell me about the history of Rome."
    assert task_of(prompt) == "other"
    assert check_answer(prompt, "Rome was founded, by legend, in 753 BC...")
    assert not check_answer(prompt, "I'm sorry, but I can't help with that.")
    assert not check_answer(prompt, "   ")

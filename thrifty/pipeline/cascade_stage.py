"""The ``auto-cascade`` profile as a pipeline stage: the cascade's models in turn, cheapest
first, each step planned, admitted, called and billed like any call, keeping the first answer
that passes :func:`~thrifty.multipliers.cascade.check_answer` (the last model's answer is
kept whatever it says)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from thrifty.errors import ThriftyError
from thrifty.multipliers.cascade import check_answer
from thrifty.multipliers.semantic import split_request
from thrifty.pipeline.call import Call

# (the step's call) -> (answer, cost, frontier cost): one billed call through the pipeline
Step = Callable[[Call], Awaitable[tuple[dict[str, Any], float, float]]]
# (the parent call, the step's model) -> the step's call
NewStep = Callable[[Call, str], Call]


def _content(answer: dict[str, Any]) -> str:
    try:
        return answer["choices"][0]["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""


class CascadeStage:
    def __init__(self, models: list[str]) -> None:
        self.models = models

    async def run(
        self, call: Call, new_step: NewStep, step: Step
    ) -> tuple[Call, dict[str, Any], float, float]:
        """(the kept step's call, its answer, cost and frontier cost of every step); the trail
        is left in ``call.cascade``. The caller's own problems (auth, budget, a bad request)
        end the cascade at once; upstream failures move on to the next model."""
        assert call.chat is not None
        _, prompt = split_request(call.chat.body)
        trail: list[str] = []
        call.cascade = trail
        cost = frontier = 0.0
        last_error: ThriftyError | None = None
        for i, model in enumerate(self.models):
            sub = new_step(call, model)
            last = i == len(self.models) - 1
            try:
                answer, c, f = await step(sub)
            except ThriftyError as exc:
                trail.append(f"{model}:{exc.status}")
                status = exc.status
                if last or status in (401, 403, 429) or (400 <= status < 500 and status != 404):
                    exc.headers.setdefault("x-thrifty-cascade", " > ".join(trail))
                    raise
                last_error = exc
                continue
            cost += c
            frontier += f
            passed = check_answer(prompt, _content(answer))
            trail.append(f"{model}:{'pass' if passed else 'fail'}")
            if passed or last:
                return sub, answer, cost, frontier
        assert last_error is not None  # the loop returns or raises on its last model
        raise last_error

"""Cascade: ask a cheap model first, keep its answer when a check passes, else escalate.

A router decides *before* any answer exists; a cascade decides *after* seeing the cheap
answer, and pays for that answer even when it escalates. Whether that wins depends entirely
on how well the check separates good cheap answers from bad ones, so the checks here are
cheap, deterministic and honest about what they see (the response text, nothing else):

* ``multiple choice`` (the prompt lists lettered options): the answer names exactly one of
  the offered letters;
* ``math`` (a word problem): a final number is stated, and every ``a op b = c`` step and
  ``<<a*b=c>>`` calculator note in the response is arithmetically right;
* ``code`` (the prompt asks for a function): the first code block is valid Python that
  defines a function;
* ``agreement``: two cheap answers (two samples, or two cheap models) give the same
  extracted answer (:func:`agree`);
* anything else (open-ended chat): only an empty answer or a refusal escalates, so for such
  prompts the cascade is close to "always the cheap model".

``python -m benchmarks multipliers --only cascade`` measures each check's quality and cost
on recorded responses against routing alone and always-frontier.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

__all__ = ["Cascade", "CascadeResult", "agree", "check_answer", "extract_answer", "task_of"]

_OPTION = re.compile(r"^\s*\(?([A-H])[.)]\s", re.MULTILINE)
_LETTER = re.compile(r"\b([A-H])\b")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_FINAL = re.compile(
    r"(?:####|answer is|answer:|=)\s*\**\s*(-?\$?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE
)
_CALC = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_STEP = re.compile(
    r"(-?\d[\d,]*(?:\.\d+)?(?:\s*[-+*/x×÷]\s*-?\d[\d,]*(?:\.\d+)?)+)\s*=\s*\$?(-?\d[\d,]*(?:\.\d+)?)"
)
_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|i cannot|i can'?t|i'?m not able|i am not able|as an ai)",
    re.IGNORECASE,
)
_CODE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def task_of(prompt: str) -> str:
    """``"choice"``, ``"code"`` or ``"math"`` from the prompt's shape (``"other"`` if none)."""
    letters = set(_OPTION.findall(prompt[-3000:]))
    if {"A", "B"} <= letters:
        return "choice"
    low = prompt.lower()
    if "python function" in low or "write a function" in low or "def " in prompt:
        return "code"
    if _NUMBER.search(prompt) and "?" in prompt:
        return "math"
    return "other"


def _num(text: str) -> Fraction | None:
    try:
        return Fraction(text.replace(",", "").replace("$", ""))
    except (ValueError, ZeroDivisionError):
        return None


def _eval(expr: str) -> Fraction | None:
    """Exact value of a small + - * / expression; None when it is not one."""
    expr = (
        expr.replace("x", "*").replace("×", "*").replace("÷", "/").replace(",", "").replace("$", "")
    )
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        return None

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(
            node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)
        ):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            return a / b
        raise ValueError("not arithmetic")

    try:
        return ev(tree)
    except (ValueError, ZeroDivisionError, RecursionError):
        return None


def extract_answer(task: str, response: str) -> str | None:
    """The final answer a response commits to: a letter, a number, or the code block."""
    text = response.strip()
    if task == "choice":
        head = text[:40]
        letters = _LETTER.findall(head) or _LETTER.findall(text[-80:])
        return letters[0] if len(set(letters)) == 1 else None
    if task == "math":
        finals = _FINAL.findall(text)
        if finals:
            n = _num(finals[-1])
            return str(n) if n is not None else None
        numbers = _NUMBER.findall(text[-200:])
        n = _num(numbers[-1]) if numbers else None
        return str(n) if n is not None else None
    if task == "code":
        m = _CODE.search(text)
        return m.group(1).strip() if m else None
    return text or None


def _arithmetic_ok(response: str) -> bool:
    for expr, value in _CALC.findall(response):
        got, want = _eval(expr), _num(value.strip())
        if (
            got is None
            or want is None
            or abs(float(got - want)) > 1e-6 * max(1.0, abs(float(want)))
        ):
            return False
    for expr, value in _STEP.findall(response):
        got, want = _eval(expr), _num(value)
        if (
            got is not None
            and want is not None
            and abs(float(got - want)) > 0.01 * max(1.0, abs(float(want)))
        ):
            return False
    return True


def check_answer(prompt: str, response: str, task: str | None = None) -> bool:
    """Accept the cheap answer? (see the module doc for what each task's check looks at)."""
    task = task or task_of(prompt)
    answer = extract_answer(task, response)
    if answer is None:
        return False
    if task == "choice":
        offered = set(_OPTION.findall(prompt[-3000:]))
        return answer in offered
    if task == "math":
        return _arithmetic_ok(response)
    if task == "code":
        try:
            tree = ast.parse(answer)
        except SyntaxError:
            return False
        return any(isinstance(n, ast.FunctionDef) for n in ast.walk(tree))
    return bool(answer.strip()) and not _REFUSAL.match(answer)


def agree(prompt: str, a: str, b: str, task: str | None = None) -> bool:
    """Two answers commit to the same final answer (code: never compared, so never agree)."""
    task = task or task_of(prompt)
    if task in ("code", "other"):
        return False
    x, y = extract_answer(task, a), extract_answer(task, b)
    return x is not None and x == y


@dataclass(slots=True)
class CascadeResult:
    response: str
    model: str
    called: list[str] = field(default_factory=list)  # every model asked, in order (all are billed)
    escalated: bool = False


class Cascade:
    """Models from cheapest to strongest; ``call(model) -> response text`` does the asking."""

    def __init__(
        self, models: Sequence[str], check: Callable[[str, str], bool] = check_answer
    ) -> None:
        if len(models) < 2:
            raise ValueError("a cascade needs at least two models")
        self.models = list(models)
        self.check = check

    async def run(self, prompt: str, call: Callable[[str], Awaitable[str]]) -> CascadeResult:
        called: list[str] = []
        response = ""
        for i, model in enumerate(self.models):
            response = await call(model)
            called.append(model)
            if i == len(self.models) - 1 or self.check(prompt, response):
                return CascadeResult(response, model, called, escalated=i > 0)
        raise AssertionError("unreachable")

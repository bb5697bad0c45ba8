"""Cheap prompt features: length and structure, computed in microseconds.

A router stores the names of the features it was trained on, so features can
be added here without breaking routers trained before (they keep their columns).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_MATH = re.compile(r"[=+\-*/^<>%$]|\\frac|sqrt|\\sum")
# The lookahead (every alternative's possible first character) skips most positions at once:
# same matches, a fifth of the time.
_CODE = re.compile(r"(?=[`dcri{};])(?:```|\b(?:def |class |return\b|import )|[{};]\s*$)", re.MULTILINE)
_CHOICE = re.compile(r"^\s*\(?[A-D][.)]\s", re.MULTILINE)
_OPTION = re.compile(r"^\s*\(?[A-H][.)]\s", re.MULTILINE)
_DIGIT = re.compile(r"\d")
_UPPER = re.compile(r"[A-Z]")

NAMES: tuple[str, ...] = (
    "log_chars", "log_words", "log_lines", "digit_share", "log_numbers",
    "math_symbols", "code_markers", "choices", "questions", "upper_share",
    "log_option_chars", "log_stem_chars",
)
FIRST_NAMES = NAMES[:10]  # what routers trained before the option features used


def _options(text: str) -> tuple[float, float]:
    """(mean characters per answer option, characters before the first) of a multiple-choice
    prompt; (0, all characters) when it has fewer than two lettered options. Long options
    mean reading-heavy questions, short ones (numbers, formulas) computational ones."""
    starts = [m.start() for m in _OPTION.finditer(text)]
    if len(starts) < 2:
        return 0.0, float(len(text))
    last = text.find("\n", starts[-1] + 1)
    end = len(text) if last < 0 else last
    return (end - starts[0]) / len(starts), float(starts[0])


def prompt_features(text: str) -> list[float]:
    n = len(text) or 1
    digits = len(_DIGIT.findall(text))
    upper = len(_UPPER.findall(text))
    option_chars, stem_chars = _options(text)
    return [
        math.log1p(len(text)),
        math.log1p(len(text.split())),
        math.log1p(text.count("\n")),
        digits / n,
        math.log1p(len(_NUMBER.findall(text))),
        math.log1p(len(_MATH.findall(text))),
        math.log1p(len(_CODE.findall(text))),
        min(len(_CHOICE.findall(text)), 8) / 4.0,
        math.log1p(text.count("?")),
        upper / n,
        math.log1p(option_chars),
        math.log1p(stem_chars),
    ]


def feature_matrix(texts: Sequence[str]) -> np.ndarray:
    return np.array([prompt_features(t) for t in texts], dtype=np.float32).reshape(len(texts), len(NAMES))

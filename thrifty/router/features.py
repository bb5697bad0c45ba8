"""Cheap prompt features: length and structure, computed in microseconds."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_MATH = re.compile(r"[=+\-*/^<>%$]|\\frac|sqrt|\\sum")
_CODE = re.compile(r"```|\bdef |\bclass |\breturn\b|[{};]\s*$|\bimport ", re.MULTILINE)
_CHOICE = re.compile(r"^\s*\(?[A-D][.)]\s", re.MULTILINE)
_DIGIT = re.compile(r"\d")
_UPPER = re.compile(r"[A-Z]")

NAMES: tuple[str, ...] = (
    "log_chars", "log_words", "log_lines", "digit_share", "log_numbers",
    "math_symbols", "code_markers", "choices", "questions", "upper_share",
)


def prompt_features(text: str) -> list[float]:
    n = len(text) or 1
    digits = len(_DIGIT.findall(text))
    upper = len(_UPPER.findall(text))
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
    ]


def feature_matrix(texts: Sequence[str]) -> np.ndarray:
    return np.array([prompt_features(t) for t in texts], dtype=np.float32).reshape(len(texts), len(NAMES))

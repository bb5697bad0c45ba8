"""Read Prometheus exposition text in tests: samples by name and labels, and promtool's verdict."""

from __future__ import annotations

import re
import shutil
import subprocess

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """``{(name, frozenset of (label, value)): value}`` of every sample line."""
    out: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.groups()
        key = (name, frozenset(_LABEL.findall(labels or "")))
        assert key not in out, f"duplicate sample {line!r}"
        out[key] = float(value)
    return out


def value(text_samples: dict, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels`` (0 when absent)."""
    return text_samples.get((name, frozenset(labels.items())), 0.0)


def total(text_samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name`` over every sample whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in text_samples.items() if n == name and want <= ls)


def promtool_ok(text: str) -> None:
    """``promtool check metrics`` accepts ``text`` (skipped when promtool is not installed)."""
    exe = shutil.which("promtool")
    if exe is None:
        return
    r = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr

"""Loaders for labelled routing data: which models answered which prompts well.

Two public formats are supported, detected per file from the header:

* RouteLLM (``prompt`` plus one ``True``/``False`` column per model; GSM8K adds
  ``<model>_response`` columns). Prompts listed in a ``contaminated_prompts.jsonl``
  beside the file are left out.
* RouterBench (``sample_id``, ``prompt`` as a Python-list string, ``eval_name``,
  one 0/1 score column per model with empty cells for missing labels, and
  ``<model>|total_cost`` / ``<model>|model_response`` columns).

A source may be a file, a directory (searched recursively for ``*.csv``) or an
``http(s)://`` URL of a CSV file.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from thrifty.errors import UsageError

csv.field_size_limit(1 << 30)

_TRUE = {"true", "1", "1.0", "yes"}
_FALSE = {"false", "0", "0.0", "no"}


class DataError(UsageError):
    """A data file that cannot be read as routing data; the message names the file and the problem."""


@dataclass
class RoutingData:
    """Prompts with sparse per-model quality labels (and, where known, per-call costs).

    ``labels[i, j]`` is 1.0 when model ``models[j]`` answered prompt ``i`` well,
    0.0 when it did not, and NaN when unknown. ``costs`` has the same shape
    (USD per call; NaN when unknown). ``groups`` names each prompt's source
    (e.g. ``mmlu/abstract_algebra``, ``routerbench/mbpp``) for grouped splits.
    """

    prompts: list[str]
    models: list[str]
    labels: np.ndarray
    costs: np.ndarray
    groups: list[str]
    ids: list[str]
    responses: dict[str, list[str | None]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, index: Sequence[int] | np.ndarray) -> RoutingData:
        idx = np.asarray(index, dtype=int)
        return RoutingData(
            prompts=[self.prompts[i] for i in idx],
            models=list(self.models),
            labels=self.labels[idx],
            costs=self.costs[idx],
            groups=[self.groups[i] for i in idx],
            ids=[self.ids[i] for i in idx],
            responses={m: [r[i] for i in idx] for m, r in self.responses.items()},
        )

    def where(self, keep: Iterable[bool]) -> RoutingData:
        return self.subset(np.flatnonzero(np.fromiter(keep, dtype=bool)))

    def with_models(self, models: Sequence[str]) -> RoutingData:
        """The same prompts laid out on ``models`` (unknown ones become NaN columns)."""
        n = len(self.prompts)
        labels = np.full((n, len(models)), np.nan)
        costs = np.full((n, len(models)), np.nan)
        for j, m in enumerate(models):
            if m in self.models:
                k = self.models.index(m)
                labels[:, j] = self.labels[:, k]
                costs[:, j] = self.costs[:, k]
        return RoutingData(list(self.prompts), list(models), labels, costs,
                           list(self.groups), list(self.ids), dict(self.responses))

    def with_aliases(self, aliases: Mapping[str, str]) -> RoutingData:
        """Merge model columns that name the same model in different sources.

        ``aliases`` maps a column name to the canonical one (e.g. RouterBench's
        ``mistralai/mixtral-8x7b-chat`` to RouteLLM's
        ``mistralai/Mixtral-8x7B-Instruct-v0.1``). Where both columns hold a
        label (or cost) for the same prompt, the canonical column's value wins.
        """
        for alias, canonical in aliases.items():
            if alias == canonical:
                raise UsageError(f"alias {alias!r} maps to itself")
            if alias not in self.models:
                raise UsageError(f"alias {alias}={canonical}: no model {alias!r} in the data "
                                 f"(models: {', '.join(self.models)})")
        models = [m for m in self.models if m not in aliases]
        models += [c for c in aliases.values() if c not in models]
        out = self.with_models(models)
        for alias, canonical in aliases.items():
            j, k = self.models.index(alias), out.models.index(canonical)
            for mine, theirs in ((out.labels, self.labels), (out.costs, self.costs)):
                empty = np.isnan(mine[:, k])
                mine[empty, k] = theirs[empty, j]
        responses = dict(self.responses)
        for alias, canonical in aliases.items():
            if alias in responses:
                mine = responses.get(canonical, [None] * len(self))
                responses[canonical] = [a if a is not None else b for a, b in zip(mine, responses.pop(alias))]
        out.responses = responses
        return out

    @staticmethod
    def concat(parts: Sequence[RoutingData]) -> RoutingData:
        """Join datasets; the model list is the union, in first-seen order."""
        models: list[str] = []
        for p in parts:
            models += [m for m in p.models if m not in models]
        aligned = [p.with_models(models) for p in parts]
        responses: dict[str, list[str | None]] = {}
        for p in aligned:
            for m in models:
                responses.setdefault(m, []).extend(p.responses.get(m, [None] * len(p)))
        return RoutingData(
            prompts=[s for p in aligned for s in p.prompts],
            models=models,
            labels=np.concatenate([p.labels for p in aligned]) if aligned else np.zeros((0, 0)),
            costs=np.concatenate([p.costs for p in aligned]) if aligned else np.zeros((0, 0)),
            groups=[g for p in aligned for g in p.groups],
            ids=[i for p in aligned for i in p.ids],
            responses={m: r for m, r in responses.items() if any(x is not None for x in r)},
        )


def load(sources: Sequence[str | Path], aliases: Mapping[str, str] | None = None) -> RoutingData:
    """Load and join every routing-data file found in ``sources`` (see :meth:`RoutingData.with_aliases`)."""
    parts = [_load_file(name, text, contaminated) for name, text, contaminated in _expand(sources)]
    if not parts:
        raise DataError(f"no routing data (.csv) found in: {', '.join(map(str, sources))}")
    data = RoutingData.concat(parts)
    return data.with_aliases(aliases) if aliases else data


def parse_aliases(items: Sequence[str]) -> dict[str, str]:
    """``["FROM=TO", ...]`` as given on the command line."""
    out: dict[str, str] = {}
    for item in items:
        alias, sep, canonical = item.partition("=")
        if not sep or not alias.strip() or not canonical.strip():
            raise UsageError(f"--alias expects FROM=TO (a model column and its canonical name), got {item!r}")
        out[alias.strip()] = canonical.strip()
    return out


# -- sources ------------------------------------------------------------------------


def _expand(sources: Sequence[str | Path]) -> Iterable[tuple[str, str, set[str]]]:
    """Yield (name, csv text, contaminated prompts) for every file the sources name."""
    for source in sources:
        s = str(source)
        if s.startswith(("http://", "https://")):
            yield s, _fetch(s), set()
            continue
        path = Path(s)
        if not path.exists():
            raise DataError(f"{s}: no such file or directory")
        files = sorted(path.rglob("*.csv")) if path.is_dir() else [path]
        for f in files:
            yield str(f), _read_text(f), _contaminated_near(f)


def _fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            raw = resp.read()
    except OSError as exc:
        raise DataError(f"{url}: could not download ({exc})") from None
    return _decode(raw, url)


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    return _decode(raw, str(path))


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not UTF-8 text (byte {exc.start}); routing data must be UTF-8 CSV") from None


def _contaminated_near(path: Path) -> set[str]:
    """Prompts listed in a ``contaminated_prompts.jsonl`` beside ``path``."""
    listing = path.parent / "contaminated_prompts.jsonl"
    if not listing.exists():
        return set()
    out: set[str] = set()
    for n, line in enumerate(_read_text(listing).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{listing}:{n}: not a JSON line") from None
        if isinstance(row, dict) and isinstance(row.get("eval_prompt"), str):
            out.add(row["eval_prompt"].strip())
    return out


# -- formats ------------------------------------------------------------------------


def _load_file(name: str, text: str, contaminated: set[str]) -> RoutingData:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{name}: empty file") from None
    except csv.Error as exc:
        raise DataError(f"{name}: not valid CSV ({exc})") from None
    rows = _rows(reader, name, len(header))
    if "prompt" not in header:
        raise DataError(f"{name}: no 'prompt' column; expected RouteLLM or RouterBench format")
    if "sample_id" in header and "eval_name" in header:
        return _routerbench(name, header, rows)
    return _routellm(name, header, rows, contaminated)


def _rows(reader: Iterable[list[str]], name: str, width: int) -> list[list[str]]:
    rows = []
    try:
        for n, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != width:
                raise DataError(f"{name}:{n}: {len(row)} fields where the header has {width}")
            rows.append(row)
    except csv.Error as exc:
        raise DataError(f"{name}: not valid CSV ({exc})") from None
    return rows


def _label(value: str, name: str, line: int, column: str, *, allow_missing: bool) -> float:
    v = value.strip().lower()
    if v in _TRUE:
        return 1.0
    if v in _FALSE:
        return 0.0
    if v in {"", "nan"} and allow_missing:
        return math.nan
    raise DataError(f"{name}:{line}: column {column!r} has {value[:40]!r}; expected a 0/1 or True/False label")


def _group_of(name: str) -> str:
    stem = Path(name.split("?")[0]).stem
    for prefix in ("mmlu_",):
        if stem.startswith(prefix):
            return "mmlu/" + stem[len(prefix):]
    stem = stem.removesuffix("_responses")
    return stem


def _routellm(name: str, header: list[str], rows: list[list[str]], contaminated: set[str]) -> RoutingData:
    p = header.index("prompt")
    models = [h for h in header
              if h.strip() and h != "prompt" and not h.endswith("_response") and not h.startswith("Unnamed")]
    if not models:
        raise DataError(f"{name}: no model label columns beside 'prompt'")
    cols = [header.index(m) for m in models]
    resp_cols = {m: header.index(m + "_response") for m in models if m + "_response" in header}
    group = _group_of(name)
    prompts, labels, ids, responses = [], [], [], {m: [] for m in resp_cols}
    for n, row in enumerate(rows, 2):
        prompt = row[p]
        if not prompt.strip():
            raise DataError(f"{name}:{n}: empty prompt")
        if prompt.strip() in contaminated:
            continue
        labels.append([_label(row[c], name, n, m, allow_missing=True) for m, c in zip(models, cols)])
        prompts.append(prompt)
        ids.append(f"{group}:{n - 2}")
        for m, c in resp_cols.items():
            responses[m].append(row[c])
    lab = np.array(labels, dtype=float).reshape(len(prompts), len(models))
    return RoutingData(prompts, models, lab, np.full_like(lab, np.nan), [group] * len(prompts), ids, responses)


def routerbench_prompt(raw: str) -> str:
    """RouterBench stores a prompt as a Python list of strings (few-shot turns); join them."""
    text = raw.strip()
    if text.startswith("["):
        try:
            parts = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return raw
        if isinstance(parts, (list, tuple)) and all(isinstance(x, str) for x in parts):
            return "\n".join(parts)
    return raw


def _routerbench(name: str, header: list[str], rows: list[list[str]]) -> RoutingData:
    p, sid, ev = header.index("prompt"), header.index("sample_id"), header.index("eval_name")
    skip = {"prompt", "sample_id", "eval_name", "oracle_model_to_route_to", ""}
    models = [h for h in header[1:] if h not in skip and "|" not in h]
    if not models:
        raise DataError(f"{name}: no model score columns")
    cols = [header.index(m) for m in models]
    cost_cols = [header.index(f"{m}|total_cost") if f"{m}|total_cost" in header else None for m in models]
    resp_cols = {m: header.index(f"{m}|model_response") for m in models if f"{m}|model_response" in header}
    prompts, labels, costs, groups, ids = [], [], [], [], []
    responses: dict[str, list[str | None]] = {m: [] for m in resp_cols}
    for n, row in enumerate(rows, 2):
        prompt = routerbench_prompt(row[p])
        if not prompt.strip():
            raise DataError(f"{name}:{n}: empty prompt")
        labels.append([_label(row[c], name, n, m, allow_missing=True) for m, c in zip(models, cols)])
        cost_row = []
        for m, c in zip(models, cost_cols):
            v = row[c].strip() if c is not None else ""
            try:
                cost_row.append(float(v) if v else math.nan)
            except ValueError:
                raise DataError(f"{name}:{n}: column '{m}|total_cost' has {v[:40]!r}; expected a number") from None
        costs.append(cost_row)
        prompts.append(prompt)
        groups.append("routerbench/" + row[ev].split(".")[0].replace("-", "_"))
        ids.append(row[sid])
        for m, c in resp_cols.items():
            responses[m].append(row[c] or None)
    shape = (len(prompts), len(models))
    return RoutingData(prompts, models, np.array(labels, dtype=float).reshape(shape),
                       np.array(costs, dtype=float).reshape(shape), groups, ids, responses)

"""Recorded benchmark answers: reading them from ``../shared/data`` or the packaged demo set.

One :class:`Record` is one prompt answered by one model, with the response text, the
token counts and the cost of that call, and whether the answer was right. The replay
provider serves these; the demo uses the correctness flags to measure quality kept.

Token counts. Neither data set ships token counts, so they are derived, the same way for
every record, and documented here:

* prompt tokens: ``ceil(len(prompt) / 4)`` (OpenAI's rule of thumb of ~4 characters a token),
  capped for RouterBench so that no model's recorded cost of that prompt would leave less than
  one completion token: ``min over models of (total_cost - output_price) / input_price``. One
  prompt count per prompt, shared by all models;
* RouterBench completion tokens: from the recorded real cost of the call and the model's
  price: ``(total_cost - prompt_tokens * input_price) / output_price``, rounded, at least 1
  (a cost of 0 or a missing cost falls back to ``ceil(len(response) / 4)``);
* GSM8K (no costs recorded): completion tokens are ``ceil(len(response) / 4)``.

The recorded ``cost_usd`` of RouterBench rows is kept as is; GSM8K costs are priced from
the catalog.
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

PACKAGE_DATA = Path(__file__).parent / "replay_data"
DEMO_RECORDS = PACKAGE_DATA / "demo.jsonl.gz"
DEMO_IDS = PACKAGE_DATA / "demo_ids.txt"
DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"

ROUTERBENCH_TASKS = ("arc_challenge", "mbpp", "winograde")
ROUTERBENCH_MODELS = (
    "WizardLM/WizardLM-13B-V1.2",
    "claude-instant-v1",
    "claude-v1",
    "claude-v2",
    "gpt-3.5-turbo-1106",
    "gpt-4-1106-preview",
    "meta/code-llama-instruct-34b-chat",
    "meta/llama-2-70b-chat",
    "mistralai/mistral-7b-chat",
    "mistralai/mixtral-8x7b-chat",
    "zero-one-ai/Yi-34B-Chat",
)
GSM8K_MODELS = ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1")
DEMO_SEED = 20261121
DEMO_PER_TASK = 100

# USD per token of the replayed models, as billed when RouterBench recorded them
# (OpenAI and Anthropic list prices; Together AI prices for the open models).
REPLAY_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4-1106-preview": (10e-6, 30e-6),
    "gpt-3.5-turbo-1106": (1e-6, 2e-6),
    "claude-v1": (8e-6, 24e-6),
    "claude-v2": (8e-6, 24e-6),
    "claude-instant-v1": (0.8e-6, 2.4e-6),
    "meta/llama-2-70b-chat": (0.9e-6, 0.9e-6),
    "meta/code-llama-instruct-34b-chat": (0.776e-6, 0.776e-6),
    "mistralai/mixtral-8x7b-chat": (0.6e-6, 0.6e-6),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": (0.6e-6, 0.6e-6),
    "mistralai/mistral-7b-chat": (0.2e-6, 0.2e-6),
    "zero-one-ai/Yi-34B-Chat": (0.8e-6, 0.8e-6),
    "WizardLM/WizardLM-13B-V1.2": (0.3e-6, 0.3e-6),
}


@dataclass(frozen=True, slots=True)
class Record:
    sample_id: str
    task: str
    model: str
    prompt: str
    response: str
    correct: bool | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def prompt_key(prompt: str) -> str:
    """The lookup key of a prompt: whitespace-trimmed text, hashed (records are keyed by it)."""
    return hashlib.blake2b(prompt.strip().encode(), digest_size=16).hexdigest()


def join_prompt(parts: list[str]) -> str:
    """RouterBench stores a prompt as a list of strings; thrifty joins them with a blank line."""
    return "\n\n".join(parts)


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _routerbench_rows(shared: Path, task: str) -> list[dict[str, str]]:
    csv.field_size_limit(1 << 30)
    with open(shared / "routerbench" / f"{task}_train.csv", newline="") as f:
        return list(csv.DictReader(f))


def _complete(row: dict[str, str]) -> bool:
    return all(
        row.get(m, "") != "" and row.get(f"{m}|model_response", "") != ""
        for m in ROUTERBENCH_MODELS
    )


def demo_sample_ids(shared: Path = DEFAULT_SHARED) -> list[str]:
    """The demo's prompts: DEMO_PER_TASK per RouterBench task, complete rows only, fixed seed."""
    rng = random.Random(DEMO_SEED)
    chosen: list[str] = []
    for task in ROUTERBENCH_TASKS:
        ids = sorted(r["sample_id"] for r in _routerbench_rows(shared, task) if _complete(r))
        chosen.extend(sorted(rng.sample(ids, DEMO_PER_TASK)))
    return chosen


def load_demo_ids(path: Path = DEMO_IDS) -> set[str]:
    """The sample_ids the demo uses; router training must hold these out."""
    return {
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }


def routerbench_records(
    shared: Path = DEFAULT_SHARED, only: set[str] | None = None
) -> Iterator[Record]:
    for task in ROUTERBENCH_TASKS:
        for row in _routerbench_rows(shared, task):
            if only is not None and row["sample_id"] not in only:
                continue
            prompt = join_prompt(ast.literal_eval(row["prompt"]))
            models = [
                m
                for m in ROUTERBENCH_MODELS
                if row.get(f"{m}|model_response") and row.get(m, "") != ""
            ]
            costs = {m: float(row.get(f"{m}|total_cost") or 0.0) for m in models}
            caps = [
                int((c - REPLAY_PRICES[m][1]) / REPLAY_PRICES[m][0])
                for m, c in costs.items()
                if c > 0
            ]
            p_tokens = max(1, min([estimate_tokens(prompt), *caps]))
            for model in models:
                parts = ast.literal_eval(row[f"{model}|model_response"])
                response = parts[-1] if isinstance(parts, list) and parts else str(parts)
                cost = costs[model]
                in_price, out_price = REPLAY_PRICES[model]
                residual = cost - p_tokens * in_price
                c_tokens = round(residual / out_price) if cost > 0 else estimate_tokens(response)
                yield Record(
                    row["sample_id"],
                    row["eval_name"],
                    model,
                    prompt,
                    response,
                    float(row[model]) >= 0.5,
                    p_tokens,
                    max(1, c_tokens),
                    cost,
                )


def gsm8k_records(shared: Path = DEFAULT_SHARED) -> Iterator[Record]:
    path = shared / "routellm" / "gsm8k" / "gsm8k_responses.csv"
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            prompt = row["prompt"]
            p_tokens = estimate_tokens(prompt)
            for model in GSM8K_MODELS:
                response = row.get(f"{model}_response", "")
                if not response:
                    continue
                c_tokens = estimate_tokens(response)
                in_price, out_price = REPLAY_PRICES[model]
                yield Record(
                    f"gsm8k.{i}",
                    "gsm8k",
                    model,
                    prompt,
                    response,
                    row[model] == "True",
                    p_tokens,
                    c_tokens,
                    p_tokens * in_price + c_tokens * out_price,
                )


def read_packaged(path: Path = DEMO_RECORDS) -> Iterator[Record]:
    with gzip.open(path, "rb") as f:
        for line in f:
            yield Record(**orjson.loads(line))


def write_packaged(records: list[Record], path: Path = DEMO_RECORDS) -> None:
    from dataclasses import asdict

    with gzip.GzipFile(path, "wb", mtime=0) as f:
        for r in records:
            f.write(orjson.dumps(asdict(r)) + b"\n")


def build_demo_data(shared: Path = DEFAULT_SHARED) -> int:
    """Regenerate ``demo_ids.txt`` and ``demo.jsonl.gz`` from the shared data (maintainers only)."""
    ids = demo_sample_ids(shared)
    header = (
        "# The demo's RouterBench prompts (sample_id), 100 per task, seed "
        f"{DEMO_SEED}; router training holds these out.\n"
    )
    DEMO_IDS.write_text(header + "\n".join(ids) + "\n")
    records = list(routerbench_records(shared, set(ids)))
    write_packaged(records)
    return len(records)


if __name__ == "__main__":
    print(build_demo_data(), "records written to", DEMO_RECORDS)

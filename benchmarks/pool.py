"""A user's first weeks with ``auto`` on a pool of models the router has never seen, through the
real gateway and only its public interfaces (issue 13, "How it is measured").

    python -m benchmarks pool [--seeds 3] [--limit N] [--pools all,arc_challenge,mbpp,winograde]
                              [--rated 1.0,0.2] [--models K] [--out artifacts/pool-bench.json]

The pool: the 11 RouterBench models of ``../shared/data/routerbench`` (rows where every model has
a score, a response and a cost: 2,205 of 2,225 prompts, three tasks), under anonymised names
(``m01``..``m11``, shuffled per seed), priced per token from the data (:func:`fit_prices`), as
``[models.*]`` entries of ONE ``type = "openai"`` provider whose base_url is a local replay
upstream (:class:`ReplayUpstream`, a real HTTP server on 127.0.0.1). The upstream answers each
(prompt, model) with the recorded response and token counts whose price is the recorded cost, and
counts every call it serves with its cost, whatever asked for it (the routed answer, exploration,
shadow or judge calls): that is the cost of the run.

Per seed and share of rated answers: ``thrifty serve`` as a subprocess with that config (SQLite in
a temp dir), one team and one key made through the admin API, the prompts in a seeded random order
through the official ``openai`` client with ``"model": "auto"`` and ``max_tokens``, then, for the
rated share of answers, ``POST /v1/feedback {"request_id", "score"}`` with the same key and that
model's recorded 0/1 score. When the gateway refuses ``auto`` (today: 403 on any pool the packaged
router does not know), the run stops after ``--give-up`` refusals in a row and the report says so.

Baselines on the same stream, computed offline from the data: the best single model (highest mean
score on the pool, in hindsight), the cheapest model within 2% of its quality, a per-prompt oracle
(the cheapest correct model; the cheapest model when none is correct) and a naive Thompson sampler
(a Beta(1, 1) posterior per model, no context and no prices, it picks the highest sampled quality
and learns from the same rated answers as the gateway; simulated, not served). Figures are on the
whole stream and on its second half: mean quality, and mean cost as a share of the best single
model's on the same prompts; then the issue's targets (second half) and whether each is met.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(
    os.environ.get("THRIFTY_SHARED_DATA")
    or next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data" / "routerbench").is_dir()),
            ROOT.parent / "shared" / "data")
)  # ../shared/data of the checkout (a worktree's is further up)
TASKS = ("arc_challenge", "mbpp", "winograde")
ADMIN_KEY = "sk-thr-admin-pool-bench"
TEAM = "pool-bench"
NEAR_BEST = 0.98  # "the cheapest model within 2% of the best": mean quality >= 98% of the best's
DEFAULT_POOLS = ("all", "arc_challenge", "mbpp", "winograde", "arc_challenge:no-best", "mbpp:no-best")
CHEAP_SHARE = 0.10  # a cheap model is "nearly as good" when it is within 2% at <= 10% of the cost


# -- the data -------------------------------------------------------------------------------


@dataclass
class Pool:
    """Prompts (rows) x models: recorded 0/1 scores, costs in USD, responses."""

    name: str
    models: list[str]  # real names (the gateway only ever sees the anonymised ones)
    prompts: list[str]
    tasks: list[str]
    scores: np.ndarray  # (n, m) 0/1
    costs: np.ndarray  # (n, m) USD of that call as recorded
    responses: list[list[str]]  # [row][model]

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, rows: Sequence[int], models: Sequence[int] | None = None, name: str | None = None) -> Pool:
        cols = list(range(len(self.models))) if models is None else list(models)
        r = list(rows)
        return Pool(
            name or self.name,
            [self.models[j] for j in cols],
            [self.prompts[i] for i in r],
            [self.tasks[i] for i in r],
            self.scores[np.ix_(r, cols)],
            self.costs[np.ix_(r, cols)],
            [[self.responses[i][j] for j in cols] for i in r],
        )


def _response_text(raw: str) -> str:
    try:
        parts = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
    if isinstance(parts, (list, tuple)):
        return str(parts[-1]) if parts else ""
    return str(parts)


def load_pool(data: Path = DEFAULT_DATA) -> Pool:
    """All RouterBench rows where every model has a score, a response and a cost."""
    from thrifty.providers.replay_records import ROUTERBENCH_MODELS, join_prompt

    csv.field_size_limit(1 << 30)
    models = list(ROUTERBENCH_MODELS)
    prompts, tasks, scores, costs, responses = [], [], [], [], []
    for task in TASKS:
        with open(data / "routerbench" / f"{task}_train.csv", newline="") as f:
            for row in csv.DictReader(f):
                if not all(row.get(m) and row.get(f"{m}|total_cost") and row.get(f"{m}|model_response")
                           for m in models):
                    continue
                prompts.append(join_prompt(ast.literal_eval(row["prompt"])))
                tasks.append(task)
                scores.append([float(float(row[m]) >= 0.5) for m in models])
                costs.append([float(row[f"{m}|total_cost"]) for m in models])
                responses.append([_response_text(row[f"{m}|model_response"]) for m in models])
    return Pool("all", models, prompts, tasks, np.array(scores), np.array(costs), responses)


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))  # ~4 characters a token (the replay provider's rule)


def fit_prices(pool: Pool) -> dict[str, tuple[float, float]]:
    """Per model (USD per input token, per output token), fitted to the recorded costs.

    The data has costs, not token counts. Tokens are estimated from the text (~4 characters a
    token, prompt and response), then ``cost = a * prompt_tokens + b * completion_tokens`` is
    fitted per model by least squares on relative error (each call weighs the same, whatever its
    size). On this data it recovers the providers' list prices within a few percent.
    """
    p = np.array([estimate_tokens(t) for t in pool.prompts], float)
    out: dict[str, tuple[float, float]] = {}
    for j, model in enumerate(pool.models):
        c = np.array([estimate_tokens(r[j]) for r in pool.responses], float)
        y = pool.costs[:, j]
        w = 1.0 / np.clip(y, 1e-12, None)
        a, b = np.linalg.lstsq(np.stack([p, c], 1) * w[:, None], y * w, rcond=None)[0]
        if a <= 0 or b <= 0:  # degenerate fit: one price for both
            a = b = float(y.sum() / (p.sum() + c.sum()))
        out[model] = (float(a), float(b))
    return out


def usage_of(prompt: str, cost: float, price: tuple[float, float]) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) of one recorded call, priced at ``price`` to its cost.

    Prompt tokens are the estimate, capped so that at least one completion token is left; the
    completion tokens are the rest of the recorded cost at the output price, rounded (so usage x
    price is the recorded cost within half an output token).
    """
    a, b = price
    pt = max(1, min(estimate_tokens(prompt), int((cost - b) / a))) if cost > b else 1
    ct = max(1, round((cost - pt * a) / b))
    return pt, ct


# -- the local upstream ---------------------------------------------------------------------


@dataclass
class Call:
    position: int  # the stream position the driver was at when the call came in
    model: str  # anonymised name the gateway asked for
    matched: bool  # a recorded (prompt, model): False for prompts not in the pool (e.g. a judge's)
    cost: float


@dataclass
class ReplayUpstream:
    """A real OpenAI-compatible HTTP upstream replaying the pool's recorded answers.

    ``alias`` maps the anonymised model names to pool columns. Unknown prompts (a judge's rubric,
    say) get a short fixed answer priced at the model's fitted prices. ``position`` is set by the
    driver before each request, so every call can be put in the first or second half of the stream.
    """

    pool: Pool
    prices: dict[str, tuple[float, float]]
    alias: dict[str, int] = field(default_factory=dict)
    position: int = -1
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.by_prompt: dict[str, list[int]] = {}
        for i, p in enumerate(self.pool.prompts):
            self.by_prompt.setdefault(p.strip(), []).append(i)

    def answer(self, model: str, prompt: str) -> tuple[str, int, int, float, bool]:
        j = self.alias[model]
        real = self.pool.models[j]
        rows = self.by_prompt.get(prompt.strip())
        if rows:
            i = self.position if self.position in rows else rows[0]
            cost = float(self.pool.costs[i, j])
            pt, ct = usage_of(prompt, cost, self.prices[real])
            text, matched = self.pool.responses[i][j], True
        else:
            text, matched = "OK", False
            pt, ct = estimate_tokens(prompt), 1
        a, b = self.prices[real]
        return text, pt, ct, pt * a + ct * b, matched

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route

        async def chat(request: Request) -> Response:
            doc = await request.json()
            model = doc.get("model")
            if model not in self.alias:
                return JSONResponse({"error": {"message": f"unknown model {model!r}",
                                               "type": "invalid_request_error", "code": "model_not_found"}}, 404)
            content = (doc.get("messages") or [{}])[-1].get("content") or ""
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            text, pt, ct, cost, matched = self.answer(model, content)
            with self.lock:
                self.calls.append(Call(self.position, model, matched, cost))
                n = len(self.calls)
            usage = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
            base = {"id": f"chatcmpl-pool-{n}", "created": int(time.time()), "model": model}
            if not doc.get("stream"):
                return JSONResponse({**base, "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": usage})
            chunk = {**base, "object": "chat.completion.chunk"}
            events = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                             "finish_reason": None}]},
                      {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
            if (doc.get("stream_options") or {}).get("include_usage"):
                events.append({**chunk, "choices": [], "usage": usage})

            async def body() -> Any:
                for e in events:
                    yield f"data: {json.dumps(e)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(body(), media_type="text/event-stream")

        async def models(request: Request) -> Response:
            return JSONResponse({"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "pool"} for m in self.alias]})

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                                 Route("/v1/models", models, methods=["GET"])])


# -- the gateway ----------------------------------------------------------------------------


def gateway_config(base_url: str, aliases: dict[str, str], prices: dict[str, tuple[float, float]],
                   data_dir: Path, router: dict[str, Any] | None = None) -> str:
    """The user's thrifty.toml: one OpenAI-compatible provider, the pool as priced models (and
    ``[router]`` settings when a run compares them; the default run sets none)."""
    lines = [
        f'data_dir = "{data_dir}"',
        "",
        "[spend]",
        f'admin_key = "{ADMIN_KEY}"',
        "",
        "[providers.pool]",
        'type = "openai"',
        f'base_url = "{base_url}"',
        'api_key = "sk-pool-upstream"',
    ]
    for alias, real in aliases.items():
        a, b = prices[real]
        lines += ["", f'[models."{alias}"]', 'provider = "pool"',
                  f"input_cost_per_token = {a:.6e}", f"output_cost_per_token = {b:.6e}"]
    if router:
        lines += ["", "[router]"] + [f"{k} = {json.dumps(v)}" for k, v in router.items()]
    return "\n".join(lines) + "\n"


class Gateway:
    """``thrifty serve --config ...`` as a subprocess (stopped by its own pid)."""

    def __init__(self, config: Path, workdir: Path) -> None:
        from thrifty.testing.server import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env.update(THRIFTY_DATA_DIR=str(workdir / "data"), OMP_NUM_THREADS="1")
        # The gateway runs the same thrifty the harness imported (this checkout or another one).
        import thrifty

        code = str(Path(thrifty.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (code, env.get("PYTHONPATH", "")) if p)
        self.logpath = workdir / "serve.log"
        self.log = open(self.logpath, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "thrifty.cli", "serve", "--config", str(config), "--port", str(self.port)],
            cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"thrifty serve exited: {self.logpath.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"thrifty serve not ready after {timeout}s: {self.logpath.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def make_key(url: str, policy: dict[str, Any] | None = None) -> str:
    """One team (with ``policy`` as its policy, if any) and one key of it, through the admin API
    (as a user sets it up)."""
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    r = httpx.post(url + "/admin/teams", json={"id": TEAM}, headers=admin, timeout=30)
    r.raise_for_status()
    if policy:
        r = httpx.put(url + f"/admin/policies/team/{TEAM}", json=policy, headers=admin, timeout=30)
        r.raise_for_status()
    r = httpx.post(url + "/admin/keys", json={"team_id": TEAM, "name": "pool-bench"}, headers=admin, timeout=30)
    r.raise_for_status()
    return r.json()["key"]


# -- one run through the gateway ------------------------------------------------------------


@dataclass
class Served:
    chosen: np.ndarray  # (n,) pool column that answered, -1 where refused or failed
    billed: float  # sum of x-thrifty-cost-usd
    refusals: list[dict[str, Any]]
    feedback_errors: int
    stopped_early: bool
    seconds: float


def drive(url: str, key: str, pool: Pool, order: Sequence[int], rated: np.ndarray, alias: dict[str, int],
          upstream: ReplayUpstream, *, max_tokens: int, give_up: int) -> Served:
    """Stream the prompts through ``auto``; rate the answers at positions where ``rated``."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
    fb = httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=60)
    chosen = np.full(len(order), -1)
    billed, refusals, fb_errors, in_a_row, stopped = 0.0, [], 0, 0, False
    t0 = time.perf_counter()
    try:
        for pos, i in enumerate(order):
            upstream.position = i
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": pool.prompts[i]}], max_tokens=max_tokens)
            except openai.APIStatusError as exc:
                err = (exc.body or {}).get("error", exc.body) if isinstance(exc.body, dict) else exc.body
                refusals.append({"position": pos, "status": exc.status_code,
                                 "code": err.get("code") if isinstance(err, dict) else None,
                                 "message": err.get("message") if isinstance(err, dict) else str(err)})
                in_a_row += 1
                if give_up and in_a_row >= give_up and pos + 1 == in_a_row:
                    stopped = True  # refused from the first request on: stop, and say so
                    break
                continue
            in_a_row = 0
            served = raw.headers.get("x-thrifty-model", "")
            if served not in alias:
                refusals.append({"position": pos, "status": raw.http_response.status_code, "code": "unknown_model",
                                 "message": f"answered by {served!r}, not a pool model"})
                continue
            j = alias[served]
            chosen[pos] = j
            billed += float(raw.headers.get("x-thrifty-cost-usd") or 0.0)
            if rated[pos]:
                r = fb.post("/v1/feedback", json={"request_id": raw.headers["x-request-id"],
                                                  "score": float(pool.scores[i, j])})
                fb_errors += r.status_code != 200
    finally:
        fb.close()
        client.close()
    return Served(chosen, billed, refusals, fb_errors, stopped, time.perf_counter() - t0)


def settle(upstream: ReplayUpstream, quiet: float = 1.0, most: float = 15.0) -> None:
    """Wait for calls the gateway makes off the response path (judge, shadow) to come in."""
    deadline = time.monotonic() + most
    seen = -1
    while time.monotonic() < deadline and len(upstream.calls) != seen:
        seen = len(upstream.calls)
        time.sleep(quiet)


# -- scoring --------------------------------------------------------------------------------


def thompson(pool: Pool, order: Sequence[int], rated: np.ndarray, seed: int) -> np.ndarray:
    """The naive sampler: Beta(1, 1) per model, no context, no prices; picks the highest draw."""
    rng = np.random.default_rng(seed)
    alpha = np.ones(len(pool.models))
    beta = np.ones(len(pool.models))
    chosen = np.empty(len(order), int)
    for pos, i in enumerate(order):
        j = int(np.argmax(rng.beta(alpha, beta)))
        chosen[pos] = j
        if rated[pos]:
            s = pool.scores[i, j]
            alpha[j] += s
            beta[j] += 1 - s
    return chosen


def figures(pool: Pool, order: np.ndarray, chosen: np.ndarray, costs: np.ndarray, best: int) -> dict[str, float]:
    """Mean quality (a refused request scores 0), mean cost per prompt, both as shares of the
    best single model's on the same prompts."""
    q = np.where(chosen >= 0, pool.scores[order, np.clip(chosen, 0, None)], 0.0)
    bq, bc = pool.scores[order, best].mean(), pool.costs[order, best].mean()
    return {"quality": float(q.mean()), "cost_per_1k": float(costs.mean() * 1000),
            "quality_vs_best": float(q.mean() / bq) if bq else math.nan,
            "cost_vs_best": float(costs.mean() / bc) if bc else math.nan}


def targets(second_half: dict[str, float], cheap_close: bool) -> dict[str, Any]:
    if cheap_close:
        goal = f">= {NEAR_BEST:.0%} of best quality at <= {CHEAP_SHARE:.0%} of its cost"
        met = second_half["quality_vs_best"] >= NEAR_BEST and second_half["cost_vs_best"] <= CHEAP_SHARE
    else:
        goal = ">= 25% saving at <= 4% quality loss"
        met = second_half["cost_vs_best"] <= 0.75 and second_half["quality_vs_best"] >= 0.96
    return {"target": goal, "met": bool(met)}


def reference(pool: Pool) -> dict[str, Any]:
    """Best single model, the cheapest within 2% of it, and whether a cheap model is close."""
    q, c = pool.scores.mean(0), pool.costs.mean(0)
    best = int(np.argmax(q))
    near = [j for j in range(len(pool.models)) if q[j] >= NEAR_BEST * q[best]]
    cheap = min(near, key=lambda j: c[j])
    return {"best": best, "cheap": cheap, "cheap_close": bool(c[cheap] <= CHEAP_SHARE * c[best]),
            "models": [{"model": m, "quality": float(q[j]), "cost_per_1k": float(c[j] * 1000)}
                       for j, m in enumerate(pool.models)]}


def segment_report(pool: Pool, order: np.ndarray, policies: dict[str, tuple[np.ndarray, np.ndarray]],
                   best: int) -> dict[str, Any]:
    half = len(order) // 2
    out: dict[str, Any] = {}
    for name, (chosen, costs) in policies.items():
        out[name] = {"whole": figures(pool, order, chosen, costs, best),
                     "second_half": figures(pool, order[half:], chosen[half:], costs[half:], best)}
    return out


def run_one(pool: Pool, prices: dict[str, tuple[float, float]], seed: int, rated_share: float,
            ref: dict[str, Any], *, max_tokens: int, give_up: int, log: Any,
            known_names: bool = False, policy: dict[str, Any] | None = None,
            router: dict[str, Any] | None = None) -> dict[str, Any]:
    """One seed, one share of rated answers: the gateway run and the baselines on its stream."""
    from thrifty.testing.server import running

    rng = random.Random(f"pool-bench/{pool.name}/{seed}")
    order = list(range(len(pool)))
    rng.shuffle(order)
    cols = list(range(len(pool.models)))
    rng.shuffle(cols)
    names = {f"m{k + 1:02d}": j for k, j in enumerate(cols)}  # anonymised name -> pool column
    if known_names:  # a control only: the packaged router was trained on these very prompts
        names = {pool.models[j]: j for j in cols}
    rated = np.array([rng.random() < rated_share for _ in order]) if rated_share < 1 else np.ones(len(order), bool)
    o = np.array(order)

    upstream = ReplayUpstream(pool, prices, alias=names)
    with tempfile.TemporaryDirectory(prefix="thrifty-pool-") as tmp, running(upstream.app()) as up_url:
        work = Path(tmp)
        cfg = work / "thrifty.toml"
        cfg.write_text(gateway_config(up_url + "/v1", {a: pool.models[j] for a, j in names.items()},
                                      prices, work / "data", router))
        gw = Gateway(cfg, work)
        try:
            gw.wait_ready()
            key = make_key(gw.url, policy)
            served = drive(gw.url, key, pool, order, rated, names, upstream, max_tokens=max_tokens,
                           give_up=give_up)
            settle(upstream)
        finally:
            gw.stop()

    # Cost of the run: every call the upstream served, put at the stream position it came in at.
    rank = np.empty(len(order), int)
    rank[o] = np.arange(len(order))
    spent = np.zeros(len(order))
    for call in upstream.calls:
        if call.position >= 0:
            spent[rank[call.position]] += call.cost
    n_served = int((served.chosen >= 0).sum())
    best, cheap = ref["best"], ref["cheap"]

    def single(j: int) -> tuple[np.ndarray, np.ndarray]:
        return np.full(len(order), j), pool.costs[o, j]

    oracle = np.array([min((j for j in cols if pool.scores[i, j] == 1), key=lambda j: pool.costs[i, j],
                           default=int(np.argmin(pool.costs[i]))) for i in o])
    ts = thompson(pool, o, rated, seed)
    policies: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "best_single": single(best),
        "cheapest_within_2pct": single(cheap),
        "oracle": (oracle, pool.costs[o, oracle]),
        "naive_thompson": (ts, pool.costs[o, ts]),
    }
    refused = bool(served.stopped_early or n_served == 0)
    if not refused:
        policies = {"thrifty_auto": (served.chosen, spent), **policies}
    result: dict[str, Any] = {
        "pool": pool.name, "seed": seed, "rated_share": rated_share, "prompts": len(order),
        "rated": int(rated.sum()), "models": len(pool.models), "known_names": known_names,
        "names": {a: pool.models[j] for a, j in names.items()},
        "thrifty": {
            "refused": refused,
            "served": n_served,
            "refusals": len(served.refusals),
            "first_refusal": served.refusals[0] if served.refusals else None,
            "stopped_early": served.stopped_early,
            "feedback_errors": served.feedback_errors,
            "upstream_calls": len(upstream.calls),
            "upstream_calls_unmatched": sum(not c.matched for c in upstream.calls),
            "upstream_cost_usd": float(sum(c.cost for c in upstream.calls)),
            "billed_usd": served.billed,
            "seconds": round(served.seconds, 1),
            "share_by_model": {a: float((served.chosen == j).mean()) for a, j in names.items()},
        },
        "policies": segment_report(pool, o, policies, best),
    }
    for fig in result["policies"].values():
        fig["targets"] = targets(fig["second_half"], ref["cheap_close"])
    log(_run_line(result))
    return result


def _run_line(r: dict[str, Any]) -> str:
    t = r["thrifty"]
    head = f"  {r['pool']:<13} seed {r['seed']} rated {r['rated_share']:.0%}: "
    if t["refused"]:
        f = t["first_refusal"] or {}
        return head + f"thrifty auto REFUSED ({f.get('status')} {f.get('code')}: {f.get('message')})"
    a = r["policies"]["thrifty_auto"]["second_half"]
    return head + (f"thrifty auto 2nd half quality {a['quality_vs_best']:.1%} of best at "
                   f"{a['cost_vs_best']:.1%} of its cost ({t['served']}/{r['prompts']} served, "
                   f"{t['upstream_calls']} upstream calls, {t['seconds']:.0f} s)")


# -- summary --------------------------------------------------------------------------------

POLICY_ORDER = ("thrifty_auto", "best_single", "cheapest_within_2pct", "oracle", "naive_thompson")


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (pool, rated share, policy); thrifty refused counts are kept."""
    rows = []
    keys = list(dict.fromkeys((r["pool"], r["rated_share"]) for r in runs))
    for pool, share in keys:
        group = [r for r in runs if r["pool"] == pool and r["rated_share"] == share]
        for pol in POLICY_ORDER:
            have = [r["policies"][pol] for r in group if pol in r["policies"]]
            row: dict[str, Any] = {"pool": pool, "rated_share": share, "policy": pol, "seeds": len(have)}
            if pol == "thrifty_auto":
                refused = [r for r in group if r["thrifty"]["refused"]]
                row["refused_runs"] = len(refused)
                if refused:
                    f = refused[0]["thrifty"]["first_refusal"] or {}
                    row["refusal"] = f"{f.get('status')} {f.get('code')}"
            if have:
                for seg in ("whole", "second_half"):
                    for k in ("quality", "quality_vs_best", "cost_vs_best"):
                        row[f"{seg}_{k}"] = float(np.mean([h[seg][k] for h in have]))
                row["met"] = sum(h["targets"]["met"] for h in have)
                row["target"] = have[0]["targets"]["target"]
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| pool | rated | policy | quality (whole) | cost vs best (whole) | quality (2nd half) "
            "| quality vs best (2nd half) | cost vs best (2nd half) | target met (seeds) |")
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        base = f"| {r['pool']} | {r['rated_share']:.0%} | {r['policy']} |"
        if "whole_quality" not in r:
            lines.append(base + f" refused ({r.get('refusal', '?')}, {r.get('refused_runs', 0)} runs) | | | | | |")
            continue
        lines.append(base + f" {r['whole_quality']:.3f} | {r['whole_cost_vs_best']:.1%} | "
                     f"{r['second_half_quality']:.3f} | {r['second_half_quality_vs_best']:.1%} | "
                     f"{r['second_half_cost_vs_best']:.1%} | {r['met']}/{r['seeds']} |")
    return "\n".join(lines)


def compact(rows: list[dict[str, Any]]) -> str:
    """One line per (pool, rated share): each policy's second half as quality / cost, both as
    shares of the best single model's, and the target (met by thrifty auto in how many seeds)."""
    cells: dict[tuple[str, float], dict[str, str]] = {}
    for r in rows:
        c = cells.setdefault((r["pool"], r["rated_share"]), {})
        if "second_half_quality_vs_best" in r:
            c[r["policy"]] = f"{r['second_half_quality_vs_best']:.1%} / {r['second_half_cost_vs_best']:.1%}"
            if r["policy"] == "thrifty_auto":
                c["met"] = f"{r['met']}/{r['seeds']}"
            c["target"] = r["target"]
        elif r["policy"] == "thrifty_auto":
            c[r["policy"]] = f"refused ({r.get('refusal')})"
            c["met"] = f"0/{r.get('refused_runs', 0)}"
    head = ("| pool | rated | thrifty auto | naive Thompson | cheapest within 2% | oracle | target (2nd half) "
            "| met (seeds) |")
    lines = [head, "|" + " --- |" * 8]
    for (pool, share), c in cells.items():
        lines.append(f"| {pool} | {share:.0%} | {c.get('thrifty_auto', '')} | {c.get('naive_thompson', '')} | "
                     f"{c.get('cheapest_within_2pct', '')} | {c.get('oracle', '')} | {c.get('target', '')} | "
                     f"{c.get('met', '')} |")
    return "\n".join(lines)


def pools_of(full: Pool, names: Sequence[str], limit: int | None, n_models: int | None) -> list[Pool]:
    """``all`` or a task's prompts; ``<pool>:no-best`` is that pool without its best model (a
    deployment with no frontier model: on ARC and MBPP a cheap model is then within 2% of the best)."""
    out = []
    for spec in names:
        name, _, variant = spec.partition(":")
        if name == "all":
            rows = list(range(len(full)))
        elif name in TASKS:
            rows = [i for i, t in enumerate(full.tasks) if t == name]
        else:
            raise SystemExit(f"unknown pool {name!r}: use all or one of {', '.join(TASKS)}")
        if variant not in ("", "no-best"):
            raise SystemExit(f"unknown pool variant {variant!r}: the only one is no-best")
        if limit and limit < len(rows):
            rows = sorted(random.Random(f"pool-bench/limit/{name}").sample(rows, limit))
        cols = list(range(len(full.models)))
        if variant == "no-best":
            cols.remove(int(np.argmax(full.scores[rows].mean(0))))
        if n_models and n_models < len(cols):
            cols = sorted(random.Random(f"pool-bench/models/{spec}").sample(cols, n_models))
        out.append(full.subset(rows, cols, spec))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks pool", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--pools", default=",".join(DEFAULT_POOLS),
                    help="comma-separated: all, arc_challenge, mbpp, winograde, each optionally :no-best")
    ap.add_argument("--seeds", default="3", help="a count (1, 2, 3 ...) or a comma-separated list of seeds")
    ap.add_argument("--rated", default="1.0,0.2", help="shares of answers rated, comma-separated")
    ap.add_argument("--limit", type=int, default=None, help="at most this many prompts per pool")
    ap.add_argument("--models", type=int, default=None, help="at most this many models per pool")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--give-up", type=int, default=25,
                    help="stop a run refused on this many first requests in a row (0: never)")
    ap.add_argument("--known-names", action="store_true",
                    help="a control, not a result: the real model names, which the packaged router "
                    "was trained on (with these prompts); checks the harness's served path")
    ap.add_argument("--policy", type=json.loads, default=None,
                    help="a team policy as JSON (the admin API's rules), e.g. to see a refused run reported")
    ap.add_argument("--router", type=json.loads, default=None,
                    help='[router] settings as JSON, e.g. \'{"caution": 0.5}\' (default: none, as a new user)')
    ap.add_argument("--out", type=Path, default=ROOT / "artifacts" / "pool-bench.json")
    args = ap.parse_args(argv)
    seeds = (list(range(1, int(args.seeds) + 1)) if "," not in args.seeds and args.seeds.isdigit()
             else [int(s) for s in args.seeds.split(",")])
    shares = [float(s) for s in args.rated.split(",")]

    full = load_pool(args.data)
    prices = fit_prices(full)  # on the whole data: a price is a fact of a model, not of a split
    pools = pools_of(full, [p.strip() for p in args.pools.split(",") if p.strip()], args.limit, args.models)
    print(f"pool benchmark: {len(full)} complete RouterBench prompts, {len(full.models)} models; "
          f"pools {', '.join(f'{p.name} ({len(p)} x {len(p.models)})' for p in pools)}; "
          f"seeds {seeds}; rated {', '.join(f'{s:.0%}' for s in shares)}", flush=True)
    runs, refs = [], {}
    for pool in pools:
        ref = reference(pool)
        refs[pool.name] = {**ref, "best_model": pool.models[ref["best"]], "cheap_model": pool.models[ref["cheap"]]}
        for seed in seeds:
            for share in shares:
                runs.append(run_one(pool, prices, seed, share, ref, max_tokens=args.max_tokens,
                                    give_up=args.give_up, log=lambda s: print(s, flush=True),
                                    known_names=args.known_names, policy=args.policy,
                                    router=args.router))
    rows = summarise(runs)
    print()
    for name, ref in refs.items():
        print(f"{name}: best single {ref['best_model']}; cheapest within 2% {ref['cheap_model']} "
              f"({'a cheap model is close' if ref['cheap_close'] else 'no cheap model is close'})")
    print()
    print(table(rows))
    print("\nsecond half, quality / cost as shares of the best single model's (mean over seeds):\n")
    print(compact(rows))
    doc = {"prices_usd_per_token": {m: {"input": a, "output": b} for m, (a, b) in prices.items()},
           "pools": refs, "summary": rows, "runs": runs,
           "protocol": {"seeds": seeds, "rated": shares, "limit": args.limit, "models": args.models,
                        "max_tokens": args.max_tokens, "known_names": args.known_names, "policy": args.policy,
                        "router": args.router}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``thrifty demo``: the gateway's main job, shown end to end on real benchmark data.

Starts the gateway on the embedded default (offline replay of the packaged RouterBench
records, the router shipped in the package), sends the demo's few hundred prompts through
``auto`` with the official ``openai`` client, and reports which models served them, what
it cost against sending everything to the frontier model, and how much quality was kept
(the recorded answers say which were right). The frontier baseline is measured the same
way: the same prompts sent to the frontier model through the gateway.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from thrifty.errors import UsageError
from thrifty.providers.replay_records import Record, prompt_key, read_packaged

if TYPE_CHECKING:
    from thrifty.config import GatewayConfig


@dataclass
class Outcome:
    sample_id: str
    task: str
    model: str
    cost: float
    correct: bool
    latency: float
    frontier: float = 0.0  # first-hour: x-thrifty-frontier-cost-usd, for the headline savings


async def _send_all(
    base_url: str,
    model: str,
    records: dict[str, dict[str, Record]],
    prompts: list[str],
    concurrency: int,
    api_key: str,
) -> list[Outcome]:
    try:
        import openai
    except ImportError:
        raise UsageError("thrifty demo drives the gateway with the official openai client, which is not "
                         "installed: pip install 'thrifty[demo]' (./run demo does it)") from None

    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=2)
    sem = asyncio.Semaphore(concurrency)

    async def one(prompt: str) -> Outcome:
        async with sem:
            t0 = time.perf_counter()
            raw = await client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": prompt}]
            )
            latency = time.perf_counter() - t0
            served = raw.headers["x-thrifty-model"]
            rec = records[prompt_key(prompt)][served]
            answer = raw.parse().choices[0].message.content
            if answer != rec.response:
                raise RuntimeError(f"replay mismatch for {rec.sample_id}")
            return Outcome(
                rec.sample_id,
                rec.task,
                served,
                float(raw.headers["x-thrifty-cost-usd"]),
                bool(rec.correct),
                latency,
                float(raw.headers["x-thrifty-frontier-cost-usd"]),
            )

    try:
        return list(await asyncio.gather(*(one(p) for p in prompts)))
    finally:
        await client.close()


def _exe() -> str:
    """How to call thrifty from here (first-hour: ./run does not put .venv/bin on PATH)."""
    import os
    import sys

    if shutil.which("thrifty"):
        return "thrifty"
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "thrifty" and os.path.isfile(argv0):
        rel = os.path.relpath(argv0)
        return rel if rel.startswith(".") or os.sep not in rel else "./" + rel
    return f"{os.path.relpath(sys.executable)} -m thrifty.cli"


def _summary(outcomes: list[Outcome]) -> tuple[float, float]:
    return sum(o.cost for o in outcomes), sum(o.correct for o in outcomes) / max(1, len(outcomes))


def demo_config(data_dir: Path) -> GatewayConfig:
    """The demo's gateway: the embedded default, offline (no real providers, even if keys are
    set), with every pipeline stage on as ``thrifty serve`` runs them: the response cache
    (exact, for deterministic requests), the auto-cascade profile and batch deferral."""
    from thrifty.config import build_config, default_document

    doc = default_document(env={})
    doc["providers"]["replay"]["source"] = "packaged"
    doc["data_dir"] = str(data_dir)
    doc["spend"] = {"admin_key": "sk-admin-demo-" + secrets.token_hex(16)}
    doc["cache"] = {"deterministic": True}
    return build_config(doc, data_dir=data_dir, env={})


def run_demo(
    limit: int | None = None, profile: str = "auto", concurrency: int = 8, port: int = 0
) -> int:
    from rich.console import Console
    from rich.table import Table

    from thrifty.gateway.assemble import build_app
    from thrifty.gateway.server import running
    from thrifty.paths import default_data_dir
    from thrifty.spend import admin_ops

    console = Console()
    t_start = time.perf_counter()
    by_prompt: dict[str, dict[str, Record]] = defaultdict(dict)
    order: list[str] = []
    for r in read_packaged():
        key = prompt_key(r.prompt)
        if key not in by_prompt:
            order.append(r.prompt)
        by_prompt[key][r.model] = r
    prompts = order[:limit] if limit else order

    # The demo's ledger stays behind for `thrifty report` and `thrifty simulate`.
    data_dir = default_data_dir() / "demo"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    config = demo_config(data_dir)
    app, spend = build_app(config)
    keys = {}
    for team in ("demo", "baseline"):  # routed traffic, and the all-frontier counterfactual
        admin_ops.create_team(spend.db, team)
        keys[team] = admin_ops.create_key(spend.db, team_id=team, name=f"{team} key")[1]
    spend.reload()
    router = app.gw.router
    if router.router is None:
        console.print(f"[yellow]note:[/] {router.error}; 'auto' falls back to the cheapest model.")
    frontier = config.frontier_model
    console.print(
        f"thrifty demo: {len(prompts)} real RouterBench prompts (ARC-Challenge, MBPP, Winogrande), "
        f"{len(config.models)} replayed models, routed by [bold]{profile}[/]; "
        f"baseline: everything on [bold]{frontier}[/]."
    )
    with running(app, port) as url:
        t0 = time.perf_counter()
        routed = asyncio.run(_send_all(url, profile, by_prompt, prompts, concurrency, keys["demo"]))
        t_routed = time.perf_counter() - t0
        base = asyncio.run(_send_all(url, frontier, by_prompt, prompts, concurrency, keys["baseline"]))
        spend.flush()

    cost, acc = _summary(routed)
    f_cost, f_acc = _summary(base)
    shares = Counter(o.model for o in routed)
    table = Table(title=f"Requests routed by '{profile}'")
    for col, just in (
        ("model", "left"),
        ("requests", "right"),
        ("share", "right"),
        ("correct", "right"),
        ("cost USD", "right"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for model, n in shares.most_common():
        mine = [o for o in routed if o.model == model]
        table.add_row(
            model,
            str(n),
            f"{n / len(routed):.0%}",
            f"{sum(o.correct for o in mine) / n:.0%}",
            f"{sum(o.cost for o in mine):.4f}",
        )
    console.print(table)

    tasks = Table(title="By task")
    for col in (
        "task",
        "prompts",
        "routed correct",
        "frontier correct",
        "routed cost",
        "frontier cost",
    ):
        tasks.add_column(col, justify="left" if col == "task" else "right")
    base_by = {o.sample_id: o for o in base}
    for task in sorted({o.task for o in routed}):
        mine = [o for o in routed if o.task == task]
        theirs = [base_by[o.sample_id] for o in mine]
        tasks.add_row(
            task,
            str(len(mine)),
            f"{sum(o.correct for o in mine) / len(mine):.0%}",
            f"{sum(o.correct for o in theirs) / len(theirs):.0%}",
            f"${sum(o.cost for o in mine):.4f}",
            f"${sum(o.cost for o in theirs):.4f}",
        )
    console.print(tasks)

    lat = sorted(o.latency for o in routed)
    kept = acc / f_acc if f_acc else 0.0
    # first-hour: the headline is the one figure report and dashboard show ("saved vs
    # all-frontier": the same requests' tokens priced at the frontier model); the measured run
    # of every prompt on the frontier model is labelled as what it is.
    headline = 1 - cost / sum(o.frontier for o in routed) if routed else 0.0
    console.print(
        f"[bold]cost[/]: ${cost:.4f} routed; [bold green]{headline:.0%} saved vs all-frontier[/] "
        f"(the report's and dashboard's figure for team 'demo'); measured against a real "
        f"all-{frontier} run of the same prompts: ${f_cost:.4f}, {1 - cost / f_cost:.0%} less "
        f"({f_cost / cost if cost else 0:.1f}x cheaper)\n"
        f"[bold]quality[/]: {acc:.1%} correct routed vs {f_acc:.1%} all-{frontier} "
        f"([bold]{kept:.0%} of frontier quality kept[/])\n"
        f"[bold]gateway[/]: {len(routed)} requests in {t_routed:.1f} s with the openai client, "
        f"p50 {lat[len(lat) // 2] * 1000:.1f} ms per request at concurrency {concurrency} (client included); "
        f"demo total {time.perf_counter() - t_start:.1f} s.\n"
        "Data: RouterBench (Martian, MIT), real recorded answers replayed offline; "
        "token counts derived as documented in thrifty/providers/replay_records.py.\n"
        f"[bold]ledger[/]: {2 * len(prompts)} requests under teams 'demo' and 'baseline' in {data_dir}; try\n"
        f"  {_exe()} report --data-dir {data_dir} --team demo\n"
        f"  {_exe()} simulate --data-dir {data_dir} --team demo --profile auto-cheap"
    )
    return 0

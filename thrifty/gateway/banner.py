"""The ``thrifty serve`` start-up banner: which models answer what, and a request that works."""

from __future__ import annotations

import shlex
from collections import defaultdict
from typing import Any

from thrifty.config import LOCAL_MODEL, OFFLINE_MODEL


def banner(config: Any, host: str, port: int, *, router_on: bool, profiles: list[str]) -> str:
    """Plain text, one fact a line; ``config`` is a :class:`GatewayConfig`."""
    by_type: dict[str, list[str]] = defaultdict(list)
    for name, mc in config.models.items():
        by_type[config.providers[mc.deployments[0].provider].type].append(name)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    base = f"http://{shown}:{port}"
    router = "on" if router_on else "off"
    lines = [f"thrifty gateway on {base}/v1 ({len(config.models)} models; router: {router})"]
    real = [
        n for t, names in by_type.items() if t not in ("replay", "offline", "llama") for n in names
    ]
    if real:
        lines.append(f"  real providers: {', '.join(sorted(real))}")
    else:
        lines.append(
            "  real providers: none (set OPENAI_API_KEY, ANTHROPIC_API_KEY, ... or pass --config)"
        )
    replay = by_type.get("replay", [])
    stand_in = LOCAL_MODEL if LOCAL_MODEL in config.models else OFFLINE_MODEL
    if replay:
        lines.append(
            f"  {len(replay)} replay models answer only their recorded benchmark prompts "
            f"(thrifty demo sends them); any other prompt falls back to {stand_in}"
        )
    if LOCAL_MODEL in config.models:
        lines.append(f"  {LOCAL_MODEL}: a real local model (SmolLM2-135M on llama.cpp), any prompt")
    if OFFLINE_MODEL in config.models:
        lines.append(
            f"  {OFFLINE_MODEL}: an offline stand-in that answers any prompt by saying it is one"
        )
        if LOCAL_MODEL not in config.models:
            from thrifty.providers.local_llm import INSTALL_HINT

            lines.append(f"    for a real local model instead: {INSTALL_HINT}")
    if profiles:
        lines.append(f"  routing profiles ({', '.join(profiles)}) choose among the routable models")
    body = '{"model": "auto", "messages": [{"role": "user", "content": "What is the capital of France?"}]}'
    if config.spend_enabled:
        make_key = (
            f'KEY=$(curl -s -X POST {base}/admin/keys -H "authorization: Bearer $THRIFTY_ADMIN_KEY" '
            '-d \'{"name": "first"}\' | python3 -c \'import json,sys; print(json.load(sys.stdin)["key"])\')'
        )
        lines += [
            "try it (THRIFTY_ADMIN_KEY set to the admin key; the first command makes a virtual key):",
            f"  {make_key}",
            (
                f'  curl -s {base}/v1/chat/completions -H "authorization: Bearer $KEY" '
                f"-H 'content-type: application/json' -d {shlex.quote(body)}"
            ),
        ]
    else:
        lines += [
            "try it:",
            (
                f"  curl -s {base}/v1/chat/completions -H 'content-type: application/json' "
                f"-d {shlex.quote(body)}"
            ),
        ]
    return "\n".join(lines)

"""``thrifty serve`` and ``thrifty demo`` (argparse only at import time)."""

from __future__ import annotations

import argparse

from thrifty.cli import actions


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the gateway (OpenAI- and Anthropic-compatible)",
        description="Run the gateway. With no --config it runs the embedded default: "
        "offline replay models (their recorded prompts), a local model when the llm extra is "
        "installed, offline-echo (an offline stand-in for any other prompt), plus real providers "
        "whose API keys are in the environment.",
    )
    p.add_argument("--config", help="TOML config file (default: the embedded default)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4000)
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--server",
        default="uvicorn",
        choices=["uvicorn", "granian"],
        help="HTTP server (default: uvicorn; granian if installed)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes sharing the port (default 1; uvicorn only): budgets, rate limits, "
        "the ledger and /metrics hold across them; circuit breakers are per worker",
    )
    p.set_defaults(func=_serve)

    csub = actions(subparsers, "config", "gateway config tools (import a LiteLLM config.yaml)")
    imp = csub.add_parser(
        "import-litellm",
        help="translate a LiteLLM proxy config.yaml into a thrifty TOML config",
        description="Translate a LiteLLM proxy config.yaml (model_list, litellm_params with "
        "os.environ/ keys, fallbacks, database_url) into a thrifty TOML config on stdout, e.g. "
        "thrifty config import-litellm config.yaml > thrifty.toml. What does not map is listed on "
        "stderr, with what to do instead; literal API keys are never copied.",
    )
    imp.add_argument("path", metavar="CONFIG_YAML")
    imp.set_defaults(func=_import_litellm)

    d = subparsers.add_parser(
        "demo",
        help="route a few hundred real benchmark prompts through 'auto' and report",
        description="Start the gateway on the embedded default, send the packaged "
        "benchmark prompts through model 'auto' with the openai client, and print the "
        "share of requests per model, cost against all-frontier and quality kept.",
    )
    d.add_argument("--limit", type=int, default=None, help="send only the first N prompts")
    d.add_argument(
        "--profile", default="auto", help="routing profile to use as the model (default: auto)"
    )
    d.add_argument("--concurrency", type=int, default=8)
    d.add_argument(
        "--port", type=int, default=0, help="port for the demo gateway (default: a free one)"
    )
    d.set_defaults(func=_demo)


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from thrifty.config import load_config
    from thrifty.errors import UsageError
    from thrifty.gateway.assemble import build_app
    from thrifty.gateway.banner import banner
    from thrifty.gateway.server import serve

    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.workers > 1 and args.server != "uvicorn":
        raise UsageError("--workers needs --server uvicorn")
    # Built here also with workers: the database is migrated, the admin key made and shown,
    # crashed runs' journals replayed, and the config checked, once, before any worker starts.
    app, spend = build_app(load_config(args.config), workers=args.workers)
    gw = app.gw
    profiles = sorted(getattr(gw.router, "profiles", None) or ())
    print(
        banner(gw.config, args.host, args.port, router_on=bool(gw.router.router), profiles=profiles),
        flush=True,
    )
    if args.workers == 1:
        serve(app, args.host, args.port, log_level=args.log_level, server=args.server)
        return 0
    from thrifty.gateway.workers import serve_workers

    asyncio.run(spend.close())
    del app, gw, spend
    serve_workers(args.config, args.host, args.port, args.workers, log_level=args.log_level)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from thrifty.gateway.demo import run_demo

    return run_demo(
        limit=args.limit, profile=args.profile, concurrency=args.concurrency, port=args.port
    )


def _import_litellm(args: argparse.Namespace) -> int:
    import sys

    from thrifty.config import build_config
    from thrifty.errors import UsageError
    from thrifty.gateway.litellm_import import convert, load_yaml, to_toml

    result = convert(load_yaml(args.path))
    if not result.doc["models"]:
        raise UsageError(f"{args.path}: no model of its model_list could be imported")
    try:  # what we print must load: check it as the gateway would (no network, no keys needed)
        build_config(result.doc, env={})
    except UsageError as exc:
        raise UsageError(f"the imported config does not load: {exc}") from None
    sys.stdout.write(to_toml(result.doc, f"Imported from LiteLLM config {args.path} by thrifty config "
                                         "import-litellm.\nSee thrifty/config.py for the format."))
    models = len(result.doc["models"])
    print(f"thrifty: imported {models} model(s) and {len(result.doc['providers'])} provider(s) "
          f"from {args.path}", file=sys.stderr)
    if result.unmapped:
        print(f"thrifty: {len(result.unmapped)} setting(s) did not map:", file=sys.stderr)
        for line in result.unmapped:
            print(f"  - {line}", file=sys.stderr)
    return 0

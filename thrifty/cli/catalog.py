"""``thrifty catalog update`` and ``thrifty catalog show`` (argparse only at import time)."""

from __future__ import annotations

import argparse

from thrifty.cli import actions


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = actions(subparsers, "catalog", "model prices, context windows and origins")
    u = sub.add_parser(
        "update",
        help="refresh the price catalog from LiteLLM's public price map",
        description="Download LiteLLM's public model price map into the data directory; the "
        "gateway prefers it over the snapshot packaged with thrifty.",
    )
    u.add_argument("--data-dir", help="default: $THRIFTY_DATA_DIR or ./.thrifty")
    u.add_argument(
        "--url", default=None, help="where to fetch from (default: LiteLLM's GitHub raw URL)"
    )
    u.set_defaults(func=_update)
    s = sub.add_parser("show", help="what the catalog knows about models")
    s.add_argument("models", nargs="+", metavar="MODEL")
    s.add_argument("--provider", default=None)
    s.add_argument("--data-dir", default=None)
    s.set_defaults(func=_show)


def _data_dir(value: str | None):  # type: ignore[no-untyped-def]
    from pathlib import Path

    from thrifty.paths import default_data_dir

    return Path(value) if value else default_data_dir()


def _update(args: argparse.Namespace) -> int:
    from thrifty.catalog.loader import PUBLIC_URL, fetch_update
    from thrifty.errors import UsageError

    url = args.url or PUBLIC_URL
    try:
        path, n = fetch_update(_data_dir(args.data_dir), url)
    except OSError as exc:
        raise UsageError(f"could not fetch {url}: {exc}") from None
    print(f"catalog updated: {n} entries from {url} -> {path}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from thrifty.catalog.loader import Catalog
    from thrifty.errors import UsageError

    catalog = Catalog.load(_data_dir(args.data_dir))
    missing = []
    for name in args.models:
        if catalog.lookup(name, args.provider) is None:
            missing.append(name)
            continue
        info = catalog.model(name, args.provider or "openai")
        per_m = lambda v: "unknown" if v is None else f"${v * 1e6:.4g}/M"
        print(
            f"{name}: input {per_m(info.input_cost_per_token)}, output {per_m(info.output_cost_per_token)}, "
            f"cached input {per_m(info.cache_read_input_token_cost)}, context {info.context_window}, "
            f"max output {info.max_output_tokens}, origin {info.origin_country or 'unknown'}"
        )
    print(f"(source: {catalog.source})")
    if missing:
        raise UsageError(f"not in the catalog: {', '.join(missing)}")
    return 0

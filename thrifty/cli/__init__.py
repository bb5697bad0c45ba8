"""The ``thrifty`` command line.

Each area registers its own sub-commands from a small module here that imports only
``argparse`` at registration time, so ``thrifty --help`` stays fast; the heavy
imports happen inside the command handlers.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from thrifty.errors import ThriftyError

# Modules that expose ``register(subparsers)``; each handler is stored as
# ``func`` on its parser and returns a process exit code.
COMMAND_MODULES: tuple[str, ...] = (
    "thrifty.cli.router",
    "thrifty.cli.gateway",
    "thrifty.cli.catalog",
    "thrifty.cli.spend",
    "thrifty.cli.reports",
)


def actions(
    subparsers: argparse._SubParsersAction, name: str, help: str, **kwargs: Any
) -> argparse._SubParsersAction:
    """The ``thrifty NAME ACTION`` command group ``name``: registers its parser (``help`` and
    any other ``add_parser`` keywords) and returns where its actions go; one is required."""
    parser = subparsers.add_parser(name, help=help, **kwargs)
    return parser.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrifty", description=__doc__.splitlines()[0].replace("``", ""))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # that area is not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except ThriftyError as exc:
        print(f"thrifty: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


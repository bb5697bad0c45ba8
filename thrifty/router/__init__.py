"""Learned cost/quality routing.

Load a trained router once, then score prompts and choose::

    router = Router.load("path/to/router")
    quality = router.score("What is 2 + 2?")          # {model: P(good answer)}
    model, reason = router.choose(quality, costs, router.profiles["auto"])
"""

from pathlib import Path

from thrifty.router.router import Profile, Router

DEFAULT_ROUTER = Path(__file__).parent / "default"


def default_router_path() -> Path:
    """The router shipped with thrifty (RouterBench's 11 models; the demo's prompts held out)."""
    return DEFAULT_ROUTER


__all__ = ["Profile", "Router", "default_router_path"]

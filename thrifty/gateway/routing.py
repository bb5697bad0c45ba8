"""Choosing a model for ``auto`` requests with the learned router.

The router scores a prompt (P(good answer) per model it knows) and picks the best
trade-off for a profile given each candidate's expected cost. Candidates are the
configured, priced, routable models the router knows, after spend policy.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from thrifty.catalog.model import ModelInfo
from thrifty.gateway.config import GatewayConfig

log = logging.getLogger("thrifty.gateway")


class RoutingUnavailable(Exception):
    pass


class AutoRouter:
    """Loads the router once; ``profile(name)`` resolves config and calibrated profiles."""

    def __init__(self, config: GatewayConfig, router: Any | None = None) -> None:
        self.config = config
        self.error: str | None = None
        self.router = router
        self.profiles: dict[str, Any] = {}
        # Where a router loaded from disk came from, and its router.json's (mtime, size) then.
        self.path: Path | None = None
        self.stamp: tuple[int, int] | None = None
        if self.router is None:
            self.router = self._load()
        if self.router is not None:
            self.profiles = self._build_profiles(self.router)

    def _load(self) -> Any | None:
        try:
            from thrifty.router import Router, default_router_path  # type: ignore[attr-defined]
        except ImportError as exc:
            self.error = f"the router is not available ({exc})"
            return None
        try:
            self.path = Path(self.config.router_path or default_router_path())
            self.stamp = _stamp(self.path)
            return Router.load(self.path)
        except Exception as exc:  # noqa: BLE001 (a missing/corrupt router must not stop fixed-model traffic)
            self.error = f"the router could not be loaded: {exc}"
            log.warning("routing disabled: %s", self.error)
            return None

    def load_if_changed(self) -> tuple[Any, dict[str, Any]] | None:
        """The router directory loaded again, with its profiles, if its router.json changed since
        the last load (a profile added by ``thrifty router calibrate``, a retrained router copied
        in); else None. Blocking (disk and numpy): run it in a worker thread, then :meth:`install`
        the result on the event loop. A router that fails to load leaves the current one serving."""
        if self.path is None:
            return None
        try:
            stamp = _stamp(self.path)
        except OSError:
            return None  # being replaced, or gone: keep serving what is loaded
        if stamp == self.stamp:
            return None
        self.stamp = stamp
        from thrifty.router import Router  # type: ignore[attr-defined]

        try:
            router = Router.load(self.path)
            return router, self._build_profiles(router)
        except Exception as exc:  # noqa: BLE001 (a bad new router must not stop traffic)
            log.warning("router reload failed, keeping the loaded one: %s", exc)
            return None

    def install(self, router: Any, profiles: dict[str, Any]) -> None:
        self.router, self.profiles, self.error = router, profiles, None
        log.info("router reloaded from %s (%d models, profiles: %s)",
                 self.path, len(router.models), ", ".join(sorted(profiles)))

    def _build_profiles(self, router: Any) -> dict[str, Any]:
        from thrifty.router import Profile  # type: ignore[attr-defined]

        profiles = dict(getattr(router, "profiles", {}) or {})
        for name, pc in self.config.profiles.items():
            if pc.target_quality is not None:
                profiles[name] = Profile.target_quality(pc.target_quality)
            elif pc.cost_weight is not None:
                profiles[name] = Profile.cost_weight(pc.cost_weight)
        if "auto" not in profiles:
            profiles["auto"] = Profile.cost_weight(0.5)
        return profiles

    @property
    def models(self) -> set[str]:
        return set(self.router.models) if self.router is not None else set()

    def is_profile(self, name: str) -> bool:
        return name == "auto" or name in self.profiles or name in self.config.profiles

    def choose(
        self, prompt: str, candidates: list[ModelInfo], costs: dict[str, float], profile_name: str
    ) -> tuple[str, str, dict[str, float]]:
        """(model, reason, scores) among ``candidates``."""
        if self.router is None:
            raise RoutingUnavailable(self.error or "no router configured")
        profile = self.profiles.get(profile_name) or self.profiles["auto"]
        try:
            scores = self.router.score(prompt)
        except Exception as exc:  # noqa: BLE001 (e.g. an empty prompt: serve it anyway, say why)
            raise RoutingUnavailable(f"the router could not score this prompt: {exc}") from None
        names = {m.name for m in candidates}
        cand_scores = {k: v for k, v in scores.items() if k in names}
        if not cand_scores:
            raise RoutingUnavailable("the router knows none of the models this caller may use")
        model, reason = self.router.choose(cand_scores, {k: costs[k] for k in cand_scores}, profile)
        return model, reason, scores


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path / "router.json")
    return st.st_mtime_ns, st.st_size

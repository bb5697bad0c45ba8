"""Choosing a model for ``auto`` requests with the learned router.

The router scores a prompt (P(good answer) per model it knows) and picks the best
trade-off for a profile given each candidate's expected cost. Candidates are the
configured, priced, routable models the router knows, after spend policy.
"""

from __future__ import annotations

import logging
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
        if self.router is None:
            self.router = self._load()
        if self.router is not None:
            self._build_profiles()

    def _load(self) -> Any | None:
        try:
            from thrifty.router import Router, default_router_path  # type: ignore[attr-defined]
        except ImportError as exc:
            self.error = f"the router is not available ({exc})"
            return None
        try:
            path = self.config.router_path or default_router_path()
            return Router.load(path)
        except Exception as exc:  # noqa: BLE001 (a missing/corrupt router must not stop fixed-model traffic)
            self.error = f"the router could not be loaded: {exc}"
            log.warning("routing disabled: %s", self.error)
            return None

    def _build_profiles(self) -> None:
        from thrifty.router import Profile  # type: ignore[attr-defined]

        self.profiles = dict(getattr(self.router, "profiles", {}) or {})
        for name, pc in self.config.profiles.items():
            if pc.target_quality is not None:
                self.profiles[name] = Profile.target_quality(pc.target_quality)
            elif pc.cost_weight is not None:
                self.profiles[name] = Profile.cost_weight(pc.cost_weight)
        if "auto" not in self.profiles:
            self.profiles["auto"] = Profile.cost_weight(0.5)

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

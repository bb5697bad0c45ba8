"""Choosing a model for ``auto`` and the other profiles.

Candidates are every configured, priced, routable chat model the caller may use (the planner
filters by policy, capabilities and context window first), known to the packaged router or not.
Two sources decide, in this order of trust:

* **what this deployment learnt** (:mod:`thrifty.router.learning`): feedback and judge grades on
  earlier routed answers, per model and per kind of prompt, with a prior per model from the
  packaged router (by name or ``router_alias``), the operator's hints (``prior_quality``,
  ``tier``), or an honest uninformative one; with deliberate, capped exploration;
* **the packaged router** alone, exactly as trained, while it knows every candidate and nothing
  has been learnt in the caller's scope yet.

Every decision of the learned kind is traced (prompt context, the probability its model was
chosen with), so feedback on the answer can teach the router and other policies can be
evaluated off-line from the ledger.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thrifty.config import GatewayConfig, ModelConfig
from thrifty.router.learning import (
    AUTO,
    AUTO_BEST,
    AUTO_CHEAP,
    Knob,
    Learner,
    RouteTrace,
    price_prior,
)
from thrifty.router.online import Label, context_of, encode_context

log = logging.getLogger("thrifty.gateway")

# How many ratings the packaged router's opinion of a model it knows is worth.
PACKAGED_STRENGTH = 8.0
NAMED_KNOBS = {"auto": AUTO, "auto-cheap": AUTO_CHEAP, "auto-best": AUTO_BEST}


@dataclass(frozen=True, slots=True)
class Routed:
    model: str
    reason: str
    scores: dict[str, float] | None  # estimated quality per candidate (the ledger's ``scores``)
    trace: RouteTrace | None
    kind: str = "packaged"  # "packaged" | "learned" | "explored" (thrifty_router_decisions_total)
    extra_cost: float = 0.0  # an exploring decision's extra expected cost over the best estimate (USD)


class AutoRouter:
    """The packaged router (loaded once, reloaded when its router.json changes) and what the
    deployment learnt (:attr:`learner`); ``choose`` decides for one request."""

    def __init__(self, config: GatewayConfig, router: Any | None = None) -> None:
        self.config = config
        self.settings = config.routing
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
        s = self.settings
        self.learner = Learner(
            explore_share=s.explore_max_share if s.explore else 0.0,
            explore_spend_share=s.explore_max_spend_share if s.explore else 0.0,
            warmup=s.warmup_labels, caution=s.caution, caution_on=s.caution_on,
            explore_loss_share=s.explore_max_loss_share or None, seed=s.seed,
            label_set_options={"tau": s.kernel_width, "local_strength": s.local_strength,
                               "prior_strength": s.prior_strength})
        self._aliases = {name: (mc.hint.alias if mc.hint and mc.hint.alias else name)
                         for name, mc in config.models.items()}

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

    def scope(self, team_id: str | None) -> str:
        """The learning scope of a caller: the deployment, or its team."""
        return (team_id or "*") if self.settings.learning_scope == "team" else "*"

    def knob(self, profile_name: str) -> Knob:
        pc = self.config.profiles.get(profile_name)
        if pc is not None:
            if pc.target_quality is not None:
                return Knob(target=pc.target_quality)
            if pc.cost_weight is not None:
                return Knob(weight=pc.cost_weight)
        if profile_name in NAMED_KNOBS:
            return NAMED_KNOBS[profile_name]
        packaged = self.profiles.get(profile_name)
        if packaged is not None and packaged.kind == "target_quality":
            return Knob(target=packaged.value)
        if packaged is not None:
            return Knob(weight=packaged.value)
        return AUTO

    def _score(self, prompt: str, names: list[str]) -> tuple[dict[str, float] | None, np.ndarray | None]:
        """The packaged router's scores (when it knows one of ``names``) and the prompt's
        context; (None, None) without a router or for a prompt it cannot embed (an empty one,
        say): learning then decides on the models' levels alone."""
        if self.router is None:
            return None, None
        try:
            embedded = getattr(self.router, "score_embedded", None)
            if embedded is None:
                return self.router.score(prompt), None
            known = self.router.models
            if not any(self._aliases.get(n, n) in known for n in names):  # its predictor is no help
                if not prompt.strip():
                    return None, None
                return None, context_of(self.router.embedder.embed_one(prompt))
            scores, emb = embedded(prompt)
            return scores, context_of(emb)
        except Exception:  # noqa: BLE001 (an unscorable prompt is still served)
            return None, None

    def choose(self, prompt: str, candidates: list[ModelConfig], costs: dict[str, float],
               profile_name: str, team_id: str | None = None, *, explore: bool = True) -> Routed:
        """The model for this request among ``candidates`` (already permitted and capable)."""
        names = [m.info.name for m in candidates]
        scores, context = self._score(prompt, names)
        scope = self.scope(team_id)
        known = {}
        if scores is not None:
            known = {n: scores[self._aliases.get(n, n)] for n in names if self._aliases.get(n, n) in scores}
        learned = self.settings.learning and len(self.learner.labels(scope)) > 0
        if len(known) == len(names) and not learned:
            # The packaged router knows every candidate and nothing was learnt here yet: its own
            # decision, as trained (traced, so that feedback on it teaches the learner).
            profile = self.profiles.get(profile_name) or self.profiles["auto"]
            model, reason = self.router.choose(known, {n: costs[n] for n in names}, profile)
            trace = RouteTrace(encode_context(context), 1.0, False) if context is not None else None
            return Routed(model, reason, scores, trace)
        unit = np.array([(mc.info.input_cost_per_token or 0.0) + (mc.info.output_cost_per_token or 0.0)
                         for mc in candidates])
        prior = price_prior(self.learner.pool_level(scope), unit, self.settings.price_prior)
        strength = np.full(len(names), self.settings.prior_strength)
        for i, mc in enumerate(candidates):
            name = names[i]
            if name in known:
                prior[i], strength[i] = known[name], PACKAGED_STRENGTH
            elif mc.hint is not None and mc.hint.prior_quality is not None:
                prior[i], strength[i] = mc.hint.prior_quality, mc.hint.prior_strength
        cost = np.array([costs[n] for n in names], dtype=float)
        choice = self.learner.choose(scope, context, names, prior, strength, cost, self.knob(profile_name),
                                     explore=explore and self.settings.explore)
        i = names.index(choice.model)
        labels = int(sum(choice.labels.values()))
        reason = (f"learned from {labels} rating(s): estimated quality {choice.means[choice.model]:.2f} "
                  f"at ${cost[i]:.6f} among {len(names)}")
        if choice.explored:
            reason += f"; exploring (chosen with probability {choice.propensity:.2f})"
        trace = RouteTrace(encode_context(context) if context is not None else None,
                           choice.propensity, choice.explored)
        return Routed(choice.model, reason, choice.means, trace,
                      "explored" if choice.explored else "learned", choice.extra_cost)

    def learn(self, scope: str, label: Label) -> None:
        """A rating of a routed answer (feedback or the judge), effective on the next request."""
        if self.settings.learning:
            self.learner.add(scope, label)


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path / "router.json")
    return st.st_mtime_ns, st.st_size

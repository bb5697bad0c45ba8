"""What the router has learnt, per model, from the spend database (``thrifty router status``, ``/ui/router``).

Per model:

* **learned quality**: the Beta posterior of its labels alone, ``Beta(1 + sum w*y, 1 + sum w*(1 - y))``
  (a uniform prior; ``w`` a label's weight, ``y`` its score). Its mean, and a 90% credible
  interval from 20,000 seeded draws (numpy; scipy is no dependency): deterministic, and within
  about 0.003 of the exact quantiles. The router's own estimate for a prompt adds the model's
  prior (packaged router, hints) and weighs labels by how alike their prompts are; this is the
  plain summary of what the ratings say;
* labels by source (``feedback``, ``judge``): every label in the database (what the router
  loads), whatever ``days``;
* in the last ``days`` days: its share of the auto-routed requests (ledger rows with a
  ``route_propensity`` and a served model), the requests where it was chosen by exploration and what they cost.

**Clusters**: the labels' prompt contexts grouped by k-means (spherical, on the contexts centred
on their mean as the router compares them; k-means++ seeded, so the same labels give the same
clusters; the newest labels, as many as a router keeps per scope (DEFAULT_MAX_LABELS)), with each model's mean
and count per cluster. They are computed for display: the
router itself learns per prompt (a kernel over contexts), not per cluster.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from thrifty.errors import UsageError
from thrifty.router.labels import SOURCES
from thrifty.router.online import DEFAULT_MAX_LABELS, decode_context
from thrifty.spend.db import Database

LEVEL = 0.90
DRAWS = 20_000
MAX_CLUSTERS = 5
LABELS_PER_CLUSTER = 10  # fewer labels than this per cluster: fewer clusters (none below 2)


@dataclass
class ModelStatus:
    model: str
    labels: dict[str, int]  # per source
    weight: float  # sum of the labels' weights
    quality: float | None  # posterior mean; None without labels
    interval: tuple[float, float] | None
    routed: int = 0  # auto-routed requests in the window
    routed_share: float = 0.0
    explored: int = 0  # of those, chosen by exploration
    explored_share: float = 0.0
    exploration_cost_nanos: int = 0


@dataclass
class Cluster:
    index: int
    labels: int
    models: dict[str, dict[str, float]]  # model -> {"mean": ..., "labels": n}


@dataclass
class Status:
    team: str | None
    days: float
    since: float
    models: list[ModelStatus]
    routed: int
    explored: int
    routed_cost_nanos: int
    exploration_cost_nanos: int
    clusters: list[Cluster] = field(default_factory=list)

    @property
    def explored_share(self) -> float:
        return self.explored / self.routed if self.routed else 0.0

    @property
    def exploration_spend_share(self) -> float:
        return self.exploration_cost_nanos / self.routed_cost_nanos if self.routed_cost_nanos else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["explored_share"] = self.explored_share
        d["exploration_spend_share"] = self.exploration_spend_share
        d["level"] = LEVEL
        return d


def beta_interval(a: float, b: float, level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """The central ``level`` credible interval of Beta(a, b), from seeded draws."""
    draws = np.random.default_rng(seed).beta(a, b, DRAWS)
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def check_schema(db: Database) -> None:
    """A clear error for a database the learning migration (7) has not reached."""
    try:
        db.one("SELECT route_propensity, route_explored, route_context FROM ledger LIMIT 1")
        db.one("SELECT request_id FROM router_labels LIMIT 1")
    except Exception:  # noqa: BLE001 (sqlite3 and psycopg raise different types)
        raise UsageError(f"{db.url}: no learned-routing tables (ledger.route_propensity, router_labels): "
                         "start the gateway on this database once, it migrates it") from None


def status(db: Database, *, team: str | None = None, days: float = 30.0, now: float,
           clusters: bool = True) -> Status:
    """The router's learning status in ``db`` (see the module docstring)."""
    check_schema(db)
    since = now - days * 86_400
    tcond, tparams = (" AND team_id = ?", [team]) if team else ("", [])
    label_rows = db.all(
        f"SELECT request_id, source, model, score, weight, context FROM router_labels WHERE 1=1{tcond}"
        " ORDER BY ts, request_id, source", tparams)
    traffic = db.all(
        "SELECT served_model, COUNT(*), SUM(route_explored), COALESCE(SUM(cost_nanos), 0),"
        " COALESCE(SUM(CASE WHEN route_explored = 1 THEN cost_nanos ELSE 0 END), 0) FROM ledger"
        f" WHERE route_propensity IS NOT NULL AND served_model IS NOT NULL AND ts >= ? AND ts < ?{tcond}"
        " GROUP BY served_model", [since, now, *tparams])
    per: dict[str, ModelStatus] = {}

    def model(name: str) -> ModelStatus:
        if name not in per:
            per[name] = ModelStatus(name, dict.fromkeys(SOURCES, 0), 0.0, None, None)
        return per[name]

    sums: dict[str, float] = {}
    for _rid, source, name, score, weight, _ctx in label_rows:
        m = model(name)
        m.labels[source] = m.labels.get(source, 0) + 1
        m.weight += float(weight)
        sums[name] = sums.get(name, 0.0) + float(weight) * float(score)
    for name, m in per.items():
        if m.weight > 0:
            a, b = 1.0 + sums[name], 1.0 + m.weight - sums[name]
            m.quality, m.interval = a / (a + b), beta_interval(a, b)
    routed = sum(int(r[1]) for r in traffic)
    for name, n, explored, _cost, xcost in traffic:
        m = model(name)
        m.routed, m.explored, m.exploration_cost_nanos = int(n), int(explored or 0), int(xcost)
        m.routed_share = m.routed / routed if routed else 0.0
        m.explored_share = m.explored / m.routed if m.routed else 0.0
    models = sorted(per.values(), key=lambda m: (-m.routed, -sum(m.labels.values()), m.model))
    out = Status(team, days, since, models, routed, sum(m.explored for m in models),
                 sum(int(r[3]) for r in traffic), sum(m.exploration_cost_nanos for m in models))
    if clusters:
        out.clusters = cluster_labels(label_rows[-DEFAULT_MAX_LABELS:])  # the newest: what a router holds
    return out


def cluster_labels(rows: list[tuple]) -> list[Cluster]:
    """Per cluster of the labels' prompt contexts: each model's weighted mean score and count."""
    kept = [(r[2], float(r[3]), float(r[4]), c) for r in rows if (c := decode_context(r[5])) is not None]
    k = min(MAX_CLUSTERS, len(kept) // LABELS_PER_CLUSTER)
    if k < 2:
        return []
    ctx = np.stack([c for *_, c in kept])
    centred = ctx - ctx.mean(axis=0)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    x = centred / np.where(norms > 0, norms, 1.0)
    assign = kmeans(x, k)
    out = []
    for j in range(k):
        idx = np.flatnonzero(assign == j)
        if not idx.size:
            continue
        models: dict[str, dict[str, float]] = {}
        for i in idx:
            name, score, weight, _ = kept[i]
            m = models.setdefault(name, {"sum": 0.0, "weight": 0.0, "labels": 0})
            m["sum"] += weight * score
            m["weight"] += weight
            m["labels"] += 1
        out.append((len(idx), {n: {"mean": v["sum"] / v["weight"] if v["weight"] else 0.0, "labels": v["labels"]}
                                for n, v in sorted(models.items())}))
    out.sort(key=lambda c: -c[0])
    return [Cluster(i + 1, n, m) for i, (n, m) in enumerate(out)]


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, rounds: int = 50) -> np.ndarray:
    """Spherical k-means (cosine) with k-means++ seeding; the cluster of each row."""
    rng = np.random.default_rng(seed)
    centres = [x[int(rng.integers(len(x)))]]
    for _ in range(1, k):
        d = 1.0 - np.max(x @ np.array(centres).T, axis=1)
        d = np.clip(d, 0.0, None)
        p = d / d.sum() if d.sum() > 0 else np.full(len(x), 1.0 / len(x))
        centres.append(x[int(rng.choice(len(x), p=p))])
    c = np.array(centres)
    assign = np.full(len(x), -1)
    for _ in range(rounds):
        new = np.argmax(x @ c.T, axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = x[assign == j]
            if len(members):
                s = members.sum(axis=0)
                n = float(np.linalg.norm(s))
                c[j] = s / n if n > 0 else c[j]
    return assign

"""Learning from the deployment's own traffic: each model's quality for prompts like this one.

A label is a rating of one routed answer: a user's ``POST /v1/feedback`` or a judge's grade,
stored with the model that answered and the prompt's *context* (:func:`context_of`: the router's
prompt embedding, its first :data:`CONTEXT_DIM` principal components, L2-normalised; never the
text). For a new prompt ``x``, model ``m``'s quality is a Beta posterior in two levels:

* **overall**: ``Beta(k0 * p_m + S_m, k0 * (1 - p_m) + N_m - S_m)``: the model's prior ``p_m``
  (:mod:`thrifty.router.priors`: the packaged router, an operator's hint, or uninformative) with
  strength ``k0``, updated by its ``N_m`` labels summing to ``S_m``;
* **local**: ``Beta(k * g_m + sum w_i y_i, k * (1 - g_m) + sum w_i (1 - y_i))`` over model ``m``'s
  labels ``i``, ``g_m`` the overall mean, and ``w_i = exp((cos(x, x_i) - 1) / tau)`` (0 where
  the cosine is negative), cosines taken after subtracting the labels' mean context (prompt
  embeddings share one dominant direction: raw, every prompt looks like every other). Prompts
  like this one move the estimate away from the model's overall level as far as their evidence
  goes, so "code -> model A, short chat -> model C" is learnt, not one number per model.

Pure numpy on arrays kept in memory: one matrix-vector product over the stored contexts per
decision (tens of microseconds for thousands of labels). Persistence and sharing between
replicas are :mod:`thrifty.router.labels`' job.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONTEXT_DIM = 64  # leading principal components of the router's 256-d prompt embedding
DEFAULT_TAU = 0.25  # kernel width in (1 - centred cosine): within a task ~0.05-0.5, across ~1.5
MIN_LOCAL = 8  # labels before the mean context is stable enough to compare prompts by
DEFAULT_PRIOR_STRENGTH = 2.0  # k0: pseudo-labels behind a model's prior
DEFAULT_LOCAL_STRENGTH = 4.0  # k: pseudo-labels pulling a local estimate to the overall one
DEFAULT_MAX_LABELS = 5_000  # per scope; the oldest are forgotten first (recent traffic counts most)


def context_of(embedding: np.ndarray) -> np.ndarray:
    """The learning context of a prompt embedding: leading components, unit length, float32."""
    v = np.asarray(embedding, dtype=np.float32)[:CONTEXT_DIM]
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def encode_context(ctx: np.ndarray) -> str:
    """Compact text form for the ledger (float16, base64): 172 characters at 64 dims."""
    return base64.b64encode(np.asarray(ctx, dtype="<f2").tobytes()).decode("ascii")


def decode_context(text: str) -> np.ndarray | None:
    """The context back from :func:`encode_context`; None for anything malformed."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        return None
    if len(raw) != 2 * CONTEXT_DIM:
        return None
    v = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    if not np.isfinite(v).all():
        return None
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else None


@dataclass(frozen=True)
class Label:
    request_id: str
    model: str
    score: float  # in [0, 1]
    context: np.ndarray
    weight: float = 1.0  # a judge's grade may count for less than a user's rating
    ts: float = 0.0


@dataclass(frozen=True)
class Estimate:
    """Per-candidate Beta posteriors for one prompt, in the candidates' order."""

    models: tuple[str, ...]
    a: np.ndarray  # local: for prompts like this one
    b: np.ndarray
    overall_a: np.ndarray  # the model's overall level
    overall_b: np.ndarray
    labels: np.ndarray  # labels behind each model's overall estimate
    local_sum: np.ndarray  # kernel-weighted scores and weights of the prompts like this one
    local_count: np.ndarray
    local_strength: float

    @property
    def mean(self) -> np.ndarray:
        return self.a / (self.a + self.b)

    def given_levels(self, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The local posteriors had the models' overall levels been ``levels`` (one draw of
        them): hierarchical Thompson sampling draws the level first, then the local quality."""
        k, lv = self.local_strength, np.clip(levels, 1e-3, 1.0 - 1e-3)
        return (k * lv + self.local_sum,
                k * (1.0 - lv) + np.maximum(self.local_count - self.local_sum, 0.0))


class LabelSet:
    """The labels of one scope (the deployment, or one team) and what they say per model."""

    def __init__(self, *, tau: float = DEFAULT_TAU, prior_strength: float = DEFAULT_PRIOR_STRENGTH,
                 local_strength: float = DEFAULT_LOCAL_STRENGTH, max_labels: int = DEFAULT_MAX_LABELS) -> None:
        self.tau, self.k0, self.k = float(tau), float(prior_strength), float(local_strength)
        self.max_labels = int(max_labels)
        self._ctx = np.zeros((64, CONTEXT_DIM), dtype=np.float32)
        self._y = np.zeros(64, dtype=np.float64)
        self._w = np.zeros(64, dtype=np.float64)
        self._m = np.zeros(64, dtype=np.int64)
        self._n = 0
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self.model_index: dict[str, int] = {}
        self._sum = np.zeros(0)  # per model index: sum of w * y, sum of w
        self._cnt = np.zeros(0)
        # Centred, unit-length copies of the contexts, and the mean they were centred on;
        # recomputed as the labels grow (the mean settles), appended to in between.
        self._cen = np.zeros((0, CONTEXT_DIM), dtype=np.float32)
        self._mu = np.zeros(CONTEXT_DIM, dtype=np.float32)
        self._centred_at = 0

    def __len__(self) -> int:
        return self._n

    def _model(self, name: str) -> int:
        i = self.model_index.get(name)
        if i is None:
            i = self.model_index[name] = len(self.model_index)
            self._sum = np.append(self._sum, 0.0)
            self._cnt = np.append(self._cnt, 0.0)
        return i

    def add(self, label: Label) -> None:
        """Add a label, or replace the earlier one for the same request (rating again)."""
        if label.context.shape != (CONTEXT_DIM,) or not 0.0 <= label.score <= 1.0:
            return
        m = self._model(label.model)
        row = self._row.get(label.request_id)
        if row is None:
            if self._n >= self.max_labels:
                self._forget_oldest(max(1, self.max_labels // 10))
            if self._n == len(self._y):
                self._grow()
            row = self._n
            self._n += 1
            self._ids.append(label.request_id)
            self._row[label.request_id] = row
        else:
            old = self._m[row]
            self._sum[old] -= self._w[row] * self._y[row]
            self._cnt[old] -= self._w[row]
        self._ctx[row], self._y[row], self._w[row], self._m[row] = label.context, label.score, label.weight, m
        self._sum[m] += label.weight * label.score
        self._cnt[m] += label.weight
        if row < len(self._cen):
            self._cen[row] = _unit(label.context - self._mu)

    def _centred(self) -> np.ndarray:
        """The centred contexts, recentred when the labels grew by a quarter since."""
        n = self._n
        if n >= max(MIN_LOCAL, self._centred_at + self._centred_at // 4 + 1) or n < self._centred_at:
            self._mu = self._ctx[:n].mean(axis=0)
            self._cen = _unit_rows(self._ctx[:n] - self._mu)
            self._centred_at = n
        elif len(self._cen) < n:
            self._cen = np.vstack([self._cen, _unit_rows(self._ctx[len(self._cen):n] - self._mu)])
        return self._cen[:n]

    def _grow(self) -> None:
        size = len(self._y) * 2
        self._ctx = np.resize(self._ctx, (size, CONTEXT_DIM))
        self._y, self._w, self._m = (np.resize(a, size) for a in (self._y, self._w, self._m))

    def _forget_oldest(self, count: int) -> None:
        keep = slice(count, self._n)
        n = self._n - count
        self._ctx[:n], self._y[:n], self._w[:n], self._m[:n] = (
            self._ctx[keep].copy(), self._y[keep].copy(), self._w[keep].copy(), self._m[keep].copy())
        self._ids = self._ids[count:]
        self._row = {rid: i for i, rid in enumerate(self._ids)}
        self._n = n
        self._centred_at = 0
        self._cen = self._cen[:0]
        size = len(self.model_index)
        self._sum = np.bincount(self._m[:n], self._w[:n] * self._y[:n], minlength=size).astype(float)
        self._cnt = np.bincount(self._m[:n], self._w[:n], minlength=size).astype(float)

    def overall(self, model: str) -> tuple[float, float]:
        """(sum of weighted scores, weighted count) of a model's labels in this scope."""
        i = self.model_index.get(model)
        return (0.0, 0.0) if i is None else (float(self._sum[i]), float(self._cnt[i]))

    def mean_score(self) -> tuple[float, float]:
        """(weighted sum, weighted count) over every model: the pool's level."""
        return float(self._sum.sum()), float(self._cnt.sum())

    def estimate(self, context: np.ndarray | None, models: Sequence[str], prior: np.ndarray,
                 prior_strength: np.ndarray | None = None) -> Estimate:
        """Posteriors for ``models`` at ``context`` (None: overall only), given each model's
        prior mean ``prior`` (same order) and optionally its strength in pseudo-labels."""
        k0 = np.full(len(models), self.k0) if prior_strength is None else prior_strength
        idx = np.array([self.model_index.get(m, -1) for m in models])
        known = idx >= 0
        s = np.where(known, self._sum[idx] if len(self._sum) else 0.0, 0.0)
        c = np.where(known, self._cnt[idx] if len(self._cnt) else 0.0, 0.0)
        a0, b0 = k0 * prior + s, k0 * (1.0 - prior) + (c - s)
        if context is None or self._n < MIN_LOCAL:
            zero = np.zeros(len(models))
            g = a0 / (a0 + b0)
            return Estimate(tuple(models), self.k * g, self.k * (1.0 - g), a0, b0, c, zero, zero, self.k)
        g = a0 / (a0 + b0)
        n = self._n
        cen = self._centred()
        sims = cen @ _unit(context - self._mu)
        w = np.exp((sims - 1.0) / self.tau)
        w[sims <= 0.0] = 0.0
        w *= self._w[:n]
        size = len(self.model_index)
        ls = np.bincount(self._m[:n], w * self._y[:n], minlength=size)
        lc = np.bincount(self._m[:n], w, minlength=size)
        ls, lc = np.where(known, ls[idx], 0.0), np.where(known, lc[idx], 0.0)
        a = self.k * g + ls
        b = self.k * (1.0 - g) + np.maximum(lc - ls, 0.0)
        return Estimate(tuple(models), a, b, a0, b0, c, ls, lc, self.k)

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """(contexts, scores, model indices, request ids) of the stored labels."""
        n = self._n
        return self._ctx[:n], self._y[:n], self._m[:n], list(self._ids)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return (v / n).astype(np.float32) if n > 0 else np.zeros_like(v, dtype=np.float32)


def _unit_rows(m: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.where(n > 0, n, 1.0)).astype(np.float32)

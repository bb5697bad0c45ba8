"""Quality predictors: P(model answers this prompt well), for every model at once.

Labels are sparse (NaN = unknown); every learner here trains only on the
labels it has. Two learned families and the baselines results are shown
against:

* :class:`KNNPredictor`: similarity-weighted vote of the nearest labelled
  prompts in embedding space, shrunk toward each model's overall accuracy.
* :class:`FactorPredictor`: a shared hidden representation of the prompt and
  one low-rank head per model, trained jointly on all observed labels, so
  models with few labels borrow strength from the others (matrix
  factorization with a prompt encoder).
* :class:`EnsemblePredictor`: the average of the two (the default).
* baselines: :class:`RandomPredictor`, :class:`LengthPredictor` (accuracy per
  prompt-length bin) and the oracle (labels themselves, evaluation only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass
class Features:
    """What predictors see of a prompt: a unit-norm embedding and cheap features."""

    emb: np.ndarray  # n x D, L2-normalised
    cheap: np.ndarray  # n x F, raw (see features.NAMES; column 0 is log chars)

    def subset(self, idx: np.ndarray) -> Features:
        return Features(self.emb[idx], self.cheap[idx])

    def __len__(self) -> int:
        return int(self.emb.shape[0])


def model_priors(labels: np.ndarray) -> np.ndarray:
    """Each model's accuracy over its known labels (0.5 when it has none)."""
    known = ~np.isnan(labels)
    count = known.sum(axis=0)
    total = np.where(known, labels, 0.0).sum(axis=0)
    return np.where(count > 0, (total + 1.0) / (count + 2.0), 0.5)


class Predictor:
    """Subclasses take keyword hyper-parameters with defaults, and ``seed`` when ``seeded``."""

    kind: ClassVar[str]
    seeded: ClassVar[bool] = False  # takes a ``seed`` for its random initialisation

    def fit(self, X: Features, Y: np.ndarray) -> Predictor:
        raise NotImplementedError

    def predict(self, X: Features) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> Predictor:
        raise NotImplementedError


class KNNPredictor(Predictor):
    kind = "knn"

    def __init__(self, k: int = 40, temperature: float = 0.05, shrink: float = 3.0) -> None:
        self.k, self.temperature, self.shrink = k, temperature, shrink

    def fit(self, X: Features, Y: np.ndarray) -> KNNPredictor:
        self.train_emb = np.ascontiguousarray(X.emb, dtype=np.float32)
        self.labels = Y.astype(np.float32)
        self._known = None
        self.prior = model_priors(Y).astype(np.float32)
        return self

    def _label_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(known mask, labels with unknowns as 0), computed once: per call they cost more than the search."""
        if getattr(self, "_known", None) is None:
            self._known = ~np.isnan(self.labels)
            self._filled = np.where(self._known, self.labels, 0.0).astype(np.float32)
        return self._known, self._filled

    def predict(self, X: Features) -> np.ndarray:
        out = np.empty((len(X), self.labels.shape[1]), dtype=np.float64)
        known, filled = self._label_arrays()
        k = min(self.k, self.train_emb.shape[0])
        for start in range(0, len(X), 1024):
            sims = X.emb[start : start + 1024] @ self.train_emb.T
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            s = np.take_along_axis(sims, top, axis=1)
            w = np.exp((s - s.max(axis=1, keepdims=True)) / self.temperature)
            # Per model: weighted vote over the neighbours that have a label for it.
            wk = w[:, :, None] * known[top]
            votes = (wk * filled[top]).sum(axis=1)
            weight = wk.sum(axis=1)
            mass = self.shrink * w.sum(axis=1, keepdims=True) / k  # prior worth `shrink` average neighbours
            out[start : start + 1024] = (votes + mass * self.prior) / (weight + mass)
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {"train_emb": self.train_emb.astype(np.float16), "labels": self.labels.astype(np.float16),
                "prior": self.prior, "params": np.array([self.k, self.temperature, self.shrink])}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> KNNPredictor:
        k, t, s = state["params"].tolist()
        p = cls(int(k), float(t), float(s))
        p.train_emb = state["train_emb"].astype(np.float32)
        p.labels = state["labels"].astype(np.float32)
        p.prior = state["prior"].astype(np.float32)
        return p


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


class FactorPredictor(Predictor):
    """logit P(model m good | x) = b_m + v_m . relu(W [emb(x), cheap(x)] + c).

    The prompt encoder (W, c) is shared by all models; each model has a rank-``hidden``
    vector v_m and a bias b_m. Trained full-batch with Adam on the masked
    cross-entropy of the observed labels, with L2 weight decay. ``members``
    networks from different random starts are averaged: one alone swings by
    several APGR points with its seed on prompts unlike its training data.
    Standardised cheap features are clipped to +-``clip``: a prompt far outside
    the training range (no answer options after training on multiple choice
    only) must not push every probability to 0 or 1.
    """

    kind = "factor"
    seeded = True

    def __init__(self, hidden: int = 32, epochs: int = 200, lr: float = 0.01, l2: float = 1e-3, seed: int = 0,
                 members: int = 5, clip: float = 3.0) -> None:
        self.hidden, self.epochs, self.lr, self.l2, self.seed, self.members = hidden, epochs, lr, l2, seed, members
        self.clip = clip

    def _inputs(self, X: Features) -> np.ndarray:
        cheap = np.clip((X.cheap - self.mu) / self.sd, -self.clip, self.clip)
        return np.hstack([X.emb, cheap]).astype(np.float32)

    def fit(self, X: Features, Y: np.ndarray) -> FactorPredictor:
        self.mu = X.cheap.mean(axis=0)
        sd = X.cheap.std(axis=0)
        self.sd = np.where(sd > 1e-3, sd, 1.0)  # a feature constant in training must not blow up at test
        A = self._inputs(X)
        known = ~np.isnan(Y)
        T = np.where(known, Y, 0.0).astype(np.float32)
        M = known.astype(np.float32)
        self.nets = [self._fit_one(A, T, M, model_priors(Y), self.seed + i) for i in range(self.members)]
        return self

    def _fit_one(self, A: np.ndarray, T: np.ndarray, M: np.ndarray, prior: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        n_obs = max(float(M.sum()), 1.0)
        d, h, m = A.shape[1], self.hidden, T.shape[1]
        params = {
            "W": (rng.standard_normal((d, h)) * np.sqrt(2.0 / d)).astype(np.float32),
            "c": np.zeros(h, np.float32),
            "V": (rng.standard_normal((h, m)) * 0.05).astype(np.float32),
            "b": np.log(prior / (1 - prior)).astype(np.float32),
        }
        mom = {k: np.zeros_like(v) for k, v in params.items()}
        vel = {k: np.zeros_like(v) for k, v in params.items()}
        for step in range(1, self.epochs + 1):
            W, c, V, b = params["W"], params["c"], params["V"], params["b"]
            pre = A @ W + c
            H = np.maximum(pre, 0.0)
            P = _sigmoid(H @ V + b)
            G = (P - T) * M / n_obs  # d loss / d logits
            grads = {
                "V": H.T @ G + self.l2 * V,
                "b": G.sum(axis=0),
            }
            GH = (G @ V.T) * (pre > 0)
            grads["W"] = A.T @ GH + self.l2 * W
            grads["c"] = GH.sum(axis=0)
            lr = self.lr * (0.5 * (1 + np.cos(np.pi * step / self.epochs)))  # cosine decay
            for k, value in params.items():
                mom[k] = 0.9 * mom[k] + 0.1 * grads[k]
                vel[k] = 0.999 * vel[k] + 0.001 * grads[k] ** 2
                mhat = mom[k] / (1 - 0.9**step)
                vhat = vel[k] / (1 - 0.999**step)
                params[k] = (value - lr * mhat / (np.sqrt(vhat) + 1e-8)).astype(np.float32)
        return params

    def predict(self, X: Features) -> np.ndarray:
        A = self._inputs(X)
        out = np.zeros((len(X), self.nets[0]["b"].shape[0]))
        for p in self.nets:
            H = np.maximum(A @ p["W"] + p["c"], 0.0)
            out += _sigmoid(H @ p["V"] + p["b"])
        return out / len(self.nets)

    def state(self) -> dict[str, np.ndarray]:
        stacked = {f"p_{k}": np.stack([p[k] for p in self.nets]) for k in self.nets[0]}
        return {**stacked, "mu": self.mu, "sd": self.sd, "clip": np.array(self.clip)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> FactorPredictor:
        W = state["p_W"]
        single = W.ndim == 2  # routers saved before members were averaged
        clip = float(state["clip"]) if "clip" in state else np.inf  # older routers did not clip
        p = cls(hidden=int(W.shape[-1]), members=1 if single else int(W.shape[0]), clip=clip)
        params = {k[2:]: state[k].astype(np.float32) for k in state if k.startswith("p_")}
        p.nets = [params] if single else [{k: v[i] for k, v in params.items()} for i in range(p.members)]
        p.mu, p.sd = state["mu"], state["sd"]
        return p


class EnsemblePredictor(Predictor):
    """The mean of a kNN and a factor predictor: their errors differ, so the mean ranks better."""

    kind = "ensemble"
    seeded = True

    def __init__(self, seed: int = 0) -> None:
        self.knn = KNNPredictor()
        self.factor = FactorPredictor(seed=seed)

    def fit(self, X: Features, Y: np.ndarray) -> EnsemblePredictor:
        self.knn.fit(X, Y)
        self.factor.fit(X, Y)
        return self

    def predict(self, X: Features) -> np.ndarray:
        return 0.5 * (self.knn.predict(X) + self.factor.predict(X))

    def state(self) -> dict[str, np.ndarray]:
        return {**{f"knn.{k}": v for k, v in self.knn.state().items()},
                **{f"factor.{k}": v for k, v in self.factor.state().items()}}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> EnsemblePredictor:
        p = cls()
        p.knn = KNNPredictor.from_state({k[4:]: v for k, v in state.items() if k.startswith("knn.")})
        p.factor = FactorPredictor.from_state({k[7:]: v for k, v in state.items() if k.startswith("factor.")})
        return p


class LengthPredictor(Predictor):
    """Baseline: each model's accuracy among training prompts of similar length (deciles)."""

    kind = "length"

    def __init__(self, bins: int = 10) -> None:
        self.bins = bins

    def fit(self, X: Features, Y: np.ndarray) -> LengthPredictor:
        length = X.cheap[:, 0]
        self.edges = np.unique(np.quantile(length, np.linspace(0, 1, self.bins + 1)[1:-1]))
        which = np.searchsorted(self.edges, length)
        prior = model_priors(Y)
        self.table = np.tile(prior, (len(self.edges) + 1, 1))
        for b in range(len(self.edges) + 1):
            rows = Y[which == b]
            known = ~np.isnan(rows)
            # Beta(2) shrinkage toward the overall accuracy.
            self.table[b] = (np.where(known, rows, 0).sum(0) + 2 * prior) / (known.sum(0) + 2)
        return self

    def predict(self, X: Features) -> np.ndarray:
        return self.table[np.searchsorted(self.edges, X.cheap[:, 0])]

    def state(self) -> dict[str, np.ndarray]:
        return {"edges": self.edges, "table": self.table}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> LengthPredictor:
        p = cls()
        p.edges, p.table = state["edges"], state["table"]
        return p


class RandomPredictor(Predictor):
    """Baseline: independent uniform scores, i.e. routing at random."""

    kind = "random"
    seeded = True

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, X: Features, Y: np.ndarray) -> RandomPredictor:
        self.n_models = Y.shape[1]
        return self

    def predict(self, X: Features) -> np.ndarray:
        return np.random.default_rng(self.seed).random((len(X), self.n_models))

    def state(self) -> dict[str, np.ndarray]:
        return {"n_models": np.array(self.n_models), "seed": np.array(self.seed)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> RandomPredictor:
        p = cls(int(state["seed"]))
        p.n_models = int(state["n_models"])
        return p


def make(kind: str, seed: int = 0) -> Predictor:
    """A fresh predictor of ``kind``; ``seed`` fixes its random initialisation where it has one."""
    cls = PREDICTORS[kind]
    return cls(seed=seed) if cls.seeded else cls()


PREDICTORS: dict[str, type[Predictor]] = {
    cls.kind: cls for cls in (KNNPredictor, FactorPredictor, EnsemblePredictor, LengthPredictor, RandomPredictor)
}
LEARNED = ("knn", "factor", "ensemble")
BASELINES = ("random", "length")

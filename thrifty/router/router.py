"""The trained router: load once, score prompts, choose a model.

A router directory is self-contained: ``router.json`` (models, reference
costs, named profiles, provenance), ``predictor.npz`` (learned weights) and
``embedder.npz`` (the distilled embedding table).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from thrifty.errors import UsageError
from thrifty.router.calibrate import weight_for_share, weight_keeping
from thrifty.router.data import RoutingData
from thrifty.router.embed import EmbeddingCache, StaticEmbedder, default_embedder
from thrifty.router.features import FIRST_NAMES, NAMES, feature_matrix, prompt_features
from thrifty.router.predictors import PREDICTORS, Features, Predictor, make

FORMAT_VERSION = 1
# Named profiles keep this share of the best mean quality the router predicts
# for its calibration prompts (cost ignored), at the lowest predicted cost.
AUTO_QUALITY = 0.98
CHEAP_QUALITY = 0.93

# Per-call reference costs (USD) for models whose training data carries none:
# their catalog prices times the mean prompt and answer sizes of RouteLLM's
# MMLU/GSM8K data (about 150 input and 250 output tokens).
_MEAN_TOKENS = (150, 250)


@dataclass(frozen=True)
class Profile:
    """How to trade quality for cost.

    ``cost_weight``: maximise predicted quality - weight x relative cost (0 = best quality).
    ``target_quality``: the cheapest model predicted to reach this probability of a good answer.
    """

    kind: str
    value: float

    @classmethod
    def cost_weight(cls, weight: float) -> Profile:
        if not weight >= 0:
            raise UsageError(f"cost weight must be >= 0, got {weight}")
        return cls("cost_weight", float(weight))

    @classmethod
    def target_quality(cls, quality: float) -> Profile:
        if not 0.0 <= quality <= 1.0:
            raise UsageError(f"target quality must be within [0, 1], got {quality}")
        return cls("target_quality", float(quality))

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"


class Router:
    def __init__(self, models: Sequence[str], predictor: Predictor, embedder: StaticEmbedder,
                 reference_costs: Mapping[str, float], profiles: Mapping[str, Profile] | None = None,
                 meta: dict | None = None, feature_names: Sequence[str] = NAMES) -> None:
        unknown = [f for f in feature_names if f not in NAMES]
        if unknown:
            raise UsageError(f"router uses features this thrifty does not know: {', '.join(unknown)}; upgrade thrifty")
        self.feature_names = tuple(feature_names)
        self._feature_cols = np.array([NAMES.index(f) for f in feature_names])
        self.models = list(models)
        self.predictor = predictor
        self.embedder = embedder
        self.reference_costs = dict(reference_costs)
        self.profiles = dict(profiles or {})
        self.meta = dict(meta or {})

    # -- scoring ---------------------------------------------------------------

    def features(self, prompts: Sequence[str], cache: bool = False) -> Features:
        emb = EmbeddingCache(self.embedder).embed(prompts) if cache else self.embedder.embed(prompts)
        return Features(emb, feature_matrix(prompts)[:, self._feature_cols])

    def score(self, prompt: str) -> dict[str, float]:
        """P(good answer) for every model, for one prompt (well under a millisecond or two)."""
        return self.score_embedded(prompt)[0]

    def score_embedded(self, prompt: str) -> tuple[dict[str, float], np.ndarray]:
        """:meth:`score` and the prompt's embedding it was computed from (learning's context)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError("prompt must be a non-empty string")
        emb = self.embedder.embed_one(prompt)
        x = Features(emb[None, :], np.array([prompt_features(prompt)], dtype=np.float32)[:, self._feature_cols])
        row = self.predictor.predict(x)[0]
        return {m: float(p) for m, p in zip(self.models, row)}, emb

    def score_many(self, prompts: Sequence[str], cache: bool = False) -> np.ndarray:
        return self.predictor.predict(self.features(prompts, cache=cache))

    # -- deciding --------------------------------------------------------------

    def choose(self, scores: Mapping[str, float], costs: Mapping[str, float], profile: Profile) -> tuple[str, str]:
        """Pick among the models present in both ``scores`` and ``costs`` (USD for this request)."""
        names = [m for m in costs if m in scores]
        if not names:
            raise UsageError("no candidate model has both a quality score and a cost")
        q = np.array([scores[m] for m in names])
        c = np.array([max(float(costs[m]), 0.0) for m in names])
        if profile.kind == "target_quality":
            ok = np.flatnonzero(q >= profile.value)
            i = int(ok[np.argmin(c[ok])]) if ok.size else int(np.argmax(q))
            why = "cheapest reaching" if ok.size else "none reaches; best predicted for"
            reason = f"{why} target quality {profile.value:g}"
        else:
            top = c.max() if c.max() > 0 else 1.0
            i = int(np.argmax(q - profile.value * c / top))
            reason = f"best quality - {profile.value:.3g} x relative cost"
        return names[i], f"{reason}: predicted {q[i]:.2f} at ${c[i]:.6f} among {len(names)}"

    def resolve_profile(self, name: str) -> Profile:
        try:
            return self.profiles[name]
        except KeyError:
            raise UsageError(f"unknown routing profile {name!r}; known: {', '.join(sorted(self.profiles))}") from None

    def calibrate_share(self, prompts: Sequence[str], share: float, model_costs: Mapping[str, float] | None = None) -> Profile:
        """The cost-weight profile that sends ``share`` of ``prompts`` to the most expensive model."""
        costs = self.unit_costs(model_costs)
        # may be negative (favour the expensive model): see weight_for_share
        return Profile("cost_weight", weight_for_share(self.score_many(prompts), costs, share))

    def unit_costs(self, model_costs: Mapping[str, float] | None = None) -> np.ndarray:
        """Each model's cost per call (reference costs, overridden by ``model_costs``), in model order."""
        src = dict(self.reference_costs, **(model_costs or {}))
        return np.array([src.get(m, np.nan) for m in self.models], dtype=float)

    # -- training --------------------------------------------------------------

    @classmethod
    def train(cls, data: RoutingData, predictor: str = "ensemble", *, embedder: StaticEmbedder | None = None,
              calibration_share: float = 0.1, seed: int = 0, show_progress: bool = True) -> Router:
        if predictor not in PREDICTORS:
            raise UsageError(f"unknown predictor {predictor!r}; choose one of {', '.join(PREDICTORS)}")
        if len(data) < 10:
            raise UsageError(f"need at least 10 labelled prompts to train, got {len(data)}")
        started = time.time()
        embedder = embedder or default_embedder(show_progress)
        X = Features(EmbeddingCache(embedder).embed(data.prompts, show_progress), feature_matrix(data.prompts))
        Y = data.labels
        # Calibrate named profiles on prompts the calibration model did not see.
        rng = np.random.default_rng(seed)
        calib = rng.random(len(data)) < calibration_share
        cal_pred = make(predictor, seed).fit(X.subset(np.flatnonzero(~calib)), Y[~calib])
        P_cal = cal_pred.predict(X.subset(np.flatnonzero(calib)))
        model = make(predictor, seed).fit(X, Y)
        ref = reference_costs(data)
        unit = np.array([ref[m] for m in data.models])
        profiles = {
            "auto-best": Profile.cost_weight(0.0),
            "auto": Profile.cost_weight(weight_keeping(P_cal, unit, AUTO_QUALITY)),
            "auto-cheap": Profile.cost_weight(weight_keeping(P_cal, unit, CHEAP_QUALITY)),
        }
        meta = {
            "format_version": FORMAT_VERSION,
            "predictor": predictor,
            "embedder": embedder.ident,
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "training_seconds": round(time.time() - started, 1),
            "n_prompts": len(data),
            "groups": sorted(set(data.groups)),
            "labels_per_model": {m: int((~np.isnan(Y[:, j])).sum()) for j, m in enumerate(data.models)},
            "accuracy_per_model": {m: float(np.nanmean(Y[:, j])) if (~np.isnan(Y[:, j])).any() else None
                                   for j, m in enumerate(data.models)},
            "profiles_calibrated_on": int(calib.sum()),
            "profile_notes": {
                "auto": f"largest cost weight keeping {AUTO_QUALITY:.0%} of the best predicted mean quality",
                "auto-cheap": f"largest cost weight keeping {CHEAP_QUALITY:.0%} of the best predicted mean quality",
                "auto-best": "highest predicted quality, cost ignored",
            },
        }
        return cls(data.models, model, embedder, ref, profiles, meta)

    # -- persistence -----------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / "predictor.npz", **self.predictor.state())
        self.embedder.save(out / "embedder.npz")
        self.save_doc(out)
        return out

    def save_doc(self, directory: str | Path) -> None:
        """Rewrite only ``router.json`` (models, costs, profiles, provenance), atomically."""
        out = Path(directory)
        doc = {
            "models": self.models,
            "predictor": self.predictor.kind,
            "reference_costs_usd": self.reference_costs,
            "features": list(self.feature_names),
            "profiles": {k: asdict(v) for k, v in self.profiles.items()},
            "meta": self.meta,
        }
        tmp = out / "router.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(out / "router.json")

    @classmethod
    def load(cls, directory: str | Path) -> Router:
        path = Path(directory)
        try:
            doc = json.loads((path / "router.json").read_text())
            kind = doc["predictor"]
            with np.load(path / "predictor.npz") as z:
                state = {k: z[k] for k in z.files}
            predictor = PREDICTORS[kind].from_state(state)
            embedder = StaticEmbedder.load(path / "embedder.npz")
        except FileNotFoundError as exc:
            raise UsageError(f"{path}: not a router directory (missing {Path(exc.filename).name})") from None
        except (KeyError, ValueError, json.JSONDecodeError) as exc:
            raise UsageError(f"{path}: damaged router directory ({exc})") from None
        profiles = {k: Profile(v["kind"], float(v["value"])) for k, v in doc.get("profiles", {}).items()}
        return cls(doc["models"], predictor, embedder, doc.get("reference_costs_usd", {}), profiles, doc.get("meta"),
                   doc.get("features", FIRST_NAMES))


def reference_costs(data: RoutingData) -> dict[str, float]:
    """Mean USD per call for each model: from the data's costs where present, else catalog prices."""
    out: dict[str, float] = {}
    for j, m in enumerate(data.models):
        col = data.costs[:, j]
        if (~np.isnan(col)).any():
            out[m] = float(np.nanmean(col))
            continue
        price = catalog_price(m)
        if price is None:
            raise UsageError(
                f"no cost known for model {m!r}: its data has no '<model>|total_cost' column "
                f"and the price catalog has no price for it; train on data with costs")
        out[m] = price[0] * _MEAN_TOKENS[0] + price[1] * _MEAN_TOKENS[1]
    return out


def catalog_price(model: str) -> tuple[float, float] | None:
    """(input, output) USD per token for ``model`` from the price catalog.

    The catalog's own entry when it has one; else the median over the providers
    that list the model under ``<provider>/<model>`` (data sets name open models
    without the provider that served them).
    """
    from thrifty.catalog.loader import Catalog

    entries = Catalog.load().entries
    named = [entries[model]] if model in entries else [
        e for k, e in entries.items() if k.lower().endswith("/" + model.lower())]
    prices = [(e["input_cost_per_token"], e["output_cost_per_token"]) for e in named
              if e.get("input_cost_per_token") and e.get("output_cost_per_token")]
    if not prices:
        return None
    return float(np.median([p[0] for p in prices])), float(np.median([p[1] for p in prices]))

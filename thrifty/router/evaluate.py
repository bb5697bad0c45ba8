"""Honest evaluation protocols: no prompt is ever scored by a router trained on it.

* ``mmlu-subjects``: MMLU, grouped k-fold by subject (whole subjects held out).
* ``mmlu-to-gsm8k``: train on all of MMLU, test on GSM8K.
* ``routerbench-cv``: k-fold cross-validation on the RouterBench train split,
  N models with their real per-call costs.

Every learned predictor is reported beside the random, length and oracle
baselines, with bootstrap confidence intervals. Two references are not routers:
``oracle`` knows every test label; ``group-oracle`` knows only each test
group's true mean quality per model (its MMLU subject, its RouterBench task),
the most a router that recognises the subject and nothing else could reach.

Diagnostics say where a router's skill comes from, and so what a target asks
for: ``group_signal`` (held-out groups: how well predicted group means track the
true ones, and how well the router ranks prompts within a group) and, for
MMLU -> GSM8K, ``in_domain_cv`` (the same learners with GSM8K's own labels,
cross-validated: what these features can reach on GSM8K at all).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thrifty.errors import UsageError
from thrifty.router.calibrate import share_for_weight, weight_for_share
from thrifty.router.data import RoutingData
from thrifty.router.embed import EmbeddingCache, default_embedder
from thrifty.router.features import feature_matrix
from thrifty.router.metrics import auc, cost_quality_curve, n_model_report, pair_curve, pair_report
from thrifty.router.predictors import BASELINES, LEARNED, Features, make
from thrifty.router.router import reference_costs

STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
PROTOCOLS = ("mmlu-subjects", "mmlu-to-gsm8k", "routerbench-cv")
KINDS = BASELINES + LEARNED
REFERENCES = ("group-oracle", "oracle")  # they read the test labels: upper references, not routers
CALIBRATION_TARGETS = (0.2, 0.5)


@dataclass
class Split:
    train: np.ndarray
    test: np.ndarray


def grouped_folds(groups: list[str], k: int, seed: int) -> list[np.ndarray]:
    """k folds of whole groups (e.g. MMLU subjects), groups shuffled with ``seed``."""
    names = sorted(set(groups))
    if len(names) < k:
        raise UsageError(f"need at least {k} groups for {k}-fold grouped splits, found {len(names)}")
    np.random.default_rng(seed).shuffle(names)
    g = np.array(groups)
    return [np.isin(g, names[i::k]) for i in range(k)]


def random_folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    which = np.random.default_rng(seed).permutation(n) % k
    return [which == i for i in range(k)]


class Evaluator:
    def __init__(self, data: RoutingData, *, folds: int = 5, seed: int = 0, rounds: int = 500,
                 kinds: tuple[str, ...] = KINDS, other_data: bool = False,
                 log: Callable[[str], None] = print) -> None:
        self.data, self.k, self.seed, self.rounds, self.kinds, self.log = data, folds, seed, rounds, kinds, log
        self.other_data = other_data
        embedder = default_embedder(show_progress=True)
        self.X = Features(EmbeddingCache(embedder).embed(data.prompts), feature_matrix(data.prompts))
        self.groups = np.array(data.groups)

    # -- helpers ---------------------------------------------------------------------

    def _predictions(self, kinds: tuple[str, ...], train: np.ndarray, test: np.ndarray,
                     models: list[str]) -> dict[str, np.ndarray]:
        """Each kind's predicted quality on ``test`` (n_test x models) after training on ``train``.

        The ensemble is the mean of the kNN and factor predictions, so when those
        are evaluated too it reuses them instead of training them again.
        """
        cols = [self.data.models.index(m) for m in models]
        Y = self.data.labels[:, cols]
        out: dict[str, np.ndarray] = {}
        for kind in kinds:
            if kind == "oracle":
                out[kind] = np.nan_to_num(Y[test])
            elif kind == "group-oracle":
                out[kind] = _group_means(self.groups[test], Y[test])
            elif kind == "ensemble" and "knn" in out and "factor" in out:
                out[kind] = 0.5 * (out["knn"] + out["factor"])
            else:
                model = make(kind, self.seed).fit(self.X.subset(np.flatnonzero(train)), Y[train])
                out[kind] = model.predict(self.X.subset(np.flatnonzero(test)))
        return out

    def _mask(self, prefix: str, models: list[str]) -> np.ndarray:
        cols = [self.data.models.index(m) for m in models]
        labelled = ~np.isnan(self.data.labels[:, cols]).any(axis=1)
        return np.char.startswith(self.groups.astype(str), prefix) & labelled

    def _need(self, models: list[str], what: str) -> None:
        missing = [m for m in models if m not in self.data.models]
        if missing:
            raise UsageError(f"{what} needs labels for {', '.join(missing)}; not in the data given")

    # -- pair protocols --------------------------------------------------------------

    def _pair(self, name: str, splits: list[Split], mask: np.ndarray, extra: np.ndarray) -> dict:
        """``extra``: prompts outside the protocol's benchmarks that every fold may also train on."""
        models = [WEAK, STRONG]
        cols = [self.data.models.index(m) for m in models]
        y = self.data.labels[:, cols]
        test_all = np.zeros(len(self.data), bool)
        for s in splits:
            test_all |= s.test
        idx = np.flatnonzero(test_all & mask)
        result: dict = {"protocol": name, "models": {"weak": WEAK, "strong": STRONG}, "routers": {}, "curves": {},
                        "trained_on_other_prompts": int(extra.sum())}
        unit = np.array([0.0, 1.0])  # pair routing: only the strong share matters, not the price
        kinds = self.kinds + REFERENCES
        started = time.time()
        gains = {kind: np.full(len(self.data), np.nan) for kind in kinds}
        drift: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for s in splits:
            tr, te = (s.train & mask) | extra, s.test & mask
            for kind, P in self._predictions(kinds, tr, te, models).items():
                gains[kind][te] = P[:, 1] - P[:, 0]
                if kind in LEARNED:
                    drift[kind] += self._calibration_drift(P, unit)
        seconds = round(time.time() - started, 1)
        for kind in kinds:
            gain = gains[kind]
            report = pair_report(gain[idx], y[idx, 1], y[idx, 0], rounds=self.rounds)
            if drift[kind]:
                report["calibration"] = _summarise_drift(drift[kind])
            result["routers"][kind] = report
            curve = pair_curve(gain[idx], y[idx, 1], y[idx, 0])
            step = max(1, len(curve.share) // 200)
            result["curves"][kind] = {"share": curve.share[::step].tolist(), "quality": curve.quality[::step].tolist()}
            self.log(f"  {name:14s} {kind:12s} APGR {report['apgr']:.3f}  CPT50 {report['cpt50']:.3f}")
            if kind in LEARNED and len(np.unique(self.groups[idx])) > 1:
                report["group_signal"] = group_signal(gain[idx], self.groups[idx], y[idx, 1], y[idx, 0])
        result["seconds"] = seconds
        return result

    def _in_domain_cv(self, mask: np.ndarray) -> dict:
        """The learners and the length baseline being evaluated, k-fold cross-validated on
        ``mask``'s own labels."""
        models = [WEAK, STRONG]
        cols = [self.data.models.index(m) for m in models]
        y = self.data.labels[:, cols]
        idx = np.flatnonzero(mask)
        gains = {kind: np.zeros(len(idx)) for kind in self.kinds if kind in ("length",) + LEARNED}
        for f in random_folds(len(idx), self.k, self.seed):
            tr, te = np.zeros(len(self.data), bool), np.zeros(len(self.data), bool)
            tr[idx[~f]], te[idx[f]] = True, True
            for kind, P in self._predictions(tuple(gains), tr, te, models).items():
                gains[kind][f] = P[:, 1] - P[:, 0]
        out = {}
        for kind, gain in gains.items():
            r = pair_report(gain, y[idx, 1], y[idx, 0], rounds=self.rounds)
            out[kind] = {"apgr": r["apgr"], "apgr_ci": r["apgr_ci"], "cpt50": r["cpt50"]}
            self.log(f"  {'in-domain cv':14s} {kind:12s} APGR {r['apgr']:.3f}")
        return out

    def _calibration_drift(self, P: np.ndarray, unit: np.ndarray) -> list[dict]:
        """Calibrate on a 20% sample of the test prompts (predictions only), measure on the rest."""
        rng = np.random.default_rng(self.seed)
        sample = rng.random(len(P)) < 0.2
        out = []
        for target in CALIBRATION_TARGETS:
            w = weight_for_share(P[sample], unit, target)
            out.append({"target": target, "realized": share_for_weight(P[~sample], unit, w)})
        return out

    def mmlu_subjects(self) -> dict:
        self._need([STRONG, WEAK], "mmlu-subjects")
        mask = self._mask("mmlu/", [STRONG, WEAK])
        groups = [g for g, m in zip(self.data.groups, mask) if m]
        folds = grouped_folds(groups, self.k, self.seed)
        splits = []
        for f in folds:
            test = np.zeros(len(self.data), bool)
            test[np.flatnonzero(mask)[f]] = True
            splits.append(Split(mask & ~test, test))
        return self._pair("mmlu-subjects", splits, mask, self._other(("mmlu/",)))

    def mmlu_to_gsm8k(self) -> dict:
        self._need([STRONG, WEAK], "mmlu-to-gsm8k")
        train = self._mask("mmlu/", [STRONG, WEAK])
        test = self._mask("gsm8k", [STRONG, WEAK])
        if not test.any() or not train.any():
            raise UsageError("mmlu-to-gsm8k needs both MMLU and GSM8K RouteLLM files")
        result = self._pair("mmlu-to-gsm8k", [Split(train, test)], train | test,
                            self._other(("mmlu/", "gsm8k")))
        result["in_domain_cv"] = self._in_domain_cv(test)
        return result

    def _other(self, benchmarks: tuple[str, ...]) -> np.ndarray:
        """With ``other_data``: prompts of no benchmark in ``benchmarks`` that have labels for both models."""
        if not self.other_data:
            return np.zeros(len(self.data), bool)
        labelled = self._mask("", [STRONG, WEAK])
        theirs = np.zeros(len(self.data), bool)
        for prefix in benchmarks:
            theirs |= np.char.startswith(self.groups.astype(str), prefix)
        return labelled & ~theirs

    # -- N-model protocol ------------------------------------------------------------

    def routerbench_cv(self) -> dict:
        in_rb = np.char.startswith(self.groups.astype(str), "routerbench/")
        models = [m for j, m in enumerate(self.data.models) if (~np.isnan(self.data.costs[in_rb, j])).any()]
        if not in_rb.any() or len(models) < 2:
            raise UsageError("routerbench-cv needs RouterBench files (with per-model costs)")
        cols = [self.data.models.index(m) for m in models]
        Y, C = self.data.labels[:, cols], self.data.costs[:, cols]
        mask = in_rb & ~np.isnan(Y).any(axis=1) & ~np.isnan(C).any(axis=1)
        idx = np.flatnonzero(mask)
        folds = random_folds(len(idx), self.k, self.seed)
        result: dict = {"protocol": "routerbench-cv", "models": models, "routers": {}}
        kinds = self.kinds + REFERENCES
        started = time.time()
        pred = {kind: np.zeros((len(idx), len(models))) for kind in kinds}
        unit = np.zeros((len(idx), len(models)))
        for f in folds:
            tr = np.zeros(len(self.data), bool)
            tr[idx[~f]] = True
            test = np.zeros(len(self.data), bool)
            test[idx[f]] = True
            ref = reference_costs(self.data.subset(np.flatnonzero(tr)).with_models(models))
            unit[f] = [ref[m] for m in models]
            for kind, P in self._predictions(kinds, tr, test, models).items():
                pred[kind][f] = P
        result["seconds"] = round(time.time() - started, 1)
        for kind in kinds:
            # reference costs differ slightly per fold; use their mean for the decision
            curve = cost_quality_curve(pred[kind], unit.mean(axis=0), C[idx], Y[idx])
            report = n_model_report(curve, models, rounds=self.rounds)
            if kind in LEARNED:
                report["within_group_auc"] = within_group_auc(pred[kind], Y[idx], self.groups[idx])
            result["routers"][kind] = report
            share = report["cost_to_match_best_share"]
            match = "not reached" if np.isnan(share) else f"{share:.1%} of its cost"
            self.log(f"  routerbench-cv {kind:12s} max quality {report['max_quality']:.3f}  cost to match "
                     f"{report['best_single']}: {match}")
        return result

    def run(self, protocols: tuple[str, ...] = PROTOCOLS) -> dict:
        runners = {"mmlu-subjects": self.mmlu_subjects, "mmlu-to-gsm8k": self.mmlu_to_gsm8k,
                   "routerbench-cv": self.routerbench_cv}
        unknown = [p for p in protocols if p not in runners]
        if unknown:
            raise UsageError(f"unknown protocol(s) {', '.join(unknown)}; choose from {', '.join(PROTOCOLS)}")
        return {"protocols": {p: runners[p]() for p in protocols},
                "settings": {"folds": self.k, "seed": self.seed, "bootstrap_rounds": self.rounds,
                             "n_prompts": len(self.data)}}


def group_signal(gain: np.ndarray, groups: np.ndarray, y_strong: np.ndarray, y_weak: np.ndarray,
                 *, min_class: int = 10) -> dict:
    """Where a pair router's ranking comes from, on held-out prompts of several groups.

    * ``group_gain_corr``: correlation over groups between the mean predicted gain and the true
      gain (strong minus weak accuracy): does the router tell which groups need the strong model?
    * ``within_group_auc``: mean over groups (with ``min_class`` prompts of each kind) of the AUC
      of the predicted gain for "only the strong model is right": does it rank prompts inside one?
    * ``apgr_true_group_means``: APGR of each prompt scored by its group's *true* gain plus the
      router's deviation from its own group mean; minus the group oracle's APGR, it is what the
      router's within-group ranking adds to perfect group knowledge.
    """
    delta = y_strong - y_weak
    names = np.unique(groups)
    true_mean, pred_mean, aucs = [], [], []
    blended = np.empty(len(gain))
    for g in names:
        rows = groups == g
        true_mean.append(delta[rows].mean())
        pred_mean.append(gain[rows].mean())
        blended[rows] = delta[rows].mean() + gain[rows] - gain[rows].mean()
        only_strong = delta[rows] > 0
        if min(only_strong.sum(), (~only_strong).sum()) >= min_class:
            aucs.append(auc(gain[rows], only_strong))
    corr = float(np.corrcoef(true_mean, pred_mean)[0, 1]) if np.std(pred_mean) > 0 else float("nan")
    return {"groups": len(names), "group_gain_corr": corr,
            "within_group_auc": float(np.mean(aucs)) if aucs else float("nan"),
            "groups_with_auc": len(aucs),
            "apgr_true_group_means": pair_curve(blended, y_strong, y_weak).apgr()}


def within_group_auc(pred: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, min_class: int = 10) -> float:
    """Mean over (group, model) of the AUC of a model's predicted quality for its own correctness
    inside one group (e.g. a RouterBench task): can the router tell which prompts of a task a
    model gets right? 0.5 = no better than the task's average."""
    aucs = []
    for g in np.unique(groups):
        rows = groups == g
        for j in range(labels.shape[1]):
            good = labels[rows, j] > 0.5
            if min(good.sum(), (~good).sum()) >= min_class:
                aucs.append(auc(pred[rows, j], good))
    return float(np.mean(aucs)) if aucs else float("nan")


def _group_means(groups: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Each row replaced by its group's mean of the known labels (0 where a model has none)."""
    out = np.zeros(Y.shape)
    known = ~np.isnan(Y)
    for g in np.unique(groups):
        rows = groups == g
        count = known[rows].sum(axis=0)
        out[rows] = np.where(known[rows], Y[rows], 0.0).sum(axis=0) / np.maximum(count, 1)
    return out


def _summarise_drift(rows: list[dict]) -> dict:
    out = {}
    for target in CALIBRATION_TARGETS:
        realized = [r["realized"] for r in rows if r["target"] == target]
        out[f"share_{target:g}"] = {"mean_realized": float(np.mean(realized)),
                                    "max_abs_drift": float(np.max(np.abs(np.array(realized) - target)))}
    return out


# -- plots ---------------------------------------------------------------------------


def plot(report: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, res in report["protocols"].items():
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
        if "curves" in res:
            for kind, c in res["curves"].items():
                apgr = res["routers"][kind]["apgr"]
                ax.plot(np.array(c["share"]) * 100, c["quality"], label=f"{kind} (APGR {apgr:.3f})",
                        lw=2 if kind in LEARNED else 1, ls="--" if kind in BASELINES + REFERENCES else "-")
            ax.set_xlabel("share of calls to the strong model (%)")
            ax.set_ylabel("accuracy on held-out prompts")
            ax.set_title(f"{name}: quality vs strong share")
        else:
            singles = res["routers"]["random"]["singles"]
            pts = sorted((v["cost"] * 1000, v["quality"], m) for m, v in singles.items())
            for c, q, m in pts:
                ax.scatter(c, q, s=14, color="grey")
                ax.annotate(m.split("/")[-1], (c, q), fontsize=6, xytext=(2, 2), textcoords="offset points")
            frontier, best = [], -1.0
            for c, q, _ in pts:
                if q > best:
                    frontier.append((c, q))
                    best = q
            ax.plot(*zip(*frontier), color="grey", lw=1, label="single-model frontier")
            for kind, r in res["routers"].items():
                xs = [p["cost"] * 1000 for p in r["points"]]
                ys = [p["quality"] for p in r["points"]]
                ax.plot(xs, ys, label=kind, lw=2 if kind in LEARNED else 1,
                        ls="--" if kind in BASELINES + REFERENCES else "-")
            ax.set_xscale("log")
            ax.set_xlabel("cost per 1,000 prompts (USD, log scale)")
            ax.set_ylabel("accuracy on held-out prompts")
            ax.set_title(f"{name}: quality vs cost")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths

from pathlib import Path

import numpy as np
import pytest

from thrifty.errors import UsageError
from thrifty.router import Profile, Router, data
from thrifty.router.evaluate import Evaluator

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "routing"


@pytest.fixture(scope="module")
def fixtures() -> Path:
    return FIXTURE_DIR


@pytest.fixture(scope="module")
def routerbench(fixtures):
    return data.load([fixtures / "routerbench"])


def test_learned_routers_beat_random_on_held_out_prompts(routerbench):
    report = Evaluator(routerbench, folds=3, rounds=50, kinds=("random", "knn", "factor", "ensemble"),
                       log=lambda s: None).routerbench_cv()
    r = report["routers"]
    for kind in ("knn", "factor", "ensemble"):
        # at their best-quality operating point, learned routers beat routing at random
        assert r[kind]["max_quality"] > r["random"]["max_quality"] + 0.05, kind
        # and every operating point of theirs is scored on prompts they never saw
        assert r[kind]["n"] == r["random"]["n"] == len(routerbench) - int(np.isnan(routerbench.labels).any(1).sum())


def test_pair_protocol_reports_apgr_and_calibration(fixtures):
    d = data.load([fixtures / "routellm"])
    ev = Evaluator(d, folds=5, rounds=50, kinds=("random", "length", "factor"), log=lambda s: None)
    res = ev.mmlu_subjects()
    for kind in ("random", "length", "factor", "oracle"):
        assert 0.0 <= res["routers"][kind]["cpt50"] <= 1.0
    assert res["routers"]["oracle"]["apgr"] > 0.9
    cal = res["routers"]["factor"]["calibration"]
    assert abs(cal["share_0.5"]["mean_realized"] - 0.5) < 0.15
    # the group oracle knows each held-out subject's true mean gain: between random and the oracle
    assert res["routers"]["random"]["apgr"] < res["routers"]["group-oracle"]["apgr"] < res["routers"]["oracle"]["apgr"]
    g = res["routers"]["factor"]["group_signal"]
    assert g["groups"] == len({x for x in d.groups if x.startswith("mmlu/")})
    assert -1.0 <= g["group_gain_corr"] <= 1.0
    res = ev.mmlu_to_gsm8k()
    assert res["routers"]["factor"]["n"] == 120
    assert "group_signal" not in res["routers"]["factor"]  # one test benchmark: no groups to compare
    # the in-domain reference: the same learners cross-validated on GSM8K's own labels
    assert set(res["in_domain_cv"]) == {"length", "factor"}
    assert all(0.0 < r["apgr"] < 1.2 for r in res["in_domain_cv"].values())


def test_group_signal_separates_group_knowledge_from_within_group_ranking():
    from thrifty.router.evaluate import group_signal

    rng = np.random.default_rng(0)
    groups = np.repeat(np.array(["a", "b", "c", "d"]), 200)
    p_strong = np.repeat([0.9, 0.8, 0.6, 0.95], 200)
    p_weak = np.repeat([0.5, 0.75, 0.6, 0.6], 200)
    y_strong = (rng.random(800) < p_strong).astype(float)
    y_weak = (rng.random(800) < p_weak).astype(float)
    delta = y_strong - y_weak
    true_means = {g: delta[groups == g].mean() for g in "abcd"}
    knows_groups = np.array([true_means[g] for g in groups])  # the group oracle, nothing finer
    s = group_signal(knows_groups, groups, y_strong, y_weak)
    assert s["group_gain_corr"] > 0.999
    assert s["within_group_auc"] == 0.5  # constant within each group
    assert s["groups_with_auc"] == 4
    # perfect ranking inside each group, no idea which group needs the strong model
    ranks_inside = delta + 0.01 * rng.random(800)
    s = group_signal(ranks_inside - np.array([ranks_inside[groups == g].mean() for g in groups]),
                     groups, y_strong, y_weak)
    assert s["within_group_auc"] == 1.0
    assert s["apgr_true_group_means"] > 1.0  # group means plus a perfect within-group order


def test_no_fold_trains_on_a_prompt_it_scores(fixtures, monkeypatch):
    d = data.load([fixtures], aliases={"mistralai/mixtral-8x7b-chat": "mistralai/Mixtral-8x7B-Instruct-v0.1"})
    seen = []
    original = Evaluator._predictions

    def spy(self, kinds, train, test, models):
        seen.append((train.copy(), test.copy()))
        return original(self, kinds, train, test, models)

    monkeypatch.setattr(Evaluator, "_predictions", spy)
    ev = Evaluator(d, folds=3, rounds=20, kinds=("knn",), other_data=True, log=lambda s: None)
    subjects = ev.mmlu_subjects()
    gsm = ev.mmlu_to_gsm8k()
    ev.routerbench_cv()
    groups = np.array(d.groups)
    for train, test in seen:
        assert train.any() and test.any() and not (train & test).any()
        # held-out MMLU subjects never appear in training
        held_out = {g for g in groups[test] if g.startswith("mmlu/")}
        assert not held_out & set(groups[train])
    # other data: RouterBench rows (aliased Mixtral) and, for mmlu-subjects, GSM8K
    n_rb = int(np.char.startswith(groups.astype(str), "routerbench/").sum())
    assert subjects["trained_on_other_prompts"] > n_rb * 0.9
    assert 0 < gsm["trained_on_other_prompts"] <= n_rb


def test_catalog_prices_price_models_the_data_does_not(routerbench):
    from thrifty.router.router import catalog_price, reference_costs

    pin, pout = catalog_price("gpt-4-1106-preview")
    assert (pin, pout) == (1e-05, 3e-05)
    assert catalog_price("mistralai/Mixtral-8x7B-Instruct-v0.1") is not None  # provider-prefixed entries only
    d = data.load([FIXTURE_DIR / "routellm"])
    costs = reference_costs(d)
    assert costs["gpt-4-1106-preview"] > 10 * costs["mistralai/Mixtral-8x7B-Instruct-v0.1"]
    unknown = d.with_aliases({"gpt-4-1106-preview": "no-such-model-anywhere"})
    with pytest.raises(UsageError, match="no cost known for model 'no-such-model-anywhere'"):
        reference_costs(unknown)


def test_train_save_load_score_and_choose(routerbench, tmp_path):
    router = Router.train(routerbench, show_progress=False)
    router.save(tmp_path / "r")
    loaded = Router.load(tmp_path / "r")
    prompt = routerbench.prompts[0]
    a, b = router.score(prompt), loaded.score(prompt)
    assert set(a) == set(routerbench.models)
    assert all(0.0 <= v <= 1.0 for v in a.values())
    assert a == pytest.approx(b, abs=2e-3)  # float16 storage
    costs = loaded.reference_costs
    best, _ = loaded.choose(b, costs, Profile.cost_weight(0.0))
    cheapest, reason = loaded.choose(b, costs, Profile.cost_weight(1e9))
    assert best == max(b, key=b.get)
    assert cheapest == min(costs, key=costs.get) and "among 11" in reason
    target, _ = loaded.choose(b, costs, Profile.target_quality(0.0))
    assert target == cheapest
    assert {"auto", "auto-cheap", "auto-best"} <= set(loaded.profiles)
    assert loaded.profiles["auto-cheap"].value >= loaded.profiles["auto"].value >= 0


def test_choose_only_among_given_candidates(routerbench):
    router = Router.train(routerbench, predictor="knn", show_progress=False)
    s = router.score("What is the capital of France?")
    allowed = {m: c for m, c in router.reference_costs.items() if m.startswith("claude")}
    model, _ = router.choose(s, allowed, router.profiles["auto"])
    assert model.startswith("claude")


def test_calibrated_share_holds_on_held_out_prompts(routerbench):
    order = np.random.default_rng(0).permutation(len(routerbench))
    half = len(routerbench) // 2
    router = Router.train(routerbench.subset(order[:half]), show_progress=False)
    rest = [routerbench.prompts[i] for i in order[half:]]
    profile = router.calibrate_share(rest[: len(rest) // 2], 0.3)
    chosen = [router.choose(router.score(p), router.reference_costs, profile)[0] for p in rest[len(rest) // 2:]]
    dearest = max(router.reference_costs, key=router.reference_costs.get)
    share = np.mean([c == dearest for c in chosen])
    assert abs(share - 0.3) < 0.2


def test_bad_input_is_a_clear_error(routerbench, tmp_path):
    router = Router.train(routerbench, predictor="length", show_progress=False)
    with pytest.raises(UsageError, match="non-empty"):
        router.score("   ")
    with pytest.raises(UsageError, match="not a router directory"):
        Router.load(tmp_path)
    with pytest.raises(UsageError, match="unknown predictor"):
        Router.train(routerbench, predictor="magic", show_progress=False)
    with pytest.raises(UsageError, match="cost weight"):
        Profile.cost_weight(-1)


def test_routers_keep_the_features_they_were_trained_on(routerbench, tmp_path):
    """A router saved before features were added loads and scores with its own columns."""
    import json

    from thrifty.router.features import FIRST_NAMES, NAMES

    router = Router.train(routerbench, "factor", show_progress=False)
    assert router.feature_names == NAMES and len(router.predictor.nets) == 5
    router.save(tmp_path / "new")
    # the same router as an older thrifty wrote it: no "features" key, one network, 10 columns
    old = tmp_path / "old"
    old.mkdir()
    for name in ("embedder.npz", "router.json"):
        (old / name).write_bytes((tmp_path / "new" / name).read_bytes())
    doc = json.loads((old / "router.json").read_text())
    del doc["features"]
    (old / "router.json").write_text(json.dumps(doc))
    state = router.predictor.state()
    d = router.predictor.nets[0]["W"].shape[0]
    first = {k[2:]: v[0] for k, v in state.items() if k.startswith("p_")}
    first["W"] = first["W"][: d - (len(NAMES) - len(FIRST_NAMES))]
    np.savez(old / "predictor.npz", **{f"p_{k}": v for k, v in first.items()},
             mu=state["mu"][: len(FIRST_NAMES)], sd=state["sd"][: len(FIRST_NAMES)])
    loaded = Router.load(old)
    assert loaded.feature_names == FIRST_NAMES and len(loaded.predictor.nets) == 1
    scores = loaded.score(routerbench.prompts[0])
    assert set(scores) == set(routerbench.models) and all(0 <= v <= 1 for v in scores.values())
    doc["features"] = ["log_chars", "no_such_feature"]
    (old / "router.json").write_text(json.dumps(doc))
    with pytest.raises(UsageError, match="no_such_feature"):
        Router.load(old)


def test_factor_stays_sane_on_prompts_unlike_its_training(fixtures):
    """Trained on multiple-choice MMLU only, it must not push GSM8K word problems (no options,
    far outside the feature range) to probabilities near 0 or 1."""
    from thrifty.router.embed import EmbeddingCache, default_embedder
    from thrifty.router.features import feature_matrix
    from thrifty.router.predictors import FactorPredictor, Features

    d = data.load([fixtures / "routellm"])
    X = Features(EmbeddingCache(default_embedder(False)).embed(d.prompts, False), feature_matrix(d.prompts))
    groups = np.array(d.groups)
    mmlu, gsm = np.char.startswith(groups, "mmlu/"), groups == "gsm8k"
    P = FactorPredictor().fit(X.subset(np.flatnonzero(mmlu)), d.labels[mmlu]).predict(X.subset(np.flatnonzero(gsm)))
    assert ((np.median(P, axis=0) > 0.15) & (np.median(P, axis=0) < 0.85)).all()


def test_share_is_reached_when_the_predictor_rarely_prefers_the_expensive_model():
    from thrifty.router.calibrate import share_for_weight, weight_for_share

    rng = np.random.default_rng(0)
    weak = rng.uniform(0.3, 0.9, 1000)
    pred = np.stack([weak, weak - rng.uniform(-0.02, 0.2, 1000)], axis=1)  # strong rarely better
    unit = np.array([0.1, 1.0])
    assert share_for_weight(pred, unit, 0.0) < 0.2
    for target in (0.2, 0.5, 0.8):
        w = weight_for_share(pred, unit, target)
        assert w < 0 and abs(share_for_weight(pred, unit, w) - target) < 0.01
    w = weight_for_share(pred, unit, 0.05)
    assert w > 0 and abs(share_for_weight(pred, unit, w) - 0.05) < 0.01

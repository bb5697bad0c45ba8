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
    res = ev.mmlu_to_gsm8k()
    assert res["routers"]["factor"]["n"] == 120


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

import numpy as np
import pytest

from thrifty.router.metrics import cost_quality_curve, cost_to_match, n_model_report, pair_curve


def test_pair_curve_by_hand():
    # prompts:          a  b  c  d
    y_strong = np.array([1, 1, 0, 1])
    y_weak = np.array([0, 1, 0, 0])
    score = np.array([0.9, 0.1, 0.5, 0.7])  # order a, d, c, b
    c = pair_curve(score, y_strong, y_weak)
    assert c.quality.tolist() == pytest.approx([0.25, 0.5, 0.75, 0.75, 0.75])
    assert c.pgr.tolist() == pytest.approx([0, 0.5, 1, 1, 1])
    # trapezoids over shares 0, .25, .5, .75, 1
    assert c.apgr() == pytest.approx(0.25 * (0.25 + 0.75 + 1 + 1))
    assert c.cpt(0.5) == 0.25 and c.cpt(0.8) == 0.5


def test_ties_are_averaged_so_a_constant_score_is_exactly_random():
    rng = np.random.default_rng(0)
    ys, yw = rng.integers(0, 2, 500), rng.integers(0, 2, 500)
    ys[0], yw[0] = 1, 0  # make sure there is a gap
    c = pair_curve(np.zeros(500), ys, yw)
    assert c.apgr() == pytest.approx(0.5)


def test_oracle_beats_random_and_reversed_oracle_is_worst():
    rng = np.random.default_rng(1)
    ys, yw = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    gain = ys - yw
    assert pair_curve(gain, ys, yw).apgr() > 0.9
    assert pair_curve(-gain, ys, yw).apgr() < 0.1


def test_cost_to_match_by_hand():
    cost = np.array([[1.0, 10.0], [1.0, 10.0], [1.0, 10.0], [1.0, 10.0]])
    labels = np.array([[1, 1], [0, 1], [1, 1], [1, 0]], dtype=float)
    # a perfect predictor: cheap where it is right, expensive otherwise
    pred = labels.copy()
    curve = cost_quality_curve(pred, np.array([1.0, 10.0]), cost, labels)
    report = n_model_report(curve, ["cheap", "dear"], rounds=20)
    assert report["best_single"] == "cheap" or report["best_single"] == "dear"
    # best single accuracy is 0.75; routing reaches 1.0 at cost (1+10+1+1)/4
    assert report["max_quality"] == 1.0
    c, q = curve.points()
    assert cost_to_match(c, q, 1.0) == pytest.approx(13 / 4)


def test_auc_is_the_pairwise_win_rate_with_ties_counted_half():
    from thrifty.router.metrics import auc

    rng = np.random.default_rng(1)
    score = rng.integers(0, 4, 60).astype(float)
    positive = rng.random(60) < 0.4
    pos, neg = score[positive], score[~positive]
    by_pairs = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert auc(score, positive) == pytest.approx(by_pairs)
    assert auc([1.0, 2.0, 3.0], [False, False, True]) == 1.0
    assert np.isnan(auc([1.0, 2.0], [True, True]))

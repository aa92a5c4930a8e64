"""Early termination (paper Sec. 4.6, supplement D.4) and coefficient analysis (E.1, E.2)."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refbasis.basis.analysis import (
    coefficient_tables_json,
    per_class_mean_coefficients,
    per_class_mean_coefficients_naive,
    top_classes_per_basis,
)
from refbasis.basis.early_exit import (
    average_madds,
    confidence_buckets,
    confidence_buckets_json,
    early_exit_predictions,
    exit_decisions,
    exit_decisions_naive,
    threshold_sweep,
    top_probability,
)


@settings(max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), t=st.floats(0, 1))
def test_exit_decisions_match_naive(seed, t):
    z = np.random.default_rng(seed).normal(size=(9, 5)) * 3
    np.testing.assert_array_equal(exit_decisions(z, t), exit_decisions_naive(z, t))


def test_threshold_extremes_and_cost_formula():
    rng = np.random.default_rng(0)
    zl = rng.normal(size=(20, 6)) * 2
    zs = rng.normal(size=(20, 6))
    assert exit_decisions(zl, 0.0).all()
    assert not exit_decisions(zl, 1.0 + 1e-9).any()
    assert not exit_decisions(zl, 7.0).any()
    pred, ex = early_exit_predictions(zl, zs, 0.0)
    np.testing.assert_array_equal(pred, zl.argmax(-1))
    pred, ex = early_exit_predictions(zl, zs, 2.0)
    np.testing.assert_array_equal(pred, zs.argmax(-1))
    costs = dict(light_madds=20.0, synthesis_madds=3.0, specialist_madds=220.0)
    assert average_madds(exit_decisions(zl, 0.0), **costs) == 20.0
    assert average_madds(exit_decisions(zl, 2.0), **costs) == 243.0
    t = float(np.median(top_probability(zl)))
    ex = exit_decisions(zl, t)
    share = ex.sum() / ex.size
    assert 0 < share < 1
    assert average_madds(ex, **costs) == pytest.approx(20.0 + (1 - share) * 223.0, rel=1e-15)
    pred, ex2 = early_exit_predictions(zl, zs, t)
    np.testing.assert_array_equal(ex, ex2)
    np.testing.assert_array_equal(pred[ex], zl.argmax(-1)[ex])
    np.testing.assert_array_equal(pred[~ex], zs.argmax(-1)[~ex])
    sweep = threshold_sweep(zl, zs, zl.argmax(-1), [0.0, 2.0], **costs)
    assert sweep[0]["accuracy"] == 1.0 and sweep[0]["average_madds"] == 20.0
    assert sweep[1]["exit_share"] == 0.0 and sweep[1]["average_madds"] == 243.0


def test_early_exit_bad_input():
    with pytest.raises(ValueError, match=r"exit_decisions: argument 'threshold' must be in"):
        exit_decisions(np.zeros((2, 3)), -0.5)
    with pytest.raises(ValueError, match=r"argument 'light_logits' must have rank 2"):
        exit_decisions(np.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"'specialist_logits' must have shape \(2, 3\)"):
        early_exit_predictions(np.zeros((2, 3)), np.zeros((2, 4)), 0.5)
    with pytest.raises(ValueError, match=r"'exited' must be a non-empty 1-D bool array"):
        average_madds(np.array([1, 0]), 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"'light_madds' must be in"):
        average_madds(0.5, -1.0, 1.0, 1.0)


def test_confidence_buckets_table():
    # Top probabilities decrease with the row index: row r has logit margin 10 - r.
    k = 4
    zl = np.zeros((10, k))
    zl[np.arange(10), np.arange(10) % k] = 10.0 - np.arange(10)
    labels = np.arange(10) % k
    labels[[1, 8]] = (labels[[1, 8]] + 1) % k      # light wrong on rows 1 and 8
    zs = np.zeros((10, k))
    zs[np.arange(10), labels] = 1.0                 # specialist always right
    zb = np.zeros((10, k))                          # baseline: argmax 0 everywhere
    rows = confidence_buckets(zl, zs, labels, baseline_logits=zb, num_buckets=3)
    assert [r.count for r in rows] == [4, 3, 3]
    assert [r.acc_light for r in rows] == [0.75, 1.0, 2 / 3]
    assert [r.acc_specialist for r in rows] == [1.0, 1.0, 1.0]
    want_base = [np.mean(labels[i] == 0) for i in (slice(0, 4), slice(4, 7), slice(7, 10))]
    assert [r.acc_baseline for r in rows] == want_base
    assert rows[0].top_prob_min >= rows[1].top_prob_max >= rows[1].top_prob_min
    d = confidence_buckets_json(rows)
    assert json.loads(json.dumps(d))["buckets"][2]["count"] == 3
    with pytest.raises(ValueError, match=r"'num_buckets' must be <= batch size 10"):
        confidence_buckets(zl, zs, labels, num_buckets=11)
    with pytest.raises(TypeError, match=r"'labels' must be an integer array"):
        confidence_buckets(zl, zs, labels.astype(float))


def test_per_class_means_and_top_classes():
    rng = np.random.default_rng(1)
    a = rng.random((30, 2, 3))
    a /= a.sum(-1, keepdims=True)
    labels = rng.integers(0, 4, size=30)
    labels[labels == 3] = 2                         # class 3 has no example
    means, counts = per_class_mean_coefficients(a, labels, 4)
    m2, c2 = per_class_mean_coefficients_naive(a, labels, 4)
    np.testing.assert_allclose(means, m2, rtol=1e-12)
    np.testing.assert_array_equal(counts, c2)
    assert counts[3] == 0 and np.isnan(means[3]).all()
    top = top_classes_per_basis(means, 1, 2)
    assert top.shape == (3, 2)
    for i in range(3):
        order = sorted(range(3), key=lambda c: -means[c, 1, i])
        assert list(top[i]) == order[:2]
    d = coefficient_tables_json(means, counts, layer_labels=["L14", "L15"], top_k=2)
    d = json.loads(json.dumps(d))
    assert d["per_class"]["3"]["mean_coefficients"] is None
    assert d["per_class"]["0"]["mean_coefficients"]["L15"] == pytest.approx(list(means[0, 1]))
    assert d["top_classes_per_basis"]["L15"]["basis_0"] == [str(c) for c in top[0]]
    with pytest.raises(ValueError, match=r"'labels' must be in \[0, 4\)"):
        per_class_mean_coefficients(a, labels + 3, 4)
    with pytest.raises(ValueError, match=r"'layer' must be in \[0, 2\), got 2"):
        top_classes_per_basis(means, 2, 1)


def test_basisnet_average_madds_uses_cost_model():
    from refbasis.basis.config import basisnet_mv3
    from refbasis.basis.early_exit import basisnet_average_madds
    from refbasis.cost import basisnet_cost

    cfg = basisnet_mv3(16, (11, 15), light_resolution=224)   # supplement A.2, Sec. 4.5/4.6
    c = basisnet_cost(cfg)
    # Nothing exits: supplement Table 2 gives 290M MAdds for 16 bases.
    assert basisnet_average_madds(cfg, 0.0) / 1e6 == pytest.approx(290, abs=1)
    # Everything exits: the lightweight model alone, 56.5M (supplement A.1) + coefficient head.
    assert basisnet_average_madds(cfg, 1.0) / 1e6 == pytest.approx(56.5 + 1024 * 80 / 1e6,
                                                                  abs=0.1)
    ex = np.array([True, False, False, True, True])
    want = c.light_madds + 0.4 * (c.synthesis_madds + c.specialist_madds)
    assert basisnet_average_madds(cfg, ex) == pytest.approx(want, rel=1e-12)

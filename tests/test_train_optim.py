"""RMSProp, schedules, EMA, clipping and weight decay against hand-worked values.

Expected numbers are written out from the formulas of supplement B / TF
(closed forms or 2-3 step sequences computed by hand in the test), never by
calling the code under test.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refbasis.train.clipping import (
    clip_by_global_norm,
    clip_by_global_norm_naive,
    global_norm,
    global_norm_naive,
    l2_penalty,
    l2_penalty_vjp,
    weight_decay_names,
)
from refbasis.train.ema import ema_decay, ema_init, ema_update, ema_update_naive
from refbasis.train.rmsprop import rmsprop_init, rmsprop_update, rmsprop_update_naive
from refbasis.train.schedules import (
    basis_dropout_rate,
    learning_rate,
    learning_rate_naive,
    mixing_epsilon,
    mixing_epsilon_naive,
    steps_per_epoch,
)

# ---------------------------------------------------------------------------
# RMSProp
# ---------------------------------------------------------------------------


def _one_param(p, variant="tf"):
    params = {"w": np.array([p])}
    return params, rmsprop_init(params, variant)


def test_rmsprop_tf_two_steps_by_hand():
    # decay 0.9, momentum 0.9, eps 1.0, lr 0.1; g = 2 then -1; ms starts at 1.
    params, st_ = _one_param(1.0)
    assert st_["ms"]["w"][0] == 1.0 and st_["mom"]["w"][0] == 0.0
    p1, s1 = rmsprop_update(params, {"w": np.array([2.0])}, st_, 0.1, epsilon=1.0)
    ms1 = 0.9 * 1.0 + 0.1 * 4.0                      # 1.3
    mom1 = 0.1 * 2.0 / math.sqrt(ms1 + 1.0)          # 0.131876094679...
    assert s1["ms"]["w"][0] == pytest.approx(1.3, rel=1e-15)
    assert mom1 == pytest.approx(0.13187609467915742, rel=1e-15)
    assert s1["mom"]["w"][0] == pytest.approx(mom1, rel=1e-14)
    assert p1["w"][0] == pytest.approx(1.0 - mom1, rel=1e-14)
    p2, s2 = rmsprop_update(p1, {"w": np.array([-1.0])}, s1, 0.1, epsilon=1.0)
    ms2 = 0.9 * 1.3 + 0.1 * 1.0                      # 1.27
    mom2 = 0.9 * mom1 + 0.1 * (-1.0) / math.sqrt(ms2 + 1.0)
    assert s2["ms"]["w"][0] == pytest.approx(1.27, rel=1e-15)
    assert s2["mom"]["w"][0] == pytest.approx(mom2, rel=1e-14)
    assert p2["w"][0] == pytest.approx(1.0 - mom1 - mom2, rel=1e-14)


def test_rmsprop_tf_default_epsilon_is_one():
    params, st_ = _one_param(0.0)
    p1, _ = rmsprop_update(params, {"w": np.array([3.0])}, st_, 1.0)
    # ms = 0.9 + 0.9 = 1.8; step = 3 / sqrt(1.8 + 1.0)
    assert p1["w"][0] == pytest.approx(-3.0 / math.sqrt(2.8), rel=1e-15)


def test_rmsprop_keras_and_eps_outside_by_hand():
    for variant, denom in (("keras", math.sqrt(0.4 + 1e-7)),
                           ("eps_outside", math.sqrt(0.4) + 1e-7)):
        params, st_ = _one_param(1.0, variant)
        assert st_["ms"]["w"][0] == 0.0
        p1, s1 = rmsprop_update(params, {"w": np.array([2.0])}, st_, 0.1,
                                epsilon=1e-7, variant=variant)
        assert s1["ms"]["w"][0] == pytest.approx(0.4, rel=1e-15)
        assert p1["w"][0] == pytest.approx(1.0 - 0.2 / denom, rel=1e-14)
        p2, _ = rmsprop_update(p1, {"w": np.array([2.0])}, s1, 0.1,
                               epsilon=1e-7, variant=variant)
        ms2 = 0.9 * 0.4 + 0.1 * 4.0
        d2 = math.sqrt(ms2 + 1e-7) if variant == "keras" else math.sqrt(ms2) + 1e-7
        assert p2["w"][0] == pytest.approx(1.0 - 0.2 / denom - (0.9 * 0.2 / denom + 0.2 / d2),
                                           rel=1e-14)


def test_rmsprop_lr_zero_keeps_params_but_fills_ms():
    params, st_ = _one_param(0.5)
    p1, s1 = rmsprop_update(params, {"w": np.array([1.0])}, st_, 0.0)
    assert p1["w"][0] == 0.5 and s1["mom"]["w"][0] == 0.0
    assert s1["ms"]["w"][0] == pytest.approx(1.0, rel=1e-15)  # 0.9*1 + 0.1*1


@settings(max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), variant=st.sampled_from(["tf", "keras", "eps_outside"]),
       lr=st.floats(0.0, 1.0), eps=st.floats(1e-8, 2.0))
def test_rmsprop_vectorised_matches_naive_and_is_pure(seed, variant, lr, eps):
    rng = np.random.default_rng(seed)
    params = {"a.kernel": rng.normal(size=(2, 3)), "b.bias": rng.normal(size=(4,)),
              "a.bn.moving_mean": rng.normal(size=(3,))}
    names = ["a.kernel", "b.bias"]
    state = rmsprop_init(params, variant, names=names)
    assert set(state["ms"]) == set(names)
    copies = {k: v.copy() for k, v in params.items()}
    for _ in range(3):
        grads = {n: rng.normal(size=params[n].shape) for n in names}
        p_v, s_v = rmsprop_update(params, grads, state, lr, epsilon=eps, variant=variant)
        p_n, s_n = rmsprop_update_naive(params, grads, state, lr, epsilon=eps, variant=variant)
        for n in names:
            np.testing.assert_allclose(p_v[n], p_n[n], rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(s_v["ms"][n], s_n["ms"][n], rtol=1e-13)
            np.testing.assert_allclose(s_v["mom"][n], s_n["mom"][n], rtol=1e-13, atol=1e-15)
        for k in copies:
            np.testing.assert_array_equal(params[k], copies[k])
        assert p_v["a.bn.moving_mean"] is params["a.bn.moving_mean"]
        params, state, copies = p_v, s_v, {k: v.copy() for k, v in p_v.items()}


def test_rmsprop_errors_name_the_argument():
    params, st_ = _one_param(1.0)
    with pytest.raises(ValueError, match="argument 'lr'"):
        rmsprop_update(params, {"w": np.array([1.0])}, st_, -0.1)
    with pytest.raises(ValueError, match="argument 'grads'.*differing names"):
        rmsprop_update(params, {"v": np.array([1.0])}, st_, 0.1)
    with pytest.raises(ValueError, match=r"grads\['w'\]' must have shape \(1\)"):
        rmsprop_update(params, {"w": np.array([1.0, 2.0])}, st_, 0.1)
    with pytest.raises(TypeError, match=r"grads\['w'\]' must have a floating dtype"):
        rmsprop_update(params, {"w": np.array([1])}, st_, 0.1)
    with pytest.raises(ValueError, match="argument 'epsilon' must be in \\(0.0, inf\\]"):
        rmsprop_update(params, {"w": np.array([1.0])}, st_, 0.1, epsilon=0.0)
    with pytest.raises(ValueError, match="argument 'variant'"):
        rmsprop_init(params, "adam")
    with pytest.raises(ValueError, match="argument 'names'"):
        rmsprop_init(params, names=["nope"])


# ---------------------------------------------------------------------------
# Learning-rate schedule (paper numbers: batch 16384, 1,281,167 images)
# ---------------------------------------------------------------------------

SPE = 1281167 / 16384  # 78.19622802734375 steps per epoch, kept real


def test_steps_per_epoch_rounding():
    assert steps_per_epoch() == 1281167 / 16384
    assert steps_per_epoch(rounding="floor") == 78.0
    assert steps_per_epoch(rounding="ceil") == 79.0
    assert steps_per_epoch(10, 95, rounding="ceil") == 10.0
    with pytest.raises(ValueError, match="argument 'rounding'"):
        steps_per_epoch(rounding="round")


def test_lr_mv2_boundaries_by_hand():
    # warm-up steps = floor(20 * 78.196...) = floor(1563.92) = 1563;
    # decay every 6 * 78.196... = 469.177 steps, counted from step 0.
    lr = lambda s: float(learning_rate(s, steps_per_epoch=SPE))  # noqa: E731
    assert lr(0) == 0.0
    assert lr(1) == pytest.approx(0.006 / 1563, rel=1e-15)
    assert lr(1562) == pytest.approx(0.006 * 1562 / 1563, rel=1e-15)
    # end of warm-up: floor(1563 / 469.177) = 3 decays already counted
    assert lr(1563) == pytest.approx(0.006 * 0.99**3, rel=1e-15)
    # decay boundary 4 * 469.177 = 1876.71: step 1876 has 3 decays, 1877 has 4
    assert lr(1876) == pytest.approx(0.006 * 0.970299, rel=1e-14)
    assert lr(1877) == pytest.approx(0.006 * 0.96059601, rel=1e-14)
    # 400K steps (the paper's run length): floor(400000 / 469.177) = 852
    assert lr(400_000) == pytest.approx(0.006 * 0.99**852, rel=1e-12)


def test_lr_mv3_and_warmup_end_variant():
    mv3 = lambda s: float(learning_rate(s, steps_per_epoch=SPE, decay_epochs=4.5))  # noqa: E731
    # decay every 351.883 steps: 1563 / 351.883 = 4.44 -> 4 decays at warm-up end
    assert mv3(1563) == pytest.approx(0.006 * 0.99**4, rel=1e-15)
    # 5 * 351.883 = 1759.42: step 1759 -> 4 decays, 1760 -> 5 decays
    assert mv3(1759) == pytest.approx(0.006 * 0.99**4, rel=1e-15)
    assert mv3(1760) == pytest.approx(0.006 * 0.99**5, rel=1e-15)
    we = lambda s: float(learning_rate(s, steps_per_epoch=SPE,  # noqa: E731
                                       decay_from="warmup_end"))
    assert we(1563) == 0.006
    # 1563 + 469.177 = 2032.18: step 2032 undecayed, 2033 decayed once
    assert we(2032) == 0.006
    assert we(2033) == pytest.approx(0.006 * 0.99, rel=1e-15)


def test_lr_vectorised_matches_naive_and_keeps_shape():
    steps = np.arange(0, 5000, 7).reshape(-1, 5)
    for kw in ({}, {"decay_epochs": 4.5}, {"decay_from": "warmup_end"},
               {"warmup_epochs": 0.0}):
        v = learning_rate(steps, steps_per_epoch=SPE, **kw)
        assert v.shape == steps.shape and v.dtype == np.float64
        np.testing.assert_allclose(v, learning_rate_naive(steps, steps_per_epoch=SPE, **kw),
                                   rtol=1e-15)
    assert learning_rate(3, steps_per_epoch=SPE).shape == ()


def test_lr_no_warmup_starts_at_base():
    assert float(learning_rate(0, steps_per_epoch=10.0, warmup_epochs=0.0)) == 0.006


def test_schedule_errors():
    with pytest.raises(TypeError, match="argument 'step'"):
        learning_rate(1.5, steps_per_epoch=SPE)
    with pytest.raises(ValueError, match="argument 'step' must be >= 0"):
        learning_rate(np.array([0, -1]), steps_per_epoch=SPE)
    with pytest.raises(ValueError, match="argument 'decay_from'"):
        learning_rate(0, steps_per_epoch=SPE, decay_from="end")
    with pytest.raises(ValueError, match="argument 'decay_rate'"):
        learning_rate(0, steps_per_epoch=SPE, decay_rate=1.5)
    with pytest.raises(ValueError, match="argument 'hold_steps'"):
        mixing_epsilon(0, hold_steps=-1)


# ---------------------------------------------------------------------------
# Epsilon mixing and basis-dropout rate
# ---------------------------------------------------------------------------


def test_mixing_epsilon_boundaries():
    e = lambda s: float(mixing_epsilon(s))  # noqa: E731
    assert e(0) == 1.0
    assert e(10_000) == 1.0
    assert e(10_001) == 1.0 - 1.0 / 40_000
    assert e(30_000) == 0.5
    assert e(49_999) == pytest.approx(1.0 / 40_000, rel=1e-12)
    assert e(50_000) == 0.0
    assert e(400_000) == 0.0
    steps = np.arange(0, 60_001, 97)
    np.testing.assert_allclose(mixing_epsilon(steps), mixing_epsilon_naive(steps), rtol=1e-15)
    np.testing.assert_array_equal(mixing_epsilon(np.array([5, 6]), hold_steps=5, decay_steps=0),
                                  [1.0, 0.0])


def test_basis_dropout_rate():
    assert basis_dropout_rate(1) == 1 / 8
    assert basis_dropout_rate(8) == 1 / 8
    assert basis_dropout_rate(16) == 1 / 16
    assert basis_dropout_rate(128) == 1 / 16


# ---------------------------------------------------------------------------
# EMA
# ---------------------------------------------------------------------------


def test_ema_decay_warmup_closed_form():
    assert ema_decay(0.9999) == 0.9999
    assert ema_decay(0.9999, 0) == pytest.approx(0.1, rel=1e-15)
    assert ema_decay(0.9999, 1) == pytest.approx(2 / 11, rel=1e-15)
    # (1+n)/(10+n) reaches 0.9999 at n = 89990
    assert ema_decay(0.9999, 89_989) == pytest.approx(89_990 / 89_999, rel=1e-15)
    assert ema_decay(0.9999, 89_989) < 0.9999
    assert ema_decay(0.9999, 100_000) == 0.9999
    np.testing.assert_allclose(ema_decay(0.9999, np.array([0, 1])), [0.1, 2 / 11], rtol=1e-15)


def test_ema_sequences_by_hand():
    params = {"w": np.array([0.0]), "bn.moving_mean": np.array([2.0])}
    ema = ema_init(params)
    assert ema["w"] is not params["w"] and ema["w"][0] == 0.0
    new = {"w": np.array([1.0]), "bn.moving_mean": np.array([0.0])}
    e1 = ema_update(ema, new, decay=0.5)
    e2 = ema_update(e1, new, decay=0.5)
    assert e1["w"][0] == 0.5 and e2["w"][0] == 0.75
    assert e2["bn.moving_mean"][0] == 0.5  # 2 -> 1 -> 0.5
    # with num_updates: d(0) = 0.1 -> 0.9; d(1) = 2/11 -> 0.9 + (9/11) * 0.1
    w1 = ema_update(ema, new, decay=0.9999, num_updates=0)
    w2 = ema_update(w1, new, decay=0.9999, num_updates=1)
    assert w1["w"][0] == pytest.approx(0.9, rel=1e-15)
    assert w2["w"][0] == pytest.approx(0.9 + 0.9 / 11, rel=1e-15)
    assert ema["w"][0] == 0.0  # input untouched


def test_ema_matches_naive_and_errors():
    rng = np.random.default_rng(0)
    a = {"x": rng.normal(size=(3, 2)), "y": rng.normal(size=(4,))}
    b = {"x": rng.normal(size=(3, 2)), "y": rng.normal(size=(4,))}
    for n in (None, 0, 7, 10**6):
        u, v = ema_update(a, b, num_updates=n), ema_update_naive(a, b, num_updates=n)
        for k in a:
            np.testing.assert_allclose(u[k], v[k], rtol=1e-15)
    with pytest.raises(ValueError, match="differing names"):
        ema_update(a, {"x": b["x"]})
    with pytest.raises(ValueError, match=r"params\['x'\]' must have shape"):
        ema_update(a, {"x": b["y"], "y": b["y"]})
    with pytest.raises(ValueError, match="argument 'num_updates'"):
        ema_update(a, b, num_updates=-1)


# ---------------------------------------------------------------------------
# Clipping and weight decay
# ---------------------------------------------------------------------------


def test_clip_by_global_norm_by_hand():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    clipped, norm = clip_by_global_norm(g, 1.0)
    assert norm == 5.0  # the unclipped norm is returned (TF)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0], rtol=1e-15)
    np.testing.assert_allclose(clipped["b"], [[0.8]], rtol=1e-15)
    same, norm2 = clip_by_global_norm(g, 10.0)
    assert norm2 == 5.0
    np.testing.assert_array_equal(same["a"], g["a"])
    np.testing.assert_array_equal(g["a"], [3.0, 0.0])  # untouched
    nan, n_inf = clip_by_global_norm({"a": np.array([np.inf, 1.0])}, 1.0)
    assert n_inf == np.inf and np.all(np.isnan(nan["a"]))
    with pytest.raises(ValueError, match="argument 'clip_norm'"):
        clip_by_global_norm(g, 0.0)


@settings(max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), clip=st.floats(0.01, 10.0))
def test_clip_matches_naive(seed, clip):
    rng = np.random.default_rng(seed)
    g = {"a": rng.normal(size=(2, 3)), "b": rng.normal(size=(5,)) * 3}
    assert global_norm(g) == pytest.approx(global_norm_naive(g), rel=1e-14)
    c, n = clip_by_global_norm(g, clip)
    cn, nn = clip_by_global_norm_naive(g, clip)
    assert n == pytest.approx(nn, rel=1e-14)
    for k in g:
        np.testing.assert_allclose(c[k], cn[k], rtol=1e-13)
    assert global_norm(c) <= clip * (1 + 1e-12)


def test_l2_penalty_by_hand_and_coverage():
    params = {"x.kernel": np.array([1.0, 2.0]), "x.bias": np.array([3.0]),
              "x.bn.gamma": np.array([5.0]), "bases.y.kernel": np.array([[1.0], [1.0]])}
    assert weight_decay_names(params) == ["x.kernel", "bases.y.kernel"]
    # half: 0.1 * (1 + 4 + 1 + 1) / 2 = 0.35 ; full: 0.7
    assert l2_penalty(params, 0.1) == pytest.approx(0.35, rel=1e-15)
    assert l2_penalty(params, 0.1, form="full") == pytest.approx(0.7, rel=1e-15)
    g = l2_penalty_vjp(params, 0.1)
    assert set(g) == {"x.kernel", "bases.y.kernel"}
    np.testing.assert_allclose(g["x.kernel"], [0.1, 0.2], rtol=1e-15)
    with pytest.raises(ValueError, match="argument 'names'"):
        l2_penalty(params, 0.1, names=["missing"])
    with pytest.raises(ValueError, match="argument 'form'"):
        l2_penalty(params, 0.1, form="double")


def test_l2_penalty_vjp_central_differences():
    rng = np.random.default_rng(1)
    params = {"a.kernel": rng.normal(size=(3, 2)), "b.bias": rng.normal(size=(2,))}
    for form in ("half", "full"):
        g = l2_penalty_vjp(params, 0.3, 2.0, form=form)
        h = 1e-6
        for i in np.ndindex(params["a.kernel"].shape):
            p_plus = {k: v.copy() for k, v in params.items()}
            p_minus = {k: v.copy() for k, v in params.items()}
            p_plus["a.kernel"][i] += h
            p_minus["a.kernel"][i] -= h
            fd = 2.0 * (l2_penalty(p_plus, 0.3, form=form)
                        - l2_penalty(p_minus, 0.3, form=form)) / (2 * h)
            assert g["a.kernel"][i] == pytest.approx(fd, rel=1e-7, abs=1e-10)

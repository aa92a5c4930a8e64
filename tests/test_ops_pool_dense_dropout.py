"""Global average pool, dense (shared and per-example weights) and dropout:
VJPs vs central finite differences, naive twins, mask statistics, bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refbasis.ops.dense import dense, dense_naive, dense_vjp, dense_vjp_naive
from refbasis.ops.dropout import dropout, dropout_mask, dropout_vjp
from refbasis.ops.pool import (
    global_avg_pool,
    global_avg_pool_naive,
    global_avg_pool_vjp,
    global_avg_pool_vjp_naive,
)


def fd_grad(f, arr, dy, h=1e-6):
    """Central-difference gradient of sum(dy * f(arr)) w.r.t. arr (float64)."""
    a = arr.copy()
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        fp = np.sum(dy * f(a))
        a[i] = old - h
        fm = np.sum(dy * f(a))
        a[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


# --------------------------------------------------------------------------
# global_avg_pool
# --------------------------------------------------------------------------


@settings(max_examples=20)
@given(
    shape=st.tuples(*(st.integers(1, 4) for _ in range(4))),
    seed=st.integers(0, 2**31),
)
def test_gap_vjp_fd_and_naive(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal((shape[0], shape[3]))
    y = global_avg_pool(x)
    assert y.shape == (shape[0], shape[3])
    np.testing.assert_allclose(y, global_avg_pool_naive(x), rtol=1e-13, atol=1e-15)
    dx = global_avg_pool_vjp(x, dy)
    np.testing.assert_allclose(dx, global_avg_pool_vjp_naive(x, dy), rtol=1e-15, atol=0)
    np.testing.assert_allclose(dx, fd_grad(global_avg_pool, x, dy), rtol=1e-6, atol=1e-8)


def test_gap_bad_inputs():
    with pytest.raises(ValueError, match=r"global_avg_pool: argument 'x' must have rank 4.*rank 3"):
        global_avg_pool(np.zeros((2, 3, 4)))
    with pytest.raises(TypeError, match=r"argument 'x'.*floating dtype.*int"):
        global_avg_pool(np.zeros((1, 2, 2, 3), dtype=int))
    with pytest.raises(ValueError, match=r"argument 'dy' must have shape \(1, 3\), got \(1, 4\)"):
        global_avg_pool_vjp(np.zeros((1, 2, 2, 3)), np.zeros((1, 4)))


# --------------------------------------------------------------------------
# dense
# --------------------------------------------------------------------------


@settings(max_examples=60)
@given(
    b=st.integers(1, 3),
    cin=st.integers(1, 4),
    cout=st.integers(1, 4),
    w_pe=st.booleans(),
    bias=st.sampled_from(["none", "shared", "per_example"]),
    seed=st.integers(0, 2**31),
)
def test_dense_vjp_fd_and_naive(b, cin, cout, w_pe, bias, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, cin))
    w = rng.standard_normal((b, cin, cout) if w_pe else (cin, cout))
    bb = {"none": None, "shared": rng.standard_normal(cout),
          "per_example": rng.standard_normal((b, cout))}[bias]
    dy = rng.standard_normal((b, cout))
    y = dense(x, w, bb)
    np.testing.assert_allclose(y, dense_naive(x, w, bb), rtol=1e-12, atol=1e-13)
    kw = dict(has_bias=bb is not None, per_example_bias=bias == "per_example")
    dx, dw, db = dense_vjp(x, w, dy, **kw)
    for got, want in zip((dx, dw, db), dense_vjp_naive(x, w, dy, **kw), strict=True):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dx, fd_grad(lambda v: dense(v, w, bb), x, dy), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, fd_grad(lambda v: dense(x, v, bb), w, dy), rtol=1e-6, atol=1e-8)
    assert dw.shape == w.shape
    if bb is not None:
        assert db.shape == bb.shape
        np.testing.assert_allclose(
            db, fd_grad(lambda v: dense(x, w, v), bb, dy), rtol=1e-6, atol=1e-8
        )


def test_dense_per_example_equals_stacked_shared():
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4, 5)), rng.standard_normal(5)
    y = dense(x, w, b)
    for n in range(3):
        np.testing.assert_allclose(y[n], x[n] @ w[n] + b, rtol=1e-14)


def test_dense_default_bias_kind_follows_w():
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((2, 3)), rng.standard_normal((2, 4))
    assert dense_vjp(x, rng.standard_normal((3, 4)), dy)[2].shape == (4,)
    assert dense_vjp(x, rng.standard_normal((2, 3, 4)), dy)[2].shape == (2, 4)


def test_dense_bad_inputs():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"dense: argument 'x' must have rank 2.*rank 3"):
        dense(np.zeros((2, 3, 1)), np.zeros((3, 4)))
    with pytest.raises(
        ValueError,
        match=r"argument 'w' must have shape \(Cin=3, Cout\).*got \(4, 4\)",
    ):
        dense(x, np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"argument 'w'.*\(B=2, Cin=3, Cout\).*got \(3, 3, 4\)"):
        dense(x, np.zeros((3, 3, 4)))
    with pytest.raises(
        ValueError,
        match=r"argument 'b' must have shape \(4,\) or \(2, 4\), got \(5,\)",
    ):
        dense(x, np.zeros((3, 4)), np.zeros(5))
    with pytest.raises(TypeError, match=r"argument 'w'.*floating dtype.*int"):
        dense(x, np.zeros((3, 4), dtype=np.int32))
    with pytest.raises(ValueError, match=r"dense_vjp: argument 'dy' must have shape \(2, 4\)"):
        dense_vjp(x, np.zeros((3, 4)), np.zeros((2, 5)))


# --------------------------------------------------------------------------
# dropout
# --------------------------------------------------------------------------


def test_dropout_mask_values_and_rate():
    rate = 0.2
    m = dropout_mask((200, 500), rate, np.random.default_rng(0))
    assert m.dtype == np.float64
    vals = np.unique(m)
    np.testing.assert_array_equal(vals, [0.0, 1.0 / (1.0 - rate)])
    n = m.size
    dropped = np.mean(m == 0)
    # Binomial: 5 standard deviations.
    assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
    assert abs(m.mean() - 1.0) < 5 * np.sqrt(rate / (1 - rate) / n)


def test_dropout_mask_draw_rule_and_determinism():
    rate = 0.3
    m1 = dropout_mask((4, 5), rate, np.random.default_rng(42))
    m2 = dropout_mask([4, 5], rate, np.random.default_rng(42))
    np.testing.assert_array_equal(m1, m2)
    u = np.random.default_rng(42).random((4, 5))
    np.testing.assert_array_equal(m1, np.where(u >= rate, 1 / (1 - rate), 0.0))
    # rate 0 keeps everything but still advances the generator by prod(shape) draws.
    g = np.random.default_rng(7)
    np.testing.assert_array_equal(dropout_mask((3, 2), 0.0, g), np.ones((3, 2)))
    ref = np.random.default_rng(7)
    ref.random(6)
    assert g.random() == ref.random()


def test_dropout_forward_and_vjp():
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((3, 7)), rng.standard_normal((3, 7))
    m = dropout_mask((3, 7), 0.5, rng)
    np.testing.assert_array_equal(dropout(x, m), x * m)
    np.testing.assert_allclose(
        dropout_vjp(m, dy), fd_grad(lambda v: dropout(v, m), x, dy), rtol=1e-6, atol=1e-8
    )


def test_dropout_bad_inputs():
    g = np.random.default_rng(0)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(
            ValueError,
            match=r"dropout_mask: argument 'rate' must be in \[0.0, 1.0\)",
        ):
            dropout_mask((2,), bad, g)
    with pytest.raises(
        TypeError,
        match=r"argument 'rng' must be a numpy.random.Generator.*RandomState",
    ):
        dropout_mask((2,), 0.1, np.random.RandomState(0))
    with pytest.raises(TypeError, match=r"argument 'rng'.*int"):
        dropout_mask((2,), 0.1, 0)
    with pytest.raises(ValueError, match=r"argument 'shape\[1\]' must be >= 0"):
        dropout_mask((2, -1), 0.1, g)
    with pytest.raises(TypeError, match=r"argument 'shape' must be a tuple of ints"):
        dropout_mask("ab", 0.1, g)
    with pytest.raises(ValueError, match=r"argument 'mask' must have the same shape as 'x'"):
        dropout(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match=r"argument 'mask'.*floating dtype.*bool"):
        dropout(np.zeros(2), np.ones(2, dtype=bool))
    with pytest.raises(ValueError, match=r"argument 'dy' must have the same shape as 'mask'"):
        dropout_vjp(np.zeros(2), np.zeros(3))

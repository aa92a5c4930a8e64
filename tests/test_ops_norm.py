"""Batch norm: VJP vs central finite differences (both modes, shared and
per-example gamma/beta), naive twins, batch statistics, moving averages,
eval mode, and bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refbasis.ops.norm import (
    batch_norm,
    batch_norm_naive,
    batch_norm_vjp,
    batch_norm_vjp_naive,
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


@st.composite
def bn_case(draw):
    rank = draw(st.sampled_from([2, 3, 4]))
    b = draw(st.integers(1 if rank > 2 else 2, 3))
    c = draw(st.integers(1, 3))
    mid = tuple(draw(st.integers(1, 3)) for _ in range(rank - 2))
    if rank > 2 and b * int(np.prod(mid)) < 2:
        mid = (2,) + mid[1:]  # at least two values per channel for the statistics
    shape = (b,) + mid + (c,)
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    gshape = (b, c) if draw(st.booleans()) else (c,)
    bshape = (b, c) if draw(st.booleans()) else (c,)
    return dict(
        x=rng.normal(0.5, 2.0, shape),
        gamma=rng.normal(1.0, 0.5, gshape),
        beta=rng.normal(0.0, 0.5, bshape),
        mm=rng.normal(0.0, 1.0, c),
        mv=rng.uniform(0.2, 2.0, c),
        dy=rng.standard_normal(shape),
        train=draw(st.booleans()),
    )


@settings(max_examples=60)
@given(case=bn_case())
def test_vjp_matches_finite_differences(case):
    x, gamma, beta, mm, mv, dy, train = (
        case[k] for k in ("x", "gamma", "beta", "mm", "mv", "dy", "train")
    )

    def y_of(x_=x, g_=gamma, b_=beta):
        return batch_norm(x_, g_, b_, mm, mv, train=train)[0]

    dx, dg, db = batch_norm_vjp(x, gamma, beta, mm, mv, dy, train=train)
    assert dg.shape == gamma.shape and db.shape == beta.shape
    np.testing.assert_allclose(dx, fd_grad(lambda v: y_of(x_=v), x, dy), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dg, fd_grad(lambda v: y_of(g_=v), gamma, dy), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, fd_grad(lambda v: y_of(b_=v), beta, dy), rtol=1e-5, atol=1e-7)


@settings(max_examples=20)
@given(case=bn_case(), correction=st.booleans())
def test_fast_matches_naive_twin(case, correction):
    x, gamma, beta, mm, mv, dy, train = (
        case[k] for k in ("x", "gamma", "beta", "mm", "mv", "dy", "train")
    )
    kw = dict(train=train, eps=1e-3, decay=0.9)
    fast = batch_norm(x, gamma, beta, mm, mv, moving_var_correction=correction, **kw)
    slow = batch_norm_naive(x, gamma, beta, mm, mv, moving_var_correction=correction, **kw)
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    gf = batch_norm_vjp(x, gamma, beta, mm, mv, dy, train=train)
    gs = batch_norm_vjp_naive(x, gamma, beta, mm, mv, dy, train=train)
    for a, b in zip(gf, gs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def _nhwc(seed=0, shape=(4, 3, 5, 6)):
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.5, shape)
    c = shape[-1]
    return x, rng.uniform(0.5, 2.0, c), rng.normal(0, 1, c), rng.normal(0, 1, c), rng.uniform(
        0.5, 2, c
    )


def test_train_output_statistics():
    x, gamma, beta, mm, mv = _nhwc()
    eps = 1e-3
    y, _, _ = batch_norm(x, gamma, beta, mm, mv, train=True, eps=eps)
    var = x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), beta, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), gamma**2 * var / (var + eps), rtol=1e-12)
    z, _, _ = batch_norm(x, np.ones(6), np.zeros(6), mm, mv, train=True, eps=eps)
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0.0, atol=1e-13)


def test_moving_average_update_closed_form():
    x, gamma, beta, mm, mv = _nhwc(1)
    decay = 0.997
    _, nm, nv = batch_norm(x, gamma, beta, mm, mv, train=True, decay=decay)
    bm, bv = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # biased (ddof=0)
    np.testing.assert_allclose(nm, decay * mm + (1 - decay) * bm, rtol=1e-14)
    np.testing.assert_allclose(nv, decay * mv + (1 - decay) * bv, rtol=1e-14)
    _, _, nv1 = batch_norm(x, gamma, beta, mm, mv, train=True, moving_var_correction=True)
    bv1 = x.reshape(-1, 6).var(axis=0, ddof=1)  # TF fused_batch_norm's Bessel correction
    np.testing.assert_allclose(nv1, decay * mv + (1 - decay) * bv1, rtol=1e-14)
    assert np.all(nv1 > nv)


def test_per_example_gamma_keeps_batch_statistics():
    x, gamma, beta, mm, mv = _nhwc(2)
    gpe = np.random.default_rng(3).uniform(0.5, 2, (4, 6))
    bpe = np.random.default_rng(4).normal(0, 1, (4, 6))
    y, _, _ = batch_norm(x, gpe, bpe, mm, mv, train=True)
    xhat = (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-3)
    np.testing.assert_allclose(y, gpe[:, None, None, :] * xhat + bpe[:, None, None, :], rtol=1e-12)


def test_eval_uses_moving_statistics_and_returns_them_unchanged():
    x, gamma, beta, mm, mv = _nhwc(5)
    y, nm, nv = batch_norm(x, gamma, beta, mm, mv, train=False, eps=1e-5, decay=0.5)
    np.testing.assert_allclose(y, gamma * (x - mm) / np.sqrt(mv + 1e-5) + beta, rtol=1e-13)
    np.testing.assert_array_equal(nm, mm)
    np.testing.assert_array_equal(nv, mv)
    assert nm is not mm and nv is not mv
    # Eval gradient: moving stats are constants, so dx = dy * gamma / sqrt(mv + eps).
    dy = np.random.default_rng(6).standard_normal(x.shape)
    dx, _, _ = batch_norm_vjp(x, gamma, beta, mm, mv, dy, train=False, eps=1e-5)
    np.testing.assert_allclose(dx, dy * gamma / np.sqrt(mv + 1e-5), rtol=1e-13)


def test_train_gradient_sums_to_zero_per_channel():
    # Shift invariance of batch-statistic normalisation: sum over the batch of dx is 0.
    x, gamma, beta, mm, mv = _nhwc(7)
    dy = np.random.default_rng(8).standard_normal(x.shape)
    dx, _, _ = batch_norm_vjp(x, gamma, beta, mm, mv, dy, train=True)
    np.testing.assert_allclose(dx.sum(axis=(0, 1, 2)), 0.0, atol=1e-11)


def test_bad_inputs():
    x, gamma, beta, mm, mv = _nhwc(9)
    ok = dict(train=True)
    with pytest.raises(ValueError, match=r"argument 'x' must have rank 2 or 3 or 4.*rank 1"):
        batch_norm(np.zeros(6), gamma, beta, mm, mv, **ok)
    with pytest.raises(
        ValueError,
        match=r"argument 'gamma' must have shape \(6,\) or \(4, 6\).*\(5,\)",
    ):
        batch_norm(x, gamma[:5], beta, mm, mv, **ok)
    with pytest.raises(ValueError, match=r"argument 'beta' must have shape.*\(3, 6\)"):
        batch_norm(x, gamma, np.zeros((3, 6)), mm, mv, **ok)
    with pytest.raises(ValueError, match=r"argument 'moving_mean' must have shape.*\(7,\)"):
        batch_norm(x, gamma, beta, np.zeros(7), mv, **ok)
    with pytest.raises(TypeError, match=r"argument 'x' must have a floating dtype.*int64"):
        batch_norm(x.astype(np.int64), gamma, beta, mm, mv, **ok)
    xn = x.copy()
    xn[1, 2, 3, 4] = np.nan
    with pytest.raises(ValueError, match=r"argument 'x' must be finite.*\(1, 2, 3, 4\)"):
        batch_norm(xn, gamma, beta, mm, mv, **ok)
    with pytest.raises(ValueError, match=r"argument 'moving_var' must be >= 0.*-1.0"):
        batch_norm(x, gamma, beta, mm, -np.ones(6), train=False)
    with pytest.raises(ValueError, match=r"argument 'eps' must be in \(0.0, inf\]"):
        batch_norm(x, gamma, beta, mm, mv, train=True, eps=0.0)
    with pytest.raises(ValueError, match=r"argument 'decay' must be in \[0.0, 1.0\].*1.5"):
        batch_norm(x, gamma, beta, mm, mv, train=True, decay=1.5)
    with pytest.raises(TypeError, match=r"argument 'train' must be a bool"):
        batch_norm(x, gamma, beta, mm, mv, train="yes")
    with pytest.raises(ValueError, match=r"moving_var_correction.*argument 'x'.*n = 1"):
        batch_norm(np.ones((1, 3)), np.ones(3), np.zeros(3), np.zeros(3), np.ones(3),
                   train=True, moving_var_correction=True)
    with pytest.raises(ValueError, match=r"batch_norm_vjp: argument 'dy' must have shape"):
        batch_norm_vjp(x, gamma, beta, mm, mv, np.zeros((4, 3, 5, 5)), train=True)


def test_float32_mode_computes_in_float32_and_default_upcasts():
    from refbasis.precision import float32_mode

    x, gamma, beta, mm, mv = (a.astype(np.float32) for a in _nhwc(10))
    y64, _, _ = batch_norm(x, gamma, beta, mm, mv, train=True)
    assert y64.dtype == np.float64
    with float32_mode():
        y32, nm, nv = batch_norm(x, gamma, beta, mm, mv, train=True)
        dx, dg, db = batch_norm_vjp(x, gamma, beta, mm, mv, np.ones_like(x), train=True)
    assert {a.dtype for a in (y32, nm, nv, dx, dg, db)} == {np.dtype(np.float32)}
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4)


def _bn_args(x, seed=11):
    rng = np.random.default_rng(seed)
    c = x.shape[-1]
    return rng.uniform(0.5, 2.0, c), rng.normal(0, 1, c), np.zeros(c), np.ones(c)


def test_large_offset_statistics_are_centred():
    # A per-channel offset leaves y, dx, dgamma and dbeta unchanged in exact
    # arithmetic. With |mean| / std = 1e8 a one-pass E[x^2] - mean^2 loses
    # every digit of the variance (eps * 1e16 ~ 2 against var ~ 1); the
    # centred two-pass statistics only see x's own rounding (~1e-8 relative).
    rng = np.random.default_rng(12)
    z = rng.normal(0.0, 1.0, (4, 5, 5, 3))
    offset = np.array([1e8, -3e7, 5e6])
    x = z + offset
    gamma, beta, mm, mv = _bn_args(z)
    dy = rng.standard_normal(z.shape)
    y_ref, m_ref, v_ref = batch_norm(z, gamma, beta, mm, mv, train=True, decay=0.0)
    y, m, v = batch_norm(x, gamma, beta, mm, mv, train=True, decay=0.0)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(m, m_ref + offset, rtol=1e-12)
    np.testing.assert_allclose(v, v_ref, rtol=1e-6)
    for got, want in zip(
        batch_norm_vjp(x, gamma, beta, mm, mv, dy, train=True),
        batch_norm_vjp(z, gamma, beta, mm, mv, dy, train=True),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # Eval mode with moving_mean at the offset: the centred (x - mu) form.
    mm_off = mm + offset
    y_ev, _, _ = batch_norm(x, gamma, beta, mm_off, mv, train=False)
    np.testing.assert_allclose(y_ev, batch_norm(z, gamma, beta, mm, mv, train=False)[0],
                               rtol=0, atol=1e-6)
    dg_ev = batch_norm_vjp(x, gamma, beta, mm_off, mv, dy, train=False)[1]
    np.testing.assert_allclose(dg_ev, batch_norm_vjp(z, gamma, beta, mm, mv, dy, train=False)[1],
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_x_named_before_later_arguments(train, bad):
    # x's finite check runs on its channel sums; a bad entry must still be
    # named (first in C order) and win over errors in later arguments.
    x, gamma, beta, mm, mv = _nhwc(13)
    x[2, 1, 4, 5] = bad
    x[3, 0, 0, 0] = bad
    dy = np.ones_like(x)
    msg = r"argument 'x' must be finite, found -?(nan|inf) at index \(2, 1, 4, 5\)"
    with pytest.raises(ValueError, match="batch_norm: " + msg):
        batch_norm(x, gamma, beta, mm, mv, train=train)
    with pytest.raises(ValueError, match="batch_norm_vjp: " + msg):
        batch_norm_vjp(x, gamma, beta, mm, mv, dy, train=train)
    with pytest.raises(ValueError, match=msg):
        batch_norm(x, gamma[:5], beta, mm, mv, train=train)
    # Opposite infinities cancel to NaN in a sum: still caught.
    x2 = _nhwc(13)[0]
    x2[0, 0, 0, 1], x2[1, 0, 0, 1] = np.inf, -np.inf
    with pytest.raises(ValueError, match=r"found inf at index \(0, 0, 0, 1\)"):
        batch_norm(x2, gamma, beta, mm, mv, train=train)


def test_finite_x_with_overflowing_float32_sums_is_accepted():
    from refbasis.precision import float32_mode

    # Finite entries whose float32 channel sum overflows are not an input
    # error (the full scan decides), as without the sum-based shortcut; and a
    # float64 entry beyond float32's range is judged as given (finite).
    x, gamma, beta, mm, mv = (a.astype(np.float32) for a in _nhwc(14))
    x[:, :, :, 0] = 3e38
    x64 = _nhwc(14)[0]
    x64[0, 0, 0, 0] = 1e300
    with float32_mode(), np.errstate(all="ignore"):
        y, nm, _ = batch_norm(x, gamma, beta, mm, mv, train=False)
        batch_norm(x64, gamma, beta, mm, mv, train=False)
        batch_norm_vjp(x, gamma, beta, mm, mv, np.ones_like(x), train=True)
    assert np.all(np.isfinite(y[..., 1:]))
    np.testing.assert_array_equal(nm, mm)


def _textbook(x, gamma, beta, mm, mv, dy, train, eps=1e-3):
    """The unfused expressions (y, dx, dgamma, dbeta), one temporary per step."""
    axes = tuple(range(x.ndim - 1))

    def bc(p):
        return p if p.ndim == 1 else p.reshape((p.shape[0],) + (1,) * (x.ndim - 2) + (-1,))

    def reduce_like(a, p):
        if p.ndim == 1:
            return a.sum(axis=axes)
        return a.sum(axis=tuple(range(1, a.ndim - 1))) if a.ndim > 2 else a

    if train:
        mean = x.mean(axis=axes)
        xc = x - mean
        var = (xc * xc).mean(axis=axes)
        y = bc(gamma) * (xc / np.sqrt(var + eps)) + bc(beta)
    else:
        mean, var = mm, mv
        y = bc(gamma) * ((x - mean) * (1.0 / np.sqrt(var + eps))) + bc(beta)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * inv
    g = dy * bc(gamma)
    if train:
        dx = inv * (g - g.mean(axis=axes) - xhat * (g * xhat).mean(axis=axes))
    else:
        dx = g * inv
    return y, dx, reduce_like(dy * xhat, gamma), reduce_like(dy, beta)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 6, 5, 7), (8, 9, 9, 1), (6, 5, 3), (5, 4), (7, 1)])
@pytest.mark.parametrize("per_example", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_fused_kernels_reproduce_textbook_bits(dtype, shape, per_example, train):
    # The goldens' float32 draw acceptance depends on the oracle's rounding:
    # the in-place kernels must give the unfused expressions' exact bits
    # (einsum accumulates row by row like numpy's sum for C >= 2; C = 1 takes
    # the plain path).
    from refbasis.precision import compute_precision

    rng = np.random.default_rng(15)
    b, c = shape[0], shape[-1]
    x = rng.normal(0.7, 1.9, shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    pshape = (b, c) if per_example else (c,)
    gamma = rng.uniform(0.5, 1.5, pshape).astype(dtype)
    beta = rng.normal(0, 0.5, pshape).astype(dtype)
    mm, mv = rng.normal(0, 1, c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    with compute_precision(dtype):
        y, _, _ = batch_norm(x, gamma, beta, mm, mv, train=train)
        dx, dg, db = batch_norm_vjp(x, gamma, beta, mm, mv, dy, train=train)
    for got, want in zip((y, dx, dg, db), _textbook(x, gamma, beta, mm, mv, dy, train),
                         strict=True):
        assert got.dtype == want.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got.view(f"u{got.itemsize}"), want.view(f"u{want.itemsize}"))

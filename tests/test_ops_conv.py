"""Tests of refbasis.ops.conv: gradients vs finite differences, fast kernels vs
their naive twins, forward vs an independent scipy reference, the TF SAME rule,
float32 mode, and every input error."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import signal

from refbasis.ops import conv as C
from refbasis.precision import float32_mode


@contextlib.contextmanager
def depthwise_kernel(kind):
    """Force the depthwise kernel ("taps": shifted multiply-adds, "einsum":
    sliding windows) regardless of the channel count, so both are tested."""
    old = C._EINSUM_MIN_CHANNELS
    C._EINSUM_MIN_CHANNELS = 1 if kind == "einsum" else 10**9
    try:
        yield
    finally:
        C._EINSUM_MIN_CHANNELS = old

@contextlib.contextmanager
def dense_kernel(kind):
    """Force the dense/grouped kernel ("shifted": k*k shifted GEMMs, "im2col":
    one GEMM over a patch matrix) regardless of the channel count."""
    old = C._IM2COL_MAX_CIN
    C._IM2COL_MAX_CIN = 10**9 if kind == "im2col" else 0
    try:
        yield
    finally:
        C._IM2COL_MAX_CIN = old


# --------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------


def _out_size(n, k, s, pad):
    return (n + pad[0] + pad[1] - k) // s + 1 if n + pad[0] + pad[1] >= k else 0


@st.composite
def conv_configs(draw, *, depthwise=False, max_hw=9):
    """A small, valid conv configuration with its arrays (float64)."""
    batch = draw(st.integers(1, 2))
    h = draw(st.integers(1, max_hw))
    w_ = draw(st.integers(1, max_hw))
    k = draw(st.sampled_from([1, 3, 5]))
    kw = draw(st.sampled_from([k, k, 1, 3]))  # mostly square, some rectangular
    stride = draw(st.sampled_from([1, 2, (1, 2), (2, 1)]))
    padding = draw(st.one_of(
        st.just("SAME"), st.just("VALID"),
        st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)),
                  st.tuples(st.integers(0, 3), st.integers(0, 3))),
    ))
    if depthwise:
        cin = draw(st.integers(1, 4))
        groups, cout, cin_g = cin, cin, 1
    else:
        groups = draw(st.sampled_from([1, 1, 2, 3]))
        cin_g = draw(st.integers(1, 3))
        cout_g = draw(st.integers(1, 3))
        cin, cout = groups * cin_g, groups * cout_g
    per_example = draw(st.booleans())
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    pads = C.resolve_padding(padding, (h, w_), (k, kw), (sh, sw))
    ho, wo = _out_size(h, k, sh, pads[0]), _out_size(w_, kw, sw, pads[1])
    assume(ho >= 1 and wo >= 1)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, h, w_, cin))
    wshape = (k, kw, cin_g, cout)
    w = rng.standard_normal(((batch,) + wshape) if per_example else wshape)
    dy = rng.standard_normal((batch, ho, wo, cout))
    kwargs = {"stride": stride, "padding": padding}
    if not depthwise:
        kwargs["groups"] = groups
    return x, w, dy, kwargs, rng


def _fd_check(f, args, grads, rng, n_coords=6):
    """Central differences of the projection L = f(*args) at a random subset
    of coordinates of each argument, against the claimed gradients."""
    h = 1e-3
    for a, g in zip(args, grads, strict=True):
        assert g.shape == a.shape
        flat = a.reshape(-1)
        idx = rng.choice(flat.size, size=min(n_coords, flat.size), replace=False)
        for i in idx:
            old = flat[i]
            flat[i] = old + h
            lp = f(*args)
            flat[i] = old - h
            lm = f(*args)
            flat[i] = old
            fd = (lp - lm) / (2 * h)
            # The op is bilinear: FD is exact up to rounding of the sums.
            assert abs(fd - g.reshape(-1)[i]) <= 1e-7 * (1 + abs(fd)), (i, fd, g.reshape(-1)[i])


# --------------------------------------------------------------------------
# Gradients against finite differences
# --------------------------------------------------------------------------


@settings(max_examples=100)
@given(conv_configs(), st.sampled_from(["shifted", "im2col"]))
def test_conv2d_vjp_matches_finite_differences(cfg, kind):
    x, w, dy, kw, rng = cfg
    with dense_kernel(kind):
        dx, dw = C.conv2d_vjp(x, w, dy, **kw)

        def proj(x_, w_):
            return float(np.sum(dy * C.conv2d(x_, w_, **kw)))

        _fd_check(proj, [x.copy(), w.copy()], [dx, dw], rng)


@settings(max_examples=100)
@given(conv_configs(depthwise=True), st.sampled_from(["taps", "einsum"]))
def test_depthwise_conv2d_vjp_matches_finite_differences(cfg, kind):
    x, w, dy, kw, rng = cfg
    with depthwise_kernel(kind):
        dx, dw = C.depthwise_conv2d_vjp(x, w, dy, **kw)

        def proj(x_, w_):
            return float(np.sum(dy * C.depthwise_conv2d(x_, w_, **kw)))

        _fd_check(proj, [x.copy(), w.copy()], [dx, dw], rng)


def test_per_example_kernel_gradients_and_forward_are_per_example():
    # Example b of a per-example conv must equal a shared conv with w[b];
    # its dw[b] must equal that shared conv's dw.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 5, 4))
    w = rng.standard_normal((3, 3, 3, 2, 6))
    kw = {"stride": 2, "padding": "SAME", "groups": 2}
    y = C.conv2d(x, w, **kw)
    dy = rng.standard_normal(y.shape)
    dx, dw = C.conv2d_vjp(x, w, dy, **kw)
    for b in range(3):
        yb = C.conv2d(x[b:b + 1], w[b], **kw)
        dxb, dwb = C.conv2d_vjp(x[b:b + 1], w[b], dy[b:b + 1], **kw)
        np.testing.assert_allclose(y[b:b + 1], yb, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx[b:b + 1], dxb, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dw[b], dwb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dense", ["shifted", "im2col"])
@pytest.mark.parametrize("depthwise", ["taps", "einsum"])
def test_inputs_are_not_modified(dense, depthwise):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 7, 7, 4))
    cases = [(rng.standard_normal((3, 3, 2, 6)), {"stride": 2, "groups": 2}),
             (rng.standard_normal((1, 1, 4, 6)), {}),
             (rng.standard_normal((2, 5, 5, 1, 4)), {"groups": 4, "padding": "VALID"})]
    for w, kw in cases:
        with dense_kernel(dense), depthwise_kernel(depthwise):
            y = C.conv2d(x, w, **kw)
            dy = rng.standard_normal(y.shape)
            copies = [a.copy() for a in (x, w, dy)]
            C.conv2d(x, w, **kw)
            dx, dw = C.conv2d_vjp(x, w, dy, **kw)
        for a, c in zip((x, w, dy), copies, strict=True):
            np.testing.assert_array_equal(a, c)
        assert not np.shares_memory(dx, x) and not np.shares_memory(dw, w)


# --------------------------------------------------------------------------
# Fast kernels against their naive twins
# --------------------------------------------------------------------------


@settings(max_examples=100)
@given(conv_configs(), st.sampled_from(["shifted", "im2col"]))
def test_conv2d_fast_equals_naive(cfg, kind):
    x, w, dy, kw, _ = cfg
    with dense_kernel(kind):
        y = C.conv2d(x, w, **kw)
        dx, dw = C.conv2d_vjp(x, w, dy, **kw)
    np.testing.assert_allclose(y, C.conv2d_naive(x, w, **kw), rtol=1e-12, atol=1e-12)
    dxn, dwn = C.conv2d_vjp_naive(x, w, dy, **kw)
    np.testing.assert_allclose(dx, dxn, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, dwn, rtol=1e-12, atol=1e-12)


@settings(max_examples=100)
@given(conv_configs(depthwise=True), st.sampled_from(["taps", "einsum"]))
def test_depthwise_fast_equals_naive(cfg, kind):
    x, w, dy, kw, _ = cfg
    with depthwise_kernel(kind):
        _check_depthwise_against_naive(x, w, dy, kw)


def _check_depthwise_against_naive(x, w, dy, kw):
    y = C.depthwise_conv2d(x, w, **kw)
    np.testing.assert_allclose(y, C.depthwise_conv2d_naive(x, w, **kw), rtol=1e-12, atol=1e-12)
    # depthwise == grouped conv with groups = C (exercises the other dispatch)
    np.testing.assert_allclose(y, C.conv2d(x, w, groups=x.shape[-1], **kw),
                               rtol=1e-12, atol=1e-12)
    dx, dw = C.depthwise_conv2d_vjp(x, w, dy, **kw)
    dxn, dwn = C.depthwise_conv2d_vjp_naive(x, w, dy, **kw)
    np.testing.assert_allclose(dx, dxn, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, dwn, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["taps", "einsum"])
@pytest.mark.parametrize("per_example", [False, True])
def test_depthwise_channel_multiplier_fast_equals_naive(per_example, kind):
    # groups = Cin with Cout = 3 * Cin goes through the depthwise path with a
    # repeated input; check it against the naive loop, forward and vjp.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 7, 3))
    w = rng.standard_normal(((2,) if per_example else ()) + (3, 3, 1, 9))
    kw = {"stride": 2, "padding": "SAME", "groups": 3}
    with depthwise_kernel(kind):
        y = C.conv2d(x, w, **kw)
        dy = rng.standard_normal(y.shape)
        fast = C.conv2d_vjp(x, w, dy, **kw)
    np.testing.assert_allclose(y, C.conv2d_naive(x, w, **kw), rtol=1e-12, atol=1e-12)
    for a, b in zip(fast, C.conv2d_vjp_naive(x, w, dy, **kw), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# Forward against an independent scipy reference
# --------------------------------------------------------------------------


def _scipy_conv2d(x, w, stride, padding, groups):
    """Per (example, output channel, input channel) 2-D correlation with scipy."""
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    kh, kw_, cin_g, cout = w.shape[-4:]
    b_, h, w_, cin = x.shape
    if padding == "SAME":
        # TF: out = ceil(n / s), the odd padding pixel after (written out again here)
        def pads(n, k, s):
            tot = max((-(-n // s) - 1) * s + k - n, 0)
            return tot // 2, tot - tot // 2
        padding = (pads(h, kh, sh), pads(w_, kw_, sw))
    elif padding == "VALID":
        padding = ((0, 0), (0, 0))
    xp = np.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    ho = (xp.shape[1] - kh) // sh + 1
    wo = (xp.shape[2] - kw_) // sw + 1
    cout_g = cout // groups
    y = np.zeros((b_, ho, wo, cout))
    for b in range(b_):
        wb = w[b] if w.ndim == 5 else w
        for o in range(cout):
            grp = o // cout_g
            for c in range(cin_g):
                full = signal.correlate(xp[b, :, :, grp * cin_g + c], wb[:, :, c, o],
                                        mode="valid", method="direct")
                y[b, :, :, o] += full[::sh, ::sw][:ho, :wo]
    return y


@settings(max_examples=100)
@given(conv_configs(), st.sampled_from(["shifted", "im2col"]))
def test_conv2d_matches_scipy_reference(cfg, kind):
    x, w, _, kw, _ = cfg
    ref = _scipy_conv2d(x, w, kw["stride"], kw["padding"], kw["groups"])
    with dense_kernel(kind):
        y = C.conv2d(x, w, **kw)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_conv2d_matches_jax_lax():
    # A second independent implementation of TF semantics (XLA's SAME rule).
    pytest.importorskip("jax")
    from jax import lax
    rng = np.random.default_rng(3)
    # jax runs in float32 here (no global x64 switch from a test): float32 tolerance.
    for (h, w_, k, s, groups) in [(8, 8, 3, 2, 1), (9, 6, 5, 2, 2), (7, 7, 5, 1, 4)]:
        x = rng.standard_normal((2, h, w_, 4)).astype(np.float32)
        w = rng.standard_normal((k, k, 4 // groups, 4)).astype(np.float32)
        for pad in ("SAME", "VALID"):
            ref = lax.conv_general_dilated(
                x, w, (s, s), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=groups, precision=lax.Precision.HIGHEST)
            np.testing.assert_allclose(C.conv2d(x, w, stride=s, padding=pad, groups=groups),
                                       np.asarray(ref, dtype=np.float64), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# Padding rule
# --------------------------------------------------------------------------


@pytest.mark.parametrize("k, expected", [(3, (0, 1)), (5, (1, 2))])
def test_same_stride2_even_input_pads_odd_pixel_after(k, expected):
    assert C.resolve_padding("SAME", (8, 8), (k, k), 2) == (expected, expected)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 8, 8, 3))
    w = rng.standard_normal((k, k, 3, 4))
    xp = np.pad(x, ((0, 0), expected, expected, (0, 0)))
    y = C.conv2d(x, w, stride=2, padding="SAME")
    assert y.shape == (2, 4, 4, 4)
    np.testing.assert_allclose(y, C.conv2d(xp, w, stride=2, padding="VALID"),
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(y, C.conv2d(x, w, stride=2, padding=(expected, expected)),
                               rtol=1e-13, atol=1e-13)


def test_resolve_padding_cases():
    # odd input stride 2 with k=3 pads symmetrically; stride 1 gives (k-1)/2 each side
    assert C.resolve_padding("SAME", (7, 7), (3, 3), 2) == ((1, 1), (1, 1))
    assert C.resolve_padding("SAME", (5, 6), (5, 3), 1) == ((2, 2), (1, 1))
    # kernel smaller than stride: no padding needed
    assert C.resolve_padding("SAME", (8, 8), (1, 1), 2) == ((0, 0), (0, 0))
    assert C.resolve_padding("VALID", (8, 8), (3, 3), 2) == ((0, 0), (0, 0))
    assert C.resolve_padding([[1, 2], (0, 3)], (8, 8), (3, 3), 1) == ((1, 2), (0, 3))


# --------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------


def test_float32_mode_returns_float32_close_to_float64():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 9, 9, 6)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 8)).astype(np.float32)
    wd = rng.standard_normal((2, 5, 5, 1, 6)).astype(np.float32)
    y64 = C.conv2d(x, w, stride=2, groups=2)
    dy = rng.standard_normal(y64.shape).astype(np.float32)
    g64 = C.conv2d_vjp(x, w, dy, stride=2, groups=2)
    d64 = C.depthwise_conv2d(x, wd)
    assert y64.dtype == np.float64  # float32 inputs are upcast by default
    with float32_mode():
        y32 = C.conv2d(x, w, stride=2, groups=2)
        g32 = C.conv2d_vjp(x, w, dy, stride=2, groups=2)
        d32 = C.depthwise_conv2d(x, wd)
        dd32 = C.depthwise_conv2d_vjp(x, wd, np.ones_like(d32))
    for a32, a64 in [(y32, y64), *zip(g32, g64, strict=True), (d32, d64)]:
        assert a32.dtype == np.float32
        np.testing.assert_allclose(a32, a64, rtol=1e-4, atol=1e-4 * np.abs(a64).max())
    assert all(a.dtype == np.float32 for a in dd32)


# --------------------------------------------------------------------------
# Input errors
# --------------------------------------------------------------------------

_X = np.zeros((2, 6, 6, 4))
_W = np.zeros((3, 3, 4, 8))
_DY = np.zeros((2, 6, 6, 8))


def _nan_kernel():
    w = _W.copy()
    w[1, 1, 0, 0] = np.nan
    return w


def _inf_kernel():
    w = np.zeros((3, 3, 1, 4))
    w[0, 0, 0, 2] = -np.inf
    return w


@pytest.mark.parametrize(
    "call, exc, names",
    [
        (lambda: C.conv2d(np.zeros((6, 6, 4)), _W), ValueError, ["'x'", "rank 4"]),
        (lambda: C.conv2d(_X, np.zeros((3, 4, 8))), ValueError, ["'w'", "rank 4 or 5"]),
        (lambda: C.conv2d(_X, np.zeros((3, 3, 3, 8))), ValueError, ["'w'", "Cin // groups"]),
        (lambda: C.conv2d(_X, np.zeros((3, 3, 2, 8)), groups=3), ValueError,
         ["'groups'", "Cin=4"]),
        (lambda: C.conv2d(_X, np.zeros((3, 3, 2, 7)), groups=2), ValueError,
         ["'groups'", "Cout=7"]),
        (lambda: C.conv2d(_X, _W, groups=0), ValueError, ["'groups'", ">= 1"]),
        (lambda: C.conv2d(_X.astype(np.int64), _W), TypeError, ["'x'", "int64"]),
        (lambda: C.conv2d(_X, _W.astype(np.int32)), TypeError, ["'w'", "int32"]),
        (lambda: C.conv2d(_X, _nan_kernel()), ValueError, ["'w'", "finite", "nan"]),
        (lambda: C.depthwise_conv2d(np.zeros((1, 4, 4, 4)), _inf_kernel()), ValueError,
         ["'w'", "finite", "inf"]),
        (lambda: C.conv2d(_X, _W, stride=0), ValueError, ["'stride'", ">= 1", "0"]),
        (lambda: C.conv2d(_X, _W, stride=(1, -2)), ValueError, ["'stride[1]'", "-2"]),
        (lambda: C.conv2d(_X, _W, stride=(1, 2, 3)), ValueError, ["'stride'", "(1, 2, 3)"]),
        (lambda: C.conv2d(_X, _W, padding="same"), ValueError, ["'padding'", "'same'"]),
        (lambda: C.conv2d(_X, _W, padding=((1, 1),)), ValueError, ["'padding'"]),
        (lambda: C.conv2d(_X, _W, padding=((1, 1), (1,))), ValueError, ["'padding'"]),
        (lambda: C.conv2d(_X, _W, padding=((1, -1), (1, 1))), ValueError,
         ["'padding'", "negative"]),
        (lambda: C.conv2d(_X, _W, padding=((1, 1.5), (1, 1))), ValueError,
         ["'padding'", "not an int"]),
        (lambda: C.conv2d(_X, np.zeros((7, 3, 4, 8)), padding="VALID"), ValueError,
         ["'x'", "'w'", "output size"]),
        (lambda: C.conv2d_vjp(_X, _W, np.zeros((2, 3, 3, 8))), ValueError,
         ["'dy'", "(2, 6, 6, 8)", "(2, 3, 3, 8)"]),
        (lambda: C.conv2d_vjp(_X, _W, np.zeros((2, 6, 6))), ValueError, ["'dy'", "rank 4"]),
        (lambda: C.depthwise_conv2d_vjp(_X, np.zeros((3, 3, 1, 4)), np.zeros((2, 6, 6, 5))),
         ValueError, ["'dy'"]),
        (lambda: C.conv2d(_X, np.zeros((3, 3, 3, 4, 8))), ValueError,
         ["'w'", "per-example", "batch 2"]),
        (lambda: C.depthwise_conv2d(_X, np.zeros((3, 3, 3, 1, 4))), ValueError,
         ["'w'", "per-example"]),
        (lambda: C.depthwise_conv2d(_X, np.zeros((3, 3, 1, 5))), ValueError,
         ["'w'", "(kh, kw, 1, 4)"]),
        (lambda: C.depthwise_conv2d(_X, np.zeros((3, 3, 4, 4))), ValueError, ["'w'"]),
        (lambda: C.conv2d(_X, np.zeros((0, 3, 4, 8))), ValueError, ["'w'", "non-empty"]),
        (lambda: C.conv2d(_X, np.zeros((3, 3, 4, 0))), ValueError, ["'w'", "non-empty"]),
        (lambda: C.resolve_padding("FULL", (4, 4), (3, 3), 1), ValueError, ["'padding'"]),
        (lambda: C.resolve_padding("SAME", (4, 4), (3, 3), 0), ValueError, ["'stride'"]),
    ],
)
def test_bad_input_errors_name_the_argument(call, exc, names):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    for n in names:
        assert n in msg, (n, msg)

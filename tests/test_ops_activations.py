"""Activations: VJPs vs central finite differences, naive twins, kink
subgradients (matching jax.nn), stable sigmoid, dispatch and bad input."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from refbasis.ops import activations as A

KINKS = {
    "relu": (0.0,),
    "relu6": (0.0, 6.0),
    "hard_sigmoid": (-3.0, 3.0),
    "hard_swish": (-3.0, 3.0),
    "sigmoid": (),
    "identity": (),
}


def fd_elementwise(f, x, h=1e-6):
    """Central differences of an elementwise f: the derivative at every entry."""
    return (f(x + h) - f(x - h)) / (2 * h)


def away_from_kinks(x, name, margin=1e-4):
    """Move entries within `margin` of a kink to kink + 2 * margin (FD would
    straddle the kink there)."""
    x = x.copy()
    for k in KINKS[name]:
        near = np.abs(x - k) < margin
        x[near] = k + 2 * margin
    return x


finite_vals = st.floats(-9.0, 9.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=60)
@given(
    name=st.sampled_from(A.ACTIVATIONS),
    x=arrays(np.float64, array_shapes(min_dims=1, max_dims=4, max_side=4), elements=finite_vals),
    seed=st.integers(0, 2**16),
)
def test_vjp_matches_finite_differences(name, x, seed):
    x = away_from_kinks(x, name)
    dy = np.random.default_rng(seed).standard_normal(x.shape)
    got = A.apply_activation_vjp(name, x, dy)
    want = dy * fd_elementwise(lambda v: A.apply_activation(name, v), x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


@settings(max_examples=20)
@given(
    name=st.sampled_from(A.ACTIVATIONS),
    x=arrays(np.float64, array_shapes(min_dims=1, max_dims=3, max_side=5), elements=finite_vals),
)
def test_fast_matches_naive_twin(name, x):
    # Include the kinks themselves: the twin encodes the documented table.
    x = np.concatenate([x.ravel(), [-3.0, 0.0, 3.0, 6.0, -1e-300, 1e-300]])
    dy = np.linspace(-2.0, 3.0, x.size)
    np.testing.assert_allclose(
        A.apply_activation(name, x), A.apply_activation_naive(name, x), rtol=1e-15, atol=0
    )
    np.testing.assert_allclose(
        A.apply_activation_vjp(name, x, dy),
        A.apply_activation_vjp_naive(name, x, dy),
        rtol=1e-14,
        atol=1e-300,
    )


def test_kink_subgradients_table():
    x = np.array([-3.0, 0.0, 3.0, 6.0])
    one = np.ones(4)
    np.testing.assert_array_equal(A.relu_vjp(x, one), [0, 0, 1, 1])
    np.testing.assert_array_equal(A.relu6_vjp(x, one), [0, 0, 1, 0])
    np.testing.assert_array_equal(A.hard_sigmoid_vjp(x, one), [0, 1 / 6, 0, 0])
    np.testing.assert_array_equal(A.hard_swish_vjp(x, one), [0, 0.5, 1, 1])


def test_hard_swish_derivative_closed_form_inside():
    x = np.linspace(-2.9, 2.9, 41)
    np.testing.assert_allclose(A.hard_swish_vjp(x, np.ones_like(x)), (2 * x + 3) / 6, rtol=1e-14)


@pytest.mark.jax
def test_kink_subgradients_agree_with_jax_nn():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    fns = {
        "relu": jax.nn.relu,
        "relu6": jax.nn.relu6,
        "hard_sigmoid": jax.nn.hard_sigmoid,
        "hard_swish": jax.nn.hard_swish,
        "sigmoid": jax.nn.sigmoid,
    }
    pts = np.array([-1001.0, -3.0, -1e-300, 0.0, 1e-300, 2.5, 3.0, 6.0, 1001.0])
    for name, f in fns.items():
        want = np.array([float(jax.grad(f)(p)) for p in pts])
        got = A.apply_activation_vjp(name, pts, np.ones_like(pts))
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=0, err_msg=name)


def test_sigmoid_stable_at_extremes():
    x = np.array([-1e308, -1e4, -1001.0, -745.0, -30.0, 0.0, 30.0, 1001.0, 1e308])
    # Underflow to 0 in the tails is expected and harmless; overflow is not.
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = A.sigmoid(x)
        ds = A.sigmoid_vjp(x, np.ones_like(x))
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(ds))
    assert s[0] == 0.0 and s[-1] == 1.0 and s[5] == 0.5
    # Relative accuracy in the far-negative tail, where 1 - sigmoid(-x) cancels.
    assert s[4] == pytest.approx(math.exp(-30.0) / (1 + math.exp(-30.0)), rel=1e-15)
    assert s[3] == pytest.approx(math.exp(-745.0), rel=1e-1)  # subnormal range


def test_hard_sigmoid_and_hard_swish_definitions():
    x = np.linspace(-8, 8, 33)
    relu6 = np.minimum(np.maximum(x + 3, 0), 6)
    np.testing.assert_allclose(A.hard_sigmoid(x), relu6 / 6, rtol=0, atol=0)
    # Association as jax.nn: x * (relu6(x + 3) / 6).
    np.testing.assert_allclose(A.hard_swish(x), x * (relu6 / 6), rtol=0, atol=0)


def test_float32_is_upcast_and_identity_copies():
    x = np.array([1.5, -2.0], dtype=np.float32)
    assert A.relu(x).dtype == np.float64
    src = np.array([1.0, 2.0])
    y = A.identity(src)
    y[0] = 9.0
    assert src[0] == 1.0


def test_unknown_activation_lists_valid_names():
    with pytest.raises(ValueError, match="argument 'name'.*hard_swish.*got 'swish'"):
        A.apply_activation("swish", np.zeros(2))
    with pytest.raises(ValueError, match="argument 'name'"):
        A.apply_activation_vjp("gelu", np.zeros(2), np.zeros(2))


def test_bad_inputs():
    with pytest.raises(TypeError, match="argument 'x'.*floating dtype.*int64"):
        A.relu(np.arange(3))
    with pytest.raises(TypeError, match="argument 'dy'.*floating"):
        A.relu6_vjp(np.zeros(3), np.zeros(3, dtype=np.int32))
    with pytest.raises(ValueError, match=r"argument 'dy' must have the same shape as 'x' \(3,\)"):
        A.hard_swish_vjp(np.zeros(3), np.zeros(4))
    with pytest.raises(TypeError, match="argument 'x'"):
        A.sigmoid("abc")


def _bits(a):
    return a.view(f"u{a.itemsize}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_vjps_select_like_np_where_bit_for_bit(dtype):
    # relu/relu6 VJPs select dy or +0.0 without np.where; NaN/Inf in dy at
    # masked entries must give +0.0 (not NaN), -0.0 in dy must survive where
    # kept, and NaN x is masked out, exactly as np.where(mask, dy, 0.0).
    from refbasis.precision import compute_precision

    special = [np.nan, np.inf, -np.inf, -0.0, 0.0, -1.5, 2.5, 6.0, -6.0, 7.0, 1e-30]
    xs, dys = (np.array(v, dtype=dtype).reshape(-1) for v in np.meshgrid(special, special))
    with compute_precision(dtype):
        got_relu = A.relu_vjp(xs, dys)
        got_relu6 = A.relu6_vjp(xs, dys)
    want_relu = np.where(xs > 0.0, dys, dtype(0.0))
    want_relu6 = np.where((xs > 0.0) & (xs < 6.0), dys, dtype(0.0))
    assert got_relu.dtype == got_relu6.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(_bits(got_relu), _bits(want_relu))
    np.testing.assert_array_equal(_bits(got_relu6), _bits(want_relu6))


def test_hard_vjps_match_textbook_expressions_bit_for_bit():
    # The in-place evaluation keeps the operations (and so the bits) of
    # dy * (hs(x) + x * hs'(x)) with hs' = where(0 < x + 3 < 6, 1/6, 0).
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(-5, 5, 200), [-3.0, 3.0, 0.0, -0.0, np.nan, np.inf]])
    dy = np.concatenate([rng.standard_normal(200), [1.0, -1.0, -0.0, 2.0, 1.0, 1.0]])
    z = x + 3.0
    hs = np.minimum(np.maximum(z, 0.0), 6.0) / 6.0
    hs_grad = np.where((z > 0.0) & (z < 6.0), 1.0 / 6.0, 0.0)
    with np.errstate(invalid="ignore"):
        got_swish = A.hard_swish_vjp(x, dy)
        want_swish = dy * (hs + x * hs_grad)
    np.testing.assert_array_equal(_bits(got_swish), _bits(want_swish))
    np.testing.assert_array_equal(_bits(A.hard_sigmoid_vjp(x, dy)), _bits(dy * hs_grad))
    np.testing.assert_array_equal(_bits(A.hard_swish(x)), _bits(x * hs))

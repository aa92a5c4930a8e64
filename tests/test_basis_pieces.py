"""Pure BasisNet pieces: synthesis, coefficient head, epsilon mixing, basis dropout.

Every VJP is checked against central finite differences in float64 and every
vectorised kernel against its naive loop twin.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refbasis.basis.basis_dropout import (
    apply_basis_dropout,
    apply_basis_dropout_naive,
    apply_basis_dropout_vjp,
    apply_basis_dropout_vjp_naive,
    basis_dropout_mask,
    default_basis_dropout_rate,
)
from refbasis.basis.coefficients import (
    coefficient_head,
    coefficient_head_naive,
    coefficient_head_vjp,
    init_coefficient_head,
    normalize_coefficients,
    normalize_coefficients_naive,
    normalize_coefficients_vjp,
)
from refbasis.basis.mixing import epsilon_mix, epsilon_mix_naive, epsilon_mix_vjp
from refbasis.basis.synthesis import (
    synthesize,
    synthesize_naive,
    synthesize_vjp,
    synthesize_vjp_naive,
)


def central_fd(f, x, h=1e-6):
    """Gradient of scalar f at x by central differences (float64)."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp = x.copy()
        xp[idx] += h
        xm = x.copy()
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


def simplex(rng, shape):
    a = rng.random(shape) + 0.05
    return a / a.sum(-1, keepdims=True)


# ---------------------------------------------------------------------------
# Synthesis
# ---------------------------------------------------------------------------

@settings(max_examples=15)
@given(n=st.integers(1, 4), b=st.integers(1, 3), seed=st.integers(0, 2**31 - 1),
       wshape=st.sampled_from([(3,), (2, 3), (3, 3, 1, 4), (1, 1, 2, 3)]))
def test_synthesize_matches_naive(n, b, seed, wshape):
    rng = np.random.default_rng(seed)
    bases = rng.normal(size=(n,) + wshape)
    alpha = simplex(rng, (b, n))
    dw = rng.normal(size=(b,) + wshape)
    np.testing.assert_allclose(synthesize(bases, alpha), synthesize_naive(bases, alpha),
                               rtol=1e-12, atol=1e-12)
    for got, want in zip(synthesize_vjp(bases, alpha, dw),
                         synthesize_vjp_naive(bases, alpha, dw), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@settings(max_examples=15)
@given(n=st.integers(1, 4), seed=st.integers(0, 2**31 - 1),
       s=st.floats(0, 3), t=st.floats(0, 3))
def test_synthesize_is_linear_in_coefficients(n, seed, s, t):
    rng = np.random.default_rng(seed)
    bases = rng.normal(size=(n, 2, 3))
    a1, a2 = rng.random((2, 2, n))
    lhs = synthesize(bases, s * a1 + t * a2)
    rhs = s * synthesize(bases, a1) + t * synthesize(bases, a2)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12)


@settings(max_examples=10)
@given(n=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_synthesize_one_hot_and_identical_bases(n, seed):
    rng = np.random.default_rng(seed)
    bases = rng.normal(size=(n, 3, 2))
    onehot = np.eye(n)
    out = synthesize(bases, onehot)
    for i in range(n):
        np.testing.assert_array_equal(out[i], bases[i])
    same = np.broadcast_to(bases[:1], bases.shape).copy()
    out = synthesize(same, simplex(rng, (4, n)))
    for e in range(4):
        np.testing.assert_allclose(out[e], bases[0], rtol=1e-13, atol=1e-13)


def test_synthesize_vjp_finite_differences():
    rng = np.random.default_rng(0)
    bases = rng.normal(size=(3, 2, 2))
    alpha = simplex(rng, (2, 3))
    dw = rng.normal(size=(2, 2, 2))
    d_bases, d_alpha = synthesize_vjp(bases, alpha, dw)
    np.testing.assert_allclose(
        d_bases, central_fd(lambda v: np.sum(synthesize(v, alpha) * dw), bases), atol=1e-8)
    np.testing.assert_allclose(
        d_alpha, central_fd(lambda v: np.sum(synthesize(bases, v) * dw), alpha), atol=1e-8)


@pytest.mark.parametrize("alpha, err, match", [
    (np.ones((2, 4)) / 4, ValueError, r"synthesize: argument 'alpha' must have shape \(\*, 3\)"),
    (np.ones((2, 3, 1)) / 3, ValueError, r"argument 'alpha' must have rank 2"),
    (np.array([[0.5, 0.6, -0.1]]), ValueError, r"'alpha' must be non-negative.*-0.1"),
    (np.array([[0.5, np.nan, 0.5]]), ValueError, r"'alpha' must be finite"),
    (np.array([[1, 0, 0]]), TypeError, r"'alpha' must have a floating dtype"),
])
def test_synthesize_bad_coefficients(alpha, err, match):
    with pytest.raises(err, match=match):
        synthesize(np.ones((3, 2)), alpha)


def test_synthesize_bad_bases_and_negative_allowed():
    with pytest.raises(ValueError, match=r"'bases' must have a leading basis axis N >= 1"):
        synthesize(np.ones((0, 2)), np.ones((1, 0)))
    with pytest.raises(ValueError, match=r"'dw' must have shape \(2, 2\)"):
        synthesize_vjp(np.ones((3, 2)), np.ones((2, 3)) / 3, np.ones((2, 3)))
    # The "none" normalisation may legitimately produce negative coefficients.
    out = synthesize(np.eye(2), np.array([[-1.0, 2.0]]), allow_negative=True)
    np.testing.assert_array_equal(out, [[-1.0, 2.0]])


# ---------------------------------------------------------------------------
# Coefficient head
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["softmax", "sigmoid", "none"])
def test_normalize_matches_naive_and_fd(method):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(2, 3, 4)) * 2
    da = rng.normal(size=z.shape)
    np.testing.assert_allclose(normalize_coefficients(z, method),
                               normalize_coefficients_naive(z, method), rtol=1e-12)
    got = normalize_coefficients_vjp(z, da, method)
    want = central_fd(lambda v: np.sum(normalize_coefficients(v, method) * da), z)
    np.testing.assert_allclose(got, want, atol=1e-8)


def test_softmax_rows_on_simplex_and_extreme_logits():
    z = np.array([[[800.0, 0.0, -800.0]]])
    a = normalize_coefficients(z, "softmax")
    np.testing.assert_allclose(a.sum(-1), 1.0)
    assert np.all(np.isfinite(a)) and a[0, 0, 0] == 1.0
    s = normalize_coefficients(z, "sigmoid")
    assert np.all(np.isfinite(s)) and s[0, 0, 0] == 1.0 and s[0, 0, 2] == 0.0


@pytest.mark.parametrize("method", ["softmax", "sigmoid", "none"])
def test_coefficient_head_naive_and_fd(method):
    rng = np.random.default_rng(2)
    f, nl, n = 5, 2, 3
    feats = rng.normal(size=(2, f))
    p = init_coefficient_head(f, nl, n, rng)
    p["coef.bias"] = rng.normal(size=nl * n)
    kw = dict(num_layers=nl, num_bases=n, normalization=method)
    alpha, z = coefficient_head(feats, p["coef.kernel"], p["coef.bias"], **kw)
    alpha_n, z_n = coefficient_head_naive(feats, p["coef.kernel"], p["coef.bias"], **kw)
    np.testing.assert_allclose(alpha, alpha_n, rtol=1e-12)
    np.testing.assert_allclose(z, z_n, rtol=1e-12)
    # Layer-major layout: column l * N + i is layer l, basis i.
    np.testing.assert_allclose(z[:, 1, 2], feats @ p["coef.kernel"][:, 5] + p["coef.bias"][5])
    da = rng.normal(size=alpha.shape)
    dfeat, dk, db = coefficient_head_vjp(feats, p["coef.kernel"], p["coef.bias"], da, **kw)

    def loss(feats_, k_, b_):
        return np.sum(coefficient_head(feats_, k_, b_, **kw)[0] * da)

    np.testing.assert_allclose(
        dfeat, central_fd(lambda v: loss(v, p["coef.kernel"], p["coef.bias"]), feats), atol=1e-8)
    np.testing.assert_allclose(
        dk, central_fd(lambda v: loss(feats, v, p["coef.bias"]), p["coef.kernel"]), atol=1e-8)
    np.testing.assert_allclose(
        db, central_fd(lambda v: loss(feats, p["coef.kernel"], v), p["coef.bias"]), atol=1e-8)


def test_coefficient_head_bad_input():
    with pytest.raises(ValueError, match=r"coefficient_head: argument 'kernel' must have shape"):
        coefficient_head(np.ones((2, 5)), np.ones((5, 7)), np.ones(6), num_layers=2, num_bases=3)
    with pytest.raises(ValueError, match=r"argument 'num_bases' must be >= 1, got 0"):
        coefficient_head(np.ones((2, 5)), np.ones((5, 0)), np.ones(0), num_layers=2, num_bases=0)
    with pytest.raises(ValueError, match=r"argument 'normalization' must be one of"):
        coefficient_head(np.ones((2, 5)), np.ones((5, 6)), np.ones(6), num_layers=2,
                         num_bases=3, normalization="l2")
    with pytest.raises(ValueError, match=r"argument 'logits' must be finite"):
        normalize_coefficients(np.array([[0.0, np.nan]]))


# ---------------------------------------------------------------------------
# Epsilon mixing
# ---------------------------------------------------------------------------

@settings(max_examples=15)
@given(n=st.integers(1, 6), seed=st.integers(0, 2**31 - 1), eps=st.floats(0, 1))
def test_epsilon_mix_properties(n, seed, eps):
    rng = np.random.default_rng(seed)
    a = simplex(rng, (2, 3, n))
    m = epsilon_mix(a, eps)
    np.testing.assert_allclose(m, epsilon_mix_naive(a, eps), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(m.sum(-1), 1.0, rtol=1e-12)
    assert np.all(m >= 0)
    np.testing.assert_array_equal(epsilon_mix(a, 1.0), np.full_like(a, 1.0 / n))
    np.testing.assert_array_equal(epsilon_mix(a, 0.0), a)


def test_epsilon_mix_vjp_and_errors():
    rng = np.random.default_rng(3)
    a = simplex(rng, (2, 2, 3))
    d = rng.normal(size=a.shape)
    np.testing.assert_allclose(epsilon_mix_vjp(a, 0.3, d),
                               central_fd(lambda v: np.sum(epsilon_mix(v, 0.3) * d), a),
                               atol=1e-9)
    with pytest.raises(ValueError, match=r"epsilon_mix: argument 'eps' must be in \[0.0, 1.0\]"):
        epsilon_mix(a, 1.5)
    with pytest.raises(ValueError, match=r"argument 'alpha' must be finite"):
        epsilon_mix(np.array([np.nan, 1.0]), 0.5)


# ---------------------------------------------------------------------------
# Basis-model dropout
# ---------------------------------------------------------------------------

@settings(max_examples=20)
@given(n=st.integers(1, 6), seed=st.integers(0, 2**31 - 1),
       rate=st.floats(0, 0.95), mode=st.sampled_from(["example", "example_layer"]))
def test_basis_dropout_sums_to_one(n, seed, rate, mode):
    rng = np.random.default_rng(seed)
    a = simplex(rng, (4, 3, n))
    mask = basis_dropout_mask(4, 3, n, rate, rng, mode=mode)
    assert mask.shape == (4, 3, n) and set(np.unique(mask)) <= {0.0, 1.0}
    assert np.all(mask.sum(-1) >= 1)
    if mode == "example":  # one draw per example, shared by every layer
        assert np.all(mask == mask[:, :1, :])
    out = apply_basis_dropout(a, mask)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-12)
    assert np.all(out[mask == 0] == 0)
    np.testing.assert_allclose(out, apply_basis_dropout_naive(a, mask), rtol=1e-12)
    # Kept bases keep their ratios: out = alpha / (sum of kept alpha) on kept entries.
    scale = (a * mask).sum(-1, keepdims=True)
    kept = mask == 1
    np.testing.assert_allclose(out[kept], (a / scale)[kept], rtol=1e-12)


def test_basis_dropout_mask_rate_and_all_dropped():
    rng = np.random.default_rng(4)
    m = basis_dropout_mask(4000, 1, 8, 0.125, rng)
    # Empirical drop rate near 1/8 (all-dropped rows are vanishingly rare at N=8).
    assert abs(1 - m.mean() - 0.125) < 0.01
    np.testing.assert_array_equal(basis_dropout_mask(3, 2, 4, 0.0, rng), np.ones((3, 2, 4)))
    # At N=1 any drop removes the only basis: the row keeps everything.
    np.testing.assert_array_equal(basis_dropout_mask(50, 2, 1, 0.9, rng), np.ones((50, 2, 1)))
    # Same Generator state -> same mask (goldens store masks, but draws are reproducible).
    m1 = basis_dropout_mask(5, 2, 3, 0.5, np.random.default_rng(7), mode="example_layer")
    m2 = basis_dropout_mask(5, 2, 3, 0.5, np.random.default_rng(7), mode="example_layer")
    np.testing.assert_array_equal(m1, m2)
    assert default_basis_dropout_rate(8) == 1 / 8 and default_basis_dropout_rate(16) == 1 / 16


def test_basis_dropout_vjp_fd_and_naive():
    rng = np.random.default_rng(5)
    a = simplex(rng, (3, 2, 4))
    mask = np.ones_like(a)
    mask[0, :, 1] = 0
    mask[2, 1, [0, 3]] = 0
    d = rng.normal(size=a.shape)
    got = apply_basis_dropout_vjp(a, mask, d)
    np.testing.assert_allclose(got, apply_basis_dropout_vjp_naive(a, mask, d), atol=1e-12)
    np.testing.assert_allclose(
        got, central_fd(lambda v: np.sum(apply_basis_dropout(v, mask) * d), a), atol=1e-8)
    assert np.all(got[mask == 0] == 0)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_basis_dropout_bad_rate(rate):
    with pytest.raises(ValueError, match=r"basis_dropout_mask: argument 'rate' must be in "
                                         r"\[0.0, 1.0\)"):
        basis_dropout_mask(2, 1, 3, rate, np.random.default_rng(0))


def test_basis_dropout_bad_mask_and_rng():
    a = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"'mask' must contain only 0.0 and 1.0"):
        apply_basis_dropout(a, np.full((2, 3), 0.5))
    with pytest.raises(ValueError, match=r"'mask' must keep at least one basis per row"):
        apply_basis_dropout(a, np.array([[1.0, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"'mask' must have shape \(2, 3\), got \(2, 4\)"):
        apply_basis_dropout(a, np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"positive sum over the kept bases"):
        apply_basis_dropout(np.array([[1.0, -1.0, 0.5]]), np.array([[1.0, 1.0, 0.0]]))
    with pytest.raises(TypeError, match=r"'rng' must be a numpy.random.Generator"):
        basis_dropout_mask(2, 1, 3, 0.1, 0)
    with pytest.raises(ValueError, match=r"'mode' must be one of"):
        basis_dropout_mask(2, 1, 3, 0.1, np.random.default_rng(0), mode="layer")


def test_package_reexports_resolve():
    import refbasis.basis as pkg

    for name in pkg.__all__:
        assert callable(getattr(pkg, name)) or isinstance(getattr(pkg, name), (tuple, frozenset))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pkg.nope  # noqa: B018

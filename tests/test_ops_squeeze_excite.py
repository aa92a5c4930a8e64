"""Squeeze-and-excite: VJP vs central finite differences (shared and
per-example weights), naive twin, reference formula, bad input."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from refbasis.ops.squeeze_excite import (
    squeeze_excite,
    squeeze_excite_naive,
    squeeze_excite_vjp,
    squeeze_excite_vjp_naive,
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
def se_case(draw):
    b, hh, ww = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    c, r = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))

    def p(shape, pe, scale=1.0):
        return rng.normal(0, scale, ((b,) + shape) if pe else shape)

    pes = [draw(st.booleans()) for _ in range(4)]
    return dict(
        x=rng.normal(0.3, 1.5, (b, hh, ww, c)),
        w1=p((c, r), pes[0]), b1=p((r,), pes[1], 0.5),
        w2=p((r, c), pes[2], 2.0), b2=p((c,), pes[3], 1.0),
        dy=rng.standard_normal((b, hh, ww, c)),
        gate=draw(st.sampled_from(["hard_sigmoid", "sigmoid"])),
        inner=draw(st.sampled_from(["relu", "relu6", "hard_swish"])),
    )


def _preacts(x, w1, b1, w2, b2, inner):
    from refbasis.ops.activations import apply_activation

    s = x.mean(axis=(1, 2))
    a1 = np.einsum("bc,bcr->br", s, np.broadcast_to(w1, (x.shape[0],) + w1.shape[-2:])) + b1
    a2 = np.einsum("br,brc->bc", apply_activation(inner, a1),
                   np.broadcast_to(w2, (x.shape[0],) + w2.shape[-2:])) + b2
    return a1, a2


KINKS = {"relu": (0.0,), "relu6": (0.0, 6.0), "hard_swish": (-3.0, 3.0),
         "hard_sigmoid": (-3.0, 3.0), "sigmoid": ()}


def _far_from_kinks(v, name, margin=1e-4):
    return all(np.all(np.abs(v - k) > margin) for k in KINKS[name])


@settings(max_examples=60)
@given(case=se_case())
def test_vjp_matches_finite_differences(case):
    x, w1, b1, w2, b2, dy = (case[k] for k in ("x", "w1", "b1", "w2", "b2", "dy"))
    kw = dict(gate=case["gate"], inner=case["inner"])
    a1, a2 = _preacts(x, w1, b1, w2, b2, case["inner"])
    assume(_far_from_kinks(a1, case["inner"]) and _far_from_kinks(a2, case["gate"]))
    grads = squeeze_excite_vjp(x, w1, b1, w2, b2, dy, **kw)
    args = [x, w1, b1, w2, b2]
    for i, got in enumerate(grads):
        assert got.shape == args[i].shape

        def f(v, i=i):
            a = list(args)
            a[i] = v
            return squeeze_excite(*a, **kw)

        np.testing.assert_allclose(got, fd_grad(f, args[i], dy), rtol=1e-5, atol=1e-7,
                                   err_msg=f"gradient {i}")


@settings(max_examples=15)
@given(case=se_case())
def test_fast_matches_naive_twin(case):
    x, w1, b1, w2, b2, dy = (case[k] for k in ("x", "w1", "b1", "w2", "b2", "dy"))
    kw = dict(gate=case["gate"], inner=case["inner"])
    np.testing.assert_allclose(
        squeeze_excite(x, w1, b1, w2, b2, **kw), squeeze_excite_naive(x, w1, b1, w2, b2, **kw),
        rtol=1e-12, atol=1e-13,
    )
    for got, want in zip(squeeze_excite_vjp(x, w1, b1, w2, b2, dy, **kw),
                         squeeze_excite_vjp_naive(x, w1, b1, w2, b2, dy, **kw), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


def test_mobilenet_v3_formula():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 3, 8))
    w1, b1 = rng.standard_normal((8, 2)), rng.standard_normal(2)
    w2, b2 = rng.standard_normal((2, 8)), rng.standard_normal(8)
    s = x.mean(axis=(1, 2))
    h = np.maximum(s @ w1 + b1, 0)
    g = np.minimum(np.maximum(h @ w2 + b2 + 3, 0), 6) / 6
    np.testing.assert_allclose(squeeze_excite(x, w1, b1, w2, b2), x * g[:, None, None, :],
                               rtol=1e-14)


def test_bad_inputs():
    x = np.zeros((2, 3, 3, 8))
    w1, b1, w2, b2 = np.zeros((8, 2)), np.zeros(2), np.zeros((2, 8)), np.zeros(8)
    with pytest.raises(ValueError, match=r"argument 'x' must have rank 4.*rank 2"):
        squeeze_excite(np.zeros((2, 8)), w1, b1, w2, b2)
    with pytest.raises(ValueError, match=r"argument 'w1' must have shape \(8, R\).*got \(7, 2\)"):
        squeeze_excite(x, np.zeros((7, 2)), b1, w2, b2)
    with pytest.raises(ValueError, match=r"argument 'b1' must have shape \(2,\).*got \(3,\)"):
        squeeze_excite(x, w1, np.zeros(3), w2, b2)
    with pytest.raises(
        ValueError,
        match=r"argument 'w2' must have shape \(2, 8\).*\(2, 2, 8\).*\(3, 2, 8\)",
    ):
        squeeze_excite(x, w1, b1, np.zeros((3, 2, 8)), b2)
    with pytest.raises(ValueError, match=r"argument 'b2' must have shape \(8,\).*got \(2, 7\)"):
        squeeze_excite(x, w1, b1, w2, np.zeros((2, 7)))
    with pytest.raises(TypeError, match=r"argument 'x'.*floating dtype.*int"):
        squeeze_excite(x.astype(int), w1, b1, w2, b2)
    with pytest.raises(ValueError, match=r"argument 'gate' must be one of.*'tanh'"):
        squeeze_excite(x, w1, b1, w2, b2, gate="tanh")
    with pytest.raises(ValueError, match=r"argument 'inner' must be one of"):
        squeeze_excite_vjp(x, w1, b1, w2, b2, x, inner="swish")
    with pytest.raises(ValueError, match=r"squeeze_excite_vjp: argument 'dy' must have shape"):
        squeeze_excite_vjp(x, w1, b1, w2, b2, np.zeros((2, 3, 3, 7)))

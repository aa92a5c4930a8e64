"""Softmax, log-softmax, cross-entropy and distillation: VJPs vs central
finite differences, naive twins, stability, closed forms, bad input."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refbasis.ops.losses import (
    distillation_loss,
    distillation_loss_vjp,
    log_softmax,
    log_softmax_vjp,
    softmax,
    softmax_cross_entropy,
    softmax_cross_entropy_naive,
    softmax_cross_entropy_vjp,
    softmax_cross_entropy_vjp_naive,
    softmax_vjp,
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
def logits_case(draw, min_k=1):
    b, k = draw(st.integers(1, 4)), draw(st.integers(min_k, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    return rng, rng.normal(0, scale, (b, k))


# --------------------------------------------------------------------------
# softmax / log_softmax
# --------------------------------------------------------------------------


@settings(max_examples=20)
@given(case=logits_case(), lead=st.sampled_from([(), (2,)]))
def test_softmax_and_log_softmax_vjps_fd(case, lead):
    rng, z = case
    z = z.reshape(lead + z.shape) if lead == () else np.stack([z, z[::-1]])
    dy = rng.standard_normal(z.shape)
    np.testing.assert_allclose(softmax_vjp(z, dy), fd_grad(softmax, z, dy), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(
        log_softmax_vjp(z, dy), fd_grad(log_softmax, z, dy), rtol=1e-6, atol=1e-8
    )
    np.testing.assert_allclose(softmax(z).sum(axis=-1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(np.exp(log_softmax(z)), softmax(z), rtol=1e-13)


def test_extreme_logits_are_stable():
    z = np.array([[1000.0, 0.0, -1000.0], [-1e300, -1e300, 0.0], [1e300, 1e300, 1e300]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        ls = log_softmax(z)
        p = softmax(z)
        ce = softmax_cross_entropy(z, np.array([2, 0, 1]))
    np.testing.assert_allclose(ls[0], [0.0, -1000.0, -2000.0], rtol=1e-15, atol=0)
    np.testing.assert_array_equal(p[1], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(p[2], [1 / 3] * 3, rtol=1e-15)
    np.testing.assert_allclose(ce, [2000.0, 1e300, math.log(3)], rtol=1e-15)


# --------------------------------------------------------------------------
# cross-entropy
# --------------------------------------------------------------------------


@settings(max_examples=50)
@given(case=logits_case(), int_labels=st.booleans(),
       ls=st.sampled_from([0.0, 0.1, 0.5]))
def test_cross_entropy_vjp_fd_and_naive(case, int_labels, ls):
    rng, z = case
    b, k = z.shape
    if int_labels:
        labels = rng.integers(0, k, b)
    else:
        labels = rng.dirichlet(np.ones(k), b)
    dloss = rng.standard_normal(b)
    loss = softmax_cross_entropy(z, labels, label_smoothing=ls)
    assert loss.shape == (b,)
    np.testing.assert_allclose(
        loss, softmax_cross_entropy_naive(z, labels, label_smoothing=ls), rtol=1e-13, atol=1e-14
    )
    g = softmax_cross_entropy_vjp(z, labels, dloss, label_smoothing=ls)
    np.testing.assert_allclose(
        g, softmax_cross_entropy_vjp_naive(z, labels, dloss, label_smoothing=ls),
        rtol=1e-12, atol=1e-14,
    )
    fd = fd_grad(lambda v: softmax_cross_entropy(v, labels, label_smoothing=ls), z, dloss)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_label_smoothing_closed_form():
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((5, 7)), rng.integers(0, 7, 5)
    ls, k = 0.1, 7
    lp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    want = -((1 - ls) * lp[np.arange(5), y] + ls / k * lp.sum(axis=1))
    np.testing.assert_allclose(softmax_cross_entropy(z, y, label_smoothing=ls), want, rtol=1e-14)
    # Int labels and their one-hot rows give the same loss and gradient.
    onehot = np.eye(k)[y]
    np.testing.assert_allclose(
        softmax_cross_entropy(z, onehot, label_smoothing=ls),
        softmax_cross_entropy(z, y, label_smoothing=ls), rtol=1e-15,
    )
    g = softmax_cross_entropy_vjp(z, y, np.ones(5), label_smoothing=ls)
    np.testing.assert_allclose(g, np.exp(lp) - (onehot * (1 - ls) + ls / k), atol=1e-15)


# --------------------------------------------------------------------------
# distillation
# --------------------------------------------------------------------------


@settings(max_examples=20)
@given(case=logits_case(), temperature=st.sampled_from([0.5, 1.0, 2.0, 4.0]))
def test_distillation_vjp_fd(case, temperature):
    rng, s = case
    t = rng.normal(0, 3, s.shape)
    dloss = rng.standard_normal(s.shape[0])
    g = distillation_loss_vjp(s, t, dloss, temperature=temperature)
    fd = fd_grad(lambda v: distillation_loss(v, t, temperature=temperature), s, dloss)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_distillation_at_t1_is_cross_entropy_to_teacher_softmax():
    rng = np.random.default_rng(1)
    s, t = rng.normal(0, 2, (4, 5)), rng.normal(0, 2, (4, 5))
    pt = np.exp(t) / np.exp(t).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(
        distillation_loss(s, t, temperature=1.0), softmax_cross_entropy(s, pt), rtol=1e-14
    )


def test_distillation_temperature_scaling_relations():
    rng = np.random.default_rng(2)
    s, t = rng.normal(0, 2, (4, 5)), rng.normal(0, 2, (4, 5))
    dl = rng.standard_normal(4)
    for temp in (0.5, 2.0, 4.0):
        pt = softmax(t / temp)
        # Loss: T^2 * CE at the softened logits.
        np.testing.assert_allclose(
            distillation_loss(s, t, temperature=temp),
            temp**2 * softmax_cross_entropy(s / temp, pt), rtol=1e-13,
        )
        # Gradient: T^2 (loss factor) * 1/T (chain rule through s / T) = T.
        np.testing.assert_allclose(
            distillation_loss_vjp(s, t, dl, temperature=temp),
            temp**2 * (1 / temp) * softmax_cross_entropy_vjp(s / temp, pt, dl), rtol=1e-13,
        )
        # Differs from T^2 KL(p_t || p_s) by T^2 H(p_t), a student-independent constant.
        ps = softmax(s / temp)
        kl = (pt * (np.log(pt) - np.log(ps))).sum(axis=1)
        ent = -(pt * np.log(pt)).sum(axis=1)
        np.testing.assert_allclose(
            distillation_loss(s, t, temperature=temp) - temp**2 * kl, temp**2 * ent, rtol=1e-12
        )
    # Student equal to teacher: zero gradient.
    np.testing.assert_allclose(
        distillation_loss_vjp(t, t, np.ones(4), temperature=3.0), 0.0, atol=1e-15
    )


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------


def test_bad_inputs():
    z = np.zeros((3, 4))
    ce = softmax_cross_entropy
    with pytest.raises(ValueError, match=r"argument 'logits' must have rank 2.*rank 1"):
        ce(np.zeros(4), np.array([0]))
    with pytest.raises(TypeError, match=r"argument 'logits'.*floating dtype.*int"):
        ce(np.zeros((3, 4), dtype=int), np.array([0, 1, 2]))
    zn = z.copy()
    zn[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"argument 'logits' must be finite.*\(1, 2\)"):
        ce(zn, np.array([0, 1, 2]))
    with pytest.raises(
        ValueError,
        match=r"argument 'labels' must be class indices in \[0, 4\).*4 at",
    ):
        ce(z, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"argument 'labels' must be class indices.*-1"):
        ce(z, np.array([0, -1, 1]))
    with pytest.raises(
        ValueError,
        match=r"argument 'labels' \(integer class indices\) must have shape \(3,\)",
    ):
        ce(z, np.array([0, 1]))
    with pytest.raises(TypeError, match=r"argument 'labels'.*got dtype bool"):
        ce(z, np.array([True, False, True]))
    with pytest.raises(ValueError, match=r"argument 'labels' rows must sum to 1.*row 1"):
        ce(z, np.array([[1, 0, 0, 0], [0.5, 0.4, 0, 0], [0, 0, 0, 1.0]]))
    with pytest.raises(ValueError, match=r"argument 'labels' must be probabilities >= 0.*\(0, 1\)"):
        ce(z, np.array([[1.5, -0.5, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]]))
    with pytest.raises(
        ValueError,
        match=r"argument 'labels' \(probability rows\) must have shape \(3, 4\)",
    ):
        ce(z, np.eye(3))
    with pytest.raises(ValueError, match=r"argument 'label_smoothing' must be in \[0.0, 1.0\]"):
        ce(z, np.array([0, 1, 2]), label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"argument 'dloss' must have shape \(3\)"):
        softmax_cross_entropy_vjp(z, np.array([0, 1, 2]), np.zeros(4))
    with pytest.raises(ValueError, match=r"argument 'temperature' must be in \(0.0, inf\]"):
        distillation_loss(z, z, temperature=0.0)
    with pytest.raises(TypeError, match=r"argument 'temperature' must be a real number"):
        distillation_loss(z, z, temperature="2")
    with pytest.raises(ValueError, match=r"argument 'teacher_logits' must have the same shape"):
        distillation_loss(z, np.zeros((3, 5)), temperature=2.0)
    with pytest.raises(ValueError, match=r"softmax: argument 'z' must be finite"):
        softmax(np.array([0.0, np.inf]))
    with pytest.raises(
        ValueError,
        match=r"log_softmax_vjp: argument 'dy' must have the same shape",
    ):
        log_softmax_vjp(np.zeros(3), np.zeros(2))


def test_float32_mode_keeps_float32():
    from refbasis.precision import float32_mode

    z = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    with float32_mode():
        loss = softmax_cross_entropy(z, np.array([0, 1, 3]), label_smoothing=0.1)
        g = distillation_loss_vjp(z, z[::-1], np.ones(3, np.float32), temperature=2.0)
    assert loss.dtype == np.float32 and g.dtype == np.float32
    np.testing.assert_allclose(
        loss, softmax_cross_entropy(z, np.array([0, 1, 3]), label_smoothing=0.1), rtol=1e-5
    )

"""JAX backend ops against the NumPy oracle (highest tier, float32 tolerances).

Forward values and ``jax.vjp`` cotangent maps are compared with the oracle's
hand-written forward and VJP, fed the same float32-rounded inputs. The
per-example convolutions (grouped and vmap) are also compared with their loop
twin. Shapes come from small fixed menus so jit compiles are shared.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

jax = pytest.importorskip("jax")
jnp = jax.numpy

from conformance.backends.jax_backend import basis as jbasis  # noqa: E402
from conformance.backends.jax_backend import ops as jops  # noqa: E402
from conformance.backends.jax_backend import train as jtrain  # noqa: E402

# Oracle modules by path: refbasis.ops re-exports functions named like its
# modules (refbasis.ops.dense is the function once the package is imported).
rdrop = importlib.import_module("refbasis.basis.basis_dropout")
rcoef = importlib.import_module("refbasis.basis.coefficients")
rmix = importlib.import_module("refbasis.basis.mixing")
rsyn = importlib.import_module("refbasis.basis.synthesis")
ract = importlib.import_module("refbasis.ops.activations")
rconv = importlib.import_module("refbasis.ops.conv")
rdense = importlib.import_module("refbasis.ops.dense")
rloss = importlib.import_module("refbasis.ops.losses")
rnorm = importlib.import_module("refbasis.ops.norm")
rpool = importlib.import_module("refbasis.ops.pool")
rse = importlib.import_module("refbasis.ops.squeeze_excite")

pytestmark = pytest.mark.jax

RTOL, ATOL = 2e-5, 2e-5


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def close(a, b, rtol=RTOL, atol=ATOL):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * scale)


# ---------------------------------------------------------------------------
# Convolutions
# ---------------------------------------------------------------------------

PADS = ["SAME", "VALID", ((1, 0), (0, 2))]


@pytest.mark.parametrize("impl", ["grouped", "vmap"])
@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("stride,padding", [(1, "SAME"), (2, "SAME"), (2, ((1, 0), (0, 2)))])
def test_per_example_conv_equals_loop_of_convs(impl, depthwise, stride, padding):
    rng = np.random.default_rng(0)
    b, c = 3, 4
    x = f32(rng, b, 7, 6, c)
    groups = c if depthwise else 2
    cout = c if depthwise else 6
    w = f32(rng, b, 3, 3, c // groups, cout)
    fn = jops.PER_EXAMPLE_IMPLS[impl]
    got = jax.jit(lambda x, w: fn(x, w, stride=stride, padding=padding, groups=groups))(x, w)
    want = jops.conv2d_per_example_naive(x, w, stride=stride, padding=padding, groups=groups)
    close(got, want, 1e-6, 1e-6)
    # and the oracle agrees with both
    close(got, rconv.conv2d(x, w, stride=stride, padding=padding, groups=groups))
    # gradients of the two forms agree too (both are differentiable programs)
    dy = f32(rng, *got.shape)
    _, vjp = jax.vjp(lambda x, w: fn(x, w, stride=stride, padding=padding, groups=groups), x, w)
    dx, dw = vjp(dy)
    rdx, rdw = rconv.conv2d_vjp(x, w, dy, stride=stride, padding=padding, groups=groups)
    close(dx, rdx)
    close(dw, rdw)


def test_per_example_1x1_equals_loop_of_convs():
    rng = np.random.default_rng(13)
    x = f32(rng, 3, 5, 4, 6)
    w = f32(rng, 3, 1, 1, 6, 7)
    want = jops.conv2d_per_example_naive(x, w)
    close(jops.conv2d_per_example_1x1(x, w), want, 1e-6, 1e-6)
    close(jops.conv2d(x, w), want, 1e-6, 1e-6)  # the default dispatch takes this path
    with pytest.raises(ValueError, match="needs a 1x1 kernel, stride 1"):
        jops.conv2d_per_example_1x1(x, w, stride=2)


def test_depthwise_shifted_equals_loop_of_convs():
    """The shifted-sum depthwise kernel against the loop twin of per-example convs."""
    rng = np.random.default_rng(12)
    x = f32(rng, 3, 9, 8, 5)
    w = f32(rng, 3, 5, 5, 1, 5)
    for stride, padding in ((1, "SAME"), (2, "SAME"), (2, "VALID"), (1, ((2, 0), (1, 3)))):
        got = jops.depthwise_conv2d_shifted(x, w, stride=stride, padding=padding)
        want = jops.conv2d_per_example_naive(x, w, stride=stride, padding=padding, groups=5)
        close(got, want, 1e-6, 1e-6)


def test_depthwise_rejects_unknown_impl():
    x = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="argument 'impl' must be one of"):
        jops.depthwise_conv2d(x, np.zeros((3, 3, 1, 2), np.float32), impl="fft")


def test_per_example_conv_rejects_wrong_batch():
    x = np.zeros((2, 5, 5, 3), np.float32)
    w = np.zeros((3, 3, 3, 3, 4), np.float32)
    with pytest.raises(ValueError, match="'w' is a per-example kernel and must have batch 2"):
        jops.conv2d_per_example_grouped(x, w)


@settings(max_examples=8)
@given(seed=st.integers(0, 2**31 - 1), stride=st.sampled_from([1, 2]),
       padding=st.sampled_from(PADS), k=st.sampled_from([1, 3]),
       groups=st.sampled_from([1, 2]))
def test_conv2d_matches_oracle(seed, stride, padding, k, groups):
    rng = np.random.default_rng(seed)
    x = f32(rng, 2, 6, 5, 4)
    w = f32(rng, k, k, 4 // groups, 6)
    y, vjp = jax.vjp(lambda x, w: jops.conv2d(x, w, stride=stride, padding=padding,
                                              groups=groups), x, w)
    close(y, rconv.conv2d(x, w, stride=stride, padding=padding, groups=groups))
    dy = f32(rng, *y.shape)
    dx, dw = vjp(dy)
    rdx, rdw = rconv.conv2d_vjp(x, w, dy, stride=stride, padding=padding, groups=groups)
    close(dx, rdx)
    close(dw, rdw)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1), stride=st.sampled_from([1, 2]),
       k=st.sampled_from([3, 5]), per_example=st.booleans(),
       impl=st.sampled_from(jops.DEPTHWISE_IMPLS), padding=st.sampled_from(PADS))
def test_depthwise_matches_oracle(seed, stride, k, per_example, impl, padding):
    rng = np.random.default_rng(seed)
    x = f32(rng, 2, 7, 7, 3)
    w = f32(rng, *((2,) if per_example else ()), k, k, 1, 3)
    y, vjp = jax.vjp(lambda x, w: jops.depthwise_conv2d(x, w, stride=stride, padding=padding,
                                                        impl=impl), x, w)
    close(y, rconv.depthwise_conv2d(x, w, stride=stride, padding=padding))
    dy = f32(rng, *y.shape)
    dx, dw = vjp(dy)
    rdx, rdw = rconv.depthwise_conv2d_vjp(x, w, dy, stride=stride, padding=padding)
    close(dx, rdx)
    close(dw, rdw)


@pytest.mark.parametrize("n,k,s", [(7, 3, 2), (8, 3, 2), (8, 5, 2), (5, 1, 1), (1, 5, 1)])
def test_resolve_padding_matches_oracle(n, k, s):
    for p in ("SAME", "VALID"):
        assert jops.resolve_padding(p, n, k, s) == rconv.resolve_padding(p, n, k, s)


def test_resolve_padding_rejects_unknown_name():
    with pytest.raises(ValueError, match="argument 'padding' must be one of"):
        jops.resolve_padding("same", 4, 3, 1)


# ---------------------------------------------------------------------------
# BatchNorm, activations, pooling, dense, SE
# ---------------------------------------------------------------------------


@settings(max_examples=6)
@given(seed=st.integers(0, 2**31 - 1), train=st.booleans(), per_example=st.booleans())
def test_batch_norm_matches_oracle(seed, train, per_example):
    rng = np.random.default_rng(seed)
    x = f32(rng, 3, 4, 4, 5, scale=2.0) + 1.0
    pshape = (3, 5) if per_example else (5,)
    g, b = f32(rng, *pshape), f32(rng, *pshape)
    mm = f32(rng, 5)
    mv = np.abs(f32(rng, 5)) + 0.5
    fwd = jax.jit(lambda x, g, b: jops.batch_norm(x, g, b, mm, mv, train=train,
                                                  eps=1e-3, decay=0.997), )
    (y, nm, nv), vjp = jax.vjp(lambda x, g, b: fwd(x, g, b), x, g, b)
    ry, rnm, rnv = rnorm.batch_norm(x, g, b, mm, mv, train=train, eps=1e-3, decay=0.997)
    close(y, ry)
    close(nm, rnm)
    close(nv, rnv)
    dy = f32(rng, *y.shape)
    dx, dg, db = vjp((jnp.asarray(dy), jnp.zeros_like(nm), jnp.zeros_like(nv)))
    rdx, rdg, rdb = rnorm.batch_norm_vjp(x, g, b, mm, mv, dy, train=train, eps=1e-3)
    close(dx, rdx, 1e-4, 1e-4)
    close(dg, rdg, 1e-4, 1e-4)
    close(db, rdb)


@pytest.mark.parametrize("name", jops.ACTIVATIONS)
def test_activations_match_oracle_including_kinks(name):
    rng = np.random.default_rng(1)
    kinks = np.array([-3.0, 0.0, 3.0, 6.0, -6.0, 2.5], np.float32)
    x = np.concatenate([f32(rng, 40, scale=4.0), kinks])
    y, vjp = jax.vjp(lambda x: jops.apply_activation(name, x), x)
    close(y, ract.apply_activation(name, x))
    dy = f32(rng, x.size)
    # subgradients at the kinks must agree exactly (both follow jax.nn)
    close(vjp(dy)[0], ract.apply_activation_vjp(name, x, dy), 1e-6, 1e-6)


def test_pool_dense_match_oracle():
    rng = np.random.default_rng(2)
    x = f32(rng, 2, 3, 4, 5)
    y, vjp = jax.vjp(jops.global_avg_pool, x)
    close(y, rpool.global_avg_pool(x))
    dy = f32(rng, 2, 5)
    close(vjp(dy)[0], rpool.global_avg_pool_vjp(x, dy))
    for per_example in (False, True):
        xd = f32(rng, 3, 4)
        w = f32(rng, 3, 4, 6) if per_example else f32(rng, 4, 6)
        b = f32(rng, 3, 6) if per_example else f32(rng, 6)
        y, vjp = jax.vjp(jops.dense, xd, w, b)
        close(y, rdense.dense(xd, w, b))
        dy = f32(rng, 3, 6)
        got = vjp(dy)
        want = rdense.dense_vjp(xd, w, dy, has_bias=True, per_example_bias=per_example)
        for a, r in zip(got, want, strict=True):
            close(a, r)


@pytest.mark.parametrize("per_example", [False, True])
def test_squeeze_excite_matches_oracle(per_example):
    rng = np.random.default_rng(3)
    x = f32(rng, 2, 4, 4, 6)
    lead = (2,) if per_example else ()
    w1, b1 = f32(rng, *lead, 6, 3), f32(rng, *lead, 3)
    w2, b2 = f32(rng, *lead, 3, 6), f32(rng, *lead, 6)
    y, vjp = jax.vjp(jops.squeeze_excite, x, w1, b1, w2, b2)
    close(y, rse.squeeze_excite(x, w1, b1, w2, b2))
    dy = f32(rng, *y.shape)
    for a, r in zip(vjp(dy), rse.squeeze_excite_vjp(x, w1, b1, w2, b2, dy), strict=True):
        close(a, r)


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------


@settings(max_examples=6)
@given(seed=st.integers(0, 2**31 - 1), ls=st.sampled_from([0.0, 0.1]),
       soft=st.booleans())
def test_cross_entropy_matches_oracle(seed, ls, soft):
    rng = np.random.default_rng(seed)
    z = f32(rng, 4, 7, scale=3.0)
    if soft:
        labels = rloss.softmax(f32(rng, 4, 7)).astype(np.float32)
        labels = (labels / labels.sum(-1, keepdims=True)).astype(np.float32)
    else:
        labels = rng.integers(0, 7, size=4)
    y, vjp = jax.vjp(lambda z: jops.softmax_cross_entropy(z, jnp.asarray(labels),
                                                          label_smoothing=ls), z)
    close(y, rloss.softmax_cross_entropy(z, labels, label_smoothing=ls))
    d = f32(rng, 4)
    close(vjp(d)[0], rloss.softmax_cross_entropy_vjp(z, labels, d, label_smoothing=ls))


def test_distillation_and_softmax_match_oracle():
    rng = np.random.default_rng(4)
    zs, zt = f32(rng, 3, 5, scale=2.0), f32(rng, 3, 5, scale=2.0)
    y, vjp = jax.vjp(lambda z: jops.distillation_loss(z, zt, temperature=2.0), zs)
    close(y, rloss.distillation_loss(zs, zt, temperature=2.0))
    d = f32(rng, 3)
    close(vjp(d)[0], rloss.distillation_loss_vjp(zs, zt, d, temperature=2.0))
    close(jops.softmax(zs), rloss.softmax(zs))
    close(jops.log_softmax(zs), rloss.log_softmax(zs))


# ---------------------------------------------------------------------------
# BasisNet pieces
# ---------------------------------------------------------------------------


def test_synthesis_and_coefficients_match_oracle():
    rng = np.random.default_rng(5)
    bases = f32(rng, 4, 3, 3, 2, 5)
    alpha = np.abs(f32(rng, 6, 4))
    y, vjp = jax.vjp(jbasis.synthesize, bases, alpha)
    close(y, rsyn.synthesize(bases, alpha))
    close(y, jbasis.synthesize_naive(bases, alpha), 1e-6, 1e-6)
    dw = f32(rng, *y.shape)
    for a, r in zip(vjp(dw), rsyn.synthesize_vjp(bases, alpha, dw), strict=True):
        close(a, r)
    feats, k, b = f32(rng, 3, 8), f32(rng, 8, 2 * 4), f32(rng, 8)
    for method in jbasis.NORMALIZATIONS:
        (a, z), vjp = jax.vjp(lambda f, k, b, m=method: jbasis.coefficient_head(
            f, k, b, num_layers=2, num_bases=4, normalization=m), feats, k, b)
        ra, rz = rcoef.coefficient_head(feats, k, b, num_layers=2, num_bases=4,
                                        normalization=method)
        close(a, ra)
        close(z, rz)
        da = f32(rng, 3, 2, 4)
        got = vjp((jnp.asarray(da), jnp.zeros_like(z)))
        want = rcoef.coefficient_head_vjp(feats, k, b, da, num_layers=2, num_bases=4,
                                          normalization=method)
        for g, r in zip(got, want, strict=True):
            close(g, r)


def test_mixing_and_basis_dropout_match_oracle():
    rng = np.random.default_rng(6)
    alpha = rcoef.normalize_coefficients(f32(rng, 3, 2, 5)).astype(np.float32)
    for eps in (0.0, 0.3, 1.0):
        y, vjp = jax.vjp(lambda a, e=eps: jbasis.epsilon_mix(a, e), alpha)
        close(y, rmix.epsilon_mix(alpha, eps))
        d = f32(rng, *alpha.shape)
        close(vjp(d)[0], rmix.epsilon_mix_vjp(alpha, eps, d))
    mask = rdrop.basis_dropout_mask(3, 2, 5, 0.4, np.random.default_rng(7), mode="example_layer")
    y, vjp = jax.vjp(lambda a: jbasis.apply_basis_dropout(a, mask), alpha)
    close(y, rdrop.apply_basis_dropout(alpha, mask))
    d = f32(rng, *alpha.shape)
    close(vjp(d)[0], rdrop.apply_basis_dropout_vjp(alpha, mask, d))


# ---------------------------------------------------------------------------
# Optimizer, schedules, EMA, clipping
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", jtrain.RMSPROP_VARIANTS)
def test_rmsprop_matches_oracle(variant):
    from refbasis.train import rmsprop as rrms
    rng = np.random.default_rng(8)
    params = {"a.kernel": f32(rng, 3, 4), "b.bias": f32(rng, 4)}
    rstate = rrms.rmsprop_init(params, variant)
    jstate = jtrain.rmsprop_init({k: jnp.asarray(v) for k, v in params.items()}, variant)
    rp, jp = dict(params), {k: jnp.asarray(v) for k, v in params.items()}
    for step in range(3):
        grads = {k: f32(rng, *v.shape) for k, v in params.items()}
        rp, rstate = rrms.rmsprop_update(rp, grads, rstate, 0.01 * (step + 1), epsilon=1e-3,
                                         variant=variant)
        jp, jstate = jtrain.rmsprop_update(jp, grads, jstate, 0.01 * (step + 1), epsilon=1e-3,
                                           variant=variant)
    for k in params:
        close(jp[k], rp[k])
        close(jstate["ms"][k], rstate["ms"][k])
        close(jstate["mom"][k], rstate["mom"][k])


def test_schedules_ema_clipping_match_oracle():
    from refbasis.train import clipping as rclip
    from refbasis.train import ema as rema
    from refbasis.train import schedules as rsch
    steps = np.array([0, 1, 5, 9, 10, 11, 23, 40, 100])
    for decay_from in ("start", "warmup_end"):
        kw = dict(steps_per_epoch=2.5, base_lr=0.1, warmup_epochs=4.0, decay_epochs=1.5,
                  decay_rate=0.9, decay_from=decay_from)
        close(jtrain.learning_rate(jnp.asarray(steps), **kw), rsch.learning_rate(steps, **kw),
              1e-6, 1e-7)
    kw = dict(hold_steps=10, decay_steps=30)
    close(jtrain.mixing_epsilon(jnp.asarray(steps), **kw), rsch.mixing_epsilon(steps, **kw),
          1e-6, 1e-7)
    rng = np.random.default_rng(9)
    shadow, params = {"w": f32(rng, 5)}, {"w": f32(rng, 5)}
    for n in (None, 0, 7):
        close(jtrain.ema_update(shadow, params, decay=0.99, num_updates=n)["w"],
              rema.ema_update(shadow, params, decay=0.99, num_updates=n)["w"], 1e-6, 1e-6)
    grads = {"a": f32(rng, 4, 3), "b": f32(rng, 7)}
    for clip in (0.1, 100.0):
        got, gn = jtrain.clip_by_global_norm(grads, clip)
        want, rn = rclip.clip_by_global_norm(grads, clip)
        close(gn, rn)
        for k in grads:
            close(got[k], want[k])


# ---------------------------------------------------------------------------
# Import without jax
# ---------------------------------------------------------------------------


def test_import_without_jax_fails_with_one_clear_line():
    code = (
        "import sys; sys.modules['jax'] = None\n"
        "try:\n"
        "    import conformance.backends.jax_backend\n"
        "except ImportError as e:\n"
        "    print('ERR:' + str(e))\n"
    )
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=60)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("ERR:")]
    assert len(lines) == 1, out.stdout + out.stderr
    msg = lines[0]
    assert "\n" not in msg
    assert "pip install 'refbasis[jax]'" in msg
    assert "jax" in msg

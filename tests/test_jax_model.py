"""JAX network forward/backward against the NumPy oracle on tiny configs.

The JAX gradients are autodiff (``jax.vjp``); the oracle's are hand-written.
Agreement within float32 tolerances at the highest tier is the point. One
compiled function per (arch, mode) is shared across the tests of this module.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

from conformance.backends.jax_backend import model as jmodel  # noqa: E402
from refbasis import model as rmodel  # noqa: E402
from refbasis.arch import feature_map_sizes, get_arch  # noqa: E402

pytestmark = pytest.mark.jax

ARCHES = {
    "v3s": dict(name="mobilenet_v3_small", multiplier=0.35, resolution=64, num_classes=5),
    "v2": dict(name="mobilenet_v2", multiplier=0.35, resolution=64, num_classes=5),
}


def _arch(key):
    kw = dict(ARCHES[key])
    return get_arch(kw.pop("name"), **kw)


def _close(a, b, rtol=1e-4, atol=1e-4, what=""):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    scale = max(1.0, float(np.max(np.abs(b))))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * scale, err_msg=what)


@functools.cache
def _compiled(key, train):
    arch = _arch(key)

    def fn(params, x, dlogits, mask):
        tp = {k: v for k, v in params.items() if not k.endswith(jmodel.STATE_SUFFIXES)}
        sp = {k: v for k, v in params.items() if k.endswith(jmodel.STATE_SUFFIXES)}

        def f(tp, x):
            return jmodel.forward(arch, {**sp, **tp}, x, train=train, dropout_mask=mask)
        y, pull, aux = jax.vjp(f, tp, x, has_aux=True)
        gp, gx = pull(dlogits)
        return y, aux, gp, gx
    return jax.jit(fn)


def _case(key, train, seed):
    arch = _arch(key)
    rng = np.random.default_rng(seed)
    params = {k: v.astype(np.float32) for k, v in rmodel.init_params(arch, rng).items()}
    # Non-trivial BN state so eval mode is tested away from the identity.
    for k in params:
        if k.endswith(".bn.moving_mean"):
            params[k] = (0.1 * rng.standard_normal(params[k].shape)).astype(np.float32)
        if k.endswith(".bn.moving_var"):
            params[k] = rng.uniform(0.5, 2.0, params[k].shape).astype(np.float32)
    x = rng.standard_normal((4, arch.resolution, arch.resolution, 3)).astype(np.float32)
    dlogits = rng.standard_normal((4, arch.num_classes)).astype(np.float32)
    keep = 1.0 - arch.dropout_rate
    mask = ((rng.random((4, arch.feature_channels)) < keep) / keep).astype(np.float32)
    return arch, params, x, dlogits, mask


@pytest.mark.parametrize("key,train", [("v3s", True), ("v2", False)])
def test_model_forward_backward_matches_oracle(key, train):
    arch, params, x, dlogits, mask = _case(key, train, seed=11)
    y, aux, gp, gx = _compiled(key, train)(params, x, dlogits, mask)
    rlogits, cache = rmodel.forward(arch, params, x, train=train,
                                    dropout_mask=mask if train else None)
    _close(y, rlogits, what="logits")
    for layer, act in cache.activations.items():
        _close(aux["activations"][layer], act, what=f"act/{layer}")
    _close(aux["features"], cache.features, what="features")
    if train:
        for k, v in cache.new_state.items():
            _close(aux["new_state"][k], v, what=f"state/{k}")
    grads = rmodel.backward(arch, params, cache, dlogits)
    _close(gx, grads["input"], what="grad/input")
    assert set(gp) == set(grads) - {"input"}
    for k, v in gp.items():
        # Train-mode BN gradients go through the batch statistics (a small
        # batch of 2 makes them ill-conditioned), hence the looser bound.
        _close(v, grads[k], rtol=5e-4, atol=5e-4, what=f"grad/{k}")


def test_layer_forward_chains_to_forward():
    arch, params, x, dlogits, mask = _case("v3s", True, seed=3)
    _, aux, _, _ = _compiled("v3s", True)(params, x, dlogits, mask)
    names = arch.layer_names()
    # A sample of layers (eager dispatch is slow): first, a SE block, pool, logits.
    for layer in ("stem", "blocks.4", "head.pool", "head.logits"):
        i = names.index(layer)
        h = jnp.asarray(x) if i == 0 else aux["activations"][names[i - 1]]
        y, _ = jmodel.layer_forward(arch, params, layer, h, train=True, dropout_mask=mask)
        _close(y, aux["activations"][layer], 1e-5, 1e-5, what=layer)


def test_per_example_weights_match_oracle():
    """A block with per-example (synthesised) kernels, both conv implementations."""
    arch = _arch("v3s")
    rng = np.random.default_rng(5)
    params = {k: v.astype(np.float32) for k, v in rmodel.init_params(arch, rng).items()}
    idx = 10
    spec = arch.block(idx)
    bp = {}
    for k, v in params.items():
        if not k.startswith(f"blocks.{idx}."):
            continue
        if k.endswith(jmodel.STATE_SUFFIXES):
            bp[k] = v
        else:  # per-example copy with a perturbation per example
            bp[k] = (v[None] + 0.1 * rng.standard_normal((4,) + v.shape)).astype(np.float32)
    h = feature_map_sizes(arch)[spec.name][0]
    x = rng.standard_normal((4, h, h, spec.in_channels)).astype(np.float32)
    ry, _ = rmodel.block_forward(arch, bp, idx, x, train=True)
    dy = rng.standard_normal(ry.shape).astype(np.float32)
    rg = rmodel.block_backward(arch, bp, idx, x, dy, train=True)
    for impl in ("grouped", "vmap"):
        def f(p, x, impl=impl):
            return jmodel.block_forward(arch, p, idx, x, train=True, per_example=impl)[0]
        y, pull = jax.vjp(f, bp, x)
        gp, gx = pull(dy)
        _close(y, ry, what=f"{impl} y")
        _close(gx, rg["input"], what=f"{impl} dx")
        for k, v in gp.items():
            if not k.endswith(jmodel.STATE_SUFFIXES):
                _close(v, rg[k], rtol=5e-4, atol=5e-4, what=f"{impl} {k}")

"""CondConv baseline (Yang et al. 2019; paper Sec. 4.5): routing, forward, backward."""

import numpy as np
import pytest

from refbasis.arch import get_arch
from refbasis.basis.condconv import (
    condconv_backward,
    condconv_expert_names,
    condconv_forward,
    condconv_routing,
    condconv_routing_naive,
    condconv_routing_vjp,
    init_condconv,
)
from refbasis.model.network import forward

K = 5
ARCH = get_arch("mobilenet_v3_large", multiplier=0.35, resolution=32, num_classes=K)
BLOCKS = (13, 15)


def central_fd(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


def test_routing_matches_naive_and_fd():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 3, 4))
    k, b = rng.normal(size=(4, 3)), rng.normal(size=3)
    r = condconv_routing(x, k, b)
    np.testing.assert_allclose(r, condconv_routing_naive(x, k, b), rtol=1e-12)
    assert np.all((r > 0) & (r < 1))
    dr = rng.normal(size=r.shape)
    dx, dk, db = condconv_routing_vjp(x, k, b, dr)
    np.testing.assert_allclose(dx, central_fd(lambda v: np.sum(condconv_routing(v, k, b) * dr),
                                              x), atol=1e-8)
    np.testing.assert_allclose(dk, central_fd(lambda v: np.sum(condconv_routing(x, v, b) * dr),
                                              k), atol=1e-8)
    np.testing.assert_allclose(db, central_fd(lambda v: np.sum(condconv_routing(x, k, v) * dr),
                                              b), atol=1e-8)


def test_param_names_and_equivalence_to_plain_model():
    params = init_condconv(ARCH, BLOCKS, 3, np.random.default_rng(1))
    names = condconv_expert_names(ARCH, BLOCKS)
    assert names == [f"blocks.{i}.{k}.kernel" for i in BLOCKS
                     for k in ("expand", "depthwise", "project")]
    for n in names:
        assert n not in params and params["experts." + n].shape[0] == 3
    assert params["routing.blocks.13.kernel"].shape == (ARCH.block(13).in_channels, 3)
    # Routing saturated to exactly 0 for experts 1, 2 and exactly 1 for expert 0
    # makes each CondConv block the plain block with expert 0's kernels.
    for i in BLOCKS:
        params[f"routing.blocks.{i}.kernel"][:] = 0.0
        params[f"routing.blocks.{i}.bias"][:] = [800.0, -800.0, -800.0]
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3))
    got, cache = condconv_forward(ARCH, params, x, blocks=BLOCKS, train=False)
    np.testing.assert_array_equal(cache.routing[13], np.tile([1.0, 0.0, 0.0], (2, 1)))
    plain = {k: v for k, v in params.items() if not k.startswith(("experts.", "routing."))}
    plain.update({n: params["experts." + n][0] for n in names})
    want, _ = forward(ARCH, plain, x, train=False)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("train", [False, True])
def test_condconv_gradients_match_finite_differences(train):
    rng = np.random.default_rng(3)
    params = init_condconv(ARCH, BLOCKS, 3, rng)
    b = 6 if train else 2
    x = rng.normal(size=(b, 32, 32, 3))
    dlogits = rng.normal(size=(b, K))
    mask = rng.integers(0, 2, (b, ARCH.feature_channels)) / 0.8 if train else None

    def f(p):
        return float(np.sum(condconv_forward(ARCH, p, p["input"], blocks=BLOCKS, train=train,
                                             dropout_mask=mask)[0] * dlogits))

    logits, cache = condconv_forward(ARCH, params, x, blocks=BLOCKS, train=train,
                                     dropout_mask=mask)
    grads = condconv_backward(ARCH, params, cache, dlogits)
    trainable = [k for k in params if not k.endswith((".moving_mean", ".moving_var"))]
    assert set(grads) == set(trainable) | {"input"}
    full = dict(params, input=x)
    names = ["routing.blocks.13.kernel", "routing.blocks.15.bias",
             "experts.blocks.13.expand.kernel", "experts.blocks.15.depthwise.kernel",
             "experts.blocks.15.project.kernel", "blocks.13.depthwise.bn.gamma",
             "blocks.14.project.kernel", "blocks.2.expand.kernel", "stem.kernel", "input"]
    for name in names:
        v = rng.normal(size=full[name].shape)
        an = float(np.sum(grads[name] * v))
        tried = []
        for h in (1e-5, 1e-6, 1e-7):  # piecewise-smooth network: see test_basis_two_stage
            pp, pm = dict(full), dict(full)
            pp[name] = full[name] + h * v
            pm[name] = full[name] - h * v
            tried.append((f(pp) - f(pm)) / (2 * h))
            if abs(tried[-1] - an) <= 1e-5 * max(1.0, abs(an)):
                break
        else:
            raise AssertionError(f"{name}: analytic {an}, central differences {tried}")


def test_condconv_bad_input():
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match=r"argument 'blocks' must lie in \[1, 15\].*\[14, 16\]"):
        init_condconv(ARCH, (14, 16), 2, rng)
    with pytest.raises(ValueError, match=r"argument 'num_experts' must be >= 1, got 0"):
        init_condconv(ARCH, (14,), 0, rng)
    with pytest.raises(ValueError, match=r"'blocks' must be strictly increasing"):
        init_condconv(ARCH, (15, 14), 2, rng)
    with pytest.raises(ValueError, match=r"'blocks' must name at least one block"):
        condconv_expert_names(ARCH, ())
    with pytest.raises(ValueError, match=r"condconv_routing: argument 'kernel' must have shape "
                                         r"\(4, \*\)"):
        condconv_routing(np.ones((1, 2, 2, 4)), np.ones((3, 2)), np.ones(2))
    params = init_condconv(ARCH, (14, 15), 2, rng)
    with pytest.raises(ValueError, match=r"expert entry 'experts.blocks.14.*outside 'blocks'"):
        condconv_forward(ARCH, params, np.ones((1, 32, 32, 3)), blocks=(15,), train=False)
    del params["routing.blocks.15.bias"]
    with pytest.raises(ValueError, match=r"missing 'routing.blocks.15.bias'"):
        condconv_forward(ARCH, params, np.ones((1, 32, 32, 3)), blocks=(14, 15), train=False)

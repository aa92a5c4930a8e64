"""Single-layer tests of refbasis.model: every layer kind run alone (as the
conformance harness runs it on a golden's input), forward against its own
backward via central finite differences in float64, with shared and
per-example parameters, in train and eval mode.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refbasis.arch import get_arch
from refbasis.model import init_params, layer_backward, layer_forward, layer_param_shapes
from refbasis.model.blocks import layer_io_shapes
from refbasis.model.params import per_example_capable
from refbasis.ops.dropout import dropout_mask
from refbasis.precision import float32_mode

BATCH = 3

# (arch name, layer, what it covers)
LAYERS = [
    ("mobilenet_v2", "stem", "3x3 s2 conv + BN + relu6"),
    ("mobilenet_v2", "blocks.1", "no expansion (t=1), not residual"),
    ("mobilenet_v2", "blocks.2", "expand, stride 2"),
    ("mobilenet_v2", "blocks.3", "expand, residual"),
    ("mobilenet_v2", "head.conv", "1x1 conv + BN + relu6"),
    ("mobilenet_v2", "head.pool", "global average pool"),
    ("mobilenet_v2", "head.logits", "dropout + dense"),
    ("mobilenet_v3_small", "blocks.1", "no expansion, SE, stride 2"),
    ("mobilenet_v3_small", "blocks.4", "expand, 5x5 stride 2, SE, hard_swish"),
    ("mobilenet_v3_small", "blocks.5", "expand, 5x5, SE, residual"),
    ("mobilenet_v3_small", "head.pre_logits", "dense + bias + hard_swish"),
    ("mobilenet_v3_large", "blocks.1", "no expansion, residual, relu"),
    ("mobilenet_v3_large", "blocks.12", "expand, SE, residual, hard_swish"),
]


def _arch(name):
    # Resolution 64 keeps the late layers off 1x1 maps (train-mode BN over
    # 3 numbers per channel is too curved for float64 differences).
    return get_arch(name, multiplier=0.35, resolution=64, num_classes=10)


def _setup(name, layer, seed, per_example, train):
    a = _arch(name)
    rng = np.random.default_rng(seed)
    full = init_params(a, rng)
    p = {}
    for n in layer_param_shapes(a, layer):
        v = full[n]
        if n.endswith(".bn.gamma"):
            v = 1.0 + 0.2 * rng.standard_normal(v.shape)
        elif n.endswith((".bn.beta", ".bn.moving_mean", ".bias")):
            v = 0.1 * rng.standard_normal(v.shape)
        elif n.endswith(".bn.moving_var"):
            v = rng.uniform(0.5, 1.5, v.shape)
        if per_example and per_example_capable(n) and rng.random() < 0.7:
            v = v[None] + 0.05 * rng.standard_normal((BATCH,) + v.shape)
        p[n] = v
    in_shape, _ = layer_io_shapes(a, layer, batch=BATCH)
    x = rng.standard_normal(in_shape)
    mask = None
    if layer == "head.logits" and train:
        mask = dropout_mask((BATCH, a.feature_channels), a.dropout_rate, rng)
    return a, p, x, mask, rng


@settings(max_examples=4)
@given(seed=st.integers(0, 2**16), per_example=st.booleans(), train=st.booleans())
@pytest.mark.parametrize("name,layer,what", LAYERS, ids=[f"{n}-{la}" for n, la, _ in LAYERS])
def test_layer_backward_matches_finite_differences(name, layer, what, seed, per_example, train):
    a, p, x, mask, rng = _setup(name, layer, seed, per_example, train)
    y, state = layer_forward(a, p, layer, x, train=train, dropout_mask=mask)
    assert y.shape == layer_io_shapes(a, layer, batch=BATCH)[1]
    assert set(state) == {n for n in p if not per_example_capable(n)}
    dy = rng.standard_normal(y.shape)
    g = layer_backward(a, p, layer, x, dy, train=train, dropout_mask=mask)
    assert set(g) == {n for n in p if per_example_capable(n)} | {"input"}, what

    def loss(pp, xx):
        return float(np.sum(layer_forward(a, pp, layer, xx, train=train,
                                          dropout_mask=mask)[0] * dy))

    eps = 1e-6
    noise = 1e3 * np.finfo(float).eps * max(1.0, abs(loss(p, x))) / eps
    for n in list(g):
        base = x if n == "input" else p[n]
        assert g[n].shape == base.shape, n
        scale = float(np.max(np.abs(g[n])))
        for _ in range(2):
            idx = tuple(int(rng.integers(d)) for d in base.shape)
            vals = []
            for s in (1.0, -1.0):
                pert = base.copy()
                pert[idx] += s * eps
                vals.append(loss(p, pert) if n == "input" else loss({**p, n: pert}, x))
            fd = (vals[0] - vals[1]) / (2 * eps)
            assert abs(g[n][idx] - fd) <= 1e-5 * abs(fd) + 1e-6 * scale + noise, (
                f"{name} {layer} ({what}) train={train} {n}{idx}: {g[n][idx]!r} vs FD {fd!r}")


@pytest.mark.parametrize("name,layer,what", LAYERS[:4] + LAYERS[7:10],
                         ids=[f"{n}-{la}" for n, la, _ in LAYERS[:4] + LAYERS[7:10]])
def test_float32_mode_tracks_float64(name, layer, what):
    a, p, x, mask, rng = _setup(name, layer, 5, True, True)
    y64, _ = layer_forward(a, p, layer, x, train=True, dropout_mask=mask)
    # A random cotangent: a constant one would give dx = 0 exactly after a
    # train-mode BN (its outputs sum to a constant per channel).
    dy = rng.standard_normal(y64.shape)
    with float32_mode():
        y32, _ = layer_forward(a, p, layer, x, train=True, dropout_mask=mask)
        g32 = layer_backward(a, p, layer, x, dy, train=True, dropout_mask=mask)
    g64 = layer_backward(a, p, layer, x, dy, train=True, dropout_mask=mask)
    assert y32.dtype == np.float32 and g32["input"].dtype == np.float32, what
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4 * np.abs(y64).max())
    np.testing.assert_allclose(g32["input"], g64["input"], rtol=1e-3,
                               atol=1e-4 * np.abs(g64["input"]).max())


def test_pre_logits_layer_absent_in_mobilenet_v2():
    a = _arch("mobilenet_v2")
    with pytest.raises(ValueError, match=r"'layer' must be one of"):
        layer_forward(a, {}, "head.pre_logits", np.zeros((1, a.head_channels)), train=False)
    from refbasis.model import pre_logits_forward
    with pytest.raises(ValueError, match=r"has no head\.pre_logits layer"):
        pre_logits_forward(a, {}, np.zeros((1, a.head_channels)))


def test_dropout_mask_only_for_the_logits_layer():
    a = _arch("mobilenet_v2")
    p = init_params(a, np.random.default_rng(0))
    x = np.zeros((1, 64, 64, 3))
    with pytest.raises(ValueError, match=r"only applies to layer 'head\.logits'"):
        layer_forward(a, p, "stem", x, train=True, dropout_mask=np.ones((1, 1280)))
    with pytest.raises(ValueError, match=r"'dy' must have shape \(1, 32, 32, 16\)"):
        layer_backward(a, p, "stem", x, np.ones((1, 32, 32, 8)), train=True)

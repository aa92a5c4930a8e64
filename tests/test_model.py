"""Whole-network tests of refbasis.model: parameter trees, forward/backward
against central finite differences (float64), per-example weights, BN moving
averages and argument errors.

Small configurations keep the suite fast: multiplier 0.35, resolution 32 (the
smallest valid one: total stride 32), 10 classes, batch 3.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refbasis.arch import feature_map_sizes, get_arch
from refbasis.model import (
    ForwardCache,
    backward,
    block_backward,
    block_forward,
    forward,
    init_params,
    layer_backward,
    layer_forward,
    param_shapes,
    trainable_names,
)
from refbasis.model.params import per_example_capable
from refbasis.ops.activations import apply_activation
from refbasis.ops.conv import conv2d, depthwise_conv2d
from refbasis.ops.dropout import dropout_mask
from refbasis.ops.norm import batch_norm
from refbasis.ops.squeeze_excite import squeeze_excite

ARCHS = ("mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2")
BATCH = 3
RES = 32


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------


def small_arch(name, **kw):
    return get_arch(name, multiplier=0.35, resolution=RES, num_classes=10, **kw)


def randomized_params(arch, seed):
    """init_params with BN parameters and moving statistics moved away from
    their (1, 0, 0, 1) defaults so that every BN term is exercised."""
    rng = np.random.default_rng(seed)
    p = init_params(arch, rng)
    for n, v in p.items():
        if n.endswith(".bn.gamma"):
            p[n] = 1.0 + 0.2 * rng.standard_normal(v.shape)
        elif n.endswith((".bn.beta", ".bn.moving_mean", ".bias")):
            p[n] = 0.1 * rng.standard_normal(v.shape)
        elif n.endswith(".bn.moving_var"):
            p[n] = rng.uniform(0.5, 1.5, v.shape)
    return p


def images(arch, seed, batch=BATCH):
    return np.random.default_rng(seed).standard_normal((batch, arch.resolution,
                                                        arch.resolution, 3))


def first_block(arch, *, expand=None, se=None, residual=None):
    for b in arch.blocks:
        if ((expand is None or b.expand == expand) and (se is None or (b.se_channels is not None)
                                                        == se)
                and (residual is None or b.residual == residual)):
            return b.index
    raise LookupError("no such block")


def sampled_names(arch):
    """Parameters from every layer type, and the input."""
    names = ["stem.kernel", "stem.bn.gamma", "stem.bn.beta"]
    i = first_block(arch, expand=True)
    names += [f"blocks.{i}.expand.kernel", f"blocks.{i}.expand.bn.gamma",
              f"blocks.{i}.expand.bn.beta"]
    i = first_block(arch, expand=False)
    names += [f"blocks.{i}.depthwise.kernel", f"blocks.{i}.depthwise.bn.gamma"]
    i = first_block(arch, residual=True, expand=True)
    names += [f"blocks.{i}.project.kernel", f"blocks.{i}.project.bn.beta",
              f"blocks.{i}.depthwise.kernel"]
    last = len(arch.blocks)
    names += [f"blocks.{last}.project.kernel", f"blocks.{last}.depthwise.bn.beta"]
    if any(b.se_channels for b in arch.blocks):
        i = first_block(arch, se=True, expand=True)
        names += [f"blocks.{i}.se.reduce.kernel", f"blocks.{i}.se.reduce.bias",
                  f"blocks.{i}.se.expand.kernel", f"blocks.{i}.se.expand.bias"]
    names += ["head.conv.kernel", "head.conv.bn.gamma", "head.logits.kernel",
              "head.logits.bias"]
    if arch.pre_logits_channels is not None:
        names += ["head.pre_logits.kernel", "head.pre_logits.bias"]
    return names + ["input"]


def scalar_loss(arch, params, x, train, mask, proj, fproj=None):
    logits, cache = forward(arch, params, x, train=train, dropout_mask=mask)
    loss = float(np.sum(logits * proj))
    if fproj is not None:
        loss += float(np.sum(cache.features * fproj))
    return loss


def check_fd(arch, params, x, train, mask, grads, names, rng, *, n_coords=3, fproj=None,
             proj=None, eps=1e-6):
    """Compare grads[name] at random coordinates with central differences.

    The absolute slack covers the FD rounding error (~ 1e-16 * |loss| / eps)
    where a gradient is truly ~0 (e.g. a BN beta followed by a train-mode BN).
    """
    noise = 1e3 * np.finfo(float).eps * max(1.0, abs(scalar_loss(arch, params, x, train, mask,
                                                                  proj, fproj))) / eps
    for name in names:
        base = x if name == "input" else params[name]
        g = grads[name]
        assert g.shape == base.shape, (name, g.shape, base.shape)
        scale = max(float(np.max(np.abs(g))), 1e-12)
        for _ in range(n_coords):
            idx = tuple(int(rng.integers(d)) for d in base.shape)
            vals = []
            for sign in (1.0, -1.0):
                pert = base.copy()
                pert[idx] += sign * eps
                if name == "input":
                    vals.append(scalar_loss(arch, params, pert, train, mask, proj, fproj))
                else:
                    q = dict(params)
                    q[name] = pert
                    vals.append(scalar_loss(arch, q, x, train, mask, proj, fproj))
            fd = (vals[0] - vals[1]) / (2 * eps)
            assert abs(g[idx] - fd) <= 1e-5 * abs(fd) + 1e-6 * scale + noise, (
                f"{arch.name} train={train} {name}{idx}: analytic {g[idx]!r} vs FD {fd!r} "
                f"(max |grad| {scale:.3g})")


def make_mask(arch, seed, batch=BATCH):
    return dropout_mask((batch, arch.feature_channels), arch.dropout_rate,
                        np.random.default_rng(seed))


# ---------------------------------------------------------------------------
# Parameter trees
# ---------------------------------------------------------------------------


def test_param_names_and_shapes_follow_the_contract():
    a = small_arch("mobilenet_v3_small")
    p = init_params(a, np.random.default_rng(0))
    assert list(p) == list(param_shapes(a))
    assert p["stem.kernel"].shape == (3, 3, 3, a.stem_channels)
    for b in a.blocks:
        pre = f"blocks.{b.index}"
        assert (f"{pre}.expand.kernel" in p) == b.expand
        if b.expand:
            assert p[f"{pre}.expand.kernel"].shape == (1, 1, b.in_channels, b.expanded_channels)
        assert p[f"{pre}.depthwise.kernel"].shape == (b.kernel, b.kernel, 1,
                                                      b.expanded_channels)
        assert (f"{pre}.se.reduce.kernel" in p) == (b.se_channels is not None)
        if b.se_channels:
            assert p[f"{pre}.se.reduce.kernel"].shape == (b.expanded_channels, b.se_channels)
            assert p[f"{pre}.se.reduce.bias"].shape == (b.se_channels,)
            assert p[f"{pre}.se.expand.kernel"].shape == (b.se_channels, b.expanded_channels)
            assert p[f"{pre}.se.expand.bias"].shape == (b.expanded_channels,)
        assert p[f"{pre}.project.kernel"].shape == (1, 1, b.expanded_channels, b.out_channels)
        for s in ("gamma", "beta", "moving_mean", "moving_var"):
            assert p[f"{pre}.project.bn.{s}"].shape == (b.out_channels,)
    assert p["head.conv.kernel"].shape == (1, 1, a.blocks[-1].out_channels, a.head_channels)
    assert p["head.pre_logits.kernel"].shape == (a.head_channels, a.pre_logits_channels)
    assert p["head.logits.kernel"].shape == (a.pre_logits_channels, 10)
    assert "head.pre_logits.kernel" not in init_params(small_arch("mobilenet_v2"),
                                                       np.random.default_rng(0))
    t = trainable_names(p)
    assert not any(n.endswith(("moving_mean", "moving_var")) for n in t)
    assert len(t) == len(p) - 2 * sum(n.endswith(".bn.gamma") for n in p)


def test_init_is_seeded_truncated_he_normal():
    a = small_arch("mobilenet_v3_small")
    p = init_params(a, np.random.default_rng(7))
    q = init_params(a, np.random.default_rng(7))
    assert all(np.array_equal(p[n], q[n]) for n in p)
    w = p["head.pre_logits.kernel"]  # 200 x 1024 entries, fan_in 200
    std = math.sqrt(2.0 / a.head_channels)
    assert abs(w.std() / std - 1.0) < 0.02
    assert np.max(np.abs(w)) <= 2.0 * std / 0.87962566103423978 + 1e-12
    dw = p["blocks.4.depthwise.kernel"]  # fan_in = 5 * 5
    assert np.max(np.abs(dw)) <= 2.0 * math.sqrt(2.0 / 25) / 0.87962566103423978 + 1e-12
    assert np.all(p["stem.bn.gamma"] == 1) and np.all(p["stem.bn.beta"] == 0)
    assert np.all(p["stem.bn.moving_mean"] == 0) and np.all(p["stem.bn.moving_var"] == 1)
    assert np.all(p["head.logits.bias"] == 0)


# ---------------------------------------------------------------------------
# Gradients against central finite differences (float64)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", ARCHS)
def test_network_gradients_match_finite_differences(name, train):
    # MobileNetV2 at resolution 32 runs blocks 14-17 and head.conv on 1x1 maps:
    # in train mode each of those ~13 BNs normalises 3 numbers per channel and
    # can amplify by up to 1/sqrt(bn_eps), so at the default eps 1e-3 the loss
    # is too curved for a float64 central difference (the analytic gradient is
    # matched only as the step goes to 1e-8). bn_eps=0.1 keeps every formula
    # and makes the point well conditioned.
    a = small_arch(name, bn_eps=0.1) if (train and name == "mobilenet_v2") else small_arch(name)
    params = randomized_params(a, 1)
    x = images(a, 2)
    mask = make_mask(a, 3) if train else None
    rng = np.random.default_rng(4)
    proj = rng.standard_normal((BATCH, 10))
    logits, cache = forward(a, params, x, train=train, dropout_mask=mask)
    grads = backward(a, params, cache, proj)
    assert set(grads) == set(trainable_names(params)) | {"input"}
    check_fd(a, params, x, train, mask, grads, sampled_names(a), rng, proj=proj)


def test_dfeatures_adds_the_feature_cotangent():
    a = small_arch("mobilenet_v3_small")
    params = randomized_params(a, 5)
    x = images(a, 6)
    mask = make_mask(a, 7)
    rng = np.random.default_rng(8)
    proj = rng.standard_normal((BATCH, 10))
    fproj = rng.standard_normal((BATCH, a.feature_channels))
    _, cache = forward(a, params, x, train=True, dropout_mask=mask)
    grads = backward(a, params, cache, proj, dfeatures=fproj)
    names = ["stem.kernel", "blocks.6.se.reduce.kernel", "head.pre_logits.bias", "input"]
    check_fd(a, params, x, True, mask, grads, names, rng, proj=proj, fproj=fproj)
    # head.logits does not see dfeatures (it is downstream of the features).
    g0 = backward(a, params, cache, proj)
    np.testing.assert_array_equal(grads["head.logits.kernel"], g0["head.logits.kernel"])


# ---------------------------------------------------------------------------
# Per-example weights (BasisNet synthesis)
# ---------------------------------------------------------------------------


def _per_example(params, batch, names=None):
    return {n: (np.repeat(v[None], batch, axis=0)
                if per_example_capable(n) and (names is None or n in names) else v)
            for n, v in params.items()}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_repeated_per_example_weights_equal_shared(train):
    a = small_arch("mobilenet_v3_small")
    params = randomized_params(a, 9)
    x = images(a, 10)
    mask = make_mask(a, 11) if train else None
    proj = np.random.default_rng(12).standard_normal((BATCH, 10))
    lo, c = forward(a, params, x, train=train, dropout_mask=mask)
    g = backward(a, params, c, proj)
    pe = _per_example(params, BATCH)
    lo_pe, c_pe = forward(a, pe, x, train=train, dropout_mask=mask)
    g_pe = backward(a, pe, c_pe, proj)
    np.testing.assert_allclose(lo_pe, lo, rtol=1e-12, atol=1e-12)
    for n in c.new_state:
        np.testing.assert_allclose(c_pe.new_state[n], c.new_state[n], rtol=1e-12, atol=1e-14)
    for n in trainable_names(params):
        assert g_pe[n].shape == (BATCH,) + params[n].shape, n
        np.testing.assert_allclose(g_pe[n].sum(axis=0), g[n], rtol=1e-9,
                                   atol=1e-11 * max(1.0, np.abs(g[n]).max()), err_msg=n)
    np.testing.assert_allclose(g_pe["input"], g["input"], rtol=1e-9, atol=1e-13)


def test_distinct_per_example_weights_route_to_their_example():
    # Eval mode: examples are independent, so example b under per-example
    # weights W[b] must equal a batch-1 forward with shared weights W[b].
    a = small_arch("mobilenet_v2")
    x = images(a, 13)
    trees = [randomized_params(a, 20 + b) for b in range(BATCH)]
    stats = {n: v for n, v in trees[0].items() if not per_example_capable(n)}
    pe = {n: (np.stack([t[n] for t in trees]) if per_example_capable(n) else stats[n])
          for n in trees[0]}
    lo, _ = forward(a, pe, x, train=False)
    for b in range(BATCH):
        shared = {**trees[b], **stats}
        lb, _ = forward(a, shared, x[b:b + 1], train=False)
        np.testing.assert_allclose(lo[b], lb[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_per_example_gradients_match_finite_differences(train):
    a = small_arch("mobilenet_v3_small")
    base = randomized_params(a, 30)
    rng = np.random.default_rng(31)
    # Mixed tree: the SE/late blocks and head per example (as BasisNet's
    # per-basis layers), the rest shared; per-example values all distinct.
    late = [n for n in base if per_example_capable(n)
            and (n.startswith(("blocks.10.", "blocks.11.", "head.")) or n.startswith("stem.bn"))]
    params = _per_example(base, BATCH, late)
    for n in late:
        params[n] = params[n] + 0.05 * rng.standard_normal(params[n].shape)
    x = images(a, 32)
    mask = make_mask(a, 33) if train else None
    proj = rng.standard_normal((BATCH, 10))
    _, cache = forward(a, params, x, train=train, dropout_mask=mask)
    grads = backward(a, params, cache, proj)
    names = ["stem.bn.gamma", "blocks.10.expand.kernel", "blocks.11.depthwise.kernel",
             "blocks.11.se.reduce.bias", "blocks.11.se.expand.kernel",
             "blocks.11.project.bn.gamma", "head.conv.kernel", "head.pre_logits.kernel",
             "head.logits.bias", "blocks.5.depthwise.kernel", "input"]
    check_fd(a, params, x, train, mask, grads, names, rng, proj=proj)


# ---------------------------------------------------------------------------
# BN state, determinism, dropout
# ---------------------------------------------------------------------------


def test_train_mode_moving_averages_follow_the_closed_form():
    a = small_arch("mobilenet_v3_small")
    p = randomized_params(a, 40)
    x = images(a, 41)
    _, c = forward(a, p, x, train=True, rng=np.random.default_rng(42))
    moving = [n for n in p if not per_example_capable(n)]
    assert sorted(c.new_state) == sorted(moving)
    d = a.bn_decay

    def check(prefix, pre_bn):
        mu = pre_bn.mean(axis=(0, 1, 2))
        var = pre_bn.var(axis=(0, 1, 2))  # biased (code-map: reference choice)
        np.testing.assert_allclose(c.new_state[f"{prefix}.bn.moving_mean"],
                                   d * p[f"{prefix}.bn.moving_mean"] + (1 - d) * mu,
                                   rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c.new_state[f"{prefix}.bn.moving_var"],
                                   d * p[f"{prefix}.bn.moving_var"] + (1 - d) * var,
                                   rtol=1e-12, atol=1e-14)

    check("stem", conv2d(x, p["stem.kernel"], stride=2))
    # blocks.2: expand (1x1) then depthwise (3x3, stride 2); recompute by hand.
    h = c.activations["blocks.1"]
    e = conv2d(h, p["blocks.2.expand.kernel"])
    check("blocks.2.expand", e)
    eb = (e - e.mean((0, 1, 2))) / np.sqrt(e.var((0, 1, 2)) + a.bn_eps)
    eb = np.maximum(p["blocks.2.expand.bn.gamma"] * eb + p["blocks.2.expand.bn.beta"], 0.0)
    check("blocks.2.depthwise", depthwise_conv2d(eb, p["blocks.2.depthwise.kernel"], stride=2))
    check("head.conv", conv2d(c.activations[f"blocks.{len(a.blocks)}"], p["head.conv.kernel"]))


def test_eval_mode_uses_moving_statistics_and_is_deterministic():
    a = small_arch("mobilenet_v3_large")
    p = randomized_params(a, 50)
    x = images(a, 51)
    lo1, c1 = forward(a, p, x, train=False)
    lo2, _ = forward(a, p, x, train=False, rng=np.random.default_rng(99))
    np.testing.assert_array_equal(lo1, lo2)
    for n, v in c1.new_state.items():
        np.testing.assert_array_equal(v, p[n])
    assert c1.dropout_mask is None
    # stem by hand: hard_swish(gamma * (conv - mm) / sqrt(mv + eps) + beta).
    z = conv2d(x, p["stem.kernel"], stride=2)
    n = (z - p["stem.bn.moving_mean"]) / np.sqrt(p["stem.bn.moving_var"] + a.bn_eps)
    n = p["stem.bn.gamma"] * n + p["stem.bn.beta"]
    np.testing.assert_allclose(c1.activations["stem"], n * np.clip(n + 3, 0, 6) / 6,
                               rtol=1e-12, atol=1e-12)
    # Examples are independent in eval mode (no batch statistics).
    lo_first, _ = forward(a, p, x[:1], train=False)
    np.testing.assert_allclose(lo_first[0], lo1[0], rtol=1e-11, atol=1e-12)


def test_train_mode_dropout_from_rng_equals_explicit_mask():
    a = small_arch("mobilenet_v2")
    p = randomized_params(a, 60)
    x = images(a, 61)
    lo_rng, c_rng = forward(a, p, x, train=True, rng=np.random.default_rng(62))
    mask = make_mask(a, 62)
    lo_mask, c_mask = forward(a, p, x, train=True, dropout_mask=mask)
    np.testing.assert_array_equal(c_rng.dropout_mask, mask)
    np.testing.assert_array_equal(lo_rng, lo_mask)
    assert np.any(mask == 0)
    # logits = (features * mask) @ W + b, features = pooled head.conv output (MV2).
    np.testing.assert_array_equal(c_mask.features, c_mask.activations["head.pool"])
    want = (c_mask.features * mask) @ p["head.logits.kernel"] + p["head.logits.bias"]
    np.testing.assert_allclose(lo_mask, want, rtol=1e-12, atol=1e-12)


def test_zero_dropout_rate_needs_no_rng():
    a = small_arch("mobilenet_v3_small", dropout_rate=0.0)
    p = randomized_params(a, 70)
    lo, c = forward(a, p, images(a, 71), train=True)
    assert c.dropout_mask is None
    np.testing.assert_array_equal(c.features, c.activations["head.pre_logits"])
    assert list(c.activations) == list(a.layer_names())
    np.testing.assert_array_equal(lo, c.activations["head.logits"])


# ---------------------------------------------------------------------------
# Single layers (conformance harness entry points)
# ---------------------------------------------------------------------------


def test_layers_run_alone_reproduce_the_network():
    a = small_arch("mobilenet_v3_small")
    p = randomized_params(a, 80)
    x = images(a, 81)
    mask = make_mask(a, 82)
    proj = np.random.default_rng(83).standard_normal((BATCH, 10))
    _, c = forward(a, p, x, train=True, dropout_mask=mask)
    g = backward(a, p, c, proj)
    names = a.layer_names()
    inputs = (x,) + tuple(c.activations.values())[:-1]
    dy = proj
    for layer, x_in in zip(reversed(names), reversed(inputs), strict=True):
        m = mask if layer == "head.logits" else None
        y, _ = layer_forward(a, p, layer, x_in, train=True, dropout_mask=m)
        np.testing.assert_array_equal(y, c.activations[layer])
        lg = layer_backward(a, p, layer, x_in, dy, train=True, dropout_mask=m)
        for n, v in lg.items():
            if n != "input":
                np.testing.assert_array_equal(v, g[n])
        dy = lg["input"]
    np.testing.assert_array_equal(dy, g["input"])


def test_block_structure_se_after_depthwise_activation_linear_project():
    # Restate Howard et al. 2019 Fig. 4 with the ops, for a block with expand,
    # SE and residual, and compare with block_forward.
    a = small_arch("mobilenet_v3_small")
    p = randomized_params(a, 90)
    i = first_block(a, expand=True, se=True, residual=True)
    s = a.block(i)
    h = feature_map_sizes(a)[f"blocks.{i}"][0]
    x = np.random.default_rng(91).standard_normal((2, h, h, s.in_channels))
    pre = f"blocks.{i}"

    def bn(z, n):
        return batch_norm(z, p[f"{n}.bn.gamma"], p[f"{n}.bn.beta"], p[f"{n}.bn.moving_mean"],
                          p[f"{n}.bn.moving_var"], train=True, eps=a.bn_eps)[0]

    e = apply_activation(s.activation, bn(conv2d(x, p[f"{pre}.expand.kernel"]), f"{pre}.expand"))
    d = apply_activation(s.activation, bn(depthwise_conv2d(e, p[f"{pre}.depthwise.kernel"],
                                                           stride=s.stride),
                                          f"{pre}.depthwise"))
    g = squeeze_excite(d, p[f"{pre}.se.reduce.kernel"], p[f"{pre}.se.reduce.bias"],
                       p[f"{pre}.se.expand.kernel"], p[f"{pre}.se.expand.bias"],
                       gate="hard_sigmoid", inner="relu")
    want = bn(conv2d(g, p[f"{pre}.project.kernel"]), f"{pre}.project") + x
    y, state = block_forward(a, p, i, x, train=True)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    assert set(state) == {f"{pre}.{m}.bn.{k}" for m in ("expand", "depthwise", "project")
                          for k in ("moving_mean", "moving_var")}
    # block_backward alone against finite differences on the input.
    dy = np.random.default_rng(92).standard_normal(y.shape)
    gx = block_backward(a, p, i, x, dy, train=True)["input"]
    rng = np.random.default_rng(93)
    for _ in range(4):
        idx = tuple(int(rng.integers(n)) for n in x.shape)
        xp, xm = x.copy(), x.copy()
        xp[idx] += 1e-6
        xm[idx] -= 1e-6
        fd = (np.sum(block_forward(a, p, i, xp, train=True)[0] * dy)
              - np.sum(block_forward(a, p, i, xm, train=True)[0] * dy)) / 2e-6
        assert abs(gx[idx] - fd) <= 1e-5 * abs(fd) + 1e-7


# ---------------------------------------------------------------------------
# Argument errors
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup():
    a = small_arch("mobilenet_v3_small")
    return a, init_params(a, np.random.default_rng(0)), images(a, 1)


def test_missing_parameter_is_named(setup):
    a, p, x = setup
    q = dict(p)
    del q["blocks.4.se.expand.kernel"]
    with pytest.raises(ValueError, match=r"missing 'blocks\.4\.se\.expand\.kernel'.*\(8, 32\)"):
        forward(a, q, x, train=False)
    with pytest.raises(ValueError, match=r"missing 'blocks\.4\.se\.expand\.kernel'"):
        block_forward(a, q, 4, np.zeros((1, 4, 4, 8)), train=False)


def test_misshapen_parameter_names_expected_and_received(setup):
    a, p, x = setup
    q = dict(p)
    q["blocks.5.depthwise.kernel"] = np.zeros((3, 3, 1, 96))
    with pytest.raises(ValueError, match=r"params\['blocks\.5\.depthwise\.kernel'\]' must have "
                       r"shape \(5, 5, 1, 96\).*\(B=3, 5, 5, 1, 96\).*got \(3, 3, 1, 96\)"):
        forward(a, q, x, train=False)
    q = dict(p)  # per-example batch must match x
    q["head.logits.bias"] = np.zeros((2, 10))
    with pytest.raises(ValueError, match=r"head\.logits\.bias.*\(B=3, 10\).*got \(2, 10\)"):
        forward(a, q, x, train=False)
    q = dict(p)  # moving statistics are never per example
    q["stem.bn.moving_mean"] = np.zeros((3, a.stem_channels))
    with pytest.raises(ValueError, match=r"stem\.bn\.moving_mean.*never per example"):
        forward(a, q, x, train=False)
    q = dict(p)
    q["stem.kernel"] = p["stem.kernel"].astype(np.int64)
    with pytest.raises(TypeError, match=r"params\['stem\.kernel'\].*floating"):
        forward(a, q, x, train=False)
    q = dict(p)
    q["blocks.99.expand.kernel"] = np.zeros((1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"does not use.*blocks\.99\.expand\.kernel"):
        forward(a, q, x, train=False)


def test_bad_input_shapes(setup):
    a, p, x = setup
    with pytest.raises(ValueError, match=r"'x' must have shape \(B, 32, 32, 3\).*got \(3, 64, "):
        forward(a, p, np.zeros((3, 64, 64, 3)), train=False)
    with pytest.raises(ValueError, match=r"'x' must have shape \(B, 32, 32, 3\).*got \(3, 32, 32, "
                       r"1\)"):
        forward(a, p, np.zeros((3, 32, 32, 1)), train=False)
    with pytest.raises(ValueError, match=r"'x' must have shape"):
        forward(a, p, np.zeros((32, 32, 3)), train=False)
    with pytest.raises(TypeError, match=r"'x' must have a floating dtype"):
        forward(a, p, np.zeros((3, 32, 32, 3), dtype=np.int32), train=False)
    with pytest.raises(ValueError, match=r"block_forward: argument 'x' must have shape "
                       r"\(B, 4, 4, 8\) for blocks\.4 .*its input is 4x4.*got \(1, 16, 16, 8\)"):
        block_forward(a, p, 4, np.zeros((1, 16, 16, 8)), train=False)
    with pytest.raises(ValueError, match=r"'index' must be in \[1, 11\]"):
        block_forward(a, p, 12, np.zeros((1, 4, 4, 8)), train=False)
    with pytest.raises(ValueError, match=r"'layer' must be one of"):
        layer_forward(a, p, "blocks.0", x, train=False)
    with pytest.raises(TypeError, match=r"'train' must be a bool"):
        forward(a, p, x, train=1)


def test_dropout_arguments(setup):
    a, p, x = setup
    with pytest.raises(ValueError, match=r"dropout_rate=0\.2 needs argument 'rng'.*"
                       r"'dropout_mask' of shape \(3, 1024\), got neither"):
        forward(a, p, x, train=True)
    with pytest.raises(ValueError, match=r"'dropout_mask' must be None in eval mode"):
        forward(a, p, x, train=False, dropout_mask=np.ones((3, 1024)))
    with pytest.raises(ValueError, match=r"'dropout_mask' must have shape \(3, 1024\), got "
                       r"\(3, 200\)"):
        forward(a, p, x, train=True, dropout_mask=np.ones((3, 200)))
    with pytest.raises(ValueError, match=r"either argument 'rng' or 'dropout_mask'"):
        forward(a, p, x, train=True, dropout_mask=np.ones((3, 1024)),
                rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"'rng' must be a numpy.random.Generator"):
        forward(a, p, x, train=True, rng=0)


def test_backward_arguments(setup):
    a, p, x = setup
    lo, c = forward(a, p, x, train=False)
    with pytest.raises(ValueError, match=r"'dlogits' must have shape \(3, 10\), got \(3, 9\)"):
        backward(a, p, c, np.zeros((3, 9)))
    with pytest.raises(ValueError, match=r"'dfeatures' must have shape \(3, 1024\)"):
        backward(a, p, c, np.zeros((3, 10)), dfeatures=np.zeros((3, 200)))
    with pytest.raises(TypeError, match=r"'cache' must be the ForwardCache"):
        backward(a, p, {"activations": {}}, np.zeros((3, 10)))
    other = small_arch("mobilenet_v2")
    with pytest.raises(ValueError, match=r"'cache' holds layers"):
        backward(other, init_params(other, np.random.default_rng(0)), c, np.zeros((3, 10)))
    assert isinstance(c, ForwardCache)


def test_init_params_arguments(setup):
    a, _, _ = setup
    with pytest.raises(TypeError, match=r"'rng' must be a numpy.random.Generator"):
        init_params(a, 0)
    with pytest.raises(TypeError, match=r"'arch' must be a refbasis.arch.Arch"):
        init_params("mobilenet_v2", np.random.default_rng(0))

"""Two-stage BasisNet: structural properties and float64 finite-difference gradients.

Tiny configuration: lightweight MV3-small 0.35x32, specialist MV3-large 0.35x32,
N = 3 bases, per-basis blocks L14-L15 (conv kernels), 5 classes.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refbasis.arch import get_arch
from refbasis.basis.config import BasisNetConfig
from refbasis.basis.early_exit import basisnet_predict, early_exit_predictions, top_probability
from refbasis.basis.two_stage import (
    basisnet_backward,
    basisnet_forward,
    basisnet_forward_naive,
    basisnet_param_shapes,
    basisnet_trainable_names,
    init_basisnet,
    joint_loss,
    light_forward,
    split_params,
    synthesize_specialist_params,
)
from refbasis.model.network import forward

K = 5
LIGHT = get_arch("mobilenet_v3_small", multiplier=0.35, resolution=32, num_classes=K)
SPEC = get_arch("mobilenet_v3_large", multiplier=0.35, resolution=32, num_classes=K)


def make_config(n=3, layers=(14, 15), **kw):
    return BasisNetConfig(light=LIGHT, specialist=SPEC, num_bases=n, per_basis_layers=layers,
                          **kw)


CFG = make_config()
PARAMS = init_basisnet(CFG, np.random.default_rng(0))


def images(seed, b=2):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, 32, 32, 3)), rng.normal(size=(b, 32, 32, 3))


def plain_specialist(params, cfg, basis):
    """A plain MobileNet tree: shared entries plus basis ``basis`` of every per-basis one."""
    tree = {k[len("specialist."):]: v for k, v in params.items() if k.startswith("specialist.")}
    for k, v in params.items():
        if k.startswith("bases."):
            tree[k[len("bases."):]] = v[basis]
    return tree


def test_param_tree_names_and_shapes():
    shapes = basisnet_param_shapes(CFG)
    assert list(PARAMS) == list(shapes)
    assert all(PARAMS[k].shape == s for k, s in shapes.items())
    assert PARAMS["coef.kernel"].shape == (LIGHT.feature_channels, 2 * 3)
    per = [k for k in PARAMS if k.startswith("bases.")]
    assert per == ["bases." + n for n in CFG.per_basis_param_names()]
    assert all(PARAMS[k].shape[0] == 3 for k in per)
    # Independent draws per basis.
    assert not np.allclose(PARAMS[per[0]][0], PARAMS[per[0]][1])
    assert "specialist.blocks.14.expand.kernel" not in PARAMS
    assert "specialist.blocks.14.expand.bn.moving_mean" in PARAMS
    assert "bases.blocks.14.expand.bn.moving_mean" not in basisnet_trainable_names(PARAMS)
    assert "specialist.blocks.14.expand.bn.moving_mean" not in basisnet_trainable_names(PARAMS)


@settings(max_examples=4)
@given(basis=st.integers(0, 2), seed=st.integers(0, 1000))
def test_one_hot_coefficients_reproduce_that_basis(basis, seed):
    xs = images(seed)[1]
    alpha = np.zeros((2, 2, 3))
    alpha[:, :, basis] = 1.0
    tree = synthesize_specialist_params(CFG, PARAMS, alpha)
    plain = plain_specialist(PARAMS, CFG, basis)
    for k in CFG.per_basis_param_names():
        np.testing.assert_array_equal(tree[k], np.broadcast_to(plain[k], (2,) + plain[k].shape))
    got, _ = forward(SPEC, tree, xs, train=False)
    want, _ = forward(SPEC, plain, xs, train=False)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@settings(max_examples=3)
@given(seed=st.integers(0, 1000), eps=st.floats(0, 1))
def test_single_basis_equals_plain_mobilenet(seed, eps):
    cfg = make_config(n=1)
    params = init_basisnet(cfg, np.random.default_rng(seed))
    xl, xs = images(seed)
    ll, sl, cache = basisnet_forward(cfg, params, xl, xs, train=False, eps=eps)
    np.testing.assert_allclose(cache.alpha, 1.0, rtol=1e-15)
    want_s, _ = forward(SPEC, plain_specialist(params, cfg, 0), xs, train=False)
    np.testing.assert_allclose(sl, want_s, rtol=1e-12, atol=1e-12)
    light = {k[len("light."):]: v for k, v in params.items() if k.startswith("light.")}
    want_l, _ = forward(LIGHT, light, xl, train=False)
    np.testing.assert_array_equal(ll, want_l)


@settings(max_examples=3)
@given(seed=st.integers(0, 1000))
def test_identical_bases_make_coefficients_irrelevant(seed):
    rng = np.random.default_rng(seed)
    params = dict(PARAMS)
    for k in params:
        if k.startswith("bases."):
            params[k] = np.broadcast_to(params[k][:1], params[k].shape).copy()
    xl, xs = images(seed)
    _, s1, c1 = basisnet_forward(CFG, params, xl, xs, train=False)
    params["coef.kernel"] = rng.normal(size=params["coef.kernel"].shape) * 3
    params["coef.bias"] = rng.normal(size=params["coef.bias"].shape)
    _, s2, c2 = basisnet_forward(CFG, params, xl, xs, train=False)
    assert not np.allclose(c1.alpha, c2.alpha)
    np.testing.assert_allclose(s1, s2, rtol=1e-11, atol=1e-12)


def test_train_forward_coefficient_chain_and_masks():
    xl, xs = images(3, b=4)
    mask = np.ones((4, 2, 3))
    mask[0, :, 0] = 0
    mask[2, :, [1, 2]] = 0
    ll, sl, c = basisnet_forward(CFG, PARAMS, xl, xs, train=True, eps=0.25, basis_mask=mask,
                                 light_dropout_mask=np.ones((4, LIGHT.feature_channels)),
                                 specialist_dropout_mask=np.ones((4, SPEC.feature_channels)))
    np.testing.assert_allclose(c.alpha_head.sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(c.alpha_mixed, 0.75 * c.alpha_head + 0.25 / 3, rtol=1e-12)
    np.testing.assert_allclose(c.alpha.sum(-1), 1.0, rtol=1e-12)
    assert np.all(c.alpha[mask == 0] == 0)
    np.testing.assert_array_equal(c.alpha[2, :, 0], 1.0)
    # The coefficients come from the light model's features through coef.*.
    z = c.features @ PARAMS["coef.kernel"] + PARAMS["coef.bias"]
    np.testing.assert_allclose(c.coef_logits, z.reshape(4, 2, 3), rtol=1e-12)
    assert set(c.new_state) >= {"light.stem.bn.moving_mean",
                                "specialist.blocks.15.project.bn.moving_var"}
    # Drawn masks: reproducible from the Generator, stored in the cache.
    r1 = basisnet_forward(CFG, PARAMS, xl, xs, train=True, rng=np.random.default_rng(9))[2]
    r2 = basisnet_forward(CFG, PARAMS, xl, xs, train=True, rng=np.random.default_rng(9))[2]
    np.testing.assert_array_equal(r1.basis_mask, r2.basis_mask)
    assert r1.basis_mask.shape == (4, 2, 3) and np.all(r1.basis_mask == r1.basis_mask[:, :1])
    assert basisnet_forward(CFG, PARAMS, xl, xs, train=False)[2].basis_mask is None


@pytest.mark.parametrize("normalization", ["softmax", "sigmoid", "none"])
def test_forward_matches_per_image_loop_twin(normalization):
    cfg = make_config(coefficient_normalization=normalization)
    params = init_basisnet(cfg, np.random.default_rng(21))
    xl, xs = images(22, b=3)
    ll, sl, c = basisnet_forward(cfg, params, xl, xs, train=False, eps=0.2)
    ll2, sl2, a2 = basisnet_forward_naive(cfg, params, xl, xs, eps=0.2)
    np.testing.assert_allclose(c.alpha, a2, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(ll, ll2, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(sl, sl2, rtol=1e-11, atol=1e-12)
    lf, af = light_forward(cfg, params, xl, eps=0.2)
    np.testing.assert_array_equal(lf, ll)
    np.testing.assert_array_equal(af, c.alpha)


def test_early_exit_inference_skips_specialist_consistently():
    xl, xs = images(30, b=6)
    ll, sl, _ = basisnet_forward(CFG, PARAMS, xl, xs, train=False)
    t = float(np.median(top_probability(ll)))
    pred, exited, ll2 = basisnet_predict(CFG, PARAMS, xl, xs, t)
    want_pred, want_exit = early_exit_predictions(ll, sl, t)
    np.testing.assert_array_equal(exited, want_exit)
    np.testing.assert_array_equal(pred, want_pred)
    assert 0 < exited.sum() < 6
    assert basisnet_predict(CFG, PARAMS, xl, xs, 0.0)[1].all()
    np.testing.assert_array_equal(basisnet_predict(CFG, PARAMS, xl, xs, 1.5)[0], sl.argmax(-1))


def _loss_fn(cfg, xl, xs, dl, ds, masks, eps):
    def f(params):
        ll, sl, _ = basisnet_forward(cfg, params, xl, xs, train=True, eps=eps, **masks)
        return float(np.sum(ll * dl) + np.sum(sl * ds))
    return f


def assert_directional_fd(f, params, name, v, analytic, *, rtol=1e-5):
    """Central differences along v in float64. The MobileNets are piecewise
    smooth (ReLU, hard-swish and hard-sigmoid kinks), so a step may cross a kink:
    the check passes if the difference quotient agrees at any of three
    decreasing steps (a wrong gradient agrees at none)."""
    tried = []
    for h in (1e-5, 1e-6, 1e-7):
        pp, pm = dict(params), dict(params)
        pp[name] = params[name] + h * v
        pm[name] = params[name] - h * v
        fd = (f(pp) - f(pm)) / (2 * h)
        tried.append(fd)
        if abs(fd - analytic) <= rtol * max(1.0, abs(analytic)):
            return
    raise AssertionError(f"{name}: analytic {analytic}, central differences {tried}")


@pytest.mark.parametrize("normalization", ["softmax", "sigmoid"])
def test_gradients_match_finite_differences(normalization):
    cfg = make_config(coefficient_normalization=normalization)
    rng = np.random.default_rng(11)
    params = init_basisnet(cfg, rng)
    params["coef.kernel"] = params["coef.kernel"] * 4  # non-trivial coefficients
    # Train mode (batch-statistics BN, basis dropout): batch 6 keeps the BN of
    # the 1x1 late feature maps well conditioned.
    b = 6
    xl, xs = images(12, b=b)
    dl, ds = rng.normal(size=(b, K)), rng.normal(size=(b, K))
    bmask = np.ones((b, 2, 3))
    bmask[0, :, 1] = 0
    bmask[3, :, [0, 2]] = 0
    masks = dict(basis_mask=bmask,
                 light_dropout_mask=rng.integers(0, 2, (b, LIGHT.feature_channels)) / 0.8,
                 specialist_dropout_mask=rng.integers(0, 2, (b, SPEC.feature_channels)) / 0.8)
    eps = 0.3
    f = _loss_fn(cfg, xl, xs, dl, ds, masks, eps)
    _, _, cache = basisnet_forward(cfg, params, xl, xs, train=True, eps=eps, **masks)
    grads = basisnet_backward(cfg, params, cache, dl, ds)
    assert set(grads) == set(basisnet_trainable_names(params)) | {"input.light",
                                                                  "input.specialist"}
    names = ["bases.blocks.14.expand.kernel", "bases.blocks.15.depthwise.kernel",
             "bases.blocks.15.project.kernel", "coef.kernel", "coef.bias",
             "light.stem.kernel", "light.blocks.4.depthwise.kernel",
             "light.head.pre_logits.kernel", "specialist.blocks.15.expand.bn.gamma",
             "specialist.blocks.2.project.kernel"]
    if normalization == "softmax":
        names += ["light.blocks.11.se.expand.bias", "light.head.logits.bias",
                  "specialist.head.logits.kernel", "specialist.blocks.14.se.reduce.kernel"]
    for name in names:
        v = rng.normal(size=params[name].shape)
        assert_directional_fd(f, params, name, v, float(np.sum(grads[name] * v)))
    # Individual coordinates of the coefficient head and of one basis.
    for name, idx in [("coef.kernel", (3, 4)), ("coef.bias", (1,)),
                      ("bases.blocks.14.project.kernel", (2, 0, 0, 5, 1))]:
        e = np.zeros(params[name].shape)
        e[idx] = 1.0
        assert_directional_fd(f, params, name, e, float(grads[name][idx]))


def test_gradient_wrt_inputs_and_eps_one_blocks_coefficient_gradient():
    rng = np.random.default_rng(5)
    xl, xs = images(6, b=2)
    dl, ds = rng.normal(size=(2, K)), rng.normal(size=(2, K))
    _, _, c = basisnet_forward(CFG, PARAMS, xl, xs, train=False, eps=1.0)
    g = basisnet_backward(CFG, PARAMS, c, np.zeros((2, K)), ds)
    # eps = 1: the coefficients are uniform whatever the head says -> no gradient.
    np.testing.assert_array_equal(g["coef.kernel"], 0.0)
    np.testing.assert_array_equal(g["light.stem.kernel"], 0.0)
    np.testing.assert_allclose(c.alpha, 1 / 3, rtol=1e-15)
    _, _, c = basisnet_forward(CFG, PARAMS, xl, xs, train=False, eps=0.1)
    g = basisnet_backward(CFG, PARAMS, c, dl, ds)

    def f(inputs):
        ll, sl, _ = basisnet_forward(CFG, PARAMS, inputs["input.light"],
                                     inputs["input.specialist"], train=False, eps=0.1)
        return float(np.sum(ll * dl) + np.sum(sl * ds))

    inputs = {"input.light": xl, "input.specialist": xs}
    for key in inputs:
        v = rng.normal(size=xl.shape)
        assert_directional_fd(f, inputs, key, v, float(np.sum(g[key] * v)))


def test_joint_loss_weights_and_gradient():
    cfg = make_config(light_loss_weight=0.5, specialist_loss_weight=2.0)
    rng = np.random.default_rng(7)
    zl, zs = rng.normal(size=(4, K)), rng.normal(size=(4, K))
    labels = np.array([0, 3, 4, 1])

    def ce(z):
        z = z - z.max(-1, keepdims=True)
        return -(z[np.arange(4), labels] - np.log(np.exp(z).sum(-1)))

    loss, dl, ds = joint_loss(cfg, zl, zs, labels)
    assert loss == pytest.approx(np.mean(0.5 * ce(zl) + 2.0 * ce(zs)), rel=1e-12)
    h = 1e-6
    for z, d, which in ((zl, dl, 0), (zs, ds, 1)):
        e = np.zeros_like(z)
        e[2, 3] = h
        args_p = [zl, zs]
        args_m = [zl, zs]
        args_p[which] = z + e
        args_m[which] = z - e
        fd = (joint_loss(cfg, *args_p, labels)[0] - joint_loss(cfg, *args_m, labels)[0]) / (2 * h)
        assert d[2, 3] == pytest.approx(fd, rel=1e-6)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

def test_bad_coefficients_for_synthesis():
    with pytest.raises(ValueError, match=r"argument 'alpha' must have shape \(B, 2, 3\).*"
                                         r"got \(2, 3, 3\)"):
        synthesize_specialist_params(CFG, PARAMS, np.full((2, 3, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"'alpha' must have shape \(B, 2, 3\).*got \(2, 3\)"):
        synthesize_specialist_params(CFG, PARAMS, np.full((2, 3), 1 / 3))
    bad = np.full((2, 2, 3), 1 / 3)
    bad[1, 0, 2] = -0.5
    with pytest.raises(ValueError, match=r"'alpha' must be non-negative.*-0.5 at index "
                                         r"\(1, 0, 2\)"):
        synthesize_specialist_params(CFG, PARAMS, bad)
    bad[1, 0, 2] = np.nan
    with pytest.raises(ValueError, match=r"'alpha' must be finite"):
        synthesize_specialist_params(CFG, PARAMS, bad)


def test_bad_config_and_params():
    with pytest.raises(ValueError, match=r"per_basis_layers.*<= 15.*got \(14, 16\)"):
        make_config(layers=(14, 16))
    with pytest.raises(ValueError, match=r"'per_basis_layers\[0\]' must be >= 1"):
        make_config(layers=(0, 3))
    with pytest.raises(ValueError, match=r"'num_bases' must be >= 1, got 0"):
        make_config(n=0)
    for rate in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"'basis_dropout_rate' must be in \[0.0, 1.0\)"):
            make_config(basis_dropout_rate=rate)
    p = dict(PARAMS)
    p["bases.blocks.13.expand.kernel"] = p["bases.blocks.14.expand.kernel"]
    with pytest.raises(ValueError, match=r"entries this BasisNet does not use"):
        split_params(CFG, p)
    p = dict(PARAMS)
    p["bases.blocks.14.expand.kernel"] = p["bases.blocks.14.expand.kernel"][:2]
    with pytest.raises(ValueError, match=r"params\['bases.blocks.14.expand.kernel'\]' must have "
                                         r"shape \(3, "):
        split_params(CFG, p)
    xl, xs = images(0)
    with pytest.raises(ValueError, match=r"'basis_mask' must be None in eval mode"):
        basisnet_forward(CFG, PARAMS, xl, xs, train=False, basis_mask=np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match=r"needs argument 'rng'"):
        basisnet_forward(CFG, PARAMS, xl, xs, train=True)
    with pytest.raises(ValueError, match=r"'x_specialist' must have the batch size"):
        basisnet_forward(CFG, PARAMS, xl, xs[:1], train=False)
    with pytest.raises(ValueError, match=r"'eps' must be in \[0.0, 1.0\]"):
        basisnet_forward(CFG, PARAMS, xl, xs, train=False, eps=-0.1)


def test_per_basis_bn_and_se_kinds():
    cfg = make_config(layers=(15, 15), per_basis_kinds={"conv", "bn", "se"})
    rng = np.random.default_rng(40)
    params = init_basisnet(cfg, rng)
    for k in params:  # make the per-basis BN/SE entries differ between bases
        if k.startswith("bases.") and not k.endswith(".kernel"):
            params[k] = params[k] + rng.normal(size=params[k].shape) * 0.3
    assert "bases.blocks.15.se.reduce.bias" in params
    assert "bases.blocks.15.project.bn.gamma" in params
    assert "specialist.blocks.15.project.bn.moving_var" in params
    xl, xs = images(41, b=4)
    dl, ds = rng.normal(size=(4, K)), rng.normal(size=(4, K))
    masks = dict(basis_mask=np.ones((4, 1, 3)), light_dropout_mask=np.ones((4, 1024)),
                 specialist_dropout_mask=np.ones((4, 1280)))
    masks["basis_mask"][1, 0, 2] = 0
    _, _, c = basisnet_forward(cfg, params, xl, xs, train=True, eps=0.1, **masks)
    g = basisnet_backward(cfg, params, c, dl, ds)
    f = _loss_fn(cfg, xl, xs, dl, ds, masks, 0.1)
    for name in ("bases.blocks.15.se.reduce.kernel", "bases.blocks.15.se.expand.bias",
                 "bases.blocks.15.depthwise.bn.beta", "bases.blocks.15.project.bn.gamma",
                 "coef.kernel"):
        v = rng.normal(size=params[name].shape)
        assert_directional_fd(f, params, name, v, float(np.sum(g[name] * v)))
    alpha = np.zeros((2, 1, 3))
    alpha[:, 0, 1] = 1.0
    tree = synthesize_specialist_params(cfg, params, alpha)
    got, _ = forward(SPEC, tree, xs[:2], train=False)
    want, _ = forward(SPEC, plain_specialist(params, cfg, 1), xs[:2], train=False)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)

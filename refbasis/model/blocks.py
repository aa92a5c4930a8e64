"""MobileNet layers with forward and backward side by side.

Every layer of ``Arch.layer_names()`` is one pair of pure functions:

    <layer>_forward(arch, params, [index,] x, *, train) -> (y, new_state)
    <layer>_backward(arch, params, [index,] x, dy, *, train) -> grads

``new_state`` maps the layer's ``<prefix>.bn.moving_mean`` / ``.bn.moving_var``
names to the updated moving statistics (train mode) or to the unchanged ones
(eval mode; TF-slim ``is_training=False``). ``grads`` maps every trainable
parameter the layer reads to its gradient (same shape as given: per-example
parameters get per-example gradients) and ``"input"`` to dL/dx.

Backward functions recompute the forward intermediates from the layer input
``x`` (no hidden caches, like the op VJPs), so one layer can be run alone on a
golden's stored input. In train mode the BN gradients include the
batch-statistic terms (refbasis.ops.norm).

Layers (docs/model.md):
- stem: 3x3 stride-2 conv -> BN -> act (Sandler et al. 2018 Table 2;
  Howard et al. 2019 Tables 1-2).
- blocks.<i> (L<i>): [1x1 expand conv -> BN -> act] -> kxk depthwise conv,
  stride s -> BN -> act -> [SE] -> 1x1 project conv -> BN (linear bottleneck)
  -> [+ x]. SE after the depthwise activation (Howard et al. 2019 Fig. 4).
- head.conv: 1x1 conv -> BN -> act. head.pool: global average pool.
- head.pre_logits (MV3): dense + bias -> act (the paper's 1x1 conv, NBN, on
  the pooled 1x1 map is exactly a dense layer).
- head.logits: dropout (train mode only, explicit mask) -> dense + bias.
"""

from __future__ import annotations

import numpy as np

from refbasis._checks import as_float_array
from refbasis.arch.spec import STEM_STRIDE, Arch, feature_map_sizes
from refbasis.model.params import IMAGE_CHANNELS, check_layer_params
from refbasis.ops.activations import apply_activation, apply_activation_vjp
from refbasis.ops.conv import (
    conv2d,
    conv2d_vjp,
    depthwise_conv2d,
    depthwise_conv2d_vjp,
)
from refbasis.ops.dense import dense, dense_vjp
from refbasis.ops.dropout import dropout, dropout_vjp
from refbasis.ops.norm import batch_norm, batch_norm_vjp
from refbasis.ops.pool import global_avg_pool, global_avg_pool_vjp
from refbasis.ops.squeeze_excite import squeeze_excite, squeeze_excite_vjp

__all__ = [
    "block_backward",
    "block_forward",
    "head_conv_backward",
    "head_conv_forward",
    "head_pool_backward",
    "head_pool_forward",
    "logits_backward",
    "logits_forward",
    "pre_logits_backward",
    "pre_logits_forward",
    "stem_backward",
    "stem_forward",
]


# ---------------------------------------------------------------------------
# Argument checks shared by every layer
# ---------------------------------------------------------------------------


def _check_train(train, fn):
    if not isinstance(train, (bool, np.bool_)):
        raise TypeError(f"{fn}: argument 'train' must be a bool, got {type(train).__name__} "
                        f"{train!r}")
    return bool(train)


def _check_arch(arch, fn):
    if not isinstance(arch, Arch):
        raise TypeError(f"{fn}: argument 'arch' must be a refbasis.arch.Arch, "
                        f"got {type(arch).__name__}")


def layer_io_shapes(arch: Arch, layer: str, batch: int | str = "B"):
    """(input shape, output shape) of ``layer`` for batch size ``batch``."""
    sizes = feature_map_sizes(arch)
    hin, hout = sizes[layer]
    if layer == "stem":
        return (batch, hin, hin, IMAGE_CHANNELS), (batch, hout, hout, arch.stem_channels)
    if layer.startswith("blocks."):
        b = arch.block(int(layer.split(".")[1]))
        return (batch, hin, hin, b.in_channels), (batch, hout, hout, b.out_channels)
    if layer == "head.conv":
        c = arch.blocks[-1].out_channels
        return (batch, hin, hin, c), (batch, hin, hin, arch.head_channels)
    if layer == "head.pool":
        return (batch, hin, hin, arch.head_channels), (batch, arch.head_channels)
    if layer == "head.pre_logits":
        return (batch, arch.head_channels), (batch, arch.pre_logits_channels)
    return (batch, arch.feature_channels), (batch, arch.num_classes)


def _check_x(arch, layer, x, fn, name="x"):
    """x must have exactly the layer's input shape at arch.resolution."""
    x = as_float_array(x, name, fn=fn)
    want, _ = layer_io_shapes(arch, layer, batch=x.shape[0] if x.ndim else 0)
    if x.shape != want or x.shape[0] < 1:
        sizes = feature_map_sizes(arch)
        what = (f"(B, {', '.join(str(d) for d in want[1:])}) for {layer} of {arch.name} "
                f"at resolution {arch.resolution} (its input is {sizes[layer][0]}x"
                f"{sizes[layer][0]})") if len(want) == 4 else (
                f"(B, {want[1]}) for {layer} of {arch.name}")
        raise ValueError(f"{fn}: argument '{name}' must have shape {what}, B >= 1, "
                         f"got {x.shape}")
    return x


def _check_dy(arch, layer, dy, batch, fn):
    _, want = layer_io_shapes(arch, layer, batch=batch)
    return as_float_array(dy, "dy", shape=want, fn=fn)


# ---------------------------------------------------------------------------
# Sub-layer helpers: conv / BN / activation, forward and vjp
# ---------------------------------------------------------------------------


def _bn(arch, p, prefix, x, train):
    y, mm, mv = batch_norm(x, p[f"{prefix}.bn.gamma"], p[f"{prefix}.bn.beta"],
                           p[f"{prefix}.bn.moving_mean"], p[f"{prefix}.bn.moving_var"],
                           train=train, eps=arch.bn_eps, decay=arch.bn_decay)
    return y, {f"{prefix}.bn.moving_mean": mm, f"{prefix}.bn.moving_var": mv}


def _bn_vjp(arch, p, prefix, x, dy, train, grads):
    dx, dg, db = batch_norm_vjp(x, p[f"{prefix}.bn.gamma"], p[f"{prefix}.bn.beta"],
                                p[f"{prefix}.bn.moving_mean"], p[f"{prefix}.bn.moving_var"],
                                dy, train=train, eps=arch.bn_eps)
    grads[f"{prefix}.bn.gamma"] = dg
    grads[f"{prefix}.bn.beta"] = db
    return dx


def _conv_bn_act(arch, p, prefix, x, act, train, *, stride=1, depthwise=False):
    """conv -> BN -> act; returns (trace, new_state) with trace = (conv, bn, out)."""
    k = p[f"{prefix}.kernel"]
    if depthwise:
        c = depthwise_conv2d(x, k, stride=stride, padding=arch.padding)
    else:
        c = conv2d(x, k, stride=stride, padding=arch.padding)
    n, state = _bn(arch, p, prefix, c, train)
    y = apply_activation(act, n) if act is not None else n
    return (c, n, y), state


def _conv_bn_act_vjp(arch, p, prefix, x, trace, dy, act, train, grads, *, stride=1,
                     depthwise=False):
    c, n, _ = trace
    dn = apply_activation_vjp(act, n, dy) if act is not None else dy
    dc = _bn_vjp(arch, p, prefix, c, dn, train, grads)
    k = p[f"{prefix}.kernel"]
    if depthwise:
        dx, dk = depthwise_conv2d_vjp(x, k, dc, stride=stride, padding=arch.padding)
    else:
        dx, dk = conv2d_vjp(x, k, dc, stride=stride, padding=arch.padding)
    grads[f"{prefix}.kernel"] = dk
    return dx


def _dense_vjp(x, w, b, dy, grads, prefix):
    # The bias gradient is taken here so that a per-example bias with a shared
    # kernel (or the reverse) gets its own shape back: sum over the batch for
    # a shared bias, the rows of dy for a per-example one.
    dx, dw, _ = dense_vjp(x, w, dy, has_bias=False)
    grads[f"{prefix}.kernel"] = dw
    grads[f"{prefix}.bias"] = np.array(dy, copy=True) if b.ndim == 2 else dy.sum(axis=0)
    return dx


# ---------------------------------------------------------------------------
# stem: 3x3 stride-2 conv -> BN -> act
# ---------------------------------------------------------------------------


def stem_forward(arch, params, x, *, train):
    """Stem of ``arch``: x (B, R, R, 3) -> (B, R/2, R/2, Cs) (SAME padding).
    Returns (y, new_state)."""
    fn = "stem_forward"
    _check_arch(arch, fn)
    train = _check_train(train, fn)
    x = _check_x(arch, "stem", x, fn)
    p = check_layer_params(arch, params, "stem", batch=x.shape[0], fn=fn)
    (_, _, y), state = _conv_bn_act(arch, p, "stem", x, arch.stem_activation, train,
                                    stride=STEM_STRIDE)
    return y, state


def stem_backward(arch, params, x, dy, *, train):
    """VJP of ``stem_forward``: dict of stem.kernel/stem.bn.{gamma,beta} grads + "input"."""
    fn = "stem_backward"
    _check_arch(arch, fn)
    train = _check_train(train, fn)
    x = _check_x(arch, "stem", x, fn)
    dy = _check_dy(arch, "stem", dy, x.shape[0], fn)
    p = check_layer_params(arch, params, "stem", batch=x.shape[0], fn=fn)
    trace, _ = _conv_bn_act(arch, p, "stem", x, arch.stem_activation, train,
                            stride=STEM_STRIDE)
    grads: dict[str, np.ndarray] = {}
    grads["input"] = _conv_bn_act_vjp(arch, p, "stem", x, trace, dy, arch.stem_activation,
                                      train, grads, stride=STEM_STRIDE)
    return grads


# ---------------------------------------------------------------------------
# blocks.<i>: inverted residual ("bottleneck", MV2) / "bneck" (MV3)
# ---------------------------------------------------------------------------


def _block_trace(arch, p, spec, x, train):
    """Forward of one block keeping every intermediate the vjp needs."""
    pre = spec.name
    t: dict = {"x": x}
    state: dict = {}
    h = x
    if spec.expand:
        t["expand"], s = _conv_bn_act(arch, p, f"{pre}.expand", h, spec.activation, train)
        state.update(s)
        h = t["expand"][2]
    t["dw_in"] = h
    t["depthwise"], s = _conv_bn_act(arch, p, f"{pre}.depthwise", h, spec.activation, train,
                                     stride=spec.stride, depthwise=True)
    state.update(s)
    h = t["depthwise"][2]
    if spec.se_channels is not None:
        t["se_in"] = h
        h = squeeze_excite(h, *_se_params(p, pre), gate=arch.se_gate, inner=arch.se_inner)
    t["project_in"] = h
    # Linear bottleneck (Sandler et al. 2018 Sec. 3.2): no activation after project.
    t["project"], s = _conv_bn_act(arch, p, f"{pre}.project", h, None, train)
    state.update(s)
    y = t["project"][2]
    if spec.residual:
        if y.shape != x.shape:
            # Only reachable with padding "VALID", which shrinks stride-1 maps.
            raise ValueError(
                f"block L{spec.index} ({pre}) of {arch.name}: the residual connection needs the "
                f"output shape {y.shape} to equal the input shape {x.shape}; padding "
                f"{arch.padding!r} does not preserve the spatial size (use 'SAME')")
        y = y + x
    return y, t, state


def _se_params(p, pre):
    return (p[f"{pre}.se.reduce.kernel"], p[f"{pre}.se.reduce.bias"],
            p[f"{pre}.se.expand.kernel"], p[f"{pre}.se.expand.bias"])


def _block_args(arch, params, index, x, train, fn):
    _check_arch(arch, fn)
    spec = arch.block(index)
    train = _check_train(train, fn)
    x = _check_x(arch, spec.name, x, fn)
    p = check_layer_params(arch, params, spec.name, batch=x.shape[0], fn=fn)
    return spec, train, x, p


def block_forward(arch, params, index, x, *, train):
    """Block L<index> (1-based) of ``arch``: x (B, H, H, Cin) -> (B, H', H', Cout).
    Returns (y, new_state)."""
    spec, train, x, p = _block_args(arch, params, index, x, train, "block_forward")
    y, _, state = _block_trace(arch, p, spec, x, train)
    return y, state


def block_backward(arch, params, index, x, dy, *, train):
    """VJP of ``block_forward``: grads of every trainable parameter of
    ``blocks.<index>`` (shapes as given) and "input" (dL/dx)."""
    fn = "block_backward"
    spec, train, x, p = _block_args(arch, params, index, x, train, fn)
    dy = _check_dy(arch, spec.name, dy, x.shape[0], fn)
    _, t, _ = _block_trace(arch, p, spec, x, train)
    pre = spec.name
    grads: dict[str, np.ndarray] = {}
    d = _conv_bn_act_vjp(arch, p, f"{pre}.project", t["project_in"], t["project"], dy,
                         None, train, grads)
    if spec.se_channels is not None:
        d, dw1, db1, dw2, db2 = squeeze_excite_vjp(
            t["se_in"], *_se_params(p, pre), d, gate=arch.se_gate, inner=arch.se_inner)
        grads[f"{pre}.se.reduce.kernel"] = dw1
        grads[f"{pre}.se.reduce.bias"] = db1
        grads[f"{pre}.se.expand.kernel"] = dw2
        grads[f"{pre}.se.expand.bias"] = db2
    d = _conv_bn_act_vjp(arch, p, f"{pre}.depthwise", t["dw_in"], t["depthwise"], d,
                         spec.activation, train, grads, stride=spec.stride, depthwise=True)
    if spec.expand:
        d = _conv_bn_act_vjp(arch, p, f"{pre}.expand", x, t["expand"], d, spec.activation,
                             train, grads)
    if spec.residual:
        d = d + dy
    grads["input"] = d
    return grads


# ---------------------------------------------------------------------------
# head.conv: 1x1 conv -> BN -> act
# ---------------------------------------------------------------------------


def head_conv_forward(arch, params, x, *, train):
    """x (B, h, h, Clast) -> (B, h, h, head_channels). Returns (y, new_state)."""
    fn = "head_conv_forward"
    _check_arch(arch, fn)
    train = _check_train(train, fn)
    x = _check_x(arch, "head.conv", x, fn)
    p = check_layer_params(arch, params, "head.conv", batch=x.shape[0], fn=fn)
    (_, _, y), state = _conv_bn_act(arch, p, "head.conv", x, arch.head_activation, train)
    return y, state


def head_conv_backward(arch, params, x, dy, *, train):
    """VJP of ``head_conv_forward``: head.conv.kernel/.bn.{gamma,beta} grads + "input"."""
    fn = "head_conv_backward"
    _check_arch(arch, fn)
    train = _check_train(train, fn)
    x = _check_x(arch, "head.conv", x, fn)
    dy = _check_dy(arch, "head.conv", dy, x.shape[0], fn)
    p = check_layer_params(arch, params, "head.conv", batch=x.shape[0], fn=fn)
    trace, _ = _conv_bn_act(arch, p, "head.conv", x, arch.head_activation, train)
    grads: dict[str, np.ndarray] = {}
    grads["input"] = _conv_bn_act_vjp(arch, p, "head.conv", x, trace, dy,
                                      arch.head_activation, train, grads)
    return grads


# ---------------------------------------------------------------------------
# head.pool: global average pool (keepdims=False)
# ---------------------------------------------------------------------------


def head_pool_forward(arch, x):
    """x (B, h, h, H) -> (B, H). Returns (y, {}) (no state)."""
    fn = "head_pool_forward"
    _check_arch(arch, fn)
    x = _check_x(arch, "head.pool", x, fn)
    return global_avg_pool(x), {}


def head_pool_backward(arch, x, dy):
    """VJP of ``head_pool_forward``: {"input": dx}."""
    fn = "head_pool_backward"
    _check_arch(arch, fn)
    x = _check_x(arch, "head.pool", x, fn)
    dy = _check_dy(arch, "head.pool", dy, x.shape[0], fn)
    return {"input": global_avg_pool_vjp(x, dy)}


# ---------------------------------------------------------------------------
# head.pre_logits (MV3): dense + bias -> act, no BN
# ---------------------------------------------------------------------------


def _pre_logits_args(arch, params, x, fn):
    _check_arch(arch, fn)
    if arch.pre_logits_channels is None:
        raise ValueError(f"{fn}: {arch.name} has no head.pre_logits layer "
                         f"(arch.pre_logits_channels is None)")
    x = _check_x(arch, "head.pre_logits", x, fn)
    p = check_layer_params(arch, params, "head.pre_logits", batch=x.shape[0], fn=fn)
    return x, p


def pre_logits_forward(arch, params, x):
    """x (B, H) pooled -> (B, P). Returns (y, {})."""
    x, p = _pre_logits_args(arch, params, x, "pre_logits_forward")
    z = dense(x, p["head.pre_logits.kernel"], p["head.pre_logits.bias"])
    return apply_activation(arch.pre_logits_activation, z), {}


def pre_logits_backward(arch, params, x, dy):
    """VJP of ``pre_logits_forward``: head.pre_logits.{kernel,bias} grads + "input"."""
    fn = "pre_logits_backward"
    x, p = _pre_logits_args(arch, params, x, fn)
    dy = _check_dy(arch, "head.pre_logits", dy, x.shape[0], fn)
    w, b = p["head.pre_logits.kernel"], p["head.pre_logits.bias"]
    z = dense(x, w, b)
    dz = apply_activation_vjp(arch.pre_logits_activation, z, dy)
    grads: dict[str, np.ndarray] = {}
    grads["input"] = _dense_vjp(x, w, b, dz, grads, "head.pre_logits")
    return grads


# ---------------------------------------------------------------------------
# head.logits: [dropout] -> dense + bias
# ---------------------------------------------------------------------------


def _logits_args(arch, params, features, train, dropout_mask, fn):
    _check_arch(arch, fn)
    train = _check_train(train, fn)
    f = _check_x(arch, "head.logits", features, fn, name="features")
    p = check_layer_params(arch, params, "head.logits", batch=f.shape[0], fn=fn)
    if dropout_mask is not None:
        if not train:
            raise ValueError(f"{fn}: argument 'dropout_mask' must be None in eval mode "
                             f"(train=False applies no dropout), got an array of shape "
                             f"{np.shape(dropout_mask)}")
        dropout_mask = as_float_array(dropout_mask, "dropout_mask", shape=f.shape, fn=fn)
    return f, p, dropout_mask


def logits_forward(arch, params, features, *, train, dropout_mask=None):
    """features (B, F) -> logits (B, K). ``dropout_mask`` (B, F) is applied in
    train mode (None = no dropout). Returns (logits, {})."""
    f, p, m = _logits_args(arch, params, features, train, dropout_mask, "logits_forward")
    h = dropout(f, m) if m is not None else f
    return dense(h, p["head.logits.kernel"], p["head.logits.bias"]), {}


def logits_backward(arch, params, features, dlogits, *, train, dropout_mask=None):
    """VJP of ``logits_forward``: head.logits.{kernel,bias} grads + "input" (dL/dfeatures)."""
    fn = "logits_backward"
    f, p, m = _logits_args(arch, params, features, train, dropout_mask, fn)
    dlogits = as_float_array(dlogits, "dlogits", shape=(f.shape[0], arch.num_classes), fn=fn)
    h = dropout(f, m) if m is not None else f
    grads: dict[str, np.ndarray] = {}
    dh = _dense_vjp(h, p["head.logits.kernel"], p["head.logits.bias"], dlogits, grads,
                    "head.logits")
    grads["input"] = dropout_vjp(m, dh) if m is not None else dh
    return grads

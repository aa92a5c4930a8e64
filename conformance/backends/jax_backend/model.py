"""MobileNet blocks and networks in JAX, built from a ``refbasis.arch.Arch``.

Mirrors ``refbasis.model`` (docs/code-map.md): same flat parameter names, same
network order (stem -> blocks -> head.conv -> head.pool -> [head.pre_logits]
-> dropout (train only) -> head.logits), same per-layer activations. Any
parameter may carry a leading batch axis B (per-example weights from BasisNet
synthesis); the rank tells (a conv kernel of rank 5, a BN gamma of rank 2, a
dense kernel of rank 3). The gradients are ``jax.vjp`` of :func:`forward`.

Everything here is a pure function of (params, inputs) with the ``Arch`` and
the mode static, so ``jax.jit(forward, static_argnames=...)`` compiles one
program per (arch, mode, tier, shapes).
"""

from __future__ import annotations

from collections.abc import Mapping

from jax import lax

from conformance.backends.jax_backend import ops

__all__ = ["forward", "layer_forward", "block_forward", "trainable_names", "STATE_SUFFIXES"]

STATE_SUFFIXES = (".bn.moving_mean", ".bn.moving_var")
STEM_KERNEL, STEM_STRIDE = 3, 2


def trainable_names(params: Mapping) -> list[str]:
    """Names of trainable parameters: everything but BN moving statistics."""
    return [k for k in params if not k.endswith(STATE_SUFFIXES)]


# --------------------------------------------------------------------------
# Layer helpers
# --------------------------------------------------------------------------


class _Ctx:
    """Static knobs threaded through one forward trace (no array state)."""

    def __init__(self, arch, train, precision, per_example, depthwise=None):
        self.arch, self.train = arch, train
        self.precision, self.per_example = precision, per_example
        self.depthwise = depthwise
        self.new_state: dict = {}


def _bn(ctx, params, name, x):
    y, nm, nv = ops.batch_norm(
        x, params[f"{name}.bn.gamma"], params[f"{name}.bn.beta"],
        params[f"{name}.bn.moving_mean"], params[f"{name}.bn.moving_var"],
        train=ctx.train, eps=ctx.arch.bn_eps, decay=ctx.arch.bn_decay,
    )
    if ctx.train:
        ctx.new_state[f"{name}.bn.moving_mean"] = nm
        ctx.new_state[f"{name}.bn.moving_var"] = nv
    return y


def _conv_bn_act(ctx, params, name, x, act, *, stride=1, depthwise=False):
    w = params[f"{name}.kernel"].astype(x.dtype)
    if depthwise:
        y = ops.depthwise_conv2d(x, w, stride=stride, padding=ctx.arch.padding,
                                 precision=ctx.precision, per_example=ctx.per_example,
                                 impl=ctx.depthwise)
    else:
        y = ops.conv2d(x, w, stride=stride, padding=ctx.arch.padding,
                       precision=ctx.precision, per_example=ctx.per_example)
    y = _bn(ctx, params, name, y)
    return ops.apply_activation(act, y)


def _dense(ctx, params, name, x, *, bias=True):
    w = params[f"{name}.kernel"].astype(x.dtype)
    if w.ndim >= 4:
        w = w.reshape(w.shape[:-4] + w.shape[-2:])
    b = params[f"{name}.bias"].astype(x.dtype) if bias else None
    return ops.dense(x, w, b, precision=ctx.precision)


# --------------------------------------------------------------------------
# Blocks and network
# --------------------------------------------------------------------------


def _block(ctx, params, spec, x):
    name = spec.name
    h = x
    if spec.expand:
        h = _conv_bn_act(ctx, params, f"{name}.expand", h, spec.activation)
    h = _conv_bn_act(ctx, params, f"{name}.depthwise", h, spec.activation,
                     stride=spec.stride, depthwise=True)
    if spec.se_channels is not None:
        # SE sits after the depthwise activation, before the projection
        # (Howard et al. 2019, Fig. 4).
        s = ops.global_avg_pool(h)
        s = ops.apply_activation(ctx.arch.se_inner, _dense(ctx, params, f"{name}.se.reduce", s))
        g = ops.apply_activation(ctx.arch.se_gate, _dense(ctx, params, f"{name}.se.expand", s))
        h = h * g[:, None, None, :]
    w = params[f"{name}.project.kernel"].astype(h.dtype)
    h = ops.conv2d(h, w, stride=1, padding=ctx.arch.padding, precision=ctx.precision,
                   per_example=ctx.per_example)
    h = _bn(ctx, params, f"{name}.project", h)
    if spec.residual:
        h = h + x
    return h


def block_forward(arch, params, index, x, *, train, precision=lax.Precision.HIGHEST,
                  per_example=None, dtype=None, depthwise=None):
    """Block ``L<index>`` alone: ``x (B, H, W, Cin) -> (y, new_state)``."""
    if dtype is not None:
        x = x.astype(dtype)
    ctx = _Ctx(arch, train, precision, per_example, depthwise)
    y = _block(ctx, _cast_params(params, dtype), arch.block(index), x)
    return y, ctx.new_state


def _layer(ctx, params, layer, h, dropout_mask):
    arch = ctx.arch
    if layer == "stem":
        return _conv_bn_act(ctx, params, "stem", h, arch.stem_activation, stride=STEM_STRIDE)
    if layer.startswith("blocks."):
        return _block(ctx, params, arch.block(int(layer.split(".")[1])), h)
    if layer == "head.conv":
        return _conv_bn_act(ctx, params, "head.conv", h, arch.head_activation)
    if layer == "head.pool":
        return ops.global_avg_pool(h)
    if layer == "head.pre_logits":
        return ops.apply_activation(arch.pre_logits_activation,
                                    _dense(ctx, params, "head.pre_logits", h))
    if layer == "head.logits":
        # Classifier dropout sits in front of head.logits (train mode only).
        if ctx.train and arch.dropout_rate > 0:
            if dropout_mask is None:
                raise ValueError("forward: argument 'dropout_mask' must be given in train "
                                 f"mode with dropout_rate {arch.dropout_rate}, got None")
            h = ops.dropout(h, dropout_mask)
        return _dense(ctx, params, "head.logits", h)
    raise ValueError(f"forward: unknown layer {layer!r}; expected one of {arch.layer_names()}")


def _cast_params(params, dtype):
    if dtype is None:
        return params
    return {k: (v if k.endswith(STATE_SUFFIXES) else v.astype(dtype)) for k, v in params.items()}


def layer_forward(arch, params, layer, x, *, train, dropout_mask=None,
                  precision=lax.Precision.HIGHEST, per_example=None, dtype=None, depthwise=None):
    """One entry of ``arch.layer_names()`` alone: ``x -> (y, new_state)``.

    ``x`` is that layer's input (the image for ``stem``; the features for
    ``head.logits``, whose classifier dropout is applied here in train mode).
    """
    if dtype is not None:
        x = x.astype(dtype)
    ctx = _Ctx(arch, train, precision, per_example, depthwise)
    y = _layer(ctx, _cast_params(params, dtype), layer, x, dropout_mask)
    return y, ctx.new_state


def forward(arch, params, x, *, train, dropout_mask=None, precision=lax.Precision.HIGHEST,
            per_example=None, dtype=None, block_params=None, depthwise=None):
    """The whole network: ``x (B, R, R, 3) -> (logits (B, K), aux)``.

    ``aux`` holds ``activations`` (layer name -> output, in ``arch.layer_names()``
    order), ``features`` ``(B, F)`` (the classifier dropout's input) and
    ``new_state`` (updated BN moving statistics, train mode only). In train
    mode with ``arch.dropout_rate > 0`` the classifier ``dropout_mask``
    ``(B, F)`` must be given (the oracle's draw, replayed). ``dtype`` casts
    the input and parameters for the compute (bf16 tier); moving statistics
    stay in their own dtype. ``block_params(index, x_block, params) -> params``
    optionally replaces the parameters a block sees (CondConv routing).
    ``per_example`` / ``depthwise`` pick the per-example and depthwise conv
    implementations (``ops.PER_EXAMPLE_IMPLS``, ``ops.DEPTHWISE_IMPLS``).
    """
    if dtype is not None:
        x = x.astype(dtype)
    params = _cast_params(params, dtype)
    ctx = _Ctx(arch, train, precision, per_example, depthwise)
    acts: dict = {}
    h = x
    features = None
    for layer in arch.layer_names():
        if layer == "head.logits":
            features = h
        p = params
        if block_params is not None and layer.startswith("blocks."):
            # CondConv: the block's weights may depend on its own input.
            p = block_params(int(layer.split(".")[1]), h, params)
        h = _layer(ctx, p, layer, h, dropout_mask)
        acts[layer] = h
    return h, {"activations": acts, "features": features, "new_state": ctx.new_state}

"""A whole MobileNet from its ``Arch`` table: forward and hand-written backward.

Network order (docs/code-map.md, design.md): stem -> blocks.1 .. blocks.n ->
head.conv -> head.pool -> [head.pre_logits] -> head.logits, where head.logits
applies the classifier dropout (train mode only) before its dense layer. The
*features* (input of the dropout; what BasisNet's coefficient head reads) are
the input of head.logits: the pooled head.conv output (MV2) or the
pre-logits output (MV3).

``layer_forward`` / ``layer_backward`` address any single layer by its name in
``arch.layer_names()`` (the conformance harness runs one layer alone on a
golden's inputs); ``forward`` / ``backward`` chain them. The backward pass
recomputes each layer's intermediates from the cached layer inputs (pure
VJPs, no hidden state).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from refbasis._checks import as_float_array
from refbasis.model import blocks as B
from refbasis.model.params import check_params
from refbasis.ops.dropout import dropout_mask as draw_dropout_mask

__all__ = ["ForwardCache", "backward", "forward", "layer_backward", "layer_forward"]


@dataclass
class ForwardCache:
    """What ``forward`` keeps for ``backward`` and for goldens.

    - ``input``: the network input x (B, R, R, 3), compute dtype.
    - ``train``: the mode of the forward pass.
    - ``activations``: ordered dict layer name -> layer output, one entry per
      name of ``arch.layer_names()`` in that order ("head.logits" = logits).
    - ``features``: (B, F) input of the classifier dropout.
    - ``new_state``: every ``*.bn.moving_mean`` / ``*.bn.moving_var`` after
      the pass (updated in train mode, unchanged copies of the inputs' values
      in eval mode).
    - ``dropout_mask``: (B, F) mask applied in train mode, or None.
    """

    input: np.ndarray
    train: bool
    activations: OrderedDict = field(default_factory=OrderedDict)
    features: np.ndarray | None = None
    new_state: dict = field(default_factory=dict)
    dropout_mask: np.ndarray | None = None


# ---------------------------------------------------------------------------
# One layer by name
# ---------------------------------------------------------------------------


def _check_layer(arch, layer, fn):
    B._check_arch(arch, fn)
    names = arch.layer_names()
    if layer not in names:
        raise ValueError(f"{fn}: argument 'layer' must be one of {list(names)}, got {layer!r}")


def layer_forward(arch, params, layer, x, *, train, dropout_mask=None):
    """Run layer ``layer`` (a name of ``arch.layer_names()``) on its input x.

    Returns (y, new_state). ``dropout_mask`` only applies to "head.logits"
    (train mode); passing one to another layer raises ValueError.
    """
    fn = "layer_forward"
    _check_layer(arch, layer, fn)
    if dropout_mask is not None and layer != "head.logits":
        raise ValueError(f"{fn}: argument 'dropout_mask' only applies to layer 'head.logits', "
                         f"got a mask for {layer!r}")
    if layer == "stem":
        return B.stem_forward(arch, params, x, train=train)
    if layer.startswith("blocks."):
        return B.block_forward(arch, params, int(layer.split(".")[1]), x, train=train)
    if layer == "head.conv":
        return B.head_conv_forward(arch, params, x, train=train)
    if layer == "head.pool":
        B._check_train(train, fn)
        return B.head_pool_forward(arch, x)
    if layer == "head.pre_logits":
        B._check_train(train, fn)
        return B.pre_logits_forward(arch, params, x)
    return B.logits_forward(arch, params, x, train=train, dropout_mask=dropout_mask)


def layer_backward(arch, params, layer, x, dy, *, train, dropout_mask=None):
    """VJP of ``layer_forward``: grads of the layer's trainable parameters and
    "input" (dL/dx)."""
    fn = "layer_backward"
    _check_layer(arch, layer, fn)
    if dropout_mask is not None and layer != "head.logits":
        raise ValueError(f"{fn}: argument 'dropout_mask' only applies to layer 'head.logits', "
                         f"got a mask for {layer!r}")
    if layer == "stem":
        return B.stem_backward(arch, params, x, dy, train=train)
    if layer.startswith("blocks."):
        return B.block_backward(arch, params, int(layer.split(".")[1]), x, dy, train=train)
    if layer == "head.conv":
        return B.head_conv_backward(arch, params, x, dy, train=train)
    if layer == "head.pool":
        B._check_train(train, fn)
        return B.head_pool_backward(arch, x, dy)
    if layer == "head.pre_logits":
        B._check_train(train, fn)
        return B.pre_logits_backward(arch, params, x, dy)
    return B.logits_backward(arch, params, x, dy, train=train, dropout_mask=dropout_mask)


# ---------------------------------------------------------------------------
# Whole network
# ---------------------------------------------------------------------------


def _resolve_mask(arch, train, rng, dropout_mask, batch, fn):
    """The classifier dropout mask for this pass, or None (no dropout)."""
    shape = (batch, arch.feature_channels)
    if not train:
        if dropout_mask is not None:
            raise ValueError(f"{fn}: argument 'dropout_mask' must be None in eval mode "
                             f"(train=False applies no dropout), got shape "
                             f"{np.shape(dropout_mask)}")
        return None
    if dropout_mask is not None:
        if rng is not None:
            raise ValueError(f"{fn}: pass either argument 'rng' or 'dropout_mask', not both "
                             f"(the mask would make rng unused)")
        return as_float_array(dropout_mask, "dropout_mask", shape=shape, fn=fn)
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"{fn}: argument 'rng' must be a numpy.random.Generator, "
                            f"got {type(rng).__name__}")
        return draw_dropout_mask(shape, arch.dropout_rate, rng)
    if arch.dropout_rate > 0:
        raise ValueError(
            f"{fn}: train=True with arch.dropout_rate={arch.dropout_rate} needs argument "
            f"'rng' (a numpy.random.Generator) or 'dropout_mask' of shape {shape}, got neither"
        )
    return None


def forward(arch, params, x, *, train, rng=None, dropout_mask=None):
    """Logits of ``arch`` for images x (B, R, R, 3), R = arch.resolution.

    ``params``: the tree of ``init_params`` (any trainable entry may carry a
    leading batch axis B: per-example weights). ``train``: BN uses batch
    statistics and the classifier dropout is applied; the mask is
    ``dropout_mask`` (B, F) if given, else drawn from ``rng`` with
    ``refbasis.ops.dropout.dropout_mask`` (rate ``arch.dropout_rate``).
    Eval mode uses the BN moving averages and no dropout.

    Returns (logits (B, num_classes), ForwardCache).
    """
    fn = "forward"
    B._check_arch(arch, fn)
    train = B._check_train(train, fn)
    x = B._check_x(arch, "stem", x, fn)
    params = check_params(arch, params, batch=x.shape[0], fn=fn)
    mask = _resolve_mask(arch, train, rng, dropout_mask, x.shape[0], fn)
    cache = ForwardCache(input=x, train=train, dropout_mask=mask)
    h = x
    for layer in arch.layer_names():
        if layer == "head.logits":
            cache.features = h
        h, state = layer_forward(arch, params, layer, h, train=train,
                                 dropout_mask=mask if layer == "head.logits" else None)
        cache.activations[layer] = h
        cache.new_state.update(state)
    return h, cache


def backward(arch, params, cache, dlogits, *, dfeatures=None):
    """Gradients of a scalar loss L through ``forward``.

    ``dlogits`` (B, num_classes) = dL/dlogits; ``dfeatures`` (B, F) optional
    extra dL/dfeatures (e.g. from BasisNet's coefficient head reading the
    features). Returns a dict with dL/dp for every trainable parameter (same
    shape as given) and "input" = dL/dx.
    """
    fn = "backward"
    B._check_arch(arch, fn)
    if not isinstance(cache, ForwardCache):
        raise TypeError(f"{fn}: argument 'cache' must be the ForwardCache returned by "
                        f"forward, got {type(cache).__name__}")
    names = arch.layer_names()
    if tuple(cache.activations) != names:
        raise ValueError(f"{fn}: argument 'cache' holds layers {list(cache.activations)[:3]}"
                         f"... which are not those of {arch.name} {list(names)[:3]}...")
    batch = cache.input.shape[0]
    params = check_params(arch, params, batch=batch, fn=fn)
    g = as_float_array(dlogits, "dlogits", shape=(batch, arch.num_classes), fn=fn)
    if dfeatures is not None:
        dfeatures = as_float_array(dfeatures, "dfeatures",
                                   shape=(batch, arch.feature_channels), fn=fn)
    grads: dict[str, np.ndarray] = {}
    inputs = (cache.input,) + tuple(cache.activations.values())[:-1]
    for layer, x_in in zip(reversed(names), reversed(inputs), strict=True):
        lg = layer_backward(arch, params, layer, x_in, g, train=cache.train,
                            dropout_mask=cache.dropout_mask if layer == "head.logits" else None)
        g = lg.pop("input")
        if layer == "head.logits" and dfeatures is not None:
            g = g + dfeatures
        grads.update(lg)
    # Network order (as in params), then the input.
    ordered = {n: grads[n] for n in params if n in grads}
    ordered["input"] = g
    return ordered

"""MobileNet blocks and networks built from an ``Arch`` table (refbasis.arch):
parameter trees, forward passes and hand-written backward passes.

See docs/model.md for the block structure, layer and parameter names, what
the forward cache holds, and per-example (BasisNet-synthesised) weights.
"""

from refbasis.model.blocks import (
    block_backward,
    block_forward,
    head_conv_backward,
    head_conv_forward,
    head_pool_backward,
    head_pool_forward,
    logits_backward,
    logits_forward,
    pre_logits_backward,
    pre_logits_forward,
    stem_backward,
    stem_forward,
)
from refbasis.model.network import (
    ForwardCache,
    backward,
    forward,
    layer_backward,
    layer_forward,
)
from refbasis.model.params import (
    check_params,
    init_params,
    layer_param_shapes,
    param_shapes,
    trainable_names,
)

__all__ = [
    "ForwardCache",
    "backward",
    "block_backward",
    "block_forward",
    "check_params",
    "forward",
    "head_conv_backward",
    "head_conv_forward",
    "head_pool_backward",
    "head_pool_forward",
    "init_params",
    "layer_backward",
    "layer_forward",
    "layer_param_shapes",
    "logits_backward",
    "logits_forward",
    "param_shapes",
    "pre_logits_backward",
    "pre_logits_forward",
    "stem_backward",
    "stem_forward",
    "trainable_names",
]

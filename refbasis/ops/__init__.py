"""The oracle's ops: one module per op family, each op with a forward and a vjp.

Layout NHWC, conv kernels HWIO, depthwise kernels (kh, kw, 1, C); computation
in ``refbasis.precision.compute_dtype()`` (float64 unless ``float32_mode``).
See docs/ops.md for formulas, shapes and the source of every convention. The
``*_naive`` loop twins stay in their modules (tests use them); only the fast
kernels are re-exported here.

Three functions share their module's name (``dense``, ``dropout``,
``squeeze_excite``); re-exporting them would shadow the submodules (``import
refbasis.ops.dense`` would then yield the function), so they are reached as
``refbasis.ops.dense.dense`` etc. and only their companions are re-exported.
"""

from refbasis.ops.activations import (
    apply_activation,
    apply_activation_vjp,
    hard_sigmoid,
    hard_sigmoid_vjp,
    hard_swish,
    hard_swish_vjp,
    identity,
    identity_vjp,
    relu,
    relu6,
    relu6_vjp,
    relu_vjp,
    sigmoid,
    sigmoid_vjp,
)
from refbasis.ops.conv import (
    conv2d,
    conv2d_vjp,
    depthwise_conv2d,
    depthwise_conv2d_vjp,
    resolve_padding,
)
from refbasis.ops.dense import dense_vjp
from refbasis.ops.dropout import dropout_mask, dropout_vjp
from refbasis.ops.losses import (
    distillation_loss,
    distillation_loss_vjp,
    log_softmax,
    log_softmax_vjp,
    softmax,
    softmax_cross_entropy,
    softmax_cross_entropy_vjp,
    softmax_vjp,
)
from refbasis.ops.norm import batch_norm, batch_norm_vjp
from refbasis.ops.pool import global_avg_pool, global_avg_pool_vjp
from refbasis.ops.squeeze_excite import squeeze_excite_vjp

__all__ = [
    "apply_activation", "apply_activation_vjp", "batch_norm", "batch_norm_vjp",
    "conv2d", "conv2d_vjp", "dense_vjp", "depthwise_conv2d",
    "depthwise_conv2d_vjp", "distillation_loss", "distillation_loss_vjp",
    "dropout_mask", "dropout_vjp", "global_avg_pool", "global_avg_pool_vjp",
    "hard_sigmoid", "hard_sigmoid_vjp", "hard_swish", "hard_swish_vjp", "identity",
    "identity_vjp", "log_softmax", "log_softmax_vjp", "relu", "relu6", "relu6_vjp",
    "relu_vjp", "resolve_padding", "sigmoid", "sigmoid_vjp", "softmax",
    "softmax_cross_entropy", "softmax_cross_entropy_vjp", "softmax_vjp",
    "squeeze_excite_vjp",
]

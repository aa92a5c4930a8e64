"""JAX/XLA twins of the oracle's ops (``refbasis.ops``), NHWC throughout.

One small pure function per op, named like the oracle function it mirrors.
Backward passes are not written by hand: ``jax.vjp`` / ``jax.grad`` of these
functions must agree with the oracle's hand-written VJPs (that agreement is
what the goldens check).

Conventions mirrored from the oracle (see docs/_conventions_jax.md):

- Convolutions: ``lax.conv_general_dilated`` with dimension numbers
  ``("NHWC", "HWIO", "NHWC")`` and explicit ``((top, bottom), (left, right))``
  padding pairs computed by :func:`resolve_padding` with TF's SAME rule
  (out = ceil(in / s), the odd pixel bottom/right), never the string
  ``"SAME"``, so XLA's own rule is never relied on.
- Depthwise kernels are ``(kh, kw, 1, C)``: HWIO with ``feature_group_count=C``.
- Per-example kernels (BasisNet synthesis) carry a leading batch axis; see
  :func:`conv2d_per_example_grouped` and :func:`conv2d_per_example_vmap`.
- Kinks: activations are ``jax.nn``'s, whose custom JVPs give relu'(0) = 0,
  relu6'(0) = relu6'(6) = 0 and hard_sigmoid'(+-3) = 0; the oracle copies
  exactly these subgradients (refbasis/ops/activations.py).
- BatchNorm: batch statistics over every axis but the last, biased variance,
  ``y = (x - mean) * rsqrt(var + eps) * gamma + beta``; moving averages
  ``new = decay * old + (1 - decay) * batch`` with the biased batch variance
  (TF-slim decay; the biased variance is the oracle's reference choice).

Every op takes ``precision`` (a ``lax.Precision``) for its contractions and
computes in the dtype of its inputs; in bfloat16 the reductions named in
``precision.py`` accumulate in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "ACTIVATIONS",
    "resolve_padding",
    "conv2d",
    "conv2d_per_example_grouped",
    "conv2d_per_example_vmap",
    "conv2d_per_example_naive",
    "conv2d_per_example_1x1",
    "conv2d_shared",
    "depthwise_conv2d",
    "depthwise_conv2d_shifted",
    "default_depthwise_impl",
    "DEPTHWISE_IMPLS",
    "batch_norm",
    "apply_activation",
    "global_avg_pool",
    "dense",
    "dropout",
    "squeeze_excite",
    "softmax",
    "log_softmax",
    "softmax_cross_entropy",
    "distillation_loss",
    "PER_EXAMPLE_IMPLS",
]

HIGHEST = lax.Precision.HIGHEST
_DN = ("NHWC", "HWIO", "NHWC")

# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _acc_dtype(dtype):
    # Reductions of bfloat16/float16 data accumulate in float32 (mixed
    # precision, reference choice); float32 and float64 keep their dtype.
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype


def _pair(v, name, fn):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{fn}: argument '{name}' must be an int or a pair of ints, got {v!r}")
        a, b = v
    else:
        a = b = v
    for t in (a, b):
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"{fn}: argument '{name}' must be ints >= 1, got {v!r}")
    return (a, b)


# --------------------------------------------------------------------------
# Padding (static, pure Python: shapes are known at trace time)
# --------------------------------------------------------------------------


def _same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return (total // 2, total - total // 2)


def resolve_padding(padding, in_hw, kernel_hw, stride):
    """``padding`` -> ``((top, bottom), (left, right))``.

    ``"SAME"``: TF rule (out = ceil(in / s), total = max((out-1)*s + k - in, 0),
    top = total // 2, the odd pixel bottom/right); ``"VALID"``: zeros;
    explicit pairs are returned as tuples. Source: design.md, TF.
    """
    fn = "resolve_padding"
    in_hw = _pair(in_hw, "in_hw", fn)
    kernel_hw = _pair(kernel_hw, "kernel_hw", fn)
    stride = _pair(stride, "stride", fn)
    if isinstance(padding, str):
        if padding == "VALID":
            return ((0, 0), (0, 0))
        if padding == "SAME":
            return (_same_pads(in_hw[0], kernel_hw[0], stride[0]),
                    _same_pads(in_hw[1], kernel_hw[1], stride[1]))
        raise ValueError(
            f"{fn}: argument 'padding' must be one of ['SAME', 'VALID'] or "
            f"((top, bottom), (left, right)), got {padding!r}"
        )
    try:
        (t, b), (le, r) = padding
        pads = ((int(t), int(b)), (int(le), int(r)))
    except (TypeError, ValueError):
        raise ValueError(
            f"{fn}: argument 'padding' must be 'SAME', 'VALID' or "
            f"((top, bottom), (left, right)), got {padding!r}"
        ) from None
    if min(pads[0] + pads[1]) < 0:
        raise ValueError(f"{fn}: argument 'padding' must be non-negative, got {padding!r}")
    return pads


# --------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------


def _check_conv(fn, x, w, groups, per_example):
    if x.ndim != 4:
        raise ValueError(f"{fn}: argument 'x' must have rank 4 (B, H, W, Cin), got shape {x.shape}")
    want = 5 if per_example else 4
    if w.ndim != want:
        raise ValueError(f"{fn}: argument 'w' must have rank {want}, got shape {w.shape}")
    if per_example and w.shape[0] != x.shape[0]:
        raise ValueError(
            f"{fn}: argument 'w' is a per-example kernel and must have batch {x.shape[0]} "
            f"(x.shape[0]), got shape {w.shape}"
        )
    cin, cin_g, cout = x.shape[-1], w.shape[-2], w.shape[-1]
    if cin % groups or cout % groups or cin_g * groups != cin:
        raise ValueError(
            f"{fn}: argument 'w' must have shape (..., kh, kw, Cin // groups = "
            f"{cin // groups}, Cout) with groups={groups} dividing Cout, got shape {w.shape}"
        )


def _conv(x, w, stride, pads, groups, precision):
    return lax.conv_general_dilated(
        x, w, window_strides=stride, padding=pads, dimension_numbers=_DN,
        feature_group_count=groups, precision=precision,
    )


def conv2d_shared(x, w, *, stride=1, padding="SAME", groups=1, precision=HIGHEST):
    """Cross-correlation with one kernel for the whole batch.

    x ``(B, H, W, Cin)``; w ``(kh, kw, Cin // groups, Cout)``; returns
    ``(B, Ho, Wo, Cout)``. Groups own contiguous channel blocks (TF, XLA).
    """
    _check_conv("conv2d", x, w, groups, per_example=False)
    s = _pair(stride, "stride", "conv2d")
    pads = resolve_padding(padding, x.shape[1:3], w.shape[:2], s)
    return _conv(x, w, s, pads, groups, precision)


def conv2d_per_example_grouped(x, w, *, stride=1, padding="SAME", groups=1,
                               precision=HIGHEST):
    """Per-example kernels as ONE grouped convolution over the folded batch.

    x ``(B, H, W, Cin)``, w ``(B, kh, kw, Cin // groups, Cout)`` ->
    ``(B, Ho, Wo, Cout)``. The batch is folded into channels: x becomes
    ``(1, H, W, B*Cin)`` (channel ``b*Cin + c``), w becomes
    ``(kh, kw, Cin // groups, B*Cout)`` (output ``b*Cout + o``) and
    ``feature_group_count = B * groups``, so group ``b*groups + j`` reads
    example b's j-th input block with example b's kernel. For a depthwise
    kernel this is ``feature_group_count = batch * channels``.
    """
    _check_conv("conv2d_per_example_grouped", x, w, groups, per_example=True)
    s = _pair(stride, "stride", "conv2d_per_example_grouped")
    b, h, wd, cin = x.shape
    kh, kw, cin_g, cout = w.shape[1:]
    pads = resolve_padding(padding, (h, wd), (kh, kw), s)
    xf = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, h, wd, b * cin)
    wf = jnp.transpose(w, (1, 2, 3, 0, 4)).reshape(kh, kw, cin_g, b * cout)
    y = _conv(xf, wf, s, pads, b * groups, precision)
    ho, wo = y.shape[1:3]
    return jnp.transpose(y.reshape(ho, wo, b, cout), (2, 0, 1, 3))


def conv2d_per_example_vmap(x, w, *, stride=1, padding="SAME", groups=1, precision=HIGHEST):
    """Per-example kernels by ``jax.vmap`` of a batch-1 convolution.

    Same contract as :func:`conv2d_per_example_grouped`; XLA's batching rule
    for convolutions itself lowers this to a grouped convolution, but with its
    own layout choices, so the two are measured separately.
    """
    _check_conv("conv2d_per_example_vmap", x, w, groups, per_example=True)
    s = _pair(stride, "stride", "conv2d_per_example_vmap")
    pads = resolve_padding(padding, x.shape[1:3], w.shape[1:3], s)

    def one(xi, wi):
        return _conv(xi[None], wi, s, pads, groups, precision)[0]

    return jax.vmap(one)(x, w)


def conv2d_per_example_naive(x, w, *, stride=1, padding="SAME", groups=1, precision=HIGHEST):
    """Loop twin (tests only): one shared-kernel convolution per example."""
    return jnp.concatenate([
        conv2d_shared(x[i:i + 1], w[i], stride=stride, padding=padding, groups=groups,
                      precision=precision)
        for i in range(x.shape[0])
    ], axis=0)


PER_EXAMPLE_IMPLS = {
    "grouped": conv2d_per_example_grouped,
    "vmap": conv2d_per_example_vmap,
}
# Measured on this project's CPU (benchmarks/bench_jax_basisnet.py --synthesis,
# docs/jax-backend.md): the grouped form is the faster default.
DEFAULT_PER_EXAMPLE = "grouped"


def conv2d_per_example_1x1(x, w, *, stride=1, padding="SAME", groups=1, precision=HIGHEST):
    """Per-example 1x1 convolution (stride 1, no padding, groups 1) as one
    batched matmul ``y[b] = x[b] @ w[b, 0, 0]``: the synthesized expand and
    project layers. Same contract as :func:`conv2d_per_example_grouped`."""
    _check_conv("conv2d_per_example_1x1", x, w, groups, per_example=True)
    if w.shape[1:3] != (1, 1) or groups != 1 or _pair(stride, "stride", "conv2d") != (1, 1) \
            or resolve_padding(padding, x.shape[1:3], (1, 1), 1) != ((0, 0), (0, 0)):
        raise ValueError("conv2d_per_example_1x1: needs a 1x1 kernel, stride 1, groups 1 and "
                         f"no padding, got w {w.shape}, stride {stride!r}, groups {groups}, "
                         f"padding {padding!r}")
    return jnp.einsum("bhwc,bco->bhwo", x, w[:, 0, 0], precision=precision)


def _is_plain_1x1(x, w, stride, padding, groups):
    return (w.shape[-4:-2] == (1, 1) and groups == 1
            and _pair(stride, "stride", "conv2d") == (1, 1)
            and resolve_padding(padding, x.shape[1:3], (1, 1), 1) == ((0, 0), (0, 0)))


def conv2d(x, w, *, stride=1, padding="SAME", groups=1, precision=HIGHEST, per_example=None):
    """``refbasis.ops.conv.conv2d``: w ``(kh, kw, Cin//groups, Cout)`` shared or
    ``(B, kh, kw, Cin//groups, Cout)`` per example (dispatch on ``w.ndim``);
    ``per_example`` picks the per-example implementation ("grouped"/"vmap");
    left None, plain 1x1 per-example kernels take the batched-matmul path
    (:func:`conv2d_per_example_1x1`) and the rest the default."""
    if w.ndim == 5:
        if per_example is None and _is_plain_1x1(x, w, stride, padding, groups):
            return conv2d_per_example_1x1(x, w, precision=precision)
        impl = PER_EXAMPLE_IMPLS[per_example or DEFAULT_PER_EXAMPLE]
        return impl(x, w, stride=stride, padding=padding, groups=groups, precision=precision)
    return conv2d_shared(x, w, stride=stride, padding=padding, groups=groups,
                         precision=precision)


def depthwise_conv2d_shifted(x, w, *, stride=1, padding="SAME"):
    """Depthwise conv as kh*kw shifted multiply-adds (no convolution primitive).

    x ``(B, H, W, C)``; w ``(kh, kw, 1, C)`` or per example ``(B, kh, kw, 1, C)``
    -> ``(B, Ho, Wo, C)``: ``y = sum_{i,j} xp[:, i::s, j::s, :] * w[i, j, 0, :]``
    over the padded input, taps in row-major order. XLA fuses the slices and
    multiply-adds; on CPU this and its autodiff run 20-170x faster than the
    grouped convolution at MobileNet sizes, but compile slower
    (docs/jax-backend.md). Products accumulate in float32 for bfloat16 inputs.
    """
    sh, sw = _pair(stride, "stride", "depthwise_conv2d")
    kh, kw = w.shape[-4:-2]
    (t, b), (le, r) = resolve_padding(padding, x.shape[1:3], (kh, kw), (sh, sw))
    acc_t = _acc_dtype(x.dtype)
    xp = jnp.pad(x, ((0, 0), (t, b), (le, r), (0, 0))).astype(acc_t)
    ho = (x.shape[1] + t + b - kh) // sh + 1
    wo = (x.shape[2] + le + r - kw) // sw + 1
    wa = w.astype(acc_t)
    acc = None
    for i in range(kh):
        for j in range(kw):
            win = lax.slice(xp, (0, i, j, 0),
                            (xp.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1,
                             xp.shape[3]), (1, sh, sw, 1))
            k = wa[..., i, j, 0, :]
            term = win * (k[:, None, None, :] if w.ndim == 5 else k)
            acc = term if acc is None else acc + term
    return acc.astype(x.dtype)


DEPTHWISE_IMPLS = ("conv", "shifted")


def default_depthwise_impl() -> str:
    """"conv": the XLA grouped convolution. "shifted" runs (and differentiates)
    20-170x faster on CPU at MobileNet sizes but compiles ~2.5x slower, which
    dominates the small golden cases; benchmarks and CPU training pick it
    explicitly (``JaxBackend(depthwise="shifted")``, ``--depthwise``)."""
    return "conv"


def depthwise_conv2d(x, w, *, stride=1, padding="SAME", precision=HIGHEST, per_example=None,
                     impl=None):
    """Depthwise conv: w ``(kh, kw, 1, C)`` or ``(B, kh, kw, 1, C)``; ``groups = C``.

    ``impl``: "conv" (``conv2d`` with ``feature_group_count = C``, or the
    per-example implementation ``per_example``) or "shifted"
    (:func:`depthwise_conv2d_shifted`); default :func:`default_depthwise_impl`.
    """
    if w.shape[-2] != 1 or w.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"depthwise_conv2d: argument 'w' must have shape (..., kh, kw, 1, {x.shape[-1]}), "
            f"got {w.shape}"
        )
    impl = impl or default_depthwise_impl()
    if impl == "shifted":
        if w.ndim == 5 and w.shape[0] != x.shape[0]:
            raise ValueError(
                f"depthwise_conv2d: argument 'w' is a per-example kernel and must have batch "
                f"{x.shape[0]} (x.shape[0]), got shape {w.shape}")
        return depthwise_conv2d_shifted(x, w, stride=stride, padding=padding)
    if impl != "conv":
        raise ValueError(f"depthwise_conv2d: argument 'impl' must be one of "
                         f"{list(DEPTHWISE_IMPLS)}, got {impl!r}")
    return conv2d(x, w, stride=stride, padding=padding, groups=x.shape[-1],
                  precision=precision, per_example=per_example)


# --------------------------------------------------------------------------
# BatchNorm
# --------------------------------------------------------------------------


def _per_channel(p, x):
    # (C,) shared or (B, C) per example -> broadcastable against (B, ..., C).
    if p.ndim == 1:
        return p
    return p.reshape((p.shape[0],) + (1,) * (x.ndim - 2) + (p.shape[1],))


def batch_norm(x, gamma, beta, moving_mean, moving_var, *, train, eps=1e-3, decay=0.997):
    """``refbasis.ops.norm.batch_norm`` -> ``(y, new_moving_mean, new_moving_var)``.

    x ``(B, ..., C)``; gamma/beta ``(C,)`` or ``(B, C)``; moving stats ``(C,)``.
    Train: biased batch statistics over all axes but the last; the moving
    averages move by ``1 - decay`` towards them (TF-slim; biased variance is
    the oracle's reference choice). Eval: moving statistics, returned unchanged.
    """
    acc = _acc_dtype(x.dtype)
    xa = x.astype(acc)
    if train:
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(xa, axis=axes)
        var = jnp.mean(jnp.square(xa - mean), axis=axes)
        new_mean = decay * moving_mean + (1.0 - decay) * lax.stop_gradient(mean).astype(
            moving_mean.dtype)
        new_var = decay * moving_var + (1.0 - decay) * lax.stop_gradient(var).astype(
            moving_var.dtype)
    else:
        mean, var = moving_mean.astype(acc), moving_var.astype(acc)
        new_mean, new_var = moving_mean, moving_var
    inv = lax.rsqrt(var + eps)
    y = (xa - mean) * inv * _per_channel(gamma, x).astype(acc) + _per_channel(beta, x).astype(acc)
    return y.astype(x.dtype), new_mean, new_var


# --------------------------------------------------------------------------
# Activations (jax.nn: their kink subgradients are the oracle's)
# --------------------------------------------------------------------------

_ACTS = {
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "hard_swish": jax.nn.hard_swish,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}
ACTIVATIONS = tuple(_ACTS)


def apply_activation(name, x):
    """``refbasis.ops.activations.apply_activation``; names as ``ACTIVATIONS``."""
    if name not in _ACTS:
        raise ValueError(f"apply_activation: argument 'name' must be one of "
                         f"{list(ACTIVATIONS)}, got {name!r}")
    return _ACTS[name](x)


# --------------------------------------------------------------------------
# Pooling, dense, dropout, squeeze-excite
# --------------------------------------------------------------------------


def global_avg_pool(x):
    """``(B, H, W, C) -> (B, C)``: mean over H and W (keepdims=False)."""
    return jnp.mean(x.astype(_acc_dtype(x.dtype)), axis=(1, 2)).astype(x.dtype)


def dense(x, w, b=None, *, precision=HIGHEST):
    """``x @ w + b``: x ``(B, Cin)``; w ``(Cin, Cout)`` or ``(B, Cin, Cout)``;
    b ``(Cout,)``, ``(B, Cout)`` or None."""
    if w.ndim == 3:
        y = jnp.einsum("bi,bio->bo", x, w, precision=precision)
    else:
        y = jnp.matmul(x, w, precision=precision)
    return y if b is None else y + b


def dropout(x, mask):
    """Inverted dropout with an explicit mask (0 or 1/(1-rate)): ``x * mask``.

    The mask is an input, never drawn here, so oracle and port see the same
    draw (the oracle's ``dropout_mask`` / the golden's stored mask)."""
    return x * mask.astype(x.dtype)


def squeeze_excite(x, w1, b1, w2, b2, *, gate="hard_sigmoid", inner="relu", precision=HIGHEST):
    """s = GAP(x); h = inner(s @ w1 + b1); g = gate(h @ w2 + b2); y = x * g.

    x ``(B, H, W, C)``; w1 ``(C, R)`` or ``(B, C, R)`` etc. (contract, code-map).
    """
    s = global_avg_pool(x)
    h = apply_activation(inner, dense(s, w1, b1, precision=precision))
    g = apply_activation(gate, dense(h, w2, b2, precision=precision))
    return x * g[:, None, None, :]


# --------------------------------------------------------------------------
# Softmax and losses (float32 accumulation in bf16)
# --------------------------------------------------------------------------


def log_softmax(z):
    """Stable log-softmax over the last axis."""
    za = z.astype(_acc_dtype(z.dtype))
    return za - jax.scipy.special.logsumexp(za, axis=-1, keepdims=True)


def softmax(z):
    """Stable softmax over the last axis."""
    return jnp.exp(log_softmax(z))


def _targets(labels, k, label_smoothing, dtype):
    if labels.ndim == 1:
        t = jax.nn.one_hot(labels, k, dtype=dtype)
    else:
        t = labels.astype(dtype)
    if label_smoothing:
        t = t * (1.0 - label_smoothing) + label_smoothing / k
    return t


def softmax_cross_entropy(logits, labels, *, label_smoothing=0.0):
    """Per-example ``-sum_k t_k log softmax(z)_k`` -> ``(B,)``.

    labels int ``(B,)`` or probabilities ``(B, K)``; smoothing
    ``t = (1 - s) t + s / K`` (TF ``label_smoothing``)."""
    lp = log_softmax(logits)
    t = _targets(labels, logits.shape[-1], label_smoothing, lp.dtype)
    return -jnp.sum(t * lp, axis=-1)


def distillation_loss(student_logits, teacher_logits, *, temperature):
    """``T^2 * CE(softmax(teacher / T), log_softmax(student / T))`` -> ``(B,)``.

    The teacher is a constant (no gradient flows into it)."""
    t = softmax(lax.stop_gradient(teacher_logits) / temperature)
    lp = log_softmax(student_logits / temperature)
    return -(temperature ** 2) * jnp.sum(t * lp, axis=-1)

"""CondConv baseline (Yang et al. 2019, "CondConv: Conditionally Parameterized
Convolutions for Efficient Inference"), as compared with BasisNet in paper Sec. 4.5.

A CondConv block mixes N expert kernels per example with routing weights
computed from the block's own input:

    r(b) = sigmoid(GAP(x_block(b)) @ routing.kernel + routing.bias)     (B, N)
    W(b) = sum_i r_i(b) * W_i                      for each expert conv of the block

Yang et al. use a sigmoid (not softmax) routing from globally pooled inputs and,
in their EfficientNet models, share one routing function between the convs of
a block; the reference does the same ("per-block routing shared by the block's
convs"). Unlike BasisNet there is no separate lightweight model: routing is
computed inside the network from intermediate features. The synthesis is the
same linear combination as BasisNet's (``refbasis.basis.synthesis``).

Parameter names (reference choice): a plain MobileNet tree (model/params.py
names, no prefix) minus the expert parameters, plus
``experts.<name>`` with a leading expert axis N for every expert parameter and
``routing.blocks.<i>.kernel`` ``(Cin, N)`` / ``routing.blocks.<i>.bias`` ``(N,)``
for each CondConv block. Expert parameters (reference choice, following
Yang et al., who condition the convolution kernels only): the 1x1 expand, the
depthwise and the 1x1 project kernels of the chosen blocks (``kinds``); BN and
SE parameters stay shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from refbasis._checks import as_float_array, check_choice, check_int
from refbasis.arch.spec import Arch
from refbasis.basis.synthesis import synthesize, synthesize_vjp
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
from refbasis.model.params import init_params, layer_param_shapes
from refbasis.ops.dense import dense, dense_vjp
from refbasis.ops.pool import global_avg_pool, global_avg_pool_vjp

__all__ = [
    "CONDCONV_KINDS",
    "CondConvCache",
    "check_condconv_blocks",
    "condconv_expert_names",
    "condconv_routing",
    "condconv_routing_vjp",
    "condconv_routing_naive",
    "init_condconv",
    "condconv_forward",
    "condconv_backward",
]

CONDCONV_KINDS = ("expand", "depthwise", "project")


# ---------------------------------------------------------------------------
# Names and validation
# ---------------------------------------------------------------------------

def check_condconv_blocks(arch: Arch, blocks, *, fn: str) -> tuple[int, ...]:
    """Block indices (1-based, supplement numbering) within ``[1, len(arch.blocks)]``,
    strictly increasing, non-empty."""
    try:
        idx = tuple(blocks)
    except TypeError:
        raise TypeError(f"{fn}: argument 'blocks' must be a sequence of block indices, "
                        f"got {type(blocks).__name__}") from None
    if not idx:
        raise ValueError(f"{fn}: argument 'blocks' must name at least one block, got ()")
    nb = len(arch.blocks)
    for i in idx:
        check_int(i, "blocks[...]", fn=fn)
        if not 1 <= i <= nb:
            raise ValueError(f"{fn}: argument 'blocks' must lie in [1, {nb}] "
                             f"(L1..L{nb} of {arch.name}), got {list(idx)}")
    if any(b <= a for a, b in zip(idx, idx[1:], strict=False)):
        raise ValueError(f"{fn}: argument 'blocks' must be strictly increasing, got {list(idx)}")
    return tuple(int(i) for i in idx)


def condconv_expert_names(arch: Arch, blocks, kinds=CONDCONV_KINDS) -> list[str]:
    """Names (model/params.py) of the expert parameters of the chosen blocks."""
    fn = "condconv_expert_names"
    idx = check_condconv_blocks(arch, blocks, fn=fn)
    for k in kinds:
        check_choice(k, "kinds[...]", CONDCONV_KINDS, fn=fn)
    out = []
    for i in idx:
        for name in layer_param_shapes(arch, f"blocks.{i}"):
            if any(name == f"blocks.{i}.{k}.kernel" for k in kinds):
                out.append(name)
    return out


# ---------------------------------------------------------------------------
# Routing function and its VJP
# ---------------------------------------------------------------------------

def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free form of 1 / (1 + e^-z)


def condconv_routing(x, kernel, bias) -> np.ndarray:
    """``sigmoid(GAP(x) @ kernel + bias)``: x ``(B, H, W, C)`` -> r ``(B, N)``."""
    fn = "condconv_routing"
    x = as_float_array(x, "x", ndim=4, fn=fn)
    k = as_float_array(kernel, "kernel", ndim=2, shape=(x.shape[-1], None), fn=fn)
    b = as_float_array(bias, "bias", shape=(k.shape[1],), fn=fn)
    return _sigmoid(dense(global_avg_pool(x), k, b))


def condconv_routing_vjp(x, kernel, bias, dr):
    """VJP of :func:`condconv_routing`: dr ``(B, N)`` -> ``(dx, dkernel, dbias)``."""
    fn = "condconv_routing_vjp"
    x = as_float_array(x, "x", ndim=4, fn=fn)
    k = as_float_array(kernel, "kernel", ndim=2, shape=(x.shape[-1], None), fn=fn)
    b = as_float_array(bias, "bias", shape=(k.shape[1],), fn=fn)
    dr = as_float_array(dr, "dr", shape=(x.shape[0], k.shape[1]), fn=fn)
    g = global_avg_pool(x)
    r = _sigmoid(dense(g, k, b))
    dg, dk, db = dense_vjp(g, k, dr * r * (1.0 - r), has_bias=True)
    return global_avg_pool_vjp(x, dg), dk, db


def condconv_routing_naive(x, kernel, bias) -> np.ndarray:
    """Loop twin of :func:`condconv_routing` (tests only)."""
    x = np.asarray(x, dtype=np.float64)
    bsz, h, w, c = x.shape
    n = kernel.shape[1]
    out = np.zeros((bsz, n))
    for e in range(bsz):
        g = [sum(x[e, i, j, ch] for i in range(h) for j in range(w)) / (h * w)
             for ch in range(c)]
        for o in range(n):
            z = bias[o] + sum(g[ch] * kernel[ch, o] for ch in range(c))
            out[e, o] = 1.0 / (1.0 + np.exp(-z))
    return out


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------

def init_condconv(arch: Arch, blocks, num_experts: int, rng: np.random.Generator, *,
                  kinds=CONDCONV_KINDS) -> dict[str, np.ndarray]:
    """Parameters of a CondConv MobileNet (names in the module docstring).

    Reference choices: shared parameters from one ``init_params(arch, rng)``
    draw; expert i's kernels from the (i+1)-th further ``init_params`` draw
    (so each expert has the plain model's fan-in init); routing kernel
    ~ Normal(0, 1/Cin), routing bias 0 (r starts near 1/2).
    """
    fn = "init_condconv"
    idx = check_condconv_blocks(arch, blocks, fn=fn)
    n = check_int(num_experts, "num_experts", min_value=1, fn=fn)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{fn}: argument 'rng' must be a numpy.random.Generator, "
                        f"got {type(rng).__name__}")
    names = condconv_expert_names(arch, idx, kinds)
    params = init_params(arch, rng)
    draws = [init_params(arch, rng) for _ in range(n)]
    for name in names:
        del params[name]
        params[f"experts.{name}"] = np.stack([d[name] for d in draws])
    for i in idx:
        cin = arch.block(i).in_channels
        params[f"routing.blocks.{i}.kernel"] = rng.normal(0.0, 1.0 / np.sqrt(cin), (cin, n))
        params[f"routing.blocks.{i}.bias"] = np.zeros(n)
    return params


# ---------------------------------------------------------------------------
# Network forward / backward
# ---------------------------------------------------------------------------

@dataclass
class CondConvCache:
    """What :func:`condconv_backward` needs: per-layer inputs, the routing weights
    and the synthesized per-example block parameters."""

    blocks: tuple[int, ...]
    inputs: dict[str, np.ndarray] = field(default_factory=dict)   # layer name -> its input
    routing: dict[int, np.ndarray] = field(default_factory=dict)  # block -> r (B, N)
    block_params: dict[int, dict] = field(default_factory=dict)   # block -> params it ran with
    features: np.ndarray | None = None
    new_state: dict[str, np.ndarray] = field(default_factory=dict)
    train: bool = False
    dropout_mask: np.ndarray | None = None


def _expert_blocks(params, blocks, fn) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {i: [] for i in blocks}
    for key in params:
        if key.startswith("experts.blocks."):
            i = int(key.split(".")[2])
            if i not in out:
                raise ValueError(f"{fn}: argument 'params' has expert entry '{key}' for a "
                                 f"block outside 'blocks' {list(blocks)}")
            out[i].append(key[len("experts."):])
    return out


def condconv_forward(arch: Arch, params, x, *, blocks, train: bool, dropout_mask=None):
    """CondConv MobileNet: x ``(B, R, R, 3)`` -> ``(logits (B, K), CondConvCache)``.

    ``dropout_mask`` ``(B, F)``: the classifier dropout mask (train mode only;
    None = no dropout).
    """
    fn = "condconv_forward"
    idx = check_condconv_blocks(arch, blocks, fn=fn)
    experts = _expert_blocks(params, idx, fn)
    cache = CondConvCache(blocks=idx, train=bool(train), dropout_mask=dropout_mask)
    n = None
    cache.inputs["stem"] = x
    h, s = stem_forward(arch, params, x, train=train)
    cache.new_state.update(s)
    for spec in arch.blocks:
        i = spec.index
        cache.inputs[spec.name] = h
        p = params
        if i in experts:
            for suffix in ("kernel", "bias"):
                if f"routing.blocks.{i}.{suffix}" not in params:
                    raise ValueError(f"{fn}: argument 'params' is missing "
                                     f"'routing.blocks.{i}.{suffix}' (CondConv block L{i})")
            kern = params[f"routing.blocks.{i}.kernel"]
            if n is None:
                n = kern.shape[1]
            if kern.shape[1] != n:
                raise ValueError(f"{fn}: argument 'params' routing.blocks.{i}.kernel has "
                                 f"{kern.shape[1]} experts, expected {n}")
            r = condconv_routing(h, kern, params[f"routing.blocks.{i}.bias"])
            p = {k: v for k, v in params.items() if not k.startswith(("experts.", "routing."))}
            for name in experts[i]:
                p[name] = synthesize(params[f"experts.{name}"], r)
            cache.routing[i] = r
            cache.block_params[i] = p
        h, s = block_forward(arch, _plain(p), i, h, train=train)
        cache.new_state.update(s)
    cache.inputs["head.conv"] = h
    h, s = head_conv_forward(arch, params, h, train=train)
    cache.new_state.update(s)
    cache.inputs["head.pool"] = h
    h, _ = head_pool_forward(arch, h)
    if arch.pre_logits_channels is not None:
        cache.inputs["head.pre_logits"] = h
        h, _ = pre_logits_forward(arch, params, h)
    cache.features = h
    logits, _ = logits_forward(arch, params, h, train=train, dropout_mask=dropout_mask)
    return logits, cache


def _plain(params):
    return {k: v for k, v in params.items() if not k.startswith(("experts.", "routing."))}


def condconv_backward(arch: Arch, params, cache: CondConvCache, dlogits) -> dict:
    """VJP of :func:`condconv_forward`: gradients of every trainable parameter
    (shared names, ``experts.*``, ``routing.*``) plus ``"input"``."""
    tr = cache.train
    grads: dict[str, np.ndarray] = {}

    def take(g):
        d = g.pop("input")
        for k, v in g.items():
            grads[k] = grads.get(k, 0.0) + v
        return d

    d = take(logits_backward(arch, params, cache.features, dlogits, train=tr,
                             dropout_mask=cache.dropout_mask))
    if arch.pre_logits_channels is not None:
        d = take(pre_logits_backward(arch, params, cache.inputs["head.pre_logits"], d))
    d = take(head_pool_backward(arch, cache.inputs["head.pool"], d))
    d = take(head_conv_backward(arch, params, cache.inputs["head.conv"], d, train=tr))
    for spec in reversed(arch.blocks):
        i = spec.index
        x_in = cache.inputs[spec.name]
        if i not in cache.routing:
            d = take(block_backward(arch, _plain(params), i, x_in, d, train=tr))
            continue
        p = cache.block_params[i]
        r = cache.routing[i]
        g = block_backward(arch, p, i, x_in, d, train=tr)
        d = g.pop("input")
        dr = np.zeros_like(r)
        for name, v in g.items():
            ek = f"experts.{name}"
            if ek in params:
                d_exp, d_r = synthesize_vjp(params[ek], r, v)
                grads[ek] = d_exp
                dr += d_r
            else:
                grads[name] = grads.get(name, 0.0) + v
        kern, bias = params[f"routing.blocks.{i}.kernel"], params[f"routing.blocks.{i}.bias"]
        dx_r, dk, db = condconv_routing_vjp(x_in, kern, bias, dr)
        grads[f"routing.blocks.{i}.kernel"] = dk
        grads[f"routing.blocks.{i}.bias"] = db
        d = d + dx_r
    grads["input"] = take(stem_backward(arch, params, cache.inputs["stem"], d, train=tr))
    return grads

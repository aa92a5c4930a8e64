"""``JaxBackend``: the JAX port behind the conformance protocol.

One runner per case kind (docs/porting.md, "Case kinds"). Each runner builds a
pure function of the case's arrays whose static configuration (strides,
padding, arch, train flag, tier, ...) is closed over, ``jax.jit``-compiles it
once per (kind, static config, tier) and keeps the compiled function in a
per-backend cache; jit's own cache then covers the shapes. Backward outputs
are ``jax.vjp`` of the forward contracted with the case's cotangent, so the
goldens check autodiff against the oracle's hand-written VJPs.

Precision (``precision.py``): every contraction gets the tier's
``lax.Precision`` explicitly and traces run under the matching
``jax.default_matmul_precision``. In the bf16 tier the op kinds cast every
floating input to bfloat16; the network kinds cast parameters and activations
but keep BN moving statistics, master weights and optimizer state in float32.
Outputs are returned as float32 numpy arrays.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from conformance.backends.jax_backend import basis as jbasis
from conformance.backends.jax_backend import model as jmodel
from conformance.backends.jax_backend import ops as jops
from conformance.backends.jax_backend import train as jtrain
from conformance.backends.jax_backend.precision import (
    TIERS,
    Tier,
    cast_tree,
    get_tier,
    tier_context,
)
from conformance.protocol import SUITES, Backend, CaseView, UnsupportedCase

__all__ = ["JaxBackend"]


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _padding(p):
    # JSON stores explicit padding as nested lists; resolve_padding wants pairs.
    if isinstance(p, str):
        return p
    return tuple(tuple(int(v) for v in side) for side in p)


def _stride(s):
    return tuple(int(v) for v in s) if isinstance(s, (list, tuple)) else int(s)


def _prefixed(inputs: Mapping, prefix: str) -> dict:
    n = len(prefix)
    return {k[n:]: v for k, v in inputs.items() if k.startswith(prefix)}


def _to_numpy(tree):
    def conv(a):
        a = np.asarray(a)
        return a.astype(np.float32) if a.dtype.kind == "f" or a.dtype == jnp.bfloat16 else a
    return jax.tree_util.tree_map(conv, tree)


def _arch_from_config(cfg: Mapping):
    # {"name", "multiplier", "resolution", "num_classes", ["options": {...}]}:
    # the optional builder options (e.g. scale_final) go to get_arch as keywords.
    from refbasis.arch import get_arch
    kw = {k: v for k, v in cfg.items() if k not in ("name", "options")}
    kw.update(cfg.get("options") or {})
    return get_arch(cfg["name"], **kw)


def _vjp(f, primals, cotangent, has_aux=False):
    if has_aux:
        y, pull, aux = jax.vjp(f, *primals, has_aux=True)
        return y, pull(cotangent), aux
    y, pull = jax.vjp(f, *primals)
    return y, pull(cotangent)


# --------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------


class JaxBackend(Backend):
    """JAX/XLA port of the oracle (every suite, tiers highest / tf32 / bf16).

    ``per_example``: implementation of per-example convolutions ("grouped",
    the measured default, or "vmap"); see ``ops.PER_EXAMPLE_IMPLS``.
    """

    name = "jax"
    supported_suites = SUITES
    tiers = tuple(TIERS)

    def __init__(self, per_example: str | None = None):
        if per_example is not None and per_example not in jops.PER_EXAMPLE_IMPLS:
            raise ValueError(f"JaxBackend: argument 'per_example' must be one of "
                             f"{list(jops.PER_EXAMPLE_IMPLS)} or None, got {per_example!r}")
        self.per_example = per_example
        self._cache: dict = {}

    def describe(self) -> str:
        devs = ", ".join(str(d) for d in jax.devices())
        return (f"jax {jax.__version__} on {devs} (suites: {', '.join(self.supported_suites)}; "
                f"tiers: {', '.join(self.tiers)}; per-example conv: "
                f"{self.per_example or jops.DEFAULT_PER_EXAMPLE})")

    # -- protocol ----------------------------------------------------------

    def run(self, case: CaseView, tier: str) -> dict[str, np.ndarray]:
        t = get_tier(tier)
        runner = _RUNNERS.get(case.kind)
        if runner is None:
            raise UnsupportedCase(f"jax backend: unknown case kind {case.kind!r}")
        with tier_context(t):
            out = runner(self, case, t)
        return self._select(case, out)

    def run_layer(self, case: CaseView, layer: str, inputs: Mapping, tier: str):
        t = get_tier(tier)
        runner = _LAYER_RUNNERS.get(case.kind)
        if runner is None:
            raise NotImplementedError(f"jax backend: no layer isolation for {case.kind!r}")
        with tier_context(t):
            return _to_numpy(runner(self, case, layer, inputs, t))

    # -- machinery ---------------------------------------------------------

    @staticmethod
    def _select(case: CaseView, out: Mapping) -> dict[str, np.ndarray]:
        out = _to_numpy(dict(out))
        if not case.output_names:
            return out
        missing = [n for n in case.output_names if n not in out]
        if missing:
            raise KeyError(f"jax backend: case {case.id} ({case.kind}) asks for outputs this "
                           f"backend did not compute: {missing[:5]}")
        return {n: out[n] for n in case.output_names}

    def compiled(self, key, build: Callable[[], Callable]):
        """The jitted function for ``key`` (built by ``build()`` on first use)."""
        fn = self._cache.get(key)
        if fn is None:
            fn = self._cache[key] = jax.jit(build())
        return fn

    def key(self, case: CaseView, t: Tier, *extra):
        return (case.kind, json.dumps(case.config, sort_keys=True, default=str), t.name,
                self.per_example) + extra


# --------------------------------------------------------------------------
# Op kinds: cast every floating input to the tier dtype, forward + vjp
# --------------------------------------------------------------------------


def _op(self, case, t, names, fn):
    """Run ``fn(*arrays)`` (which returns a dict) jitted, inputs cast to the tier."""
    def build():
        def wrapped(*args):
            return fn(*cast_tree(args, t.dtype))
        return wrapped
    args = [jnp.asarray(case.inputs[n]) for n in names]
    return self.compiled(self.key(case, t), build)(*args)


def _run_conv2d(self, case, t):
    c = case.config
    kw = dict(stride=_stride(c.get("stride", 1)), padding=_padding(c.get("padding", "SAME")),
              precision=t.precision, per_example=self.per_example)
    groups = int(c.get("groups", 1))

    def fn(x, w, dy):
        y, (dx, dw) = _vjp(lambda x, w: jops.conv2d(x, w, groups=groups, **kw), (x, w), dy)
        return {"y": y, "dx": dx, "dw": dw}
    return _op(self, case, t, ["x", "w", "dy"], fn)


def _run_depthwise(self, case, t):
    c = case.config
    kw = dict(stride=_stride(c.get("stride", 1)), padding=_padding(c.get("padding", "SAME")),
              precision=t.precision, per_example=self.per_example)

    def fn(x, w, dy):
        y, (dx, dw) = _vjp(lambda x, w: jops.depthwise_conv2d(x, w, **kw), (x, w), dy)
        return {"y": y, "dx": dx, "dw": dw}
    return _op(self, case, t, ["x", "w", "dy"], fn)


def _run_batch_norm(self, case, t):
    c = case.config
    train, eps, decay = bool(c["train"]), float(c.get("eps", 1e-3)), float(c.get("decay", 0.997))

    def fn(x, g, b, mm, mv, dy):
        def f(x, g, b):
            y, _, _ = jops.batch_norm(x, g, b, mm, mv, train=train, eps=eps, decay=decay)
            return y
        y, (dx, dg, db) = _vjp(f, (x, g, b), dy)
        _, nm, nv = jops.batch_norm(x, g, b, mm, mv, train=train, eps=eps, decay=decay)
        return {"y": y, "new_moving_mean": nm, "new_moving_var": nv,
                "dx": dx, "dgamma": dg, "dbeta": db}
    return _op(self, case, t, ["x", "gamma", "beta", "moving_mean", "moving_var", "dy"], fn)


def _run_activation(self, case, t):
    name = case.config["name"]

    def fn(x, dy):
        y, (dx,) = _vjp(lambda x: jops.apply_activation(name, x), (x,), dy)
        return {"y": y, "dx": dx}
    return _op(self, case, t, ["x", "dy"], fn)


def _run_dense(self, case, t):
    has_bias = bool(case.config.get("has_bias", True))
    if has_bias:
        def fn(x, w, b, dy):
            y, (dx, dw, db) = _vjp(lambda x, w, b: jops.dense(x, w, b, precision=t.precision),
                                   (x, w, b), dy)
            return {"y": y, "dx": dx, "dw": dw, "db": db}
        return _op(self, case, t, ["x", "w", "b", "dy"], fn)

    def fn_nb(x, w, dy):
        y, (dx, dw) = _vjp(lambda x, w: jops.dense(x, w, None, precision=t.precision),
                           (x, w), dy)
        return {"y": y, "dx": dx, "dw": dw}
    return _op(self, case, t, ["x", "w", "dy"], fn_nb)


def _run_gap(self, case, t):
    def fn(x, dy):
        y, (dx,) = _vjp(jops.global_avg_pool, (x,), dy)
        return {"y": y, "dx": dx}
    return _op(self, case, t, ["x", "dy"], fn)


def _run_dropout(self, case, t):
    def fn(x, mask, dy):
        y, (dx,) = _vjp(lambda x: jops.dropout(x, mask), (x,), dy)
        return {"y": y, "dx": dx}
    return _op(self, case, t, ["x", "mask", "dy"], fn)


def _run_se(self, case, t):
    c = case.config
    kw = dict(gate=c.get("gate", "hard_sigmoid"), inner=c.get("inner", "relu"),
              precision=t.precision)

    def fn(x, w1, b1, w2, b2, dy):
        y, g = _vjp(lambda *a: jops.squeeze_excite(*a, **kw), (x, w1, b1, w2, b2), dy)
        return dict(zip(["y", "dx", "dw1", "db1", "dw2", "db2"], (y,) + tuple(g), strict=True))
    return _op(self, case, t, ["x", "w1", "b1", "w2", "b2", "dy"], fn)


def _run_softmax(self, case, t):
    f = jops.log_softmax if case.config.get("log", False) else jops.softmax

    def fn(z, dy):
        # softmax accumulates in float32 for bf16 inputs: match the cotangent.
        y, pull = jax.vjp(f, z)
        (dz,) = pull(dy.astype(y.dtype))
        return {"y": y, "dz": dz}
    return _op(self, case, t, ["z", "dy"], fn)


def _run_xent(self, case, t):
    c = case.config
    ls = float(c.get("label_smoothing", 0.0))

    def fn(logits, labels, dloss):
        y, pull = jax.vjp(lambda z: jops.softmax_cross_entropy(z, labels, label_smoothing=ls),
                          logits)
        (dz,) = pull(dloss.astype(y.dtype))
        return {"loss": y, "dlogits": dz}
    return _op(self, case, t, ["logits", "labels", "dloss"], fn)


def _run_distill(self, case, t):
    temp = float(case.config["temperature"])

    def fn(zs, zt, dloss):
        y, pull = jax.vjp(lambda z: jops.distillation_loss(z, zt, temperature=temp), zs)
        (dz,) = pull(dloss.astype(y.dtype))
        return {"loss": y, "dstudent": dz}
    return _op(self, case, t, ["student_logits", "teacher_logits", "dloss"], fn)


def _run_synthesize(self, case, t):
    def fn(bases, alpha, dw):
        y, (db, da) = _vjp(lambda b, a: jbasis.synthesize(b, a, precision=t.precision),
                           (bases, alpha), dw)
        return {"w": y, "dbases": db, "dalpha": da}
    return _op(self, case, t, ["bases", "alpha", "dw"], fn)


def _run_coef_head(self, case, t):
    c = case.config
    kw = dict(num_layers=int(c["num_layers"]), num_bases=int(c["num_bases"]),
              normalization=c.get("normalization", "softmax"), precision=t.precision)

    def fn(f, k, b, da):
        y, pull = jax.vjp(lambda f, k, b: jbasis.coefficient_head(f, k, b, **kw)[0], f, k, b)
        df, dk, db = pull(da.astype(y.dtype))
        return {"alpha": y, "dfeatures": df, "dkernel": dk, "dbias": db}
    return _op(self, case, t, ["features", "kernel", "bias", "dalpha"], fn)


def _run_eps_mix(self, case, t):
    eps = float(case.config["eps"])

    def fn(alpha, d):
        y, (da,) = _vjp(lambda a: jbasis.epsilon_mix(a, eps), (alpha,), d)
        return {"mixed": y, "dalpha": da}
    return _op(self, case, t, ["alpha", "dmixed"], fn)


def _run_basis_dropout(self, case, t):
    def fn(alpha, mask, d):
        y, (da,) = _vjp(lambda a: jbasis.apply_basis_dropout(a, mask), (alpha,), d)
        return {"out": y, "dalpha": da}
    return _op(self, case, t, ["alpha", "mask", "dout"], fn)


# --------------------------------------------------------------------------
# Network kinds: block, model
# --------------------------------------------------------------------------


def _split_params(params: Mapping):
    train = {k: v for k, v in params.items() if not k.endswith(jmodel.STATE_SUFFIXES)}
    state = {k: v for k, v in params.items() if k.endswith(jmodel.STATE_SUFFIXES)}
    return train, state


def _net_grads(fwd, params, x, cot):
    """Forward + vjp of ``fwd(params, x) -> (y, aux)`` w.r.t. trainable params and x."""
    tp, sp = _split_params(params)
    y, pull, aux = jax.vjp(lambda tp, x: fwd({**sp, **tp}, x), tp, x, has_aux=True)
    gp, gx = pull(cot.astype(y.dtype))
    return y, gp, gx, aux


def _block_arch(case):
    c = case.config
    arch = _arch_from_config(c["arch"])
    over = {k: c[k] for k in ("se_gate", "se_inner", "bn_eps", "bn_decay", "padding") if k in c}
    if over:
        arch = dataclasses.replace(arch, **over)
    idx = int(c["block_index"])
    spec = arch.block(idx)
    want = c.get("block")
    if want:
        got = {k: getattr(spec, k) for k in want}
        if got != want:
            raise ValueError(f"jax backend: case {case.id}: block L{idx} of {c['arch']} "
                             f"resolves to {got}, the case says {want}")
    return arch, idx


def _run_block(self, case, t):
    arch, idx = _block_arch(case)
    train = bool(case.config["train"])
    dtype = None if t.dtype == jnp.float32 else t.dtype

    def build():
        def fn(params, x, dy):
            def fwd(p, x):
                y, st = jmodel.block_forward(arch, p, idx, x, train=train,
                                             precision=t.precision,
                                             per_example=self.per_example, dtype=dtype)
                return y, st
            y, gp, gx, st = _net_grads(fwd, params, x, dy)
            out = {"y": y, "dx": gx}
            out.update({f"grad/{k}": v for k, v in gp.items()})
            if train:
                out.update({f"state/{k}": v for k, v in st.items()})
            return out
        return fn
    params = {k: jnp.asarray(v) for k, v in _prefixed(case.inputs, "params/").items()}
    return self.compiled(self.key(case, t), build)(params, jnp.asarray(case.inputs["x"]),
                                                   jnp.asarray(case.inputs["dy"]))


def _run_model(self, case, t):
    arch = _arch_from_config(case.config["arch"])
    train = bool(case.config["train"])
    dtype = None if t.dtype == jnp.float32 else t.dtype

    def build():
        def fn(params, x, dlogits, mask):
            def fwd(p, x):
                return jmodel.forward(arch, p, x, train=train, dropout_mask=mask,
                                      precision=t.precision, per_example=self.per_example,
                                      dtype=dtype)
            y, gp, gx, aux = _net_grads(fwd, params, x, dlogits)
            out = {"logits": y, "features": aux["features"], "grad/input": gx}
            out.update({f"act/{k}": v for k, v in aux["activations"].items()})
            out.update({f"grad/{k}": v for k, v in gp.items()})
            if train:
                out.update({f"state/{k}": v for k, v in aux["new_state"].items()})
            return out
        return fn
    params = {k: jnp.asarray(v) for k, v in _prefixed(case.inputs, "params/").items()}
    mask = case.inputs.get("dropout_mask")
    mask = None if mask is None else jnp.asarray(mask)
    return self.compiled(self.key(case, t, mask is None), build)(
        params, jnp.asarray(case.inputs["x"]), jnp.asarray(case.inputs["dlogits"]), mask)


def _layer_model(self, case, layer, inputs, t):
    arch = _arch_from_config(case.config["arch"])
    train = bool(case.config["train"])
    dtype = None if t.dtype == jnp.float32 else t.dtype

    def build():
        def fn(params, x, mask):
            y, _ = jmodel.layer_forward(arch, params, layer, x, train=train, dropout_mask=mask,
                                        precision=t.precision, per_example=self.per_example,
                                        dtype=dtype)
            return {"y": y}
        return fn
    params = {k: jnp.asarray(v) for k, v in _prefixed(inputs, "params/").items()}
    mask = inputs.get("dropout_mask")
    mask = None if mask is None else jnp.asarray(mask)
    return self.compiled(self.key(case, t, "layer", layer, mask is None), build)(
        params, jnp.asarray(inputs["x"]), mask)


# --------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------


def _run_schedule(self, case, t):
    c = dict(case.config)
    name = c.pop("name")
    steps = np.asarray(case.inputs["steps"])
    if name in ("learning_rate", "lr"):
        vals = jtrain.learning_rate(jnp.asarray(steps), **c)
    elif name in ("mixing_epsilon", "epsilon", "eps"):
        vals = jtrain.mixing_epsilon(jnp.asarray(steps), **c)
    elif name in ("ema_decay",):
        vals = jtrain.ema_decay(c.get("decay", 0.9999), jnp.asarray(steps))
    else:
        raise UnsupportedCase(f"jax backend: unknown schedule {name!r}")
    return {"values": vals}


_RUNNERS = {
    "conv2d": _run_conv2d,
    "depthwise_conv2d": _run_depthwise,
    "batch_norm": _run_batch_norm,
    "activation": _run_activation,
    "dense": _run_dense,
    "global_avg_pool": _run_gap,
    "dropout": _run_dropout,
    "squeeze_excite": _run_se,
    "softmax": _run_softmax,
    "softmax_cross_entropy": _run_xent,
    "distillation_loss": _run_distill,
    "synthesize": _run_synthesize,
    "coefficient_head": _run_coef_head,
    "epsilon_mix": _run_eps_mix,
    "basis_dropout": _run_basis_dropout,
    "block": _run_block,
    "model": _run_model,
    "schedule": _run_schedule,
}

_LAYER_RUNNERS = {
    "model": _layer_model,
}

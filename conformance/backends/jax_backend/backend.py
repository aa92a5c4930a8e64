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
    the default, or "vmap"); ``depthwise``: "conv" (default) or "shifted"
    (faster to run on CPU, slower to compile); see ``ops``.
    """

    name = "jax"
    supported_suites = SUITES
    tiers = tuple(TIERS)

    def __init__(self, per_example: str | None = None, depthwise: str | None = None):
        if per_example is not None and per_example not in jops.PER_EXAMPLE_IMPLS:
            raise ValueError(f"JaxBackend: argument 'per_example' must be one of "
                             f"{list(jops.PER_EXAMPLE_IMPLS)} or None, got {per_example!r}")
        if depthwise is not None and depthwise not in jops.DEPTHWISE_IMPLS:
            raise ValueError(f"JaxBackend: argument 'depthwise' must be one of "
                             f"{list(jops.DEPTHWISE_IMPLS)} or None, got {depthwise!r}")
        self.per_example = per_example
        self.depthwise = depthwise
        #: keyword arguments naming the conv implementations, for model/basis calls
        self.impls = {"per_example": per_example, "depthwise": depthwise}
        self._cache: dict = {}

    def describe(self) -> str:
        devs = ", ".join(str(d) for d in jax.devices())
        return (f"jax {jax.__version__} on {devs} (suites: {', '.join(self.supported_suites)}; "
                f"tiers: {', '.join(self.tiers)}; per-example conv: "
                f"{self.per_example or jops.DEFAULT_PER_EXAMPLE}; depthwise: "
                f"{self.depthwise or jops.default_depthwise_impl()})")

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

    #: compiled functions kept (least recently used dropped): a conform run
    #: reuses a function only within a case (train steps, layer isolation), and
    #: every XLA executable holds memory.
    cache_size = 16

    def compiled(self, key, build: Callable[[], Callable]):
        """The jitted function for ``key`` (built by ``build()`` on first use)."""
        fn = self._cache.pop(key, None)
        if fn is None:
            fn = jax.jit(build())
        self._cache[key] = fn
        while len(self._cache) > self.cache_size:
            self._cache.pop(next(iter(self._cache)))
        return fn

    def key(self, case: CaseView, t: Tier, *extra):
        return (case.kind, json.dumps(case.config, sort_keys=True, default=str), t.name,
                self.per_example, self.depthwise) + extra


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
              precision=t.precision, per_example=self.per_example, impl=self.depthwise)

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
                                             **self.impls, dtype=dtype)
                return y, st
            y, gp, gx, st = _net_grads(fwd, params, x, dy)
            out = {"y": y, "dx": gx}
            out.update({f"grad/{k}": v for k, v in gp.items()})
            if train:
                out.update({f"state/{k}": v for k, v in st.items()})
            return out
        return fn
    params = _jax_params(case)
    return self.compiled(self.key(case, t), build)(params, jnp.asarray(case.inputs["x"]),
                                                   jnp.asarray(case.inputs["dy"]))


def _jax_params(case):
    """The case's flat parameter dict (inputs prefixed "params/") as JAX arrays."""
    return {k: jnp.asarray(v) for k, v in _prefixed(case.inputs, "params/").items()}


def _net_outputs(y, gp, gx, aux, train):
    """Outputs every network-shaped case names alike (docs/porting.md): logits,
    grad/input, act/<layer>, grad/<param> and, in train mode, state/<bn stat>."""
    out = {"logits": y, "grad/input": gx}
    out.update({f"act/{k}": v for k, v in aux["activations"].items()})
    out.update({f"grad/{k}": v for k, v in gp.items()})
    if train:
        out.update({f"state/{k}": v for k, v in aux["new_state"].items()})
    return out


def _call_net(self, case, t, build, mask):
    """Compile (cached per mask presence) and run fn(params, x, dlogits, mask)."""
    mask = None if mask is None else jnp.asarray(mask)
    return self.compiled(self.key(case, t, mask is None), build)(
        _jax_params(case), jnp.asarray(case.inputs["x"]),
        jnp.asarray(case.inputs["dlogits"]), mask)


def _run_model(self, case, t):
    arch = _arch_from_config(case.config["arch"])
    train = bool(case.config["train"])
    dtype = None if t.dtype == jnp.float32 else t.dtype

    def build():
        def fn(params, x, dlogits, mask):
            def fwd(p, x):
                return jmodel.forward(arch, p, x, train=train, dropout_mask=mask,
                                      precision=t.precision, **self.impls,
                                      dtype=dtype)
            y, gp, gx, aux = _net_grads(fwd, params, x, dlogits)
            return {**_net_outputs(y, gp, gx, aux, train), "features": aux["features"]}
        return fn
    return _call_net(self, case, t, build, case.inputs.get("dropout_mask"))


def _layer_model(self, case, layer, inputs, t):
    arch = _arch_from_config(case.config["arch"])
    train = bool(case.config["train"])
    dtype = None if t.dtype == jnp.float32 else t.dtype

    def build():
        def fn(params, x, mask):
            y, _ = jmodel.layer_forward(arch, params, layer, x, train=train, dropout_mask=mask,
                                        precision=t.precision, **self.impls,
                                        dtype=dtype)
            return {"y": y}
        return fn
    params = {k: jnp.asarray(v) for k, v in _prefixed(inputs, "params/").items()}
    mask = inputs.get("dropout_mask")
    mask = None if mask is None else jnp.asarray(mask)
    return self.compiled(self.key(case, t, "layer", layer, mask is None), build)(
        params, jnp.asarray(inputs["x"]), mask)


# --------------------------------------------------------------------------
# BasisNet kinds: basisnet, early_exit, condconv
# --------------------------------------------------------------------------


def _basisnet_config(cfg: Mapping):
    """The oracle's ``BasisNetConfig`` described by a case config (docs/porting.md)."""
    from refbasis.basis.config import BasisNetConfig

    return BasisNetConfig(
        light=_arch_from_config(cfg["light"]), specialist=_arch_from_config(cfg["specialist"]),
        num_bases=int(cfg["num_bases"]),
        per_basis_layers=tuple(int(v) for v in cfg["per_basis_layers"]),
        per_basis_kinds=frozenset(cfg["per_basis_kinds"]),
        coefficient_normalization=cfg.get("coefficient_normalization", "softmax"),
        basis_dropout_rate=float(cfg.get("basis_dropout_rate", 0.0)),
        dropout_granularity=cfg.get("dropout_granularity", "example"))


_BASISNET_MASKS = ("basis_mask", "light_dropout_mask", "specialist_dropout_mask")


def _masks(inputs, train):
    if not train:
        return {}
    return {m: jnp.asarray(inputs[m]) for m in _BASISNET_MASKS if m in inputs}


def _run_basisnet(self, case, t):
    c = case.config
    bc = _basisnet_config(c)
    train, eps = bool(c["train"]), float(c.get("eps", 0.0))
    dtype = None if t.dtype == jnp.float32 else t.dtype

    def build():
        def fn(params, xl, xs, dzl, dzs, masks):
            tp, sp = _split_params(params)

            def fwd(tp, xl, xs):
                zl, zs, aux = jbasis.basisnet_forward(
                    bc, {**sp, **tp}, xl, xs, train=train, eps=eps, precision=t.precision,
                    **self.impls, dtype=dtype, **masks)
                return (zl, zs), aux
            (zl, zs), pull, aux = jax.vjp(fwd, tp, xl, xs, has_aux=True)
            gp, gxl, gxs = pull((dzl.astype(zl.dtype), dzs.astype(zs.dtype)))
            out = {"light_logits": zl, "specialist_logits": zs,
                   "light_features": aux["features"],
                   "grad/input.light": gxl, "grad/input.specialist": gxs}
            for k in ("coef/logits", "coef/alpha_head", "coef/alpha_mixed", "coef/alpha"):
                out[k] = aux[k]
            for part in ("light", "specialist"):
                out.update({f"act/{part}.{k}": v
                            for k, v in aux[part]["activations"].items()})
            out.update({f"grad/{k}": v for k, v in gp.items()})
            if train:
                out.update({f"state/{k}": v for k, v in aux["new_state"].items()})
            return out
        return fn
    ins = case.inputs
    params = {k: jnp.asarray(v) for k, v in _prefixed(ins, "params/").items()}
    masks = _masks(ins, train)
    return self.compiled(self.key(case, t, tuple(sorted(masks))), build)(
        params, jnp.asarray(ins["x_light"]), jnp.asarray(ins["x_specialist"]),
        jnp.asarray(ins["dlight_logits"]), jnp.asarray(ins["dspecialist_logits"]), masks)


def _layer_basisnet(self, case, layer, inputs, t):
    c = case.config
    bc = _basisnet_config(c)
    train, eps = bool(c["train"]), float(c.get("eps", 0.0))
    dtype = None if t.dtype == jnp.float32 else t.dtype
    params = {k: jnp.asarray(v) for k, v in _prefixed(inputs, "params/").items()}
    masks = _masks(inputs, train)

    def build():
        def fn(params, x, alpha, masks):
            if dtype is not None:
                params = {k: (v if k.endswith(jmodel.STATE_SUFFIXES) else v.astype(dtype))
                          for k, v in params.items()}
            if layer == "coefficients":
                names = ("coef/logits", "coef/alpha_head", "coef/alpha_mixed", "coef/alpha")
                vals = jbasis.coefficients(bc, params, x.astype(dtype or x.dtype), eps=eps,
                                           train=train, basis_mask=masks.get("basis_mask"),
                                           precision=t.precision)
                return dict(zip(names, vals, strict=True))
            part, _, sub = layer.partition(".")
            if part == "light":
                arch, tree = bc.light, jbasis._sub(params, jbasis.LIGHT)
                mask = masks.get("light_dropout_mask")
            else:
                arch = bc.specialist
                tree = jbasis.synthesize_specialist_params(bc, params, alpha.astype(
                    dtype or alpha.dtype), precision=t.precision)
                mask = masks.get("specialist_dropout_mask")
            y, _ = jmodel.layer_forward(arch, tree, sub, x, train=train, dropout_mask=mask,
                                        precision=t.precision, **self.impls,
                                        dtype=dtype)
            return {"y": y}
        return fn
    x = inputs["features"] if layer == "coefficients" else inputs["x"]
    alpha = inputs.get("alpha")
    return self.compiled(self.key(case, t, "layer", layer, tuple(sorted(masks)),
                                  alpha is None), build)(
        params, jnp.asarray(x), None if alpha is None else jnp.asarray(alpha), masks)


def _run_early_exit(self, case, t):
    c = case.config
    thr = float(c["threshold"])

    def fn(zl, zs):
        pred, exited = jbasis.early_exit_predictions(zl, zs, thr)
        top = jnp.max(jops.softmax(zl), axis=-1)
        return {"top_probability": top, "exited": exited, "predictions": pred,
                "share_exited": jnp.mean(exited.astype(jnp.float32))}
    out = _op(self, case, t, ["light_logits", "specialist_logits"], fn)
    out = dict(out)
    exited = np.asarray(out["exited"], dtype=bool)
    out["exited"] = exited
    out["predictions"] = np.asarray(out["predictions"]).astype(np.int64)
    # The cost model is plain arithmetic on the decisions (refbasis.basis.early_exit).
    share = float(np.mean(exited))
    out["average_madds"] = np.asarray(
        c["light_madds"] + (1.0 - share) * (c["synthesis_madds"] + c["specialist_madds"]))
    return out


def _condconv_setup(case, t):
    """(arch, routed blocks, train flag, compute dtype or None for float32) of a condconv case."""
    c = case.config
    return (_arch_from_config(c["arch"]), tuple(int(b) for b in c["blocks"]), bool(c["train"]),
            None if t.dtype == jnp.float32 else t.dtype)


def _run_condconv(self, case, t):
    arch, blocks, train, dtype = _condconv_setup(case, t)

    def build():
        def fn(params, x, dlogits, mask):
            def fwd(p, x):
                return jbasis.condconv_forward(arch, p, x, blocks=blocks, train=train,
                                               dropout_mask=mask, precision=t.precision,
                                               **self.impls, dtype=dtype)
            y, gp, gx, aux = _net_grads(fwd, params, x, dlogits)
            out = _net_outputs(y, gp, gx, aux, train)
            out.update({f"routing/blocks.{i}": r for i, r in aux["routing"].items()})
            return out
        return fn
    return _call_net(self, case, t, build, case.inputs.get("dropout_mask") if train else None)


def _layer_condconv(self, case, layer, inputs, t):
    arch, blocks, train, dtype = _condconv_setup(case, t)

    def build():
        def fn(params, x, mask):
            if dtype is not None:
                params = {k: (v if k.endswith(jmodel.STATE_SUFFIXES) else v.astype(dtype))
                          for k, v in params.items()}
                x = x.astype(dtype)
            plain = {k: v for k, v in params.items()
                     if not k.startswith(("experts.", "routing."))}
            out = {}
            if layer.startswith("blocks.") and int(layer.split(".")[1]) in blocks:
                i = int(layer.split(".")[1])
                r = jbasis.condconv_routing(x, params[f"routing.blocks.{i}.kernel"],
                                            params[f"routing.blocks.{i}.bias"],
                                            precision=t.precision)
                for k, v in params.items():
                    if k.startswith(f"experts.blocks.{i}."):
                        plain[k[len("experts."):]] = jbasis.synthesize(v, r,
                                                                       precision=t.precision)
                out["routing"] = r
            out["y"], _ = jmodel.layer_forward(arch, plain, layer, x, train=train,
                                               dropout_mask=mask, precision=t.precision,
                                               **self.impls)
            return out
        return fn
    params = {k: jnp.asarray(v) for k, v in _prefixed(inputs, "params/").items()}
    mask = inputs.get("dropout_mask") if train else None
    mask = None if mask is None else jnp.asarray(mask)
    return self.compiled(self.key(case, t, "layer", layer, mask is None), build)(
        params, jnp.asarray(inputs["x"]), mask)


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------

_STEP_MASKS = ("dropout_mask", "basis_mask", "light_dropout_mask", "specialist_dropout_mask")


def _train_setup(self, case, t):
    """(step_fn jitted, TrainConfig) for a train_steps case."""
    from refbasis.train.step import TrainConfig

    c = case.config
    tconf = TrainConfig.from_dict({k: v for k, v in c["recipe"].items() if k != "model"})
    m = c["model"]
    dtype = None if t.dtype == jnp.float32 else t.dtype
    kw = dict(precision=t.precision, dtype=dtype, **self.impls)
    if m["type"] == "mobilenet":
        arch = _arch_from_config(m["arch"])

        def apply(params, batch, eps):
            logits, aux = jmodel.forward(arch, params, batch["image"], train=True,
                                         dropout_mask=batch.get("dropout_mask"), **kw)
            return {"logits": logits}, aux["new_state"]
    else:
        bc = _basisnet_config(m["basisnet"])

        def apply(params, batch, eps):
            zl, zs, aux = jbasis.basisnet_forward(
                bc, params, batch["image_light"], batch["image"], train=True, eps=eps,
                basis_mask=batch.get("basis_mask"),
                light_dropout_mask=batch.get("light_dropout_mask"),
                specialist_dropout_mask=batch.get("specialist_dropout_mask"), **kw)
            return {"light": zl, "specialist": zs}, aux["new_state"]

    fn = self.compiled(self.key(case, t, "step"),
                       lambda: jtrain.make_train_step(apply, tconf))
    return fn, tconf


def _batch(inputs, prefix=""):
    b = {"image": jnp.asarray(inputs["x"]), "label": jnp.asarray(inputs["labels"])}
    if "x_light" in inputs:
        b["image_light"] = jnp.asarray(inputs["x_light"])
    if "teacher_logits" in inputs:
        b["teacher_logits"] = jnp.asarray(inputs["teacher_logits"])
    for m in _STEP_MASKS:
        if prefix + m in inputs:
            b[m] = jnp.asarray(inputs[prefix + m])
    return b


def _state_out(params, opt, ema, metrics) -> dict:
    out = {f"params/{k}": v for k, v in params.items()}
    for slot, d in opt.items():
        out.update({f"opt/{slot}/{k}": v for k, v in d.items()})
    if ema is not None:
        out.update({f"ema/{k}": v for k, v in ema.items()})
    for k in ("loss", "lr", "grad_norm"):
        out[k] = metrics[k]
    return out


def _run_train_steps(self, case, t):
    fn, tconf = _train_setup(self, case, t)
    params = _jax_params(case)
    opt, ema = jtrain.init_train_state(params, tconf)
    out = {}
    start = int(case.config.get("start_step", 0))
    for k in range(1, int(case.config["steps"]) + 1):
        params, opt, ema, metrics = fn(params, opt, ema, _batch(case.inputs, f"step{k}/"),
                                       jnp.asarray(start + k - 1, jnp.int32))
        out.update({f"step{k}/{n}": v for n, v in _state_out(params, opt, ema, metrics).items()})
    return out


def _layer_train_steps(self, case, layer, inputs, t):
    fn, tconf = _train_setup(self, case, t)
    k = int(layer[len("step"):])
    params = {n: jnp.asarray(v) for n, v in _prefixed(inputs, "params/").items()}
    opt0, ema0 = jtrain.init_train_state(params, tconf)
    opt_in = _prefixed(inputs, "opt/")
    opt = opt0
    if opt_in:
        opt = {slot: {n: jnp.asarray(opt_in[f"{slot}/{n}"]) for n in opt0[slot]} for slot in opt0}
    ema_in = _prefixed(inputs, "ema/")
    ema = {n: jnp.asarray(v) for n, v in ema_in.items()} if ema_in else ema0
    start = int(case.config.get("start_step", 0))
    params, opt, ema, metrics = fn(params, opt, ema, _batch(inputs),
                                   jnp.asarray(start + k - 1, jnp.int32))
    return _state_out(params, opt, ema, metrics)


# --------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------


def _run_schedule(self, case, t):
    c = case.config
    name = c["name"]
    p = dict(c.get("params", {}))
    # Schedules are float64 in the oracle; steps up to 400K and products like
    # base_lr * step / warmup lose nothing in float32 that the tolerance sees.
    steps = jnp.asarray(np.asarray(case.inputs["steps"]))
    if name == "learning_rate":
        vals = jtrain.learning_rate(steps, **p)
    elif name == "mixing_epsilon":
        vals = jtrain.mixing_epsilon(steps, **p)
    elif name == "ema_decay":
        vals = jtrain.ema_decay(p.get("decay", 0.9999), steps)
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
    "basisnet": _run_basisnet,
    "early_exit": _run_early_exit,
    "condconv": _run_condconv,
    "train_steps": _run_train_steps,
    "schedule": _run_schedule,
}

_LAYER_RUNNERS = {
    "model": _layer_model,
    "basisnet": _layer_basisnet,
    "condconv": _layer_condconv,
    "train_steps": _layer_train_steps,
}

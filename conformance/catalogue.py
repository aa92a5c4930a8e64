"""The case catalogue: every golden case, how its inputs are drawn, and how the
oracle computes its outputs.

A case is a :class:`CaseSpec`: suite, unique name, kind (docs/porting.md,
"Case kinds"), tolerance family, and ``make(rng) -> (config, inputs)`` drawing
the inputs from the explicit ``np.random.Generator`` it is given. The
generator is seeded from the case's id (:func:`case_seed`), so adding,
removing or reordering cases never changes another case.

Inputs are rounded to float32 before the outputs are computed, so the golden
outputs are the oracle's float64 answer *for the stored float32 inputs*
(design.md: backends are compared in float32). Outputs are computed in float64
and stored rounded to float32 (relative error <= 2**-24, under 1% of the
tightest tolerance; this halves the golden set).

:func:`evaluate` is the oracle's answer for one (kind, config, inputs); the
numpy backend calls it too (it *is* the oracle). :func:`evaluate_layer` runs
one layer / step of a layered case alone (``Backend.run_layer``), and
:func:`isolation_inputs` builds, from a golden, the inputs to one layer and the
expected outputs of it.

Oracle functions are always called through their modules (``_conv.conv2d``),
never bound at import time here, so the planted-fault backends of
:mod:`conformance.mutants` reach them.
"""

from __future__ import annotations

import hashlib
import importlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from conformance.golden import GoldenCase
from conformance.protocol import KINDS, SUITES

__all__ = [
    "CaseSpec",
    "case_seed",
    "all_specs",
    "specs_for",
    "build_case",
    "evaluate",
    "evaluate_layer",
    "isolation_inputs",
    "layer_info",
]

F32 = np.float32


def _mod(name: str):
    # Submodules by full name: ``from refbasis.ops import dense`` would get the
    # function re-exported by the package, not the module.
    return importlib.import_module(name)

MAX_DRAWS = 40


@dataclass(frozen=True)
class CaseSpec:
    suite: str
    name: str
    kind: str
    family: str
    make: Callable[[np.random.Generator], tuple[dict, dict]]
    #: Re-draw the inputs (same Generator, continued) until the oracle's own
    #: float32 error on every output is at most this. Deep train-mode networks
    #: with ReLU-type kinks occasionally put a pre-activation within float32
    #: rounding of a kink; a float32 port then takes the other branch and the
    #: case would test luck, not conformance. None = no check.
    max_f32_error: float | None = None

    @property
    def id(self) -> str:
        return f"{self.suite}/{self.name}"


def case_seed(suite: str, name: str) -> int:
    """The case's seed: the first 8 bytes of sha256("<suite>/<name>")."""
    return int.from_bytes(hashlib.sha256(f"{suite}/{name}".encode()).digest()[:8], "little")


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).astype(F32)


def _normal(rng, *shape, scale=1.0) -> np.ndarray:
    return _f32(rng.standard_normal(shape) * scale)


def _uniform(rng, lo, hi, *shape) -> np.ndarray:
    return _f32(rng.uniform(lo, hi, shape))


def _prefixed(prefix: str, d: dict) -> OrderedDict:
    return OrderedDict((f"{prefix}/{k}", v) for k, v in d.items())


def _unprefix(prefix: str, d) -> dict:
    p = prefix + "/"
    return {k[len(p):]: v for k, v in d.items() if k.startswith(p)}


# ===========================================================================
# ops suite
# ===========================================================================

def _conv_case(b, h, w, cin, cout, k, stride, padding, groups=1, per_example=False, kw=None):
    kw_ = k if kw is None else kw
    stride = [stride, stride] if isinstance(stride, int) else list(stride)

    def make(rng):
        _conv = _mod("refbasis.ops.conv")

        x = _normal(rng, b, h, w, cin)
        wshape = (k, kw_, cin // groups, cout)
        if per_example:
            wshape = (b,) + wshape
        wt = _normal(rng, *wshape, scale=1.0 / np.sqrt(k * kw_ * cin / groups))
        pads = _conv.resolve_padding(padding, (h, w), (k, kw_), tuple(stride))
        ho = (h + pads[0][0] + pads[0][1] - k) // stride[0] + 1
        wo = (w + pads[1][0] + pads[1][1] - kw_) // stride[1] + 1
        dy = _normal(rng, b, ho, wo, cout)
        cfg = {"stride": stride, "padding": padding, "groups": groups}
        return cfg, OrderedDict(x=x, w=wt, dy=dy)

    return make


def _dw_case(b, h, w, c, k, stride, padding, per_example=False):
    def make(rng):
        _conv = _mod("refbasis.ops.conv")

        x = _normal(rng, b, h, w, c)
        wshape = ((b,) if per_example else ()) + (k, k, 1, c)
        wt = _normal(rng, *wshape, scale=1.0 / k)
        st = [stride, stride]
        pads = _conv.resolve_padding(padding, (h, w), (k, k), tuple(st))
        ho = (h + pads[0][0] + pads[0][1] - k) // stride + 1
        wo = (w + pads[1][0] + pads[1][1] - k) // stride + 1
        dy = _normal(rng, b, ho, wo, c)
        return {"stride": st, "padding": padding}, OrderedDict(x=x, w=wt, dy=dy)

    return make


def _bn_case(shape, train, eps=1e-3, decay=0.997, per_example=False):
    def make(rng):
        c = shape[-1]
        # A non-zero mean and non-unit scale make the centring and the
        # batch-statistic terms of the VJP matter.
        x = _f32(rng.standard_normal(shape) * rng.uniform(0.5, 2.0, c) + rng.normal(0, 1, c))
        pshape = (shape[0], c) if per_example else (c,)
        gamma = _uniform(rng, 0.5, 1.5, *pshape)
        beta = _normal(rng, *pshape, scale=0.3)
        mm = _normal(rng, c, scale=0.5)
        mv = _uniform(rng, 0.5, 2.0, c)
        dy = _normal(rng, *shape)
        cfg = {"train": train, "eps": eps, "decay": decay}
        return cfg, OrderedDict(x=x, gamma=gamma, beta=beta, moving_mean=mm, moving_var=mv, dy=dy)

    return make


_KINKS = {
    "relu": [0.0],
    "relu6": [0.0, 6.0],
    "hard_sigmoid": [-3.0, 3.0],
    "hard_swish": [-3.0, 3.0],
    "sigmoid": [0.0],
    "identity": [0.0],
}


def _act_case(name):
    def make(rng):
        kinks = _KINKS[name]
        # Values exactly at the kinks, just either side of them, and a spread.
        near = [v + d for v in kinks for d in (-1e-3, 0.0, 1e-3)]
        spread = rng.uniform(-8.0, 8.0, 64 - len(near))
        x = _f32(np.concatenate([near, spread])).reshape(2, 4, 8)
        dy = _normal(rng, 2, 4, 8)
        return {"name": name}, OrderedDict(x=x, dy=dy)

    return make


def _dense_case(b, cin, cout, has_bias=True, per_example=False):
    def make(rng):
        x = _normal(rng, b, cin)
        w = _normal(rng, *(((b,) if per_example else ()) + (cin, cout)), scale=cin ** -0.5)
        ins = OrderedDict(x=x, w=w)
        if has_bias:
            ins["b"] = _normal(rng, *(((b,) if per_example else ()) + (cout,)), scale=0.1)
        ins["dy"] = _normal(rng, b, cout)
        return {"has_bias": has_bias}, ins

    return make


def _gap_case(rng):
    return {}, OrderedDict(x=_normal(rng, 2, 5, 3, 6), dy=_normal(rng, 2, 6))


def _dropout_case(rng):
    rate = 0.25
    x = _normal(rng, 4, 10)
    mask = _f32(np.where(rng.random((4, 10)) >= rate, 1.0 / (1.0 - rate), 0.0))
    return {"rate": rate}, OrderedDict(x=x, mask=mask, dy=_normal(rng, 4, 10))


def _se_case(gate, inner, c=8, r=4):
    def make(rng):
        x = _normal(rng, 2, 4, 4, c)
        return {"gate": gate, "inner": inner}, OrderedDict(
            x=x, w1=_normal(rng, c, r, scale=c ** -0.5), b1=_normal(rng, r, scale=0.1),
            w2=_normal(rng, r, c, scale=r ** -0.5), b2=_normal(rng, c, scale=0.1),
            dy=_normal(rng, 2, 4, 4, c))

    return make


def _softmax_case(log):
    def make(rng):
        return {"log": log}, OrderedDict(z=_normal(rng, 3, 7, scale=3.0), dy=_normal(rng, 3, 7))

    return make


def _xent_case(label_format, label_smoothing):
    def make(rng):
        b, k = 4, 10
        logits = _normal(rng, b, k, scale=2.0)
        if label_format == "int":
            labels = rng.integers(0, k, b).astype(np.int64)
        else:
            p = rng.random((b, k)) ** 3
            labels = _f32(p / p.sum(axis=1, keepdims=True))
            # Re-normalise in float32 so rows sum to 1 in the stored dtype.
            labels = (labels / labels.sum(axis=1, keepdims=True, dtype=F32)).astype(F32)
        cfg = {"label_smoothing": label_smoothing, "label_format": label_format}
        return cfg, OrderedDict(logits=logits, labels=labels, dloss=_normal(rng, b))

    return make


def _distill_case(temperature):
    def make(rng):
        b, k = 4, 10
        return {"temperature": temperature}, OrderedDict(
            student_logits=_normal(rng, b, k, scale=2.0),
            teacher_logits=_normal(rng, b, k, scale=2.0), dloss=_normal(rng, b))

    return make


def _synth_case(wshape, n=4, b=3):
    def make(rng):
        a = rng.random((b, n))
        alpha = _f32(a / a.sum(axis=1, keepdims=True))
        return {}, OrderedDict(bases=_normal(rng, n, *wshape), alpha=alpha,
                               dw=_normal(rng, b, *wshape))

    return make


def _coef_case(normalization, L=3, N=4, F=12, b=3):
    def make(rng):
        cfg = {"num_layers": L, "num_bases": N, "normalization": normalization}
        return cfg, OrderedDict(features=_normal(rng, b, F), kernel=_normal(rng, F, L * N,
                                scale=F ** -0.5), bias=_normal(rng, L * N, scale=0.1),
                                dalpha=_normal(rng, b, L, N))

    return make


def _eps_mix_case(rng):
    a = rng.random((3, 2, 4))
    return {"eps": 0.3}, OrderedDict(alpha=_f32(a / a.sum(-1, keepdims=True)),
                                     dmixed=_normal(rng, 3, 2, 4))


def _basis_dropout_case(rng):
    a = rng.random((3, 2, 4)) + 0.05
    mask = (rng.random((3, 2, 4)) >= 0.3).astype(F32)
    mask[1, 0, :] = 1.0  # nothing dropped in this row: the identity case
    mask[0, 1, :] = [0, 1, 0, 0]  # a single survivor gets coefficient 1
    return {}, OrderedDict(alpha=_f32(a / a.sum(-1, keepdims=True)), mask=mask,
                           dout=_normal(rng, 3, 2, 4))


def _ops_specs() -> list[CaseSpec]:
    S = []

    def add(name, kind, family, make):
        S.append(CaseSpec("ops", name, kind, family, make))

    explicit_sym = [[1, 1], [1, 1]]
    explicit_asym = [[0, 2], [1, 0]]
    conv = [
        ("conv2d_3x3_s1_same_odd", (2, 7, 7, 4, 6, 3, 1, "SAME")),
        ("conv2d_3x3_s1_same_even", (2, 8, 6, 4, 6, 3, 1, "SAME")),
        ("conv2d_3x3_s2_same_odd", (2, 7, 9, 4, 6, 3, 2, "SAME")),
        ("conv2d_3x3_s2_same_even", (2, 8, 8, 3, 8, 3, 2, "SAME")),
        ("conv2d_5x5_s2_same_odd", (2, 9, 9, 3, 5, 5, 2, "SAME")),
        ("conv2d_1x1_s1", (2, 5, 5, 8, 12, 1, 1, "SAME")),
        ("conv2d_1x1_s2_same_even", (2, 6, 6, 8, 4, 1, 2, "SAME")),
        ("conv2d_3x3_s1_valid", (2, 7, 6, 4, 5, 3, 1, "VALID")),
        ("conv2d_3x3_s2_valid", (2, 8, 9, 4, 5, 3, 2, "VALID")),
        ("conv2d_3x3_s2_explicit_sym", (2, 8, 8, 4, 5, 3, 2, explicit_sym)),
        ("conv2d_3x3_s1_explicit_asym", (2, 6, 7, 4, 5, 3, 1, explicit_asym)),
        ("conv2d_3x3_s1_groups2", (2, 6, 6, 6, 4, 3, 1, "SAME", 2)),
        ("conv2d_3x3_s2_groups4_odd", (2, 7, 7, 8, 8, 3, 2, "SAME", 4)),
        ("conv2d_3x1_stride_1x2", (2, 6, 8, 4, 5, 3, (1, 2), "SAME", 1, False, 1)),
        ("conv2d_3x3_s1_per_example", (3, 6, 6, 4, 5, 3, 1, "SAME", 1, True)),
        ("conv2d_1x1_s1_per_example", (3, 4, 4, 6, 8, 1, 1, "SAME", 1, True)),
    ]
    for name, args in conv:
        add(name, "conv2d", "conv", _conv_case(*args))
    dw = [
        ("depthwise_3x3_s1_same_odd", (2, 7, 7, 6, 3, 1, "SAME")),
        ("depthwise_3x3_s2_same_even", (2, 8, 8, 6, 3, 2, "SAME")),
        ("depthwise_3x3_s2_same_odd", (2, 9, 7, 6, 3, 2, "SAME")),
        ("depthwise_5x5_s1_same_even", (2, 8, 8, 5, 5, 1, "SAME")),
        ("depthwise_5x5_s2_same_odd", (2, 9, 9, 5, 5, 2, "SAME")),
        ("depthwise_3x3_s2_valid", (2, 9, 8, 4, 3, 2, "VALID")),
        ("depthwise_3x3_s2_explicit_sym", (2, 8, 8, 4, 3, 2, explicit_sym)),
        ("depthwise_5x5_s1_explicit_asym", (2, 7, 7, 4, 5, 1, [[2, 1], [0, 3]])),
        ("depthwise_3x3_s2_per_example", (3, 8, 8, 6, 3, 2, "SAME", True)),
        ("depthwise_5x5_s1_per_example", (3, 6, 6, 4, 5, 1, "SAME", True)),
    ]
    for name, args in dw:
        add(name, "depthwise_conv2d", "depthwise", _dw_case(*args))
    add("batch_norm_train_4d", "batch_norm", "batch_norm", _bn_case((3, 4, 5, 6), True))
    add("batch_norm_eval_4d", "batch_norm", "batch_norm", _bn_case((3, 4, 5, 6), False))
    add("batch_norm_train_2d", "batch_norm", "batch_norm", _bn_case((8, 5), True))
    add("batch_norm_train_eps1e-5", "batch_norm", "batch_norm",
        _bn_case((2, 3, 3, 4), True, eps=1e-5, decay=0.9))
    add("batch_norm_train_per_example_affine", "batch_norm", "batch_norm",
        _bn_case((3, 4, 4, 5), True, per_example=True))
    add("batch_norm_eval_per_example_affine", "batch_norm", "batch_norm",
        _bn_case((3, 4, 4, 5), False, per_example=True))
    for a in ("relu", "relu6", "hard_sigmoid", "hard_swish", "sigmoid", "identity"):
        add(f"activation_{a}", "activation", "activation", _act_case(a))
    add("dense_bias", "dense", "dense", _dense_case(4, 12, 7))
    add("dense_no_bias", "dense", "dense", _dense_case(4, 12, 7, has_bias=False))
    add("dense_per_example", "dense", "dense", _dense_case(3, 8, 5, per_example=True))
    add("global_avg_pool", "global_avg_pool", "pool", _gap_case)
    add("dropout", "dropout", "elementwise", _dropout_case)
    add("squeeze_excite_hsig_relu", "squeeze_excite", "squeeze_excite",
        _se_case("hard_sigmoid", "relu"))
    add("squeeze_excite_sigmoid_relu6", "squeeze_excite", "squeeze_excite",
        _se_case("sigmoid", "relu6", c=6, r=3))
    add("softmax", "softmax", "loss", _softmax_case(False))
    add("log_softmax", "softmax", "loss", _softmax_case(True))
    add("xent_int_labels", "softmax_cross_entropy", "loss", _xent_case("int", 0.0))
    add("xent_int_labels_smoothing", "softmax_cross_entropy", "loss", _xent_case("int", 0.1))
    add("xent_prob_labels_smoothing", "softmax_cross_entropy", "loss", _xent_case("probs", 0.1))
    add("distillation_t1", "distillation_loss", "loss", _distill_case(1.0))
    add("distillation_t4", "distillation_loss", "loss", _distill_case(4.0))
    add("synthesize_conv_kernel", "synthesize", "synthesis", _synth_case((3, 3, 4, 5)))
    add("synthesize_depthwise_kernel", "synthesize", "synthesis", _synth_case((5, 5, 1, 6), n=3))
    add("synthesize_bias", "synthesize", "synthesis", _synth_case((7,), n=8, b=2))
    add("coefficient_head_softmax", "coefficient_head", "coefficients", _coef_case("softmax"))
    add("coefficient_head_sigmoid", "coefficient_head", "coefficients", _coef_case("sigmoid"))
    add("coefficient_head_none", "coefficient_head", "coefficients", _coef_case("none"))
    add("epsilon_mix", "epsilon_mix", "coefficients", _eps_mix_case)
    add("basis_dropout", "basis_dropout", "coefficients", _basis_dropout_case)
    return S


def _stride(cfg):
    return tuple(cfg["stride"])


def _padding(cfg):
    p = cfg["padding"]
    return p if isinstance(p, str) else tuple(tuple(int(v) for v in q) for q in p)


def _eval_op(kind: str, cfg: dict, ins: dict) -> OrderedDict:
    _bd = _mod("refbasis.basis.basis_dropout")
    _coef = _mod("refbasis.basis.coefficients")
    _mix = _mod("refbasis.basis.mixing")
    _syn = _mod("refbasis.basis.synthesis")
    _act = _mod("refbasis.ops.activations")
    _conv = _mod("refbasis.ops.conv")
    _dense = _mod("refbasis.ops.dense")
    _drop = _mod("refbasis.ops.dropout")
    _loss = _mod("refbasis.ops.losses")
    _norm = _mod("refbasis.ops.norm")
    _pool = _mod("refbasis.ops.pool")
    _se = _mod("refbasis.ops.squeeze_excite")

    o = OrderedDict()
    if kind == "conv2d":
        kw = dict(stride=_stride(cfg), padding=_padding(cfg), groups=cfg["groups"])
        o["y"] = _conv.conv2d(ins["x"], ins["w"], **kw)
        o["dx"], o["dw"] = _conv.conv2d_vjp(ins["x"], ins["w"], ins["dy"], **kw)
    elif kind == "depthwise_conv2d":
        kw = dict(stride=_stride(cfg), padding=_padding(cfg))
        o["y"] = _conv.depthwise_conv2d(ins["x"], ins["w"], **kw)
        o["dx"], o["dw"] = _conv.depthwise_conv2d_vjp(ins["x"], ins["w"], ins["dy"], **kw)
    elif kind == "batch_norm":
        args = [ins[k] for k in ("x", "gamma", "beta", "moving_mean", "moving_var")]
        o["y"], o["new_moving_mean"], o["new_moving_var"] = _norm.batch_norm(
            *args, train=cfg["train"], eps=cfg["eps"], decay=cfg["decay"])
        o["dx"], o["dgamma"], o["dbeta"] = _norm.batch_norm_vjp(
            *args, ins["dy"], train=cfg["train"], eps=cfg["eps"])
    elif kind == "activation":
        o["y"] = _act.apply_activation(cfg["name"], ins["x"])
        o["dx"] = _act.apply_activation_vjp(cfg["name"], ins["x"], ins["dy"])
    elif kind == "dense":
        b = ins.get("b") if cfg["has_bias"] else None
        o["y"] = _dense.dense(ins["x"], ins["w"], b)
        dx, dw, db = _dense.dense_vjp(ins["x"], ins["w"], ins["dy"], has_bias=cfg["has_bias"],
                                      per_example_bias=None if b is None else b.ndim == 2)
        o["dx"], o["dw"] = dx, dw
        if cfg["has_bias"]:
            o["db"] = db
    elif kind == "global_avg_pool":
        o["y"] = _pool.global_avg_pool(ins["x"])
        o["dx"] = _pool.global_avg_pool_vjp(ins["x"], ins["dy"])
    elif kind == "dropout":
        o["y"] = _drop.dropout(ins["x"], ins["mask"])
        o["dx"] = _drop.dropout_vjp(ins["mask"], ins["dy"])
    elif kind == "squeeze_excite":
        args = [ins[k] for k in ("x", "w1", "b1", "w2", "b2")]
        kw = dict(gate=cfg["gate"], inner=cfg["inner"])
        o["y"] = _se.squeeze_excite(*args, **kw)
        o["dx"], o["dw1"], o["db1"], o["dw2"], o["db2"] = _se.squeeze_excite_vjp(
            *args, ins["dy"], **kw)
    elif kind == "softmax":
        if cfg["log"]:
            o["y"] = _loss.log_softmax(ins["z"])
            o["dz"] = _loss.log_softmax_vjp(ins["z"], ins["dy"])
        else:
            o["y"] = _loss.softmax(ins["z"])
            o["dz"] = _loss.softmax_vjp(ins["z"], ins["dy"])
    elif kind == "softmax_cross_entropy":
        ls = cfg["label_smoothing"]
        o["loss"] = _loss.softmax_cross_entropy(ins["logits"], ins["labels"], label_smoothing=ls)
        o["dlogits"] = _loss.softmax_cross_entropy_vjp(ins["logits"], ins["labels"], ins["dloss"],
                                                       label_smoothing=ls)
    elif kind == "distillation_loss":
        t = cfg["temperature"]
        o["loss"] = _loss.distillation_loss(ins["student_logits"], ins["teacher_logits"],
                                            temperature=t)
        o["dstudent"] = _loss.distillation_loss_vjp(ins["student_logits"], ins["teacher_logits"],
                                                    ins["dloss"], temperature=t)
    elif kind == "synthesize":
        o["w"] = _syn.synthesize(ins["bases"], ins["alpha"])
        o["dbases"], o["dalpha"] = _syn.synthesize_vjp(ins["bases"], ins["alpha"], ins["dw"])
    elif kind == "coefficient_head":
        kw = dict(num_layers=cfg["num_layers"], num_bases=cfg["num_bases"],
                  normalization=cfg["normalization"])
        o["alpha"], _ = _coef.coefficient_head(ins["features"], ins["kernel"], ins["bias"], **kw)
        o["dfeatures"], o["dkernel"], o["dbias"] = _coef.coefficient_head_vjp(
            ins["features"], ins["kernel"], ins["bias"], ins["dalpha"], **kw)
    elif kind == "epsilon_mix":
        o["mixed"] = _mix.epsilon_mix(ins["alpha"], cfg["eps"])
        o["dalpha"] = _mix.epsilon_mix_vjp(ins["alpha"], cfg["eps"], ins["dmixed"])
    elif kind == "basis_dropout":
        o["out"] = _bd.apply_basis_dropout(ins["alpha"], ins["mask"])
        o["dalpha"] = _bd.apply_basis_dropout_vjp(ins["alpha"], ins["mask"], ins["dout"])
    else:  # pragma: no cover - guarded by evaluate()
        raise ValueError(f"unknown op kind {kind!r}")
    return o


# ===========================================================================
# blocks and models
# ===========================================================================

@lru_cache(maxsize=64)
def _arch_cached(name, multiplier, resolution, num_classes, options):
    from refbasis.arch import get_arch

    return get_arch(name, multiplier=multiplier, resolution=resolution,
                    num_classes=num_classes, **dict(options))


def arch_from_config(a: dict):
    """The ``Arch`` of a config's ``arch`` entry: name, multiplier, resolution,
    num_classes and optional ``options`` (builder options, e.g. scale_final)."""
    opts = tuple(sorted((a.get("options") or {}).items()))
    return _arch_cached(a["name"], float(a["multiplier"]), int(a["resolution"]),
                        int(a["num_classes"]), opts)


def _arch_cfg(name, multiplier, resolution, num_classes=10, **options):
    return {"name": name, "multiplier": multiplier, "resolution": resolution,
            "num_classes": num_classes, "options": options}


def _calibrated_params(arch_cfg, rng, batch, *, block_index=None):
    """Random parameters with BatchNorm statistics that match the data.

    Kernels from ``init_params``; gamma, beta and biases randomised so that no
    term of a VJP vanishes; moving statistics set to the batch statistics of a
    calibration batch (one train-mode pass with decay 0) and then perturbed,
    so eval-mode activations stay of order one through the depth (random
    moving statistics would blow them up or kill them).
    """
    _model = _mod("refbasis.model")
    from refbasis.arch import get_arch

    arch = arch_from_config(arch_cfg)
    p = _model.init_params(arch, rng)
    for k in list(p):
        if k.endswith(".project.bn.gamma"):
            # Small gammas on the linear bottleneck keep each residual branch
            # small against its skip path (the usual "zero-init the last BN"
            # idea), so gradients do not grow ~2x per block. With gamma ~ 1,
            # MobileNetV2's gradients grow 500x through the trunk and its
            # float32 error reaches 3e-3: too ill-conditioned for a golden.
            p[k] = rng.uniform(0.2, 0.5, p[k].shape)
        elif k.endswith(".bn.gamma"):
            p[k] = rng.uniform(0.7, 1.3, p[k].shape)
        elif k.endswith(".bn.beta") or k.endswith(".bias"):
            p[k] = rng.normal(0.0, 0.1, p[k].shape)
    p = {k: _f32(v).astype(np.float64) for k, v in p.items()}
    cal_arch = get_arch(arch_cfg["name"], multiplier=arch_cfg["multiplier"],
                        resolution=arch_cfg["resolution"], num_classes=arch_cfg["num_classes"],
                        bn_decay=0.0, **(arch_cfg.get("options") or {}))
    if block_index is None:
        xcal = rng.standard_normal((batch, arch.resolution, arch.resolution, 3))
        _, cache = _model.forward(cal_arch, p, xcal, train=True,
                                  dropout_mask=np.ones((batch, arch.feature_channels))
                                  if arch.dropout_rate > 0 else None)
        state = cache.new_state
    else:
        spec = arch.block(block_index)
        h = _block_input_hw(arch, block_index)
        xcal = rng.standard_normal((batch, h, h, spec.in_channels))
        _, state = _model.block_forward(cal_arch, p, block_index, xcal, train=True)
    for k, v in state.items():
        if k.endswith("moving_mean"):
            p[k] = v + rng.normal(0.0, 0.05, v.shape)
        else:
            p[k] = v * rng.uniform(0.8, 1.25, v.shape)
    return arch, {k: _f32(v) for k, v in p.items()}


def _block_input_hw(arch, index) -> int:
    from refbasis.arch.spec import feature_map_sizes

    return feature_map_sizes(arch)[f"blocks.{index}"][0]


def _pick_block(arch, pred) -> int:
    for b in arch.blocks:
        if pred(b):
            return b.index
    raise LookupError(f"no block of {arch.name} matches the case's predicate")


def _block_case(arch_cfg, pred, train, batch=2):
    def make(rng):
        from refbasis.arch.spec import feature_map_sizes

        arch = arch_from_config(arch_cfg)
        idx = _pick_block(arch, pred)
        spec = arch.block(idx)
        _, p = _calibrated_params(arch_cfg, rng, 4, block_index=idx)
        pre = f"blocks.{idx}."
        p = OrderedDict((k, v) for k, v in p.items() if k.startswith(pre))
        h = _block_input_hw(arch, idx)
        x = _normal(rng, batch, h, h, spec.in_channels)
        ho = feature_map_sizes(arch)[f"blocks.{idx}"][1]
        dy = _normal(rng, batch, ho, ho, spec.out_channels)
        cfg = {
            "arch": arch_cfg, "block_index": idx, "train": train,
            "block": {f: getattr(spec, f) for f in (
                "in_channels", "expand", "expanded_channels", "out_channels", "kernel",
                "stride", "se_channels", "activation", "residual")},
            "se_gate": arch.se_gate, "se_inner": arch.se_inner, "bn_eps": arch.bn_eps,
            "bn_decay": arch.bn_decay, "padding": arch.padding,
        }
        ins = OrderedDict(x=x)
        ins.update(_prefixed("params", p))
        ins["dy"] = dy
        return cfg, ins

    return make


def _eval_block(cfg, ins) -> OrderedDict:
    _model = _mod("refbasis.model")

    arch = arch_from_config(cfg["arch"])
    idx, train = cfg["block_index"], cfg["train"]
    p = _unprefix("params", ins)
    o = OrderedDict()
    o["y"], state = _model.block_forward(arch, p, idx, ins["x"], train=train)
    grads = _model.block_backward(arch, p, idx, ins["x"], ins["dy"], train=train)
    o["dx"] = grads.pop("input")
    for k in p:
        if k in grads:
            o[f"grad/{k}"] = grads[k]
    if train:
        for k in p:
            if k in state:
                o[f"state/{k}"] = state[k]
    return o


def _model_case(arch_cfg, train, batch=4):
    def make(rng):
        arch, p = _calibrated_params(arch_cfg, rng, 8)
        r = arch.resolution
        ins = OrderedDict(x=_normal(rng, batch, r, r, 3))
        ins.update(_prefixed("params", p))
        ins["dlogits"] = _normal(rng, batch, arch.num_classes)
        if train:
            keep = 1.0 - arch.dropout_rate
            m = np.where(rng.random((batch, arch.feature_channels)) < keep, 1.0 / keep, 0.0)
            ins["dropout_mask"] = _f32(m)
        return {"arch": arch_cfg, "train": train}, ins

    return make


def _eval_model(cfg, ins) -> OrderedDict:
    _model = _mod("refbasis.model")

    arch = arch_from_config(cfg["arch"])
    train = cfg["train"]
    p = _unprefix("params", ins)
    mask = ins.get("dropout_mask") if train else None
    logits, cache = _model.forward(arch, p, ins["x"], train=train, dropout_mask=mask)
    grads = _model.backward(arch, p, cache, ins["dlogits"])
    o = OrderedDict(logits=logits)
    for layer, a in cache.activations.items():
        o[f"act/{layer}"] = a
    o["features"] = cache.features
    for k in _model.trainable_names(p):
        o[f"grad/{k}"] = grads[k]
    o["grad/input"] = grads["input"]
    if train:
        for k, v in cache.new_state.items():
            o[f"state/{k}"] = v
    return o


def _blocks_specs() -> list[CaseSpec]:
    mv2 = _arch_cfg("mobilenet_v2", 0.25, 32)
    mv3l = _arch_cfg("mobilenet_v3_large", 0.25, 32)
    mv3s = _arch_cfg("mobilenet_v3_small", 0.25, 32)
    rows = [
        ("mv2_no_expand_s1", mv2, lambda b: not b.expand),
        ("mv2_expand_s2", mv2, lambda b: b.expand and b.stride == 2),
        ("mv2_residual", mv2, lambda b: b.residual),
        ("mv3l_relu_no_se_residual", mv3l, lambda b: b.residual and b.activation == "relu"
         and b.se_channels is None),
        ("mv3l_se_relu_5x5_s2", mv3l, lambda b: b.se_channels and b.activation == "relu"
         and b.stride == 2),
        ("mv3l_hswish_no_se_s2", mv3l, lambda b: b.activation == "hard_swish"
         and b.se_channels is None and b.stride == 2),
        ("mv3l_hswish_se_residual", mv3l, lambda b: b.activation == "hard_swish"
         and b.se_channels and b.residual),
        ("mv3s_se_no_expand_s2", mv3s, lambda b: not b.expand and b.se_channels),
        ("mv3s_hswish_se_5x5_s2", mv3s, lambda b: b.activation == "hard_swish"
         and b.se_channels and b.stride == 2 and b.kernel == 5),
    ]
    out = []
    for name, a, pred in rows:
        for train in (True, False):
            mode = "train" if train else "eval"
            out.append(CaseSpec("blocks", f"{name}_{mode}", "block", "block",
                                _block_case(a, pred, train), max_f32_error=1e-5))
    return out


# Reduced width and resolution keep every model case below ~1 MB while
# exercising every layer type; scale_final="always" scales the wide head layers
# too (otherwise MV3's 1280-wide pre-logits dominates the file size).
MODEL_ARCHS = {
    "mv2": _arch_cfg("mobilenet_v2", 0.1, 32, scale_final="always"),
    "mv3_large": _arch_cfg("mobilenet_v3_large", 0.1, 32, scale_final="always"),
    "mv3_small": _arch_cfg("mobilenet_v3_small", 0.1, 32, scale_final="always"),
}


def _models_specs() -> list[CaseSpec]:
    out = []
    for short, a in MODEL_ARCHS.items():
        for train in (True, False):
            mode = "train" if train else "eval"
            # Eval mode needs no batch statistics: batch 2 halves its size.
            out.append(CaseSpec("models", f"{short}_{mode}", "model", "model",
                                _model_case(a, train, batch=4 if train else 2),
                                max_f32_error=1e-3 if train else 3e-4))
    return out


# ===========================================================================
# Registry of suites
# ===========================================================================

_SUITE_BUILDERS: dict[str, Callable[[], list[CaseSpec]]] = {
    "ops": _ops_specs,
    "blocks": _blocks_specs,
    "models": _models_specs,
}


def _register_late_suites() -> None:
    # The basisnet, training and schedules builders are defined further down
    # this module; they are looked up by name at call time.
    for suite, fn in (("basisnet", "_basisnet_specs"), ("training", "_training_specs"),
                      ("schedules", "_schedules_specs")):
        f = globals().get(fn)
        if f is not None:
            _SUITE_BUILDERS[suite] = f


def specs_for(suite: str) -> list[CaseSpec]:
    """Every CaseSpec of ``suite`` (empty for a suite with no builder yet)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r} (suites: {', '.join(SUITES)})")
    _register_late_suites()
    f = _SUITE_BUILDERS.get(suite)
    specs = f() if f else []
    names = [s.name for s in specs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise RuntimeError(f"catalogue: duplicate case names in suite {suite}: {sorted(dup)}")
    for s in specs:
        if KINDS.get(s.kind) != suite:
            raise RuntimeError(f"catalogue: case {s.id} has kind {s.kind!r} of another suite")
    return specs


def all_specs(suites=None) -> list[CaseSpec]:
    out = []
    for s in suites or SUITES:
        out.extend(specs_for(s))
    return out


# ===========================================================================
# Evaluation (the oracle's answer) and layer structure
# ===========================================================================

def evaluate(kind: str, config: dict, inputs: dict) -> OrderedDict:
    """The oracle's outputs of one case (float64, named as in docs/porting.md)."""
    if kind not in KINDS:
        raise ValueError(f"unknown case kind {kind!r}")
    inputs = dict(inputs)
    suite = KINDS[kind]
    if suite == "ops":
        return _eval_op(kind, config, inputs)
    if kind == "block":
        return _eval_block(config, inputs)
    if kind == "model":
        return _eval_model(config, inputs)
    f = globals().get(f"_eval_{kind}")
    if f is None:
        raise NotImplementedError(f"kind {kind!r} is not implemented by the catalogue yet")
    return f(config, inputs)


def layer_info(kind: str, config: dict, outputs) -> tuple[tuple[str, ...], dict[str, list[str]]]:
    """(layer order, layer -> its output names) of a layered case; ((), {}) else."""
    names = list(outputs)
    if kind == "model":
        arch = arch_from_config(config["arch"])
        layers = arch.layer_names()
        lo = {}
        for layer in layers:
            lo[layer] = [f"act/{layer}"] + [
                n for n in names if n.startswith(f"state/{layer}.")]
        return tuple(layers), lo
    f = globals().get(f"_layers_{kind}")
    if f is not None:
        return f(config, names)
    return (), {}


def evaluate_layer(kind: str, config: dict, layer: str, inputs: dict) -> OrderedDict:
    """One layer / step of a layered case alone (the numpy backend's run_layer)."""
    inputs = dict(inputs)
    if kind == "model":
        _model = _mod("refbasis.model")

        arch = arch_from_config(config["arch"])
        p = _unprefix("params", inputs)
        mask = inputs.get("dropout_mask") if (config["train"] and layer == "head.logits") else None
        y, _ = _model.layer_forward(arch, p, layer, inputs["x"], train=config["train"],
                                    dropout_mask=mask)
        return OrderedDict(y=y)
    f = globals().get(f"_layer_{kind}")
    if f is None:
        raise NotImplementedError(f"no layer isolation for kind {kind!r}")
    return f(config, layer, inputs)


def isolation_inputs(golden: GoldenCase, layer: str) -> tuple[dict, dict]:
    """(inputs to ``layer`` taken from the golden, expected outputs of it)."""
    if golden.kind == "model":
        layers = list(golden.layers)
        i = layers.index(layer)
        x = golden.inputs["x"] if i == 0 else golden.outputs[f"act/{layers[i - 1]}"]
        ins = {k: v for k, v in golden.inputs.items() if k.startswith("params/")}
        if "dropout_mask" in golden.inputs:
            ins["dropout_mask"] = golden.inputs["dropout_mask"]
        # The golden activations are float64; the backend gets them in the
        # stored input dtype like every other input.
        ins["x"] = np.asarray(x, dtype=golden.dtype)
        return ins, {"y": golden.outputs[f"act/{layer}"]}
    f = globals().get(f"_isolation_{golden.kind}")
    if f is None:
        raise NotImplementedError(f"no layer isolation for kind {golden.kind!r}")
    return f(golden, layer)


def build_case(spec: CaseSpec) -> GoldenCase:
    """Draw the inputs of ``spec`` and compute its outputs with the oracle."""
    rng = np.random.default_rng(case_seed(spec.suite, spec.name))
    draws = 0
    for _ in range(MAX_DRAWS):
        draws += 1
        config, inputs = spec.make(rng)
        for k, v in inputs.items():
            if v.dtype.kind == "f" and v.dtype != F32:
                raise RuntimeError(f"catalogue: case {spec.id} input {k} is {v.dtype}, "
                                   "not float32")
        outputs_f64 = OrderedDict((k, np.asarray(v)) for k, v in
                                  evaluate(spec.kind, config, inputs).items())
        f32 = float32_errors(spec.kind, config, inputs, outputs_f64)
        worst = max(f32.values(), default=0.0)
        if spec.max_f32_error is None or worst <= spec.max_f32_error:
            break
    else:
        raise RuntimeError(f"catalogue: case {spec.id}: no draw in {MAX_DRAWS} keeps the "
                           f"oracle's float32 error under {spec.max_f32_error} "
                           f"(last {worst:.2g})")
    outputs = OrderedDict(outputs_f64)
    for k, v in outputs.items():
        if v.dtype.kind == "f":
            # Stored as float32: rounding the float64 answer costs at most
            # 2**-24 relative, under 1% of the tightest tolerance, and halves
            # the size of the golden set (docs/tolerances.md).
            outputs[k] = v.astype(np.float64).astype(F32)
    layers, layer_outputs = layer_info(spec.kind, config, outputs)
    return GoldenCase(suite=spec.suite, name=spec.name, kind=spec.kind, config=config,
                      inputs=OrderedDict(inputs), outputs=outputs, family=spec.family,
                      dtype="float32", layers=tuple(layers), layer_outputs=layer_outputs,
                      meta={"float32_error": f32, "draws": draws})


def float32_errors(kind: str, config: dict, inputs: dict, reference: dict) -> dict[str, float]:
    """The oracle's own float32 error on every float output of a case:
    ``max|f32 - f64| / scale`` (scale as :func:`conformance.compare.output_scales`),
    rounded up to two significant digits; outputs with no error are left out.

    This records how well conditioned each output is; the tolerance policy
    never goes below a safety factor times it (docs/tolerances.md).
    """
    from conformance.compare import output_scales
    from refbasis.precision import float32_mode

    with float32_mode():
        got = evaluate(kind, config, inputs)
    scales = output_scales(reference)
    out = {}
    for n, g in reference.items():
        g = np.asarray(g)
        if g.dtype.kind != "f" or g.size == 0:
            continue
        e = float(np.abs(np.asarray(got[n], dtype=np.float64) - g.astype(np.float64)).max())
        e /= scales[n]
        if e > 0:
            out[n] = float(f"{e:.2g}") if float(f"{e:.2g}") >= e else float(f"{e * 1.05:.2g}")
    return out


# ===========================================================================
# basisnet suite: two-stage BasisNet, early exit, CondConv
# ===========================================================================

def basisnet_config_from(cfg: dict):
    """The oracle's ``BasisNetConfig`` of a basisnet case config."""
    from refbasis.basis.config import BasisNetConfig

    return BasisNetConfig(
        light=arch_from_config(cfg["light"]), specialist=arch_from_config(cfg["specialist"]),
        num_bases=cfg["num_bases"], per_basis_layers=tuple(cfg["per_basis_layers"]),
        per_basis_kinds=frozenset(cfg["per_basis_kinds"]),
        coefficient_normalization=cfg["coefficient_normalization"],
        basis_dropout_rate=cfg["basis_dropout_rate"],
        dropout_granularity=cfg["dropout_granularity"])


def _calibrate_tree(rng, p: dict, prefix: str, arch_cfg: dict, batch: int) -> None:
    """Replace the ``prefix`` MobileNet subtree's BN statistics and affine
    parameters by calibrated ones (see :func:`_calibrated_params`)."""
    _, sub = _calibrated_params(arch_cfg, rng, batch)
    for k, v in sub.items():
        if prefix + k in p and (".bn." in k):
            p[prefix + k] = v


def _basisnet_case(light, specialist, num_bases, layers, kinds, train, eps, *,
                   normalization="softmax", granularity="example", batch=2):
    def make(rng):
        _ts = _mod("refbasis.basis.two_stage")

        cfg = {"light": light, "specialist": specialist, "num_bases": num_bases,
               "per_basis_layers": list(layers), "per_basis_kinds": sorted(kinds),
               "coefficient_normalization": normalization,
               "basis_dropout_rate": 0.25 if train else 0.0,
               "dropout_granularity": granularity, "train": train, "eps": eps}
        bc = basisnet_config_from(cfg)
        p = _ts.init_basisnet(bc, rng)
        for k in list(p):
            if k.endswith(".bn.gamma"):
                p[k] = rng.uniform(0.7, 1.3, p[k].shape)
            elif k.endswith(".bn.beta") or k.endswith(".bias"):
                p[k] = rng.normal(0.0, 0.1, p[k].shape)
        # Coefficient head scaled up so alpha is far from uniform: a wrong
        # synthesis or renormalisation then shows in the outputs.
        p["coef.kernel"] = p["coef.kernel"] * 0 + rng.normal(0, 1.0, p["coef.kernel"].shape)
        _calibrate_tree(rng, p, "light.", light, 8)
        _calibrate_tree(rng, p, "specialist.", specialist, 8)
        bases = [k for k in p if k.startswith("bases.")]
        for k in bases:  # bases differ clearly from each other
            p[k] = p[k] * rng.uniform(0.5, 1.5, (p[k].shape[0],) + (1,) * (p[k].ndim - 1))
        la, sa = bc.light, bc.specialist
        ins = OrderedDict(x_light=_normal(rng, batch, la.resolution, la.resolution, 3),
                          x_specialist=_normal(rng, batch, sa.resolution, sa.resolution, 3))
        ins.update(_prefixed("params", {k: _f32(v) for k, v in p.items()}))
        ins["dlight_logits"] = _normal(rng, batch, la.num_classes)
        ins["dspecialist_logits"] = _normal(rng, batch, sa.num_classes)
        if train:
            nl, n = bc.num_synthesized_layers, bc.num_bases
            shape = (batch, 1, n) if granularity == "example" else (batch, nl, n)
            m = (rng.random(shape) >= 0.25).astype(np.float64)
            m[m.sum(-1) == 0] = 1.0
            m[0, ..., :] = 1.0
            m[0, ..., 0] = 0.0  # at least one dropped basis for sure
            ins["basis_mask"] = _f32(np.broadcast_to(m, (batch, nl, n)))
            for nm, arch in (("light_dropout_mask", la), ("specialist_dropout_mask", sa)):
                keep = 1.0 - arch.dropout_rate
                ins[nm] = _f32(np.where(rng.random((batch, arch.feature_channels)) < keep,
                                        1.0 / keep, 0.0))
        return cfg, ins

    return make


def _eval_basisnet(cfg, ins) -> OrderedDict:
    _ts = _mod("refbasis.basis.two_stage")

    bc = basisnet_config_from(cfg)
    p = _unprefix("params", ins)
    train = cfg["train"]
    kw = {}
    if train:
        kw = dict(basis_mask=ins["basis_mask"], light_dropout_mask=ins["light_dropout_mask"],
                  specialist_dropout_mask=ins["specialist_dropout_mask"])
    zl, zs, cache = _ts.basisnet_forward(bc, p, ins["x_light"], ins["x_specialist"],
                                         train=train, eps=cfg["eps"], **kw)
    grads = _ts.basisnet_backward(bc, p, cache, ins["dlight_logits"], ins["dspecialist_logits"])
    o = OrderedDict(light_logits=zl, specialist_logits=zs)
    for layer, a in cache.light_cache.activations.items():
        o[f"act/light.{layer}"] = a
    o["light_features"] = cache.features
    o["coef/logits"] = cache.coef_logits
    o["coef/alpha_head"] = cache.alpha_head
    o["coef/alpha_mixed"] = cache.alpha_mixed
    o["coef/alpha"] = cache.alpha
    for layer, a in cache.specialist_cache.activations.items():
        o[f"act/specialist.{layer}"] = a
    for k, v in grads.items():
        o[f"grad/{k}"] = v
    if train:
        for k, v in cache.new_state.items():
            o[f"state/{k}"] = v
    return o


def _layers_basisnet(cfg, names):
    bc = basisnet_config_from(cfg)
    layers = [f"light.{n}" for n in bc.light.layer_names()] + ["coefficients"] + \
             [f"specialist.{n}" for n in bc.specialist.layer_names()]
    lo = {}
    for layer in layers:
        if layer == "coefficients":
            lo[layer] = ["coef/logits", "coef/alpha_head", "coef/alpha_mixed", "coef/alpha"]
        else:
            lo[layer] = [f"act/{layer}"] + [n for n in names if n.startswith(f"state/{layer}.")]
    return tuple(layers), lo


def _layer_basisnet(cfg, layer, ins) -> OrderedDict:
    _model = _mod("refbasis.model")
    _bd = _mod("refbasis.basis.basis_dropout")
    _coef = _mod("refbasis.basis.coefficients")
    _mix = _mod("refbasis.basis.mixing")
    _ts = _mod("refbasis.basis.two_stage")

    bc = basisnet_config_from(cfg)
    p = _unprefix("params", ins)
    train = cfg["train"]
    if layer == "coefficients":
        a_head, logits = _coef.coefficient_head(
            ins["features"], p["coef.kernel"], p["coef.bias"],
            num_layers=bc.num_synthesized_layers, num_bases=bc.num_bases,
            normalization=bc.coefficient_normalization)
        mixed = _mix.epsilon_mix(a_head, cfg["eps"])
        alpha = _bd.apply_basis_dropout(mixed, ins["basis_mask"]) if train else mixed
        return OrderedDict([("coef/logits", logits), ("coef/alpha_head", a_head),
                            ("coef/alpha_mixed", mixed), ("coef/alpha", alpha)])
    part, _, sub = layer.partition(".")
    if part == "light":
        arch = bc.light
        tree = {k[len("light."):]: v for k, v in p.items() if k.startswith("light.")}
        mask = ins.get("light_dropout_mask")
    else:
        arch = bc.specialist
        tree = _ts.synthesize_specialist_params(bc, p, ins["alpha"])
        mask = ins.get("specialist_dropout_mask")
    mask = mask if (train and sub == "head.logits") else None
    y, _ = _model.layer_forward(arch, tree, sub, ins["x"], train=train, dropout_mask=mask)
    return OrderedDict(y=y)


def _isolation_basisnet(g: GoldenCase, layer: str):
    layers = list(g.layers)
    params = {k: v for k, v in g.inputs.items() if k.startswith("params/")}
    ins = dict(params)
    dt = g.dtype
    for m in ("basis_mask", "light_dropout_mask", "specialist_dropout_mask"):
        if m in g.inputs:
            ins[m] = g.inputs[m]
    if layer == "coefficients":
        ins["features"] = np.asarray(g.outputs["light_features"], dtype=dt)
        return ins, {k: g.outputs[k] for k in g.layer_outputs["coefficients"]}
    i = layers.index(layer)
    prev = layers[i - 1] if i > 0 else None
    if layer.startswith("light."):
        x = g.inputs["x_light"] if prev is None else g.outputs[f"act/{prev}"]
    else:
        ins["alpha"] = np.asarray(g.outputs["coef/alpha"], dtype=dt)
        x = g.inputs["x_specialist"] if prev == "coefficients" else g.outputs[f"act/{prev}"]
    ins["x"] = np.asarray(x, dtype=dt)
    return ins, {"y": g.outputs[f"act/{layer}"]}


def _early_exit_case(threshold, k=10, batch=12):
    def make(rng):
        _ee = _mod("refbasis.basis.early_exit")

        zl = _normal(rng, batch, k, scale=2.0)
        # Keep every top probability clear of the threshold so float32
        # rounding cannot flip a decision (the decision is compared exactly).
        for _ in range(1000):
            tp = _ee.top_probability(zl)
            near = np.abs(tp - threshold) < 1e-3
            if not near.any():
                break
            zl[near] = _normal(rng, int(near.sum()), k, scale=2.0)
        zs = _normal(rng, batch, k, scale=2.0)
        cfg = {"threshold": threshold, "light_madds": 30.3, "synthesis_madds": 1.2,
               "specialist_madds": 300.0}
        return cfg, OrderedDict(light_logits=zl, specialist_logits=zs)

    return make


def _eval_early_exit(cfg, ins) -> OrderedDict:
    _ee = _mod("refbasis.basis.early_exit")

    pred, exited = _ee.early_exit_predictions(ins["light_logits"], ins["specialist_logits"],
                                              cfg["threshold"])
    o = OrderedDict()
    o["top_probability"] = _ee.top_probability(ins["light_logits"])
    o["exited"] = np.asarray(exited, dtype=bool)
    o["predictions"] = np.asarray(pred, dtype=np.int64)
    o["average_madds"] = np.asarray(_ee.average_madds(
        np.asarray(exited, dtype=bool), cfg["light_madds"], cfg["synthesis_madds"],
        cfg["specialist_madds"]), dtype=np.float64)
    return o


def _condconv_case(arch_cfg, blocks, num_experts, train, batch=3):
    def make(rng):
        _cc = _mod("refbasis.basis.condconv")

        arch = arch_from_config(arch_cfg)
        p = _cc.init_condconv(arch, tuple(blocks), num_experts, rng)
        _, cal = _calibrated_params(arch_cfg, rng, 8)
        for k, v in cal.items():
            if ".bn." in k or (k.endswith(".bias") and k in p):
                p[k] = v
        for k in p:
            if k.startswith("routing.") and k.endswith(".kernel"):
                p[k] = p[k] * 3.0  # routing weights clearly different per example
        r = arch.resolution
        ins = OrderedDict(x=_normal(rng, batch, r, r, 3))
        ins.update(_prefixed("params", {k: _f32(v) for k, v in p.items()}))
        ins["dlogits"] = _normal(rng, batch, arch.num_classes)
        if train:
            keep = 1.0 - arch.dropout_rate
            ins["dropout_mask"] = _f32(np.where(
                rng.random((batch, arch.feature_channels)) < keep, 1.0 / keep, 0.0))
        cfg = {"arch": arch_cfg, "blocks": list(blocks), "num_experts": num_experts,
               "train": train}
        return cfg, ins

    return make


def _eval_condconv(cfg, ins) -> OrderedDict:
    _model = _mod("refbasis.model")
    _cc = _mod("refbasis.basis.condconv")

    arch = arch_from_config(cfg["arch"])
    p = _unprefix("params", ins)
    train = cfg["train"]
    logits, cache = _cc.condconv_forward(arch, p, ins["x"], blocks=tuple(cfg["blocks"]),
                                         train=train,
                                         dropout_mask=ins.get("dropout_mask") if train else None)
    grads = _cc.condconv_backward(arch, p, cache, ins["dlogits"])
    names = arch.layer_names()
    o = OrderedDict(logits=logits)
    for i, layer in enumerate(names):
        if layer == "head.logits":
            o[f"act/{layer}"] = logits
        elif names[i + 1] == "head.logits":
            o[f"act/{layer}"] = cache.features
        else:
            o[f"act/{layer}"] = cache.inputs[names[i + 1]]
        if layer.startswith("blocks.") and int(layer.split(".")[1]) in cache.routing:
            o[f"routing/{layer}"] = cache.routing[int(layer.split(".")[1])]
    trainable = [k for k in _model.trainable_names(
        {k: v for k, v in p.items()}) if k in grads]
    for k in trainable:
        o[f"grad/{k}"] = grads[k]
    o["grad/input"] = grads["input"]
    if train:
        for k, v in cache.new_state.items():
            o[f"state/{k}"] = v
    return o


def _layers_condconv(cfg, names):
    arch = arch_from_config(cfg["arch"])
    lo = {}
    for layer in arch.layer_names():
        lo[layer] = [n for n in (f"routing/{layer}", f"act/{layer}") if n in names] + \
                    [n for n in names if n.startswith(f"state/{layer}.")]
    return tuple(arch.layer_names()), lo


def _layer_condconv(cfg, layer, ins) -> OrderedDict:
    _model = _mod("refbasis.model")
    _cc = _mod("refbasis.basis.condconv")
    _syn = _mod("refbasis.basis.synthesis")

    arch = arch_from_config(cfg["arch"])
    p = _unprefix("params", ins)
    train = cfg["train"]
    plain = {k: v for k, v in p.items() if not k.startswith(("experts.", "routing."))}
    o = OrderedDict()
    if layer.startswith("blocks.") and int(layer.split(".")[1]) in cfg["blocks"]:
        i = int(layer.split(".")[1])
        r = _cc.condconv_routing(ins["x"], p[f"routing.blocks.{i}.kernel"],
                                 p[f"routing.blocks.{i}.bias"])
        for k, v in p.items():
            if k.startswith(f"experts.blocks.{i}."):
                plain[k[len("experts."):]] = _syn.synthesize(v, r)
        o["routing"] = r
    mask = ins.get("dropout_mask") if (train and layer == "head.logits") else None
    o["y"], _ = _model.layer_forward(arch, plain, layer, ins["x"], train=train,
                                     dropout_mask=mask)
    return o


def _isolation_condconv(g: GoldenCase, layer: str):
    layers = list(g.layers)
    i = layers.index(layer)
    ins = {k: v for k, v in g.inputs.items() if k.startswith("params/")}
    if "dropout_mask" in g.inputs:
        ins["dropout_mask"] = g.inputs["dropout_mask"]
    x = g.inputs["x"] if i == 0 else g.outputs[f"act/{layers[i - 1]}"]
    ins["x"] = np.asarray(x, dtype=g.dtype)
    exp = {"y": g.outputs[f"act/{layer}"]}
    if f"routing/{layer}" in g.outputs:
        exp["routing"] = g.outputs[f"routing/{layer}"]
    return ins, exp


def _basisnet_specs() -> list[CaseSpec]:
    tiny = dict(scale_final="always", divisor=4, min_depth=4)
    light_s = _arch_cfg("mobilenet_v3_small", 0.1, 32, **tiny)
    spec_l = _arch_cfg("mobilenet_v3_large", 0.1, 40, **tiny)
    light_2 = _arch_cfg("mobilenet_v2", 0.1, 32, **tiny)
    spec_2 = _arch_cfg("mobilenet_v2", 0.1, 40, **tiny)
    S = [
        CaseSpec("basisnet", "basisnet_mv3_train_layer_dropout", "basisnet", "basisnet",
                 _basisnet_case(light_s, spec_l, 3, (13, 15), {"conv"}, True, 0.25,
                                granularity="example_layer"), max_f32_error=2e-3),
        # BasisNet-MV2 in eval mode: MobileNetV2 in train mode at this width is
        # too ill-conditioned in float32 for a golden (docs/tolerances.md).
        CaseSpec("basisnet", "basisnet_mv2_eval_bn_per_basis", "basisnet",
                 "basisnet", _basisnet_case(light_2, spec_2, 4, (15, 17), {"conv", "bn"}, False,
                                            0.5), max_f32_error=1e-3),
        CaseSpec("basisnet", "basisnet_mv3_eval_se_per_basis_eps1", "basisnet", "basisnet",
                 _basisnet_case(light_s, spec_l, 2, (14, 15), {"conv", "se"}, False, 1.0),
                 max_f32_error=1e-3),
        CaseSpec("basisnet", "early_exit_t0.5", "early_exit", "early_exit",
                 _early_exit_case(0.5)),
        CaseSpec("basisnet", "early_exit_t0.8", "early_exit", "early_exit",
                 _early_exit_case(0.8)),
        CaseSpec("basisnet", "condconv_mv3_small_train", "condconv", "basisnet",
                 _condconv_case(_arch_cfg("mobilenet_v3_small", 0.1, 32, **tiny), (9, 10, 11),
                                3, True), max_f32_error=1e-3),
        CaseSpec("basisnet", "condconv_mv2_eval", "condconv", "basisnet",
                 _condconv_case(_arch_cfg("mobilenet_v2", 0.1, 32, **tiny), (16, 17), 2,
                                False), max_f32_error=1e-3),
    ]
    return S


# ===========================================================================
# training suite: K steps of a recipe on a fixed batch
# ===========================================================================
#
# The oracle's train_step draws every mask from its rng inside the model; the
# goldens replay stored masks instead, through TrainModel adapters that read
# them from the batch (the step function itself is the oracle's, unchanged).
# The initial optimizer state and EMA are NOT inputs: the backend initialises
# them (RMSProp ms = 1 for TF's variant, mom = 0, EMA = initial parameters), so
# a wrong initialisation shows at step 1.

def _replay_models():
    _step = _mod("refbasis.train.step")

    class ReplayMobileNet(_step.MobileNetModel):
        def forward(self, params, batch, *, rng, eps):
            _model = _mod("refbasis.model")

            logits, cache = _model.forward(self.arch, params, batch["image"], train=True,
                                           dropout_mask=batch.get("dropout_mask"))
            return {"logits": logits}, cache

    class ReplayBasisNet(_step.BasisNetModel):
        def forward(self, params, batch, *, rng, eps):
            _ts = _mod("refbasis.basis.two_stage")

            zl, zs, cache = _ts.basisnet_forward(
                self.config, params, batch["image_light"], batch["image"], train=True,
                eps=eps, basis_mask=batch.get("basis_mask"),
                light_dropout_mask=batch.get("light_dropout_mask"),
                specialist_dropout_mask=batch.get("specialist_dropout_mask"))
            return {"light": zl, "specialist": zs}, cache

    return ReplayMobileNet, ReplayBasisNet


def train_config_from(recipe: dict):
    from refbasis.train.step import TrainConfig

    d = {k: v for k, v in recipe.items() if k not in ("model",)}
    return TrainConfig.from_dict(d)


def _train_model(cfg):
    ReplayMobileNet, ReplayBasisNet = _replay_models()
    m = cfg["model"]
    if m["type"] == "mobilenet":
        return ReplayMobileNet(arch_from_config(m["arch"]))
    return ReplayBasisNet(basisnet_config_from(m["basisnet"]))


_STEP_MASKS = ("dropout_mask", "basis_mask", "light_dropout_mask", "specialist_dropout_mask")


def _flatten(prefix: str, tree) -> OrderedDict:
    out = OrderedDict()
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flatten(f"{prefix}/{k}" if prefix else str(k), v))
    else:
        out[prefix] = np.asarray(tree)
    return out


def _unflatten(flat: dict) -> dict:
    root: dict = {}
    for k, v in flat.items():
        parts = k.split("/")
        d = root
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    return root


def _one_step(cfg, model, tconf, state, batch, step):
    _step = _mod("refbasis.train.step")

    new, metrics = _step.train_step(state, batch, step, np.random.default_rng(0),
                                    model=model, config=tconf)
    o = OrderedDict()
    o.update(_flatten("params", new.params))
    o.update(_flatten("opt", new.opt))
    if new.ema is not None:
        o.update(_flatten("ema", new.ema))
    o["loss"] = np.asarray(metrics["loss"], dtype=np.float64)
    o["lr"] = np.asarray(metrics["lr"], dtype=np.float64)
    o["grad_norm"] = np.asarray(metrics["grad_norm"], dtype=np.float64)
    return new, o


def _batch_for_step(ins: dict, k: int | None) -> dict:
    b = {"image": ins["x"], "label": ins["labels"]}
    for nm in ("x_light", "teacher_logits"):
        if nm in ins:
            b["image_light" if nm == "x_light" else nm] = ins[nm]
    for m in _STEP_MASKS:
        key = m if k is None else f"step{k}/{m}"
        if key in ins:
            b[m] = ins[key]
    return b


def _eval_train_steps(cfg, ins) -> OrderedDict:
    _step = _mod("refbasis.train.step")

    model = _train_model(cfg)
    tconf = train_config_from(cfg["recipe"])
    params = _unprefix("params", ins)
    state = _step.init_train_state(params, model, tconf)
    o = OrderedDict()
    for k in range(1, cfg["steps"] + 1):
        state, out = _one_step(cfg, model, tconf, state, _batch_for_step(ins, k),
                               cfg["start_step"] + k - 1)
        for n, v in out.items():
            o[f"step{k}/{n}"] = v
    return o


def _layers_train_steps(cfg, names):
    layers = tuple(f"step{k}" for k in range(1, cfg["steps"] + 1))
    return layers, {s: [n for n in names if n.startswith(s + "/")] for s in layers}


def _layer_train_steps(cfg, layer, ins) -> OrderedDict:
    _step = _mod("refbasis.train.step")

    k = int(layer[len("step"):])
    model = _train_model(cfg)
    tconf = train_config_from(cfg["recipe"])
    params = _unprefix("params", ins)
    fresh = _step.init_train_state(params, model, tconf)
    opt = _unflatten(_unprefix("opt", ins)) or fresh.opt
    ema = _unprefix("ema", ins) or fresh.ema
    state = _step.TrainState(params=params, opt=opt, ema=ema)
    _, out = _one_step(cfg, model, tconf, state, _batch_for_step(ins, None),
                       cfg["start_step"] + k - 1)
    return out


def _isolation_train_steps(g: GoldenCase, layer: str):
    k = int(layer[len("step"):])
    dt = g.dtype
    ins = {}
    for n in ("x", "x_light", "labels", "teacher_logits"):
        if n in g.inputs:
            ins[n] = g.inputs[n]
    for m in _STEP_MASKS:
        if f"step{k}/{m}" in g.inputs:
            ins[m] = g.inputs[f"step{k}/{m}"]
    if k == 1:
        ins.update({n: v for n, v in g.inputs.items() if n.startswith("params/")})
    else:
        pre = f"step{k - 1}/"
        for n, v in g.outputs.items():
            if n.startswith(pre) and n[len(pre):].split("/")[0] in ("params", "opt", "ema"):
                ins[n[len(pre):]] = np.asarray(v, dtype=dt)
    pre = f"step{k}/"
    return ins, {n[len(pre):]: v for n, v in g.outputs.items() if n.startswith(pre)}


def _train_case(model_cfg, recipe, steps, start_step, batch=4, distill=False):
    def make(rng):
        _ts = _mod("refbasis.basis.two_stage")

        cfg = {"model": model_cfg, "recipe": recipe, "steps": steps, "start_step": start_step}
        ins = OrderedDict()
        if model_cfg["type"] == "mobilenet":
            arch, p = _calibrated_params(model_cfg["arch"], rng, 8)
            r = arch.resolution
            ins["x"] = _normal(rng, batch, r, r, 3)
            k_cls = arch.num_classes
            masks = {"dropout_mask": (arch,)}
        else:
            bc = basisnet_config_from(model_cfg["basisnet"])
            p = _ts.init_basisnet(bc, rng)
            _calibrate_tree(rng, p, "light.", model_cfg["basisnet"]["light"], 8)
            _calibrate_tree(rng, p, "specialist.", model_cfg["basisnet"]["specialist"], 8)
            p["coef.kernel"] = rng.normal(0, 1.0, p["coef.kernel"].shape)
            p = {k: _f32(v) for k, v in p.items()}
            r = bc.specialist.resolution
            ins["x"] = _normal(rng, batch, r, r, 3)
            ins["x_light"] = _normal(rng, batch, bc.light.resolution, bc.light.resolution, 3)
            k_cls = bc.specialist.num_classes
            masks = {"light_dropout_mask": (bc.light,), "specialist_dropout_mask":
                     (bc.specialist,), "basis_mask": None}
        ins["labels"] = rng.integers(0, k_cls, batch).astype(np.int64)
        if distill:
            ins["teacher_logits"] = _normal(rng, batch, k_cls, scale=2.0)
        ins.update(_prefixed("params", p))
        for k in range(1, steps + 1):
            for nm, a in masks.items():
                if nm == "basis_mask":
                    nl, n = bc.num_synthesized_layers, bc.num_bases
                    m = (rng.random((batch, 1, n)) >= bc.basis_dropout_rate).astype(np.float64)
                    m[m.sum(-1) == 0] = 1.0
                    m[0, 0, :] = 1.0
                    m[0, 0, k % n] = 0.0
                    ins[f"step{k}/{nm}"] = _f32(np.broadcast_to(m, (batch, nl, n)))
                else:
                    arch = a[0]
                    keep = 1.0 - arch.dropout_rate
                    ins[f"step{k}/{nm}"] = _f32(np.where(
                        rng.random((batch, arch.feature_channels)) < keep, 1.0 / keep, 0.0))
        return cfg, ins

    return make


def _training_specs() -> list[CaseSpec]:
    tiny = dict(scale_final="always", divisor=4, min_depth=4)
    # Supplement B's recipe with the schedule compressed so that three steps
    # cross its interesting points: steps_per_epoch = 1 makes warm-up and decay
    # epochs into steps; a large base_lr makes every update visible against
    # float32 rounding of the parameters.
    mv3_recipe = {
        "base_lr": 0.02, "warmup_epochs": 2.0, "decay_epochs": 1.5, "decay_rate": 0.9,
        "decay_from": "start", "steps_per_epoch": 1.0, "rmsprop_variant": "tf",
        "rmsprop_decay": 0.9, "rmsprop_momentum": 0.9, "rmsprop_epsilon": 1.0,
        "weight_decay": 1e-5, "l2_form": "half", "clip_norm": None, "ema_decay": 0.9999,
        "ema_num_updates": True, "eps_hold_steps": 1, "eps_decay_steps": 4,
        "heads": {"logits": {"label_smoothing": 0.1, "distill": False, "distill_weight": 1.0,
                             "temperature": 1.0, "weight": 1.0}},
    }
    basis_recipe = dict(mv3_recipe, clip_norm=0.1, heads={
        "light": {"label_smoothing": 0.1, "distill": True, "distill_weight": 1.0,
                  "temperature": 1.0, "weight": 1.0},
        "specialist": {"label_smoothing": 0.1, "distill": True, "distill_weight": 0.5,
                       "temperature": 2.0, "weight": 1.0}})
    # Keras' RMSProp starts ms at 0, so its first update is ~lr * 3 whatever the
    # gradient: a smaller base_lr keeps the second step well conditioned.
    keras_recipe = dict(mv3_recipe, base_lr=0.005, decay_from="warmup_end",
                        rmsprop_variant="keras", ema_num_updates=False, ema_decay=0.9,
                        weight_decay=4e-5, l2_form="full")
    bn = {"light": _arch_cfg("mobilenet_v3_small", 0.05, 32, **tiny),
          "specialist": _arch_cfg("mobilenet_v3_small", 0.05, 32, **tiny),
          "num_bases": 2, "per_basis_layers": [10, 11], "per_basis_kinds": ["conv"],
          "coefficient_normalization": "softmax", "basis_dropout_rate": 0.25,
          "dropout_granularity": "example"}
    return [
        CaseSpec("training", "mv3_small_recipe_3_steps", "train_steps", "training",
                 _train_case({"type": "mobilenet", "arch": _arch_cfg(
                     "mobilenet_v3_small", 0.05, 32, **tiny)}, mv3_recipe, 3, 0),
                 max_f32_error=2e-3),
        # MobileNetV2 at this width is too ill-conditioned in train mode for a
        # multi-step golden (float32 runs diverge by step 2; docs/tolerances.md),
        # so the second recipe runs on MobileNetV3-Large.
        CaseSpec("training", "mv3_large_keras_rmsprop_2_steps", "train_steps", "training",
                 _train_case({"type": "mobilenet", "arch": _arch_cfg(
                     "mobilenet_v3_large", 0.05, 32, **tiny)}, keras_recipe, 2, 1),
                 max_f32_error=5e-4),
        CaseSpec("training", "basisnet_mv3_recipe_2_steps", "train_steps", "training",
                 _train_case({"type": "basisnet", "basisnet": bn}, basis_recipe, 2, 1,
                             distill=True), max_f32_error=1e-3),
    ]


# ===========================================================================
# schedules suite
# ===========================================================================

def _schedule_case(name, params, steps):
    def make(rng):
        return {"name": name, "params": params}, OrderedDict(
            steps=np.asarray(steps, dtype=np.int64))

    return make


def _eval_schedule(cfg, ins) -> OrderedDict:
    _ema = _mod("refbasis.train.ema")
    _sch = _mod("refbasis.train.schedules")

    name, p, s = cfg["name"], cfg["params"], ins["steps"]
    if name == "learning_rate":
        v = _sch.learning_rate(s, **p)
    elif name == "mixing_epsilon":
        v = _sch.mixing_epsilon(s, **p)
    elif name == "ema_decay":
        v = _ema.ema_decay(p["decay"], num_updates=s)
    else:
        raise ValueError(f"unknown schedule {name!r}")
    return OrderedDict(values=np.asarray(v, dtype=np.float64))


def _schedules_specs() -> list[CaseSpec]:
    spe = 1281167 / 16384
    w = int(20 * spe)
    lr_steps = [0, 1, 2, w // 2, w - 1, w, w + 1, int(6 * spe) - 1, int(6 * spe),
                int(26 * spe), int(26 * spe) + 1, 100_000, 400_000]
    mv2 = dict(steps_per_epoch=spe, base_lr=0.006, warmup_epochs=20.0, decay_epochs=6.0,
               decay_rate=0.99, decay_from="start")
    mv3 = dict(mv2, decay_epochs=4.5)
    eps_steps = [0, 1, 9_999, 10_000, 10_001, 20_000, 30_000, 49_999, 50_000, 50_001, 400_000]
    return [
        CaseSpec("schedules", "lr_basisnet_mv2", "schedule", "schedule",
                 _schedule_case("learning_rate", mv2, sorted(lr_steps))),
        CaseSpec("schedules", "lr_basisnet_mv3", "schedule", "schedule",
                 _schedule_case("learning_rate", mv3, sorted(lr_steps))),
        CaseSpec("schedules", "lr_decay_from_warmup_end", "schedule", "schedule",
                 _schedule_case("learning_rate", dict(mv2, decay_from="warmup_end"),
                                sorted(lr_steps))),
        CaseSpec("schedules", "lr_no_warmup", "schedule", "schedule",
                 _schedule_case("learning_rate", dict(mv3, warmup_epochs=0.0),
                                sorted(lr_steps))),
        CaseSpec("schedules", "mixing_epsilon_paper", "schedule", "schedule",
                 _schedule_case("mixing_epsilon", {"hold_steps": 10_000,
                                                   "decay_steps": 40_000}, eps_steps)),
        CaseSpec("schedules", "mixing_epsilon_step", "schedule", "schedule",
                 _schedule_case("mixing_epsilon", {"hold_steps": 5, "decay_steps": 0},
                                [0, 4, 5, 6, 7, 100])),
        CaseSpec("schedules", "ema_decay_num_updates", "schedule", "schedule",
                 _schedule_case("ema_decay", {"decay": 0.9999},
                                [0, 1, 2, 10, 100, 1000, 10_000, 100_000, 1_000_000])),
    ]

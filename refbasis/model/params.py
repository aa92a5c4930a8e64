"""Parameter trees of a MobileNet ``Arch``: names, shapes, initialisation, validation.

A parameter tree is a flat ``dict[str, np.ndarray]`` with the stable names of
docs/code-map.md ("Parameter names"), shared by the oracle, the goldens and
every backend:

    stem.kernel (3, 3, 3, Cs)                      + stem.bn.*
    blocks.<i>.expand.kernel (1, 1, Cin, Ce)       + .bn.*   (only if spec.expand)
    blocks.<i>.depthwise.kernel (k, k, 1, Ce)      + .bn.*
    blocks.<i>.se.reduce.kernel (Ce, R), .bias (R,)          (only if spec.se_channels)
    blocks.<i>.se.expand.kernel (R, Ce), .bias (Ce,)
    blocks.<i>.project.kernel (1, 1, Ce, Cout)     + .bn.*
    head.conv.kernel (1, 1, Clast, H)              + head.conv.bn.*
    head.pre_logits.kernel (H, P), .bias (P,)      (MobileNetV3 only; no BN)
    head.logits.kernel (F, K), .bias (K,)          (F = P for MV3, H for MV2)

with ``<layer>.bn.*`` = ``gamma, beta, moving_mean, moving_var``, each (C,).

Per-example parameters (BasisNet synthesises one specialist per image,
design.md): every parameter except the BN moving statistics may carry a
leading batch axis B, i.e. shape ``(B,) + shared_shape``. The moving
statistics describe the population, not an image, so they are always shared.
"""

from __future__ import annotations

import math

import numpy as np

from refbasis._checks import as_float_array
from refbasis.arch.spec import STEM_KERNEL, Arch
from refbasis.precision import compute_dtype

__all__ = [
    "BN_SUFFIXES",
    "MOVING_SUFFIXES",
    "check_layer_params",
    "check_params",
    "init_params",
    "layer_param_shapes",
    "param_shapes",
    "per_example_capable",
    "trainable_names",
]

BN_SUFFIXES = ("gamma", "beta", "moving_mean", "moving_var")
MOVING_SUFFIXES = (".bn.moving_mean", ".bn.moving_var")
IMAGE_CHANNELS = 3  # RGB input (Sandler et al. 2018 Table 2; Howard et al. 2019 Table 1)


# ---------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------


def _bn_shapes(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.bn.{s}": (c,) for s in BN_SUFFIXES}


def _check_arch(arch, fn):
    if not isinstance(arch, Arch):
        raise TypeError(
            f"{fn}: argument 'arch' must be a refbasis.arch.Arch "
            f"(e.g. refbasis.arch.get_arch('mobilenet_v3_small')), got {type(arch).__name__}"
        )
    return arch


def layer_param_shapes(arch: Arch, layer: str) -> dict[str, tuple[int, ...]]:
    """Shared shapes of the parameters of one layer of ``arch.layer_names()``,
    in a fixed order (kernel, BN, then the next sub-layer). ``head.pool`` has none."""
    fn = "layer_param_shapes"
    _check_arch(arch, fn)
    names = arch.layer_names()
    if layer not in names:
        raise ValueError(
            f"{fn}: argument 'layer' must be one of {list(names)}, got {layer!r}"
        )
    s: dict[str, tuple[int, ...]] = {}
    if layer == "stem":
        s["stem.kernel"] = (STEM_KERNEL, STEM_KERNEL, IMAGE_CHANNELS, arch.stem_channels)
        s.update(_bn_shapes("stem", arch.stem_channels))
    elif layer.startswith("blocks."):
        b = arch.block(int(layer.split(".")[1]))
        p, ce = layer, b.expanded_channels
        if b.expand:
            s[f"{p}.expand.kernel"] = (1, 1, b.in_channels, ce)
            s.update(_bn_shapes(f"{p}.expand", ce))
        s[f"{p}.depthwise.kernel"] = (b.kernel, b.kernel, 1, ce)
        s.update(_bn_shapes(f"{p}.depthwise", ce))
        if b.se_channels is not None:
            r = b.se_channels
            s[f"{p}.se.reduce.kernel"] = (ce, r)
            s[f"{p}.se.reduce.bias"] = (r,)
            s[f"{p}.se.expand.kernel"] = (r, ce)
            s[f"{p}.se.expand.bias"] = (ce,)
        s[f"{p}.project.kernel"] = (1, 1, ce, b.out_channels)
        s.update(_bn_shapes(f"{p}.project", b.out_channels))
    elif layer == "head.conv":
        s["head.conv.kernel"] = (1, 1, arch.blocks[-1].out_channels, arch.head_channels)
        s.update(_bn_shapes("head.conv", arch.head_channels))
    elif layer == "head.pre_logits":
        s["head.pre_logits.kernel"] = (arch.head_channels, arch.pre_logits_channels)
        s["head.pre_logits.bias"] = (arch.pre_logits_channels,)
    elif layer == "head.logits":
        s["head.logits.kernel"] = (arch.feature_channels, arch.num_classes)
        s["head.logits.bias"] = (arch.num_classes,)
    return s


def param_shapes(arch: Arch) -> dict[str, tuple[int, ...]]:
    """Shared shape of every parameter of ``arch`` (moving statistics included),
    in network order."""
    _check_arch(arch, "param_shapes")
    out: dict[str, tuple[int, ...]] = {}
    for layer in arch.layer_names():
        out.update(layer_param_shapes(arch, layer))
    return out


def per_example_capable(name: str) -> bool:
    """Whether parameter ``name`` may carry a leading batch axis (all but the
    BN moving statistics)."""
    return not name.endswith(MOVING_SUFFIXES)


def trainable_names(params) -> list[str]:
    """Names of ``params`` that receive gradients: all but ``*.bn.moving_mean``
    and ``*.bn.moving_var`` (TF-slim keeps them as non-trainable variables),
    in the dict's order."""
    if not isinstance(params, dict):
        raise TypeError(
            f"trainable_names: argument 'params' must be a dict name -> array, "
            f"got {type(params).__name__}"
        )
    return [n for n in params if per_example_capable(n)]


# ---------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------

# TF's VarianceScaling(distribution="truncated_normal") divides the target
# standard deviation by the std of a unit normal truncated to [-2, 2], so
# that the truncated draw has the intended variance.
_TRUNC_STD = 0.87962566103423978


def _fan_in(name: str, shape: tuple[int, ...]) -> int:
    if name.endswith("depthwise.kernel"):
        return shape[0] * shape[1]  # each output channel sees kh*kw inputs
    return math.prod(shape[:-1])


def _truncated_normal(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    # Resample entries outside [-2, 2] std (TF truncated_normal semantics).
    z = rng.standard_normal(shape)
    bad = np.abs(z) > 2.0
    while np.any(bad):
        z[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(z) > 2.0
    return z * std


def init_params(arch: Arch, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fresh parameters for ``arch`` (shared shapes, compute dtype).

    Reference choice (documented in docs/model.md): every conv and dense
    kernel is drawn from a normal truncated at 2 standard deviations with
    variance 2 / fan_in (He et al. 2015 "fan_in" scaling; TF
    ``VarianceScaling(2.0, "fan_in", "truncated_normal")``), fan_in =
    kh*kw*Cin for convs, kh*kw for depthwise kernels, Cin for dense layers.
    Biases are 0; BN gamma = 1, beta = 0, moving_mean = 0, moving_var = 1
    (TF-slim defaults). Draws happen in the order of ``param_shapes(arch)``,
    so a seed reproduces the tree exactly.
    """
    fn = "init_params"
    _check_arch(arch, fn)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{fn}: argument 'rng' must be a numpy.random.Generator "
            f"(e.g. np.random.default_rng(0)), got {type(rng).__name__}"
        )
    dt = compute_dtype()
    out: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(arch).items():
        if name.endswith(".kernel"):
            std = math.sqrt(2.0 / _fan_in(name, shape)) / _TRUNC_STD
            v = _truncated_normal(rng, shape, std)
        elif name.endswith((".bn.gamma", ".bn.moving_var")):
            v = np.ones(shape)
        else:  # biases, beta, moving_mean
            v = np.zeros(shape)
        out[name] = v.astype(dt, copy=False)
    return out


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _check_one(params, name, shape, batch, fn):
    if name not in params:
        raise ValueError(
            f"{fn}: argument 'params' is missing '{name}' (expected shape {shape})"
        )
    arg = f"params['{name}']"
    v = as_float_array(params[name], arg, fn=fn)
    if v.shape == shape:
        return v
    if per_example_capable(name):
        lead = "B" if batch is None else f"B={batch}"
        if batch is not None and v.shape == (batch,) + shape:
            return v
        raise ValueError(
            f"{fn}: argument '{arg}' must have shape {shape} (shared) or "
            f"({lead}, {', '.join(str(d) for d in shape)}) (per example), got {v.shape}"
        )
    raise ValueError(
        f"{fn}: argument '{arg}' must have shape {shape} "
        f"(moving statistics are never per example), got {v.shape}"
    )


def check_layer_params(arch: Arch, params, layer: str, *, batch: int | None,
                       fn: str) -> dict[str, np.ndarray]:
    """Validate the parameters one layer reads; return them in the compute dtype.

    ``batch`` is the batch size of the input (per-example parameters must
    carry exactly that leading axis). Other entries of ``params`` are ignored
    here; ``check_params`` checks the whole tree.
    """
    if not isinstance(params, dict):
        raise TypeError(
            f"{fn}: argument 'params' must be a dict name -> array, got {type(params).__name__}"
        )
    return {n: _check_one(params, n, s, batch, fn)
            for n, s in layer_param_shapes(arch, layer).items()}


def check_params(arch: Arch, params, *, batch: int | None, fn: str) -> dict[str, np.ndarray]:
    """Validate a whole parameter tree for ``arch`` (missing, misshapen,
    non-float and unknown entries all raise); return it in the compute dtype."""
    _check_arch(arch, fn)
    if not isinstance(params, dict):
        raise TypeError(
            f"{fn}: argument 'params' must be a dict name -> array, got {type(params).__name__}"
        )
    shapes = param_shapes(arch)
    unknown = [n for n in params if n not in shapes]
    if unknown:
        raise ValueError(
            f"{fn}: argument 'params' has entries that {arch.name} does not use: "
            f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''} "
            f"(expected names like {list(shapes)[:3]})"
        )
    return {n: _check_one(params, n, s, batch, fn) for n, s in shapes.items()}

"""Resolved architecture data shared by model, cost, basis and every backend.

An ``Arch`` is a MobileNet with every channel count already resolved for one
multiplier: the builders in ``mobilenet_v2`` / ``mobilenet_v3`` turn the
paper's table rows into ``BlockSpec`` rows here. Nothing in this module knows
about parameters or arrays; consumers derive shapes from these integers.

Numbering: blocks are 1-based ("L1".."L17" for MobileNetV2, "L1".."L15" for
MobileNetV3-Large, "L1".."L11" for MobileNetV3-Small), as in the BasisNet
supplement A.2. The stem conv and the head are *not* numbered blocks.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from refbasis._checks import check_choice, check_int, check_real

__all__ = [
    "ACTIVATIONS",
    "STEM_KERNEL",
    "STEM_STRIDE",
    "Arch",
    "BlockSpec",
    "feature_map_sizes",
    "make_divisible",
    "total_stride",
]

# Activation names understood by refbasis.ops.activations.apply_activation.
ACTIVATIONS = ("relu", "relu6", "hard_swish", "hard_sigmoid", "sigmoid", "identity")


# ---------------------------------------------------------------------------
# Channel rounding
# ---------------------------------------------------------------------------


def make_divisible(v, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never below
    ``min_value`` (default ``divisor``) and never more than 10% below ``v``.

    Source: TF-slim ``mobilenet/mobilenet.py::_make_divisible`` (also used,
    with the same arithmetic, by Keras and torchvision):
    ``new = max(min_value, int(v + divisor / 2) // divisor * divisor)``;
    if ``new < 0.9 * v`` then ``new += divisor``.

    ``v`` must be a finite real > 0; ``divisor`` and ``min_value`` ints >= 1.
    Returns a Python int.
    """
    fn = "make_divisible"
    v = check_real(v, "v", lo=0.0, lo_open=True, fn=fn)
    divisor = check_int(divisor, "divisor", min_value=1, fn=fn)
    if min_value is None:
        min_value = divisor
    min_value = check_int(min_value, "min_value", min_value=1, fn=fn)
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    # TF-slim: "make sure that round down does not go down by more than 10%".
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


# ---------------------------------------------------------------------------
# Resolved rows
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockSpec:
    """One resolved inverted-residual block ("bottleneck" / "bneck").

    Structure (Sandler et al. 2018 Fig. 2d; Howard et al. 2019 Fig. 4):
    [1x1 expand conv + BN + act] -> kxk depthwise conv (stride) + BN + act
    -> [SE] -> 1x1 project conv + BN (linear) -> [+ input].
    """

    index: int  # 1-based: "L<index>" in the supplement's numbering
    in_channels: int
    expand: bool  # False when there is no expansion 1x1 conv (MV2 t=1, MV3 exp == in)
    expanded_channels: int  # == in_channels when expand is False
    out_channels: int
    kernel: int  # depthwise kernel size (3 or 5)
    stride: int
    se_channels: int | None  # SE reduce width; None = no SE
    activation: str  # "relu6" (MV2), "relu" (MV3 RE), "hard_swish" (MV3 HS)
    residual: bool  # stride == 1 and in_channels == out_channels

    @property
    def name(self) -> str:
        """Layer name used in parameter trees: ``blocks.<index>``."""
        return f"blocks.{self.index}"

    @property
    def label(self) -> str:
        """Supplement label: ``L<index>``."""
        return f"L{self.index}"


@dataclass(frozen=True)
class Arch:
    """A fully resolved MobileNet (one multiplier, one resolution).

    Network order: stem (3x3 stride-2 conv + BN + act) -> blocks -> head.conv
    (1x1 conv + BN + act) -> global average pool ("head.pool") ->
    [head.pre_logits: 1x1 conv with bias, no BN, + act (MV3 only)] -> dropout
    (train only) -> head.logits (dense with bias).
    """

    name: str  # "mobilenet_v2" | "mobilenet_v3_large" | "mobilenet_v3_small"
    multiplier: float
    resolution: int
    num_classes: int
    stem_channels: int  # 3x3 stride-2 conv + BN + activation
    stem_activation: str
    blocks: tuple[BlockSpec, ...]
    head_channels: int  # 1x1 conv + BN + act after the last block (MV2 1280, MV3 960/576)
    head_activation: str
    pre_logits_channels: int | None  # MV3: 1x1 conv, bias, no BN (1280/1024); MV2: None
    pre_logits_activation: str | None
    dropout_rate: float = 0.2  # supplement B: keep probability 0.8 before the classifier
    se_gate: str = "hard_sigmoid"  # MV3
    se_inner: str = "relu"
    bn_eps: float = 1e-3
    bn_decay: float = 0.997
    padding: str = "SAME"

    def layer_names(self) -> tuple[str, ...]:
        """``("stem", "blocks.1", ..., "head.conv", "head.pool",
        ["head.pre_logits",] "head.logits")`` in execution order."""
        names = ["stem"] + [b.name for b in self.blocks] + ["head.conv", "head.pool"]
        if self.pre_logits_channels is not None:
            names.append("head.pre_logits")
        names.append("head.logits")
        return tuple(names)

    @property
    def feature_channels(self) -> int:
        """Width F of ``cache.features`` (input of the classifier dropout):
        the pooled head.conv output (MV2) or the pre-logits output (MV3)."""
        if self.pre_logits_channels is not None:
            return self.pre_logits_channels
        return self.head_channels

    def block(self, index: int) -> BlockSpec:
        """Block ``L<index>`` (1-based). Raises ValueError outside 1..len(blocks)."""
        index = check_int(index, "index", min_value=1, fn="Arch.block")
        if index > len(self.blocks):
            raise ValueError(
                f"Arch.block: argument 'index' must be in [1, {len(self.blocks)}] "
                f"for {self.name}, got {index}"
            )
        return self.blocks[index - 1]

    def __post_init__(self) -> None:
        _validate_arch(self)


# ---------------------------------------------------------------------------
# Spatial sizes
# ---------------------------------------------------------------------------

STEM_KERNEL = 3
STEM_STRIDE = 2


def _out_size(h: int, kernel: int, stride: int, padding: str) -> int:
    # TF "SAME": ceil(in / stride); "VALID": floor((in - k) / stride) + 1.
    if padding == "SAME":
        return -(-h // stride)
    return (h - kernel) // stride + 1


def total_stride(arch: Arch) -> int:
    """Product of the stem stride and every block stride (32 for all three nets)."""
    return STEM_STRIDE * math.prod(b.stride for b in arch.blocks)


def feature_map_sizes(arch: Arch) -> dict[str, tuple[int, int]]:
    """Spatial side length (input, output) of every layer of ``arch``.

    Square inputs of side ``arch.resolution``; padding per ``arch.padding``
    (design.md). The 1x1 head convs and the dense layers report the pooled
    size 1 after "head.pool".
    """
    sizes: dict[str, tuple[int, int]] = {}
    h = arch.resolution
    o = _out_size(h, STEM_KERNEL, STEM_STRIDE, arch.padding)
    sizes["stem"] = (h, o)
    h = o
    for b in arch.blocks:
        o = _out_size(h, b.kernel, b.stride, arch.padding)
        sizes[b.name] = (h, o)
        h = o
    sizes["head.conv"] = (h, h)
    sizes["head.pool"] = (h, 1)
    if arch.pre_logits_channels is not None:
        sizes["head.pre_logits"] = (1, 1)
    sizes["head.logits"] = (1, 1)
    return sizes


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def check_resolution(name: str, resolution: int, blocks, padding: str, fn: str) -> None:
    """Raise ValueError if ``resolution`` is too small for the total stride.

    Reference choice: a stride-s layer must receive at least s pixels, i.e. the
    resolution must be at least the total stride (32). Under TF "SAME" padding a
    smaller input would still run (ceil), but its last stages would see mostly
    padding; under "VALID" it could reach zero pixels. The message names the
    first layer that would produce less than one pixel.
    """
    h = resolution
    stages = [("the stem conv", STEM_STRIDE, STEM_KERNEL)] + [
        (f"block L{b.index} (blocks.{b.index})", b.stride, b.kernel) for b in blocks
    ]
    need = STEM_STRIDE * math.prod(b.stride for b in blocks)
    for label, stride, kernel in stages:
        out = h // stride if padding == "SAME" else _out_size(h, kernel, stride, "VALID")
        if out < 1:
            raise ValueError(
                f"{fn}: argument 'resolution' must be >= {need} "
                f"(the total stride of {name}), got {resolution}: "
                f"{label} (stride {stride}, kernel {kernel}, padding {padding}) would "
                f"receive a {h}x{h} map and produce less than 1 pixel"
            )
        h = out


def _validate_arch(arch: Arch) -> None:
    fn = "Arch"
    if isinstance(arch.multiplier, bool) or not isinstance(arch.multiplier, numbers.Real):
        raise TypeError(f"{fn}: argument 'multiplier' must be a real number, "
                        f"got {type(arch.multiplier).__name__} {arch.multiplier!r}")
    if not (math.isfinite(arch.multiplier) and arch.multiplier > 0):
        raise ValueError(f"{fn}: argument 'multiplier' must be > 0, got {arch.multiplier}")
    check_int(arch.resolution, "resolution", min_value=1, fn=fn)
    check_int(arch.num_classes, "num_classes", min_value=1, fn=fn)
    check_int(arch.stem_channels, "stem_channels", min_value=1, fn=fn)
    check_int(arch.head_channels, "head_channels", min_value=1, fn=fn)
    if arch.pre_logits_channels is not None:
        check_int(arch.pre_logits_channels, "pre_logits_channels", min_value=1, fn=fn)
        check_choice(arch.pre_logits_activation, "pre_logits_activation", ACTIVATIONS, fn=fn)
    elif arch.pre_logits_activation is not None:
        raise ValueError(f"{fn}: argument 'pre_logits_activation' must be None when "
                         f"pre_logits_channels is None, got {arch.pre_logits_activation!r}")
    for nm in ("stem_activation", "head_activation", "se_gate", "se_inner"):
        check_choice(getattr(arch, nm), nm, ACTIVATIONS, fn=fn)
    check_real(arch.dropout_rate, "dropout_rate", lo=0.0, hi=1.0, hi_open=True, fn=fn)
    check_real(arch.bn_eps, "bn_eps", lo=0.0, lo_open=True, fn=fn)
    check_real(arch.bn_decay, "bn_decay", lo=0.0, hi=1.0, fn=fn)
    check_choice(arch.padding, "padding", ("SAME", "VALID"), fn=fn)
    if not isinstance(arch.blocks, tuple) or not arch.blocks:
        raise ValueError(f"{fn}: argument 'blocks' must be a non-empty tuple of BlockSpec, "
                         f"got {type(arch.blocks).__name__}")
    prev = arch.stem_channels
    for i, b in enumerate(arch.blocks, start=1):
        where = f"blocks[{i - 1}] (L{i})"
        if not isinstance(b, BlockSpec):
            raise TypeError(f"{fn}: argument '{where}' must be a BlockSpec, "
                            f"got {type(b).__name__}")
        if b.index != i:
            raise ValueError(f"{fn}: argument '{where}.index' must be {i}, got {b.index}")
        if b.in_channels != prev:
            raise ValueError(f"{fn}: argument '{where}.in_channels' must equal the previous "
                             f"output width {prev}, got {b.in_channels}")
        if not b.expand and b.expanded_channels != b.in_channels:
            raise ValueError(f"{fn}: argument '{where}.expanded_channels' must equal "
                             f"in_channels {b.in_channels} when expand is False, "
                             f"got {b.expanded_channels}")
        want_res = b.stride == 1 and b.in_channels == b.out_channels
        if b.residual != want_res:
            raise ValueError(f"{fn}: argument '{where}.residual' must be {want_res} "
                             f"(stride {b.stride}, {b.in_channels}->{b.out_channels}), "
                             f"got {b.residual}")
        check_choice(b.activation, f"{where}.activation", ACTIVATIONS, fn=fn)
        check_choice(b.stride, f"{where}.stride", (1, 2), fn=fn)
        prev = b.out_channels
    check_resolution(arch.name, arch.resolution, arch.blocks, arch.padding, fn)


# ---------------------------------------------------------------------------
# Builder options: the rules on which TF-slim, Keras and torchvision differ
# ---------------------------------------------------------------------------

CONVENTIONS = ("tf_slim", "keras", "torchvision")
SCALE_RULES = ("never", "above_one", "always")
_ARCH_PASSTHROUGH = ("dropout_rate", "se_gate", "se_inner", "bn_eps", "bn_decay", "padding")


@dataclass(frozen=True)
class BuildOptions:
    """How a table is resolved for a multiplier (see docs/architectures.md).

    - ``expansion_rule``: "scaled_input_ratio" = make_divisible(scaled input
      channels * (exp / in of the table)) (TF-slim ``expand_input_by_factor``,
      Keras); "scaled_table" = make_divisible(exp * multiplier) (torchvision).
    - ``scale_stem``: whether the stem width is multiplied (False: Keras MV3).
    - ``scale_final``: the last wide layer kept for small multipliers: MV2's
      1280 head conv, MV3's 1280/1024 pre-logits. "above_one" = scaled only
      when multiplier > 1 (MV2 in TF-slim/Keras/torchvision; MV3 in Keras),
      "never" (MV3 TF-slim, the reference default), "always" (MV3 torchvision).
    - ``head_rule`` (MV3 head conv): "scaled_table" = make_divisible(960 * m)
      (TF-slim), "six_times_last" = 6 * last block output (Keras, torchvision).
    - ``se_width``: "make_divisible" = make_divisible(expanded / 4) (TF-slim,
      Keras, torchvision); "exact" = expanded // 4 (paper text, Sec. 5.3).
    - ``truncate``: int(c * m) before make_divisible (Keras MV2 block outputs).
    - ``min_depth``: lower bound of every rounded width (TF-slim min_depth=8).
    - ``divisor``: rounding multiple (8 everywhere).
    """

    convention: str = "tf_slim"
    expansion_rule: str = "scaled_input_ratio"
    scale_stem: bool = True
    scale_final: str = "never"
    head_rule: str = "scaled_table"
    se_width: str = "make_divisible"
    truncate: bool = False
    min_depth: int = 8
    divisor: int = 8

    def round(self, c, multiplier: float, *, scale: bool = True) -> int:
        """Scaled and rounded width of a table width ``c``."""
        if not scale:
            return int(c)
        v = c * multiplier
        if self.truncate:
            v = int(v)
            if v < 1:  # int() of a tiny width; make_divisible needs v > 0
                v = 1
        return make_divisible(v, self.divisor, self.min_depth)

    def final_scaled(self, multiplier: float) -> bool:
        if self.scale_final == "always":
            return True
        if self.scale_final == "above_one":
            return multiplier > 1.0
        return False


def _convention_defaults(model: str, convention: str) -> dict:
    mv3 = model.startswith("mobilenet_v3")
    if convention == "tf_slim":
        return dict(scale_final="never" if mv3 else "above_one")
    if convention == "keras":
        if mv3:
            return dict(scale_stem=False, scale_final="above_one", head_rule="six_times_last")
        return dict(scale_final="above_one", truncate=True)
    # torchvision
    if mv3:
        return dict(expansion_rule="scaled_table", scale_final="always",
                    head_rule="six_times_last")
    return dict(scale_final="above_one")


def resolve_options(model: str, options: dict, fn: str) -> tuple[BuildOptions, dict]:
    """Split builder ``**options`` into (BuildOptions, Arch pass-through fields).

    ``convention`` picks defaults; any single rule may be overridden. Unknown
    keys raise TypeError naming them (nothing is silently ignored).
    """
    options = dict(options)
    convention = check_choice(options.pop("convention", "tf_slim"), "convention",
                              CONVENTIONS, fn=fn)
    passthrough = {k: options.pop(k) for k in _ARCH_PASSTHROUGH if k in options}
    if "padding" in passthrough:
        # checked here because the resolution check below depends on it
        check_choice(passthrough["padding"], "padding", ("SAME", "VALID"), fn=fn)
    fields = dict(_convention_defaults(model, convention))
    known = ("expansion_rule", "scale_stem", "scale_final", "head_rule", "se_width",
             "truncate", "min_depth", "divisor")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"{fn}: unexpected option(s) {unknown}; known options are "
            f"{sorted(known + _ARCH_PASSTHROUGH + ('convention',))}"
        )
    fields.update(options)
    check_choice(fields.get("expansion_rule", "scaled_input_ratio"), "expansion_rule",
                 ("scaled_input_ratio", "scaled_table"), fn=fn)
    check_choice(fields.get("scale_final", "never"), "scale_final", SCALE_RULES, fn=fn)
    check_choice(fields.get("head_rule", "scaled_table"), "head_rule",
                 ("scaled_table", "six_times_last"), fn=fn)
    check_choice(fields.get("se_width", "make_divisible"), "se_width",
                 ("make_divisible", "exact"), fn=fn)
    for b in ("scale_stem", "truncate"):
        if b in fields and not isinstance(fields[b], bool):
            raise TypeError(f"{fn}: argument '{b}' must be a bool, "
                            f"got {type(fields[b]).__name__} {fields[b]!r}")
    if "min_depth" in fields:
        check_int(fields["min_depth"], "min_depth", min_value=1, fn=fn)
    if "divisor" in fields:
        check_int(fields["divisor"], "divisor", min_value=1, fn=fn)
    return BuildOptions(convention=convention, **fields), passthrough


def check_common(multiplier, resolution, num_classes, fn: str) -> float:
    """Validate the three builder arguments shared by every MobileNet."""
    if isinstance(multiplier, bool) or not isinstance(multiplier, numbers.Real):
        raise TypeError(f"{fn}: argument 'multiplier' must be a real number, "
                        f"got {type(multiplier).__name__} {multiplier!r}")
    if not (math.isfinite(multiplier) and multiplier > 0):
        raise ValueError(f"{fn}: argument 'multiplier' must be > 0, got {multiplier}")
    check_int(resolution, "resolution", min_value=1, fn=fn)
    check_int(num_classes, "num_classes", min_value=1, fn=fn)
    return float(multiplier)

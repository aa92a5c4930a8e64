"""MobileNetV3 as data: Howard et al. 2019, "Searching for MobileNetV3",
Table 1 (Large) and Table 2 (Small).

Each bneck row keeps the paper's columns: kernel, exp size, #out, SE, NL, s.
Numbering (supplement A.2) counts bnecks from 1:

- Large, L1..L15: L1 (16), L2-L3 (24), L4-L6 (40, SE), L7-L10 (80),
  L11-L12 (112, SE), L13-L15 (160, SE). "L11-L15 of MV3-large are the bnecks
  with 112/160 outputs" (BasisNet Sec. 4.4/4.5); "L8-L15" (BasisNet-MV3
  default) adds the three 80-wide bnecks after the first 80 one.
- Small, L1..L11: L1 (16, SE), L2-L3 (24), L4-L6 (40), L7-L8 (48), L9-L11 (96).

The stem conv, the head conv (960/576), the pre-logits conv (1280/1024) and
the classifier are not numbered.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from refbasis.arch.spec import (
    Arch,
    BlockSpec,
    check_common,
    check_resolution,
    make_divisible,
    resolve_options,
)

__all__ = [
    "MV3_LARGE_TABLE",
    "MV3_SMALL_TABLE",
    "MV3Row",
    "MV3Table",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
]

_NL = {"RE": "relu", "HS": "hard_swish"}


@dataclass(frozen=True)
class MV3Row:
    """One bneck row: depthwise ``kernel``, ``exp_size`` ("exp size"),
    ``out`` ("#out"), ``se`` (checkmark), ``nl`` ("RE" | "HS"), stride ``s``."""

    kernel: int
    exp_size: int
    out: int
    se: bool
    nl: str
    s: int


@dataclass(frozen=True)
class MV3Table:
    """A whole MobileNetV3 table: stem, bnecks, head conv, pre-logits."""

    name: str
    stem: int  # conv2d 3x3, s=2, HS
    rows: tuple[MV3Row, ...]
    head: int  # conv2d 1x1 + BN, HS
    pre_logits: int  # conv2d 1x1, NBN, HS (after the 7x7 pool)


def _r(kernel, exp_size, out, se, nl, s) -> MV3Row:
    return MV3Row(kernel=kernel, exp_size=exp_size, out=out, se=se == "SE", nl=nl, s=s)


# Howard et al. 2019, Table 1 (MobileNetV3-Large, input 224^2 x 3).
MV3_LARGE_TABLE = MV3Table(
    name="mobilenet_v3_large",
    stem=16,
    rows=(
        _r(3, 16, 16, "-", "RE", 1),  # L1
        _r(3, 64, 24, "-", "RE", 2),  # L2
        _r(3, 72, 24, "-", "RE", 1),  # L3
        _r(5, 72, 40, "SE", "RE", 2),  # L4
        _r(5, 120, 40, "SE", "RE", 1),  # L5
        _r(5, 120, 40, "SE", "RE", 1),  # L6
        _r(3, 240, 80, "-", "HS", 2),  # L7
        _r(3, 200, 80, "-", "HS", 1),  # L8
        _r(3, 184, 80, "-", "HS", 1),  # L9
        _r(3, 184, 80, "-", "HS", 1),  # L10
        _r(3, 480, 112, "SE", "HS", 1),  # L11
        _r(3, 672, 112, "SE", "HS", 1),  # L12
        _r(5, 672, 160, "SE", "HS", 2),  # L13
        _r(5, 960, 160, "SE", "HS", 1),  # L14
        _r(5, 960, 160, "SE", "HS", 1),  # L15
    ),
    head=960,
    pre_logits=1280,
)

# Howard et al. 2019, Table 2 (MobileNetV3-Small, input 224^2 x 3). The paper
# marks SE on the 576 head conv; TF-slim, Keras and torchvision have none there,
# and neither does this reference (docs/architectures.md).
MV3_SMALL_TABLE = MV3Table(
    name="mobilenet_v3_small",
    stem=16,
    rows=(
        _r(3, 16, 16, "SE", "RE", 2),  # L1
        _r(3, 72, 24, "-", "RE", 2),  # L2
        _r(3, 88, 24, "-", "RE", 1),  # L3
        _r(5, 96, 40, "SE", "HS", 2),  # L4
        _r(5, 240, 40, "SE", "HS", 1),  # L5
        _r(5, 240, 40, "SE", "HS", 1),  # L6
        _r(5, 120, 48, "SE", "HS", 1),  # L7
        _r(5, 144, 48, "SE", "HS", 1),  # L8
        _r(5, 288, 96, "SE", "HS", 2),  # L9
        _r(5, 576, 96, "SE", "HS", 1),  # L10
        _r(5, 576, 96, "SE", "HS", 1),  # L11
    ),
    head=576,
    pre_logits=1024,
)

SE_REDUCTION = 4  # paper Sec. 5.3: SE bottleneck = 1/4 of the expansion width


def _build(table: MV3Table, multiplier, resolution, num_classes, options, fn) -> Arch:
    m = check_common(multiplier, resolution, num_classes, fn)
    opt, passthrough = resolve_options(table.name, options, fn)

    stem = opt.round(table.stem, m, scale=opt.scale_stem)
    blocks: list[BlockSpec] = []
    c_in = stem
    t_in = table.stem  # the table's own input width of the current row
    for row in table.rows:
        c_out = opt.round(row.out, m)
        if opt.expansion_rule == "scaled_input_ratio":
            # TF-slim expand_input_by_factor(exp / in): exact ratio of the table.
            expanded = make_divisible(c_in * Fraction(row.exp_size, t_in),
                                      opt.divisor, opt.min_depth)
            # TF-slim expanded_conv only expands when inner_size > input width.
            if expanded <= c_in:
                expanded = c_in
        else:
            expanded = opt.round(row.exp_size, m)
        if row.se:
            if opt.se_width == "make_divisible":
                se = make_divisible(expanded / SE_REDUCTION, opt.divisor, opt.min_depth)
            else:
                se = expanded // SE_REDUCTION
        else:
            se = None
        blocks.append(
            BlockSpec(
                index=len(blocks) + 1,
                in_channels=c_in,
                expand=expanded != c_in,
                expanded_channels=expanded,
                out_channels=c_out,
                kernel=row.kernel,
                stride=row.s,
                se_channels=se,
                activation=_NL[row.nl],
                residual=row.s == 1 and c_in == c_out,
            )
        )
        c_in, t_in = c_out, row.out
    if opt.head_rule == "scaled_table":
        head = opt.round(table.head, m)
    else:
        head = 6 * c_in
    pre_logits = opt.round(table.pre_logits, m, scale=opt.final_scaled(m))
    check_resolution(table.name, resolution, blocks, passthrough.get("padding", "SAME"), fn)
    return Arch(
        name=table.name,
        multiplier=m,
        resolution=int(resolution),
        num_classes=int(num_classes),
        stem_channels=stem,
        stem_activation="hard_swish",
        blocks=tuple(blocks),
        head_channels=head,
        head_activation="hard_swish",
        pre_logits_channels=pre_logits,
        pre_logits_activation="hard_swish",
        **passthrough,
    )


def mobilenet_v3_large(
    multiplier: float = 1.0, resolution: int = 224, num_classes: int = 1000, **options
) -> Arch:
    """Resolve MobileNetV3-Large (Table 1) for ``multiplier`` and ``resolution``.

    Defaults follow TF-slim ``mobilenet_v3.py``: widths make_divisible(c * m,
    8, min_depth=8); expansion make_divisible(scaled input * exp/in); SE width
    make_divisible(expanded / 4); head conv make_divisible(960 * m); the 1280
    pre-logits unscaled. ``**options``: see ``refbasis.arch.spec.BuildOptions``
    and the Arch fields ``dropout_rate``, ``se_gate``, ``se_inner``,
    ``bn_eps``, ``bn_decay``, ``padding``.
    """
    return _build(MV3_LARGE_TABLE, multiplier, resolution, num_classes, options,
                  "mobilenet_v3_large")


def mobilenet_v3_small(
    multiplier: float = 1.0, resolution: int = 224, num_classes: int = 1000, **options
) -> Arch:
    """Resolve MobileNetV3-Small (Table 2); same rules as ``mobilenet_v3_large``
    with a 576 head conv and 1024 pre-logits (unscaled by default)."""
    return _build(MV3_SMALL_TABLE, multiplier, resolution, num_classes, options,
                  "mobilenet_v3_small")

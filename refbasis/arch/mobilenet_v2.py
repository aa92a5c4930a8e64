"""MobileNetV2 as data: Sandler et al. 2018, "MobileNetV2: Inverted Residuals
and Linear Bottlenecks", Table 2.

Each bottleneck row (t, c, n, s) expands to n blocks: the first has stride s,
the rest stride 1; t is the expansion factor of the block's input width.
Numbering (supplement A.2): L1 = the t=1 block (16 out), L2-L3 (24), L4-L6
(32), L7-L10 (64), L11-L13 (96), L14-L16 (160), L17 (320). BasisNet-MV2's
per-basis layers L11-L17 are the 96/160/320 blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from refbasis.arch.spec import (
    Arch,
    BlockSpec,
    check_common,
    check_resolution,
    resolve_options,
)

__all__ = ["MV2_HEAD_CHANNELS", "MV2_STEM_CHANNELS", "MV2_TABLE", "MV2Row", "mobilenet_v2"]


@dataclass(frozen=True)
class MV2Row:
    """One bottleneck row of Table 2: expansion t, output channels c,
    repeats n, first stride s."""

    t: int
    c: int
    n: int
    s: int


# Sandler et al. 2018, Table 2 (input 224^2 x 3):
#   conv2d 3x3, c=32, s=2  ->  seven bottleneck rows  ->  conv2d 1x1, 1280
#   -> avgpool 7x7 -> conv2d 1x1, k.
MV2_STEM_CHANNELS = 32
MV2_TABLE: tuple[MV2Row, ...] = (
    MV2Row(t=1, c=16, n=1, s=1),
    MV2Row(t=6, c=24, n=2, s=2),
    MV2Row(t=6, c=32, n=3, s=2),
    MV2Row(t=6, c=64, n=4, s=2),
    MV2Row(t=6, c=96, n=3, s=1),
    MV2Row(t=6, c=160, n=3, s=2),
    MV2Row(t=6, c=320, n=1, s=1),
)
MV2_HEAD_CHANNELS = 1280
MV2_KERNEL = 3  # every depthwise conv of MobileNetV2 is 3x3
MV2_ACTIVATION = "relu6"


def mobilenet_v2(
    multiplier: float = 1.0, resolution: int = 224, num_classes: int = 1000, **options
) -> Arch:
    """Resolve MobileNetV2 for a width ``multiplier`` and input ``resolution``.

    Defaults follow TF-slim ``mobilenet_v2.py``: every width is
    make_divisible(c * multiplier, 8, min_depth=8); the expansion width is
    make_divisible(scaled input * t); the t=1 block has no expansion conv; the
    1280 head conv is kept for multipliers < 1 and scaled above 1
    (``finegrain_classification_mode``). ``**options``: see
    ``refbasis.arch.spec.BuildOptions`` (``convention="keras"`` /
    ``"torchvision"``, single rules) and the Arch fields ``dropout_rate``,
    ``bn_eps``, ``bn_decay``, ``padding``.
    """
    fn = "mobilenet_v2"
    m = check_common(multiplier, resolution, num_classes, fn)
    opt, passthrough = resolve_options("mobilenet_v2", options, fn)

    stem = opt.round(MV2_STEM_CHANNELS, m, scale=opt.scale_stem)
    blocks: list[BlockSpec] = []
    c_in = stem
    for row in MV2_TABLE:
        c_out = opt.round(row.c, m)
        for r in range(row.n):
            stride = row.s if r == 0 else 1
            if row.t == 1:
                expanded = c_in
            elif opt.expansion_rule == "scaled_input_ratio":
                expanded = opt.round(c_in * row.t, 1.0)
            else:
                # torchvision MobileNetV2 uses round(inp * t) with no rounding
                # to 8; for this table it equals the scaled-table rule because
                # every resolved input width is a multiple of 8.
                expanded = int(round(c_in * row.t))
            blocks.append(
                BlockSpec(
                    index=len(blocks) + 1,
                    in_channels=c_in,
                    expand=expanded != c_in,
                    expanded_channels=expanded,
                    out_channels=c_out,
                    kernel=MV2_KERNEL,
                    stride=stride,
                    se_channels=None,
                    activation=MV2_ACTIVATION,
                    residual=stride == 1 and c_in == c_out,
                )
            )
            c_in = c_out
    head = opt.round(MV2_HEAD_CHANNELS, m, scale=opt.final_scaled(m))
    check_resolution(fn, resolution, blocks, passthrough.get("padding", "SAME"), fn)
    return Arch(
        name="mobilenet_v2",
        multiplier=m,
        resolution=int(resolution),
        num_classes=int(num_classes),
        stem_channels=stem,
        stem_activation=MV2_ACTIVATION,
        blocks=tuple(blocks),
        head_channels=head,
        head_activation=MV2_ACTIVATION,
        pre_logits_channels=None,
        pre_logits_activation=None,
        **passthrough,
    )

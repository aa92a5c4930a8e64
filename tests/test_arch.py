"""Architecture tables, make_divisible and the BasisNet configuration.

Expected channel lists are written by hand: the 1.0x lists are the papers'
tables (Sandler et al. 2018 Table 2; Howard et al. 2019 Tables 1-2); the
0.35/0.5/0.75 lists apply TF-slim's rule by hand (make_divisible(c * m) for
outputs, make_divisible(scaled input * exp/in) for expansions), with the
arithmetic of the non-obvious entries in comments.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refbasis.arch import (
    ARCH_NAMES,
    MV2_TABLE,
    MV3_LARGE_TABLE,
    MV3_SMALL_TABLE,
    feature_map_sizes,
    get_arch,
    make_divisible,
    mobilenet_v2,
    mobilenet_v3_large,
    mobilenet_v3_small,
    total_stride,
)
from refbasis.basis.config import (
    BasisNetConfig,
    basisnet_mv2,
    basisnet_mv3,
    per_basis_param_names,
    shared_param_names_in_range,
)


def outs(a):
    return [b.out_channels for b in a.blocks]


def exps(a):
    return [b.expanded_channels for b in a.blocks]


# ---------------------------------------------------------------------------
# make_divisible
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("v, expected", [
    (32, 32), (11.2, 16),   # 32*0.35: round-half-up gives 8 < 0.9*11.2 -> +8
    (5.6, 8),               # below min_value (= divisor) -> 8
    (8.4, 8),               # 24*0.35: 8 >= 7.56, no bump
    (18, 24),               # 72/4: 16 < 16.2 -> 24 (MV3 SE width)
    (30, 32), (12, 16), (33.6, 32), (201.6, 200), (147.2, 144), (1792.0, 1792),
])
def test_make_divisible_known_values(v, expected):
    assert make_divisible(v) == expected


def test_make_divisible_min_value_and_divisor():
    assert make_divisible(5, 8, min_value=16) == 16
    assert make_divisible(7.4, 1) == 7
    assert make_divisible(7.5, 1) == 8   # int(v + 0.5): half rounds up
    assert make_divisible(100, 16) == 96  # 96 >= 90
    assert make_divisible(17, 16) == 16


@settings(max_examples=200)
@given(v=st.floats(min_value=1e-3, max_value=1e5, allow_nan=False),
       divisor=st.integers(1, 64), min_value=st.one_of(st.none(), st.integers(1, 128)))
def test_make_divisible_properties(v, divisor, min_value):
    r = make_divisible(v, divisor, min_value)
    lo = divisor if min_value is None else min_value
    assert isinstance(r, int)
    assert r >= lo
    assert r >= 0.9 * v                      # never rounds down by more than 10%
    if r != lo:                              # min_value may break divisibility
        assert r % divisor == 0
    assert r <= max(lo, v + divisor / 2, 0.9 * v + divisor)


@settings(max_examples=50)
@given(k=st.integers(1, 500), divisor=st.sampled_from([1, 2, 4, 8, 16]))
def test_make_divisible_fixed_points(k, divisor):
    assert make_divisible(k * divisor, divisor) == k * divisor


@pytest.mark.parametrize("kw, exc, msg", [
    (dict(v=0), ValueError, "argument 'v'"),
    (dict(v=-3.0), ValueError, "argument 'v'"),
    (dict(v=float("nan")), ValueError, "argument 'v'"),
    (dict(v=True), TypeError, "argument 'v'"),
    (dict(v=8, divisor=0), ValueError, "argument 'divisor'"),
    (dict(v=8, divisor=2.0), TypeError, "argument 'divisor'"),
    (dict(v=8, min_value=0), ValueError, "argument 'min_value'"),
])
def test_make_divisible_errors(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        make_divisible(**kw)


# ---------------------------------------------------------------------------
# The tables themselves (paper columns)
# ---------------------------------------------------------------------------


def test_mv2_table_rows_are_the_paper_rows():
    # Sandler et al. 2018, Table 2: (t, c, n, s)
    assert [(r.t, r.c, r.n, r.s) for r in MV2_TABLE] == [
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def test_mv3_tables_are_the_paper_rows():
    # Howard et al. 2019, Table 1 (kernel, exp size, #out, SE, NL, s)
    assert [(r.kernel, r.exp_size, r.out, r.se, r.nl, r.s) for r in MV3_LARGE_TABLE.rows] == [
        (3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2),
        (3, 72, 24, False, "RE", 1), (5, 72, 40, True, "RE", 2),
        (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
        (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
        (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
        (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1),
        (5, 960, 160, True, "HS", 1)]
    # Table 2
    assert [(r.kernel, r.exp_size, r.out, r.se, r.nl, r.s) for r in MV3_SMALL_TABLE.rows] == [
        (3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2),
        (3, 88, 24, False, "RE", 1), (5, 96, 40, True, "HS", 2),
        (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
        (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1),
        (5, 288, 96, True, "HS", 2), (5, 576, 96, True, "HS", 1),
        (5, 576, 96, True, "HS", 1)]
    assert (MV3_LARGE_TABLE.stem, MV3_LARGE_TABLE.head, MV3_LARGE_TABLE.pre_logits) == (
        16, 960, 1280)
    assert (MV3_SMALL_TABLE.stem, MV3_SMALL_TABLE.head, MV3_SMALL_TABLE.pre_logits) == (
        16, 576, 1024)
    with pytest.raises(dataclasses.FrozenInstanceError):
        MV3_LARGE_TABLE.rows[0].out = 17


# ---------------------------------------------------------------------------
# MobileNetV2 resolved channels
# ---------------------------------------------------------------------------

MV2_OUTS = {
    # 1.0: paper Table 2, rows expanded by n
    1.0: (32, [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320], 1280),
    # 0.35: 32->11.2->16, 16->5.6->8, 24->8.4->8, 32->16, 64->22.4->24, 96->33.6->32,
    # 160->56, 320->112; 1280 kept (multiplier < 1)
    0.35: (16, [8, 8, 8, 16, 16, 16, 24, 24, 24, 24, 32, 32, 32, 56, 56, 56, 112], 1280),
    # 0.5: 16->8, 24->12->16
    0.5: (16, [8, 16, 16, 16, 16, 16, 32, 32, 32, 32, 48, 48, 48, 80, 80, 80, 160], 1280),
    # 0.75: 32->24, 16->12->16, 24->18->(16 < 16.2)->24, 32->24
    0.75: (24, [16, 24, 24, 24, 24, 24, 48, 48, 48, 48, 72, 72, 72, 120, 120, 120, 240], 1280),
}


@pytest.mark.parametrize("m", sorted(MV2_OUTS))
def test_mv2_channels(m):
    stem, out, head = MV2_OUTS[m]
    a = mobilenet_v2(m)
    assert a.stem_channels == stem
    assert outs(a) == out
    assert a.head_channels == head
    assert a.pre_logits_channels is None
    ins = [stem] + out[:-1]
    assert [b.in_channels for b in a.blocks] == ins
    # t=1 for L1 (no expansion conv), t=6 for every other block
    assert a.blocks[0].expand is False and a.blocks[0].expanded_channels == stem
    assert exps(a)[1:] == [6 * c for c in ins[1:]]
    assert all(b.expand for b in a.blocks[1:])


def test_mv2_structure():
    a = mobilenet_v2()
    assert [b.index for b in a.blocks] == list(range(1, 18))
    assert [b.stride for b in a.blocks] == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    assert all(b.kernel == 3 and b.se_channels is None and b.activation == "relu6"
               for b in a.blocks)
    res = [b.index for b in a.blocks if b.residual]
    assert res == [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]
    assert a.stem_activation == a.head_activation == "relu6"
    assert a.layer_names() == ("stem", *[f"blocks.{i}" for i in range(1, 18)],
                               "head.conv", "head.pool", "head.logits")
    assert a.feature_channels == 1280
    # BasisNet numbering: L11-L17 are the 96/160/320 blocks (supplement A.2)
    assert [a.block(i).out_channels for i in range(11, 18)] == [96, 96, 96, 160, 160, 160, 320]


def test_mv2_head_scaling():
    # TF-slim finegrain_classification_mode: 1280 for m < 1, scaled above 1
    assert mobilenet_v2(1.4).head_channels == 1792
    assert mobilenet_v2(0.5).head_channels == 1280
    assert mobilenet_v2(0.5, scale_final="always").head_channels == 640
    assert mobilenet_v2(1.4, scale_final="never").head_channels == 1280
    # Keras truncates c * m before rounding: 24 * 0.35 = 8.4 -> 8; 32 * 0.35 -> 11 -> 16
    assert outs(mobilenet_v2(0.35, convention="keras"))[:4] == [8, 8, 8, 16]


# ---------------------------------------------------------------------------
# MobileNetV3 resolved channels
# ---------------------------------------------------------------------------

MV3L = {
    # 1.0: paper Table 1
    1.0: dict(stem=16, head=960,
              out=[16, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 160, 160, 160],
              exp=[16, 64, 72, 72, 120, 120, 240, 200, 184, 184, 480, 672, 672, 960, 960]),
    # 0.75: 16->12->16, 24->18->24, 40->30->32, 80->60->64, 112->84->88, 160->120;
    # exp = in * ratio: 64*2.5 = 160, 64*2.3 = 147.2 -> 144, 88*6 = 528
    0.75: dict(stem=16, head=720,
               out=[16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 88, 88, 120, 120, 120],
               exp=[16, 64, 72, 72, 96, 96, 192, 160, 144, 144, 384, 528, 528, 720, 720]),
    # 0.5: stem 8, 24->12->16, 40->20->24; exp 40*2.5 = 100 -> 104, 40*2.3 = 92 -> 96
    0.5: dict(stem=8, head=480,
              out=[8, 16, 16, 24, 24, 24, 40, 40, 40, 40, 56, 56, 80, 80, 80],
              exp=[8, 32, 48, 48, 72, 72, 144, 104, 96, 96, 240, 336, 336, 480, 480]),
    # 0.35: 16->5.6->8, 24->8.4->8, 40->14->16, 80->28->32, 112->39.2->40, 160->56;
    # exp 32*2.3 = 73.6 -> 72; head 960*0.35 = 336
    0.35: dict(stem=8, head=336,
               out=[8, 8, 8, 16, 16, 16, 32, 32, 32, 32, 40, 40, 56, 56, 56],
               exp=[8, 32, 24, 24, 48, 48, 96, 80, 72, 72, 192, 240, 240, 336, 336]),
}

MV3S = {
    # 1.0: paper Table 2
    1.0: dict(stem=16, head=576, out=[16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96],
              exp=[16, 72, 88, 96, 240, 240, 120, 144, 288, 576, 576]),
    # 0.75: 40->30->32, 48->36->40, 96->72; head 576*0.75 = 432
    0.75: dict(stem=16, head=432, out=[16, 24, 24, 32, 32, 32, 40, 40, 72, 72, 72],
               exp=[16, 72, 88, 96, 192, 192, 96, 120, 240, 432, 432]),
    # 0.5: exp 8*4.5 = 36 -> 40, 16*88/24 = 58.7 -> 56
    0.5: dict(stem=8, head=288, out=[8, 16, 16, 24, 24, 24, 24, 24, 48, 48, 48],
              exp=[8, 40, 56, 64, 144, 144, 72, 72, 144, 288, 288]),
    # 0.35: 48->16.8->16, 96->33.6->32; exp 8*88/24 = 29.3 -> 32; head 201.6 -> 200
    0.35: dict(stem=8, head=200, out=[8, 8, 8, 16, 16, 16, 16, 16, 32, 32, 32],
               exp=[8, 40, 32, 32, 96, 96, 48, 48, 96, 192, 192]),
}


@pytest.mark.parametrize("m", sorted(MV3L))
def test_mv3_large_channels(m):
    want = MV3L[m]
    a = mobilenet_v3_large(m)
    assert a.stem_channels == want["stem"]
    assert outs(a) == want["out"]
    assert exps(a) == want["exp"]
    assert a.head_channels == want["head"]
    assert a.pre_logits_channels == 1280  # unscaled (TF-slim default of the reference)
    assert [b.expand for b in a.blocks] == [False] + [True] * 14


@pytest.mark.parametrize("m", sorted(MV3S))
def test_mv3_small_channels(m):
    want = MV3S[m]
    a = mobilenet_v3_small(m)
    assert a.stem_channels == want["stem"]
    assert outs(a) == want["out"]
    assert exps(a) == want["exp"]
    assert a.head_channels == want["head"]
    assert a.pre_logits_channels == 1024
    assert [b.expand for b in a.blocks] == [False] + [True] * 10


def test_mv3_large_structure():
    a = mobilenet_v3_large()
    assert [b.kernel for b in a.blocks] == [3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5]
    assert [b.stride for b in a.blocks] == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1]
    assert [b.activation for b in a.blocks] == ["relu"] * 6 + ["hard_swish"] * 9
    # SE width = make_divisible(exp / 4): 72/4 = 18 -> 24, 120/4 = 30 -> 32, 480/4 = 120,
    # 672/4 = 168, 960/4 = 240
    assert [b.se_channels for b in a.blocks] == [
        None, None, None, 24, 32, 32, None, None, None, None, 120, 168, 168, 240, 240]
    assert [b.index for b in a.blocks if b.residual] == [1, 3, 5, 6, 8, 9, 10, 12, 14, 15]
    assert (a.stem_activation, a.head_activation, a.pre_logits_activation) == (
        "hard_swish", "hard_swish", "hard_swish")
    assert (a.se_gate, a.se_inner) == ("hard_sigmoid", "relu")
    assert a.layer_names()[-3:] == ("head.pool", "head.pre_logits", "head.logits")
    assert a.feature_channels == 1280
    # "L11-L15 of MV3-large are the bnecks with 112/160 outputs"
    assert [a.block(i).out_channels for i in range(11, 16)] == [112, 112, 160, 160, 160]
    # the paper's exact 1/4 (no rounding) as an option
    exact = mobilenet_v3_large(se_width="exact")
    assert exact.block(4).se_channels == 18


def test_mv3_small_structure():
    a = mobilenet_v3_small()
    assert [b.kernel for b in a.blocks] == [3, 3, 3] + [5] * 8
    assert [b.stride for b in a.blocks] == [2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1]
    assert [b.activation for b in a.blocks] == ["relu"] * 3 + ["hard_swish"] * 8
    # 16/4 = 4 -> 8 (min), 96/4 = 24, 240/4 = 60 -> 64, 120/4 = 30 -> 32, 144/4 = 36 -> 40
    assert [b.se_channels for b in a.blocks] == [8, None, None, 24, 64, 64, 32, 40, 72, 144, 144]
    assert [b.index for b in a.blocks if b.residual] == [3, 5, 6, 8, 10, 11]
    assert a.feature_channels == 1024


def test_mv3_conventions():
    # torchvision: exp = make_divisible(exp * m): 72 * 0.75 = 54 -> 56 (TF-slim: 24 * 3 = 72)
    tv = mobilenet_v3_large(0.75, convention="torchvision")
    assert tv.block(3).expanded_channels == 56
    assert tv.pre_logits_channels == 960   # 1280 * 0.75, scaled always
    # Keras: unscaled 16-wide stem; head = 6 x last block width; pre-logits scaled above 1
    ke = mobilenet_v3_small(0.35, convention="keras")
    assert ke.stem_channels == 16
    assert ke.head_channels == 6 * 32
    assert mobilenet_v3_large(1.25, convention="keras").pre_logits_channels == 1600
    assert mobilenet_v3_large(1.25).pre_logits_channels == 1280
    assert mobilenet_v3_large(1.25, scale_final="above_one").pre_logits_channels == 1600


# ---------------------------------------------------------------------------
# Spatial sizes, numbering, immutability
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_feature_maps_and_stride(name):
    a = get_arch(name)
    assert total_stride(a) == 32
    sizes = feature_map_sizes(a)
    assert sizes["stem"] == (224, 112)
    assert sizes[a.blocks[-1].name][1] == 7          # the papers' "pool 7x7"
    assert sizes["head.pool"] == (7, 1)
    b = get_arch(name, resolution=225)               # TF SAME: ceil(225 / 2) = 113
    assert feature_map_sizes(b)["stem"] == (225, 113)
    assert feature_map_sizes(b)[b.blocks[-1].name][1] == math.ceil(225 / 32)


def test_arch_is_frozen_and_validates():
    a = mobilenet_v3_small()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.resolution = 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.blocks[0].stride = 1
    with pytest.raises(ValueError, match="'blocks\\[1\\] \\(L2\\).in_channels'"):
        dataclasses.replace(a, blocks=(a.blocks[0], dataclasses.replace(a.blocks[1],
                                                                        in_channels=99))
                            + a.blocks[2:])
    with pytest.raises(ValueError, match="'blocks\\[1\\] \\(L2\\).index' must be 2, got 3"):
        dataclasses.replace(a, blocks=(a.blocks[0], a.blocks[2]))
    with pytest.raises(ValueError, match="residual"):
        dataclasses.replace(a, blocks=(dataclasses.replace(a.blocks[0], residual=True),)
                            + a.blocks[1:])
    with pytest.raises(ValueError, match="'index' must be in \\[1, 11\\]"):
        a.block(12)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def test_get_arch_unknown_name_lists_names():
    with pytest.raises(ValueError, match="mobilenet_v2.*mobilenet_v3_large.*mobilenet_v3_small"):
        get_arch("mobilenet_v4")


@pytest.mark.parametrize("builder", [mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small])
def test_builder_errors(builder):
    fn = builder.__name__
    with pytest.raises(ValueError, match=f"{fn}: argument 'multiplier' must be > 0, got 0"):
        builder(0)
    with pytest.raises(ValueError, match="'multiplier' must be > 0, got -1"):
        builder(-1.0)
    with pytest.raises(TypeError, match="'multiplier' must be a real number"):
        builder("1.0")
    with pytest.raises(ValueError, match="'num_classes' must be >= 1, got 0"):
        builder(num_classes=0)
    with pytest.raises(TypeError, match="'resolution' must be an int"):
        builder(resolution=224.0)
    with pytest.raises(TypeError, match="unexpected option"):
        builder(multipler=1.0)
    with pytest.raises(ValueError, match="'scale_final' must be one of"):
        builder(scale_final="sometimes")
    with pytest.raises(ValueError, match="'padding' must be one of"):
        builder(padding="REFLECT")
    # VALID padding shrinks maps further: 32 is not enough for a 3x3 stride-2 stem chain
    with pytest.raises(ValueError, match="padding VALID"):
        builder(resolution=32, padding="VALID")


def test_resolution_too_small_names_the_layer():
    # 31: 15, 7 (L2), 3 (L4), 1 (L7), then L14 (stride 2) gets 1 pixel -> 0
    with pytest.raises(ValueError, match=r"'resolution' must be >= 32.*got 31.*block L14"):
        mobilenet_v2(resolution=31)
    # MV3-large: strides at L2, L4, L7, L13
    with pytest.raises(ValueError, match=r"got 16: block L13 \(blocks.13\)"):
        mobilenet_v3_large(resolution=16)
    with pytest.raises(ValueError, match=r"got 1: the stem conv"):
        mobilenet_v3_small(resolution=1)
    assert mobilenet_v3_small(resolution=32).resolution == 32


# ---------------------------------------------------------------------------
# BasisNetConfig (refbasis.basis.config)
# ---------------------------------------------------------------------------


def test_presets_follow_supplement_a2():
    c = basisnet_mv2()
    assert (c.light.name, c.light.multiplier, c.light.resolution) == ("mobilenet_v2", 0.5, 128)
    assert c.light.head_channels == 640            # matches A.1's 30.3M / 1.2M (test_cost)
    assert (c.specialist.name, c.specialist.multiplier, c.specialist.resolution) == (
        "mobilenet_v2", 1.0, 224)
    assert (c.num_bases, c.per_basis_layers, c.basis_dropout_rate) == (8, (11, 17), 1 / 8)
    assert c.per_basis_blocks == (11, 12, 13, 14, 15, 16, 17)
    assert c.coefficient_dim == 7 * 8
    m = basisnet_mv3()
    assert (m.light.name, m.light.multiplier, m.light.resolution) == (
        "mobilenet_v3_small", 1.0, 128)
    assert m.specialist.name == "mobilenet_v3_large"
    assert (m.num_bases, m.per_basis_layers, m.basis_dropout_rate) == (16, (8, 15), 1 / 16)
    assert (m.coefficient_normalization, m.dropout_granularity) == ("softmax", "example")
    assert m.per_basis_kinds == frozenset({"conv"})
    # Sec. 4.4: <= 8 bases -> 1/8, 16..128 -> 1/16
    assert basisnet_mv3(4, (11, 15), light_resolution=224).basis_dropout_rate == 1 / 8
    assert basisnet_mv3(128, (11, 15), light_resolution=224).basis_dropout_rate == 1 / 16


def test_per_basis_param_names():
    a = mobilenet_v3_large()
    assert per_basis_param_names(a, (11, 11)) == (
        "blocks.11.expand.kernel", "blocks.11.depthwise.kernel", "blocks.11.project.kernel")
    allk = per_basis_param_names(a, (11, 11), frozenset({"conv", "bn", "se"}))
    assert allk == (
        "blocks.11.expand.kernel", "blocks.11.expand.bn.gamma", "blocks.11.expand.bn.beta",
        "blocks.11.depthwise.kernel", "blocks.11.depthwise.bn.gamma",
        "blocks.11.depthwise.bn.beta",
        "blocks.11.se.reduce.kernel", "blocks.11.se.reduce.bias",
        "blocks.11.se.expand.kernel", "blocks.11.se.expand.bias",
        "blocks.11.project.kernel", "blocks.11.project.bn.gamma", "blocks.11.project.bn.beta")
    assert shared_param_names_in_range(a, (11, 11)) == tuple(
        n for n in allk if not n.endswith("kernel") or ".se." in n)
    # L1 has no expansion conv, so no expand kernel
    assert per_basis_param_names(a, (1, 1)) == (
        "blocks.1.depthwise.kernel", "blocks.1.project.kernel")
    assert len(basisnet_mv3().per_basis_param_names()) == 8 * 3


@pytest.mark.parametrize("kw, exc, msg", [
    (dict(num_bases=0), ValueError, "'num_bases' must be >= 1, got 0"),
    (dict(per_basis_layers=(0, 15)), ValueError, "'per_basis_layers\\[0\\]' must be >= 1"),
    (dict(per_basis_layers=(11, 16)), ValueError, "1 <= first <= last <= 15.*got \\(11, 16\\)"),
    (dict(per_basis_layers=(15, 11)), ValueError, "got \\(15, 11\\)"),
    (dict(per_basis_layers=[11, 15]), ValueError, "must be a tuple"),
    (dict(basis_dropout_rate=1.0), ValueError, "'basis_dropout_rate' must be in \\[0.0, 1.0\\)"),
    (dict(basis_dropout_rate=-0.1), ValueError, "'basis_dropout_rate'"),
    (dict(per_basis_kinds=frozenset({"conv", "fc"})), ValueError, "'per_basis_kinds'"),
    (dict(per_basis_kinds=frozenset()), ValueError, "'per_basis_kinds' must be a non-empty"),
    (dict(coefficient_normalization="l2"), ValueError, "'coefficient_normalization'"),
    (dict(dropout_granularity="batch"), ValueError, "'dropout_granularity'"),
    (dict(light_loss_weight=-1.0), ValueError, "'light_loss_weight'"),
    (dict(light="mobilenet_v3_small"), TypeError, "'light' must be an Arch"),
])
def test_config_errors(kw, exc, msg):
    base = dict(light=mobilenet_v3_small(resolution=128), specialist=mobilenet_v3_large(),
                num_bases=16, per_basis_layers=(11, 15))
    base.update(kw)
    with pytest.raises(exc, match=msg):
        BasisNetConfig(**base)


def test_config_class_mismatch_and_frozen():
    with pytest.raises(ValueError, match="num_classes 1000, got 10"):
        BasisNetConfig(light=mobilenet_v3_small(num_classes=10), specialist=mobilenet_v3_large(),
                       num_bases=2, per_basis_layers=(11, 15))
    c = basisnet_mv3()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.num_bases = 3
    with pytest.raises(ValueError, match="basisnet_mv2: argument 'num_bases'"):
        basisnet_mv2(0)

"""Multiply-adds (MAdds) and parameter accounting for MobileNets and BasisNet.

What is counted (docs/architectures.md has the full table and the published
numbers each convention reproduces):

- MAdds: one per multiply-accumulate of every convolution and dense layer
  (Howard et al. 2017 Sec. 3; Sandler et al. 2018 Table 3): a standard conv
  costs H_out * W_out * k * k * C_in * C_out, a depthwise conv
  H_out * W_out * k * k * C, a dense layer C_in * C_out. The SE block's two
  dense layers (on the pooled vector) are counted by default; its elementwise
  rescale (H * W * C), global pooling and hard-swish are not (each is an
  option of ``CostConvention``); BN (folded at inference), bias adds, other
  activations, residual additions and dropout never are.
- Parameters (default, "trainable"): conv and dense kernels; biases (SE, MV3
  pre-logits, logits, coefficient head); BatchNorm gamma and beta; moving
  statistics only under ``bn_params="all"``.

BasisNet (supplement Table 2): cost = lightweight model (its classifier and
its coefficient head) + synthesis (``N - 1`` multiply-adds per per-basis
weight by default, the choice that reproduces Table 2; ``N`` as an option) +
specialist. Parameters = lightweight model + coefficient head + shared
specialist parameters + N x per-basis parameters.

Every count is an exact Python int; feature-map sizes follow the Arch's
padding (TF "SAME": ceil(in / stride)).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from refbasis._checks import check_choice
from refbasis.arch.spec import Arch, feature_map_sizes

__all__ = [
    "CONVENTIONS",
    "CostConvention",
    "LayerCost",
    "ModelCost",
    "BasisNetCost",
    "arch_cost",
    "basisnet_cost",
    "per_basis_param_count",
    "format_cost",
    "cost_json",
]

BN_PARAM_RULES = ("none", "beta", "gamma_beta", "all")
SYNTHESIS_RULES = ("N", "N-1")


@dataclass(frozen=True)
class CostConvention:
    """Which terms the accounting includes.

    - ``bn_params``: "gamma_beta" (default: trainable BN parameters, as
      torchvision and Keras count), "beta" (TF-slim MobileNets:
      ``batch_norm(center=True, scale=False)``), "none", "all" (+ moving
      mean and variance).
    - ``bias_params``: count biases of the SE convs, pre-logits and logits.
    - ``se_madds``: count the two SE dense layers (C * R + R * C per image).
    - ``se_scale_madds``: count the SE rescale (H * W * C multiplies).
    - ``pool_madds``: count global average pooling (H * W * C adds).
    - ``hard_swish_madds``: one multiply per hard-swish output element (a
      hypothesis for the MobileNetV3 paper's 219M; off by default).
    - ``synthesis``: "N-1" (default; reproduces supplement Table 2: the first
      product alpha_1 W_1 is a multiply, the N - 1 others multiply-adds) or
      "N" (sum_i alpha_i W_i as N multiply-accumulates).
    - ``coefficient_head``: include the coefficient head (dense F -> L * N
      with bias) in the lightweight model's cost.
    """

    bn_params: str = "gamma_beta"
    bias_params: bool = True
    se_madds: bool = True
    se_scale_madds: bool = False
    pool_madds: bool = False
    hard_swish_madds: bool = False
    synthesis: str = "N-1"
    coefficient_head: bool = True

    def __post_init__(self) -> None:
        fn = "CostConvention"
        check_choice(self.bn_params, "bn_params", BN_PARAM_RULES, fn=fn)
        check_choice(self.synthesis, "synthesis", SYNTHESIS_RULES, fn=fn)
        for b in ("bias_params", "se_madds", "se_scale_madds", "pool_madds",
                  "hard_swish_madds", "coefficient_head"):
            if not isinstance(getattr(self, b), bool):
                raise TypeError(f"{fn}: argument '{b}' must be a bool, "
                                f"got {getattr(self, b)!r}")


# Default: MAdds as the MobileNet papers count them; parameters as trainable
# variables (torchvision/Keras counts: MV2 3,504,872, MV3-large 5,483,032).
PAPER = CostConvention()

# Named conventions (docs/architectures.md lists the published numbers each one
# reproduces).
CONVENTIONS: dict[str, CostConvention] = {
    # Trainable parameters: conv/dense kernels, biases, BN gamma and beta.
    "trainable": PAPER,
    # Kernels only: supplement Table 2's MobileNetV3 rows (5.45M, 8.22M, ...)
    # and TF-slim's README (MV2 3.47M).
    "weights_only": CostConvention(bn_params="none", bias_params=False),
    # Every variable incl. BN moving statistics: supplement Table 2's BasisNet
    # rows (8.07M ... 150.3M).
    "all_variables": CostConvention(bn_params="all"),
    # Hypothesis for the MobileNetV3 paper's 219M (vs 217M): also count the SE
    # rescale and one multiply per hard-swish output.
    "elementwise": CostConvention(se_scale_madds=True, hard_swish_madds=True),
}


@dataclass(frozen=True)
class LayerCost:
    """Cost of one parameterised layer (or one BasisNet component).

    ``name`` follows the parameter names (``blocks.11.expand``); ``block`` is
    the owning layer of ``Arch.layer_names()`` (``blocks.11``) or a BasisNet
    component name. Parameter counts are split so conventions can be changed
    without recomputing: ``weights`` (kernels), ``biases``, ``bn`` (gamma,
    beta, moving mean, moving var: 4 x C available; ``bn_channels`` = C).
    """

    name: str
    block: str
    # "conv2d" | "depthwise_conv2d" | "dense" | "se_scale" | "pool" | "hard_swish" | "synthesis"
    op: str
    in_hw: int
    out_hw: int
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    madds: int
    weights: int
    biases: int = 0
    bn_channels: int = 0

    def params(self, conv: CostConvention = PAPER) -> int:
        n = self.weights
        if conv.bias_params:
            n += self.biases
        per = {"none": 0, "beta": 1, "gamma_beta": 2, "all": 4}[conv.bn_params]
        return n + per * self.bn_channels


@dataclass(frozen=True)
class ModelCost:
    """Per-layer costs of one network and its totals under ``convention``."""

    model: str
    layers: tuple[LayerCost, ...]
    convention: CostConvention = field(default_factory=CostConvention)

    @property
    def madds(self) -> int:
        return sum(layer.madds for layer in self.layers)

    @property
    def params(self) -> int:
        return sum(layer.params(self.convention) for layer in self.layers)

    def by_block(self) -> dict[str, tuple[int, int]]:
        """``block -> (madds, params)`` in layer order."""
        out: dict[str, tuple[int, int]] = {}
        for layer in self.layers:
            m, p = out.get(layer.block, (0, 0))
            out[layer.block] = (m + layer.madds, p + layer.params(self.convention))
        return out

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "convention": asdict(self.convention),
            "madds": self.madds,
            "params": self.params,
            "layers": [dict(asdict(la), params=la.params(self.convention))
                       for la in self.layers],
        }


# ---------------------------------------------------------------------------
# One network
# ---------------------------------------------------------------------------


def _conv(name, block, h_in, h_out, cin, cout, k, s, *, bn=True, bias=False) -> LayerCost:
    return LayerCost(name=name, block=block, op="conv2d", in_hw=h_in, out_hw=h_out,
                     in_channels=cin, out_channels=cout, kernel=k, stride=s,
                     madds=h_out * h_out * k * k * cin * cout, weights=k * k * cin * cout,
                     biases=cout if bias else 0, bn_channels=cout if bn else 0)


def _depthwise(name, block, h_in, h_out, c, k, s) -> LayerCost:
    return LayerCost(name=name, block=block, op="depthwise_conv2d", in_hw=h_in, out_hw=h_out,
                     in_channels=c, out_channels=c, kernel=k, stride=s,
                     madds=h_out * h_out * k * k * c, weights=k * k * c, bn_channels=c)


def _dense(name, block, cin, cout, *, bias=True, count_madds=True) -> LayerCost:
    return LayerCost(name=name, block=block, op="dense", in_hw=1, out_hw=1,
                     in_channels=cin, out_channels=cout, kernel=1, stride=1,
                     madds=cin * cout if count_madds else 0, weights=cin * cout,
                     biases=cout if bias else 0)


def _mult(m: float) -> str:
    s = f"{m:g}"
    return s if "." in s else s + ".0"


def _act(name, block, hw, c, activation, convention) -> list[LayerCost]:
    if not (convention.hard_swish_madds and activation == "hard_swish"):
        return []
    return [LayerCost(name=f"{name}.act", block=block, op="hard_swish", in_hw=hw, out_hw=hw,
                      in_channels=c, out_channels=c, kernel=1, stride=1, madds=hw * hw * c,
                      weights=0)]


def arch_cost(arch: Arch, convention: CostConvention = PAPER) -> ModelCost:
    """Per-layer MAdds and parameters of ``arch`` for one image.

    Layers (names as in the parameter tree): stem; per block expand,
    depthwise, [se.reduce, se.expand, se.scale], project; head.conv,
    [head.pool], [head.pre_logits], head.logits. Convention terms switched off
    still appear with 0 MAdds so tables keep their shape.
    """
    if not isinstance(arch, Arch):
        raise TypeError(f"arch_cost: argument 'arch' must be an Arch, got {type(arch).__name__}")
    if not isinstance(convention, CostConvention):
        raise TypeError("arch_cost: argument 'convention' must be a CostConvention, "
                        f"got {type(convention).__name__}")
    sizes = feature_map_sizes(arch)
    layers: list[LayerCost] = []
    h_in, h = sizes["stem"]
    layers.append(_conv("stem", "stem", h_in, h, 3, arch.stem_channels, 3, 2))
    layers += _act("stem", "stem", h, arch.stem_channels, arch.stem_activation, convention)
    for b in arch.blocks:
        h_in, h_out = sizes[b.name]
        if b.expand:
            # The expansion 1x1 conv runs at the block's input resolution.
            layers.append(_conv(f"{b.name}.expand", b.name, h_in, h_in, b.in_channels,
                                b.expanded_channels, 1, 1))
            layers += _act(f"{b.name}.expand", b.name, h_in, b.expanded_channels,
                           b.activation, convention)
        layers.append(_depthwise(f"{b.name}.depthwise", b.name, h_in, h_out,
                                 b.expanded_channels, b.kernel, b.stride))
        layers += _act(f"{b.name}.depthwise", b.name, h_out, b.expanded_channels,
                       b.activation, convention)
        if b.se_channels is not None:
            e, r = b.expanded_channels, b.se_channels
            layers.append(_dense(f"{b.name}.se.reduce", b.name, e, r,
                                 count_madds=convention.se_madds))
            layers.append(_dense(f"{b.name}.se.expand", b.name, r, e,
                                 count_madds=convention.se_madds))
            layers.append(LayerCost(
                name=f"{b.name}.se.scale", block=b.name, op="se_scale", in_hw=h_out,
                out_hw=h_out, in_channels=e, out_channels=e, kernel=1, stride=1,
                madds=h_out * h_out * e if convention.se_scale_madds else 0, weights=0))
        layers.append(_conv(f"{b.name}.project", b.name, h_out, h_out, b.expanded_channels,
                            b.out_channels, 1, 1))
        h = h_out
    last = arch.blocks[-1].out_channels
    layers.append(_conv("head.conv", "head.conv", h, h, last, arch.head_channels, 1, 1))
    layers += _act("head.conv", "head.conv", h, arch.head_channels, arch.head_activation,
                   convention)
    layers.append(LayerCost(
        name="head.pool", block="head.pool", op="pool", in_hw=h, out_hw=1,
        in_channels=arch.head_channels, out_channels=arch.head_channels, kernel=h, stride=1,
        madds=h * h * arch.head_channels if convention.pool_madds else 0, weights=0))
    feat = arch.head_channels
    if arch.pre_logits_channels is not None:
        layers.append(_conv("head.pre_logits", "head.pre_logits", 1, 1, feat,
                            arch.pre_logits_channels, 1, 1, bn=False, bias=True))
        layers += _act("head.pre_logits", "head.pre_logits", 1, arch.pre_logits_channels,
                       arch.pre_logits_activation, convention)
        feat = arch.pre_logits_channels
    layers.append(_dense("head.logits", "head.logits", feat, arch.num_classes))
    return ModelCost(model=f"{arch.name} {_mult(arch.multiplier)}x{arch.resolution}",
                     layers=tuple(layers), convention=convention)


# ---------------------------------------------------------------------------
# BasisNet
# ---------------------------------------------------------------------------

_PER_BASIS_BN = {"none": 0, "beta": 1, "gamma_beta": 2, "all": 2}  # moving stats stay shared


@dataclass(frozen=True)
class BasisNetCost:
    """Cost of a BasisNet for one image.

    ``light``: the lightweight model's layers plus its coefficient head
    (``coef``); ``synthesis``: one row per per-basis weight tensor
    (``weights`` = its size, ``madds`` = size * N or size * (N - 1));
    ``specialist``: the synthesized network (same MAdds as one basis model;
    its params counted once here, the extra N - 1 copies of the per-basis
    part are ``per_basis_params * (num_bases - 1)``). Keys for
    ``cost[...]``: the property names (``light_madds``, ``synthesis_madds``,
    ``specialist_madds``, ``madds``, ``params``, ...).
    """

    light: ModelCost
    specialist: ModelCost
    synthesis: tuple[LayerCost, ...]
    num_bases: int
    per_basis_params: int  # parameters of one basis's per-basis part
    convention: CostConvention

    @property
    def light_madds(self) -> int:
        return self.light.madds

    @property
    def synthesis_madds(self) -> int:
        return sum(layer.madds for layer in self.synthesis)

    @property
    def specialist_madds(self) -> int:
        return self.specialist.madds

    @property
    def madds(self) -> int:
        return self.light_madds + self.synthesis_madds + self.specialist_madds

    @property
    def light_params(self) -> int:
        return self.light.params

    @property
    def specialist_params(self) -> int:
        """Shared parameters + N copies of the per-basis part."""
        return self.specialist.params + (self.num_bases - 1) * self.per_basis_params

    @property
    def params(self) -> int:
        return self.light_params + self.specialist_params

    def __getitem__(self, key: str):
        if key not in _BASISNET_KEYS:
            raise KeyError(f"BasisNetCost: unknown key {key!r}; known: {list(_BASISNET_KEYS)}")
        return getattr(self, key)

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in _BASISNET_KEYS}
        out["convention"] = asdict(self.convention)
        out["light"] = self.light.to_dict()
        out["specialist"] = self.specialist.to_dict()
        out["synthesis"] = [asdict(s) for s in self.synthesis]
        return out


_BASISNET_KEYS = ("num_bases", "light_madds", "synthesis_madds", "specialist_madds", "madds",
                  "light_params", "specialist_params", "per_basis_params", "params")


def _param_size(arch: Arch, name: str) -> int:
    """Number of scalars of the parameter ``name`` (a per-basis name)."""
    parts = name.split(".")
    b = arch.block(int(parts[1]))
    layer, leaf = parts[2], parts[-1]
    if layer == "se":
        e, r = b.expanded_channels, b.se_channels
        if leaf == "kernel":
            return e * r
        return r if parts[3] == "reduce" else e
    if leaf in ("gamma", "beta"):
        return b.out_channels if layer == "project" else b.expanded_channels
    if layer == "expand":
        return b.in_channels * b.expanded_channels
    if layer == "depthwise":
        return b.kernel * b.kernel * b.expanded_channels
    return b.expanded_channels * b.out_channels  # project


def per_basis_param_count(config, convention: CostConvention = PAPER) -> int:
    """Parameters of one basis's per-basis part of ``config`` (a BasisNetConfig),
    counted under ``convention`` (biases/BN follow its rules)."""
    from refbasis.basis.config import per_basis_param_names

    total = 0
    for name in per_basis_param_names(config.specialist, config.per_basis_layers,
                                      config.per_basis_kinds):
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias" and not convention.bias_params:
            continue
        if leaf in ("gamma", "beta"):
            per = _PER_BASIS_BN[convention.bn_params]
            if per == 0 or (per == 1 and leaf == "gamma"):
                continue
        total += _param_size(config.specialist, name)
    return total


def basisnet_cost(config, convention: CostConvention = PAPER) -> BasisNetCost:
    """MAdds and parameters of the BasisNet ``config`` for one image.

    MAdds = lightweight model (trunk, classifier, coefficient head F x L*N)
    + synthesis (each per-basis scalar: N multiply-adds, or N - 1 with
    ``convention.synthesis == "N-1"``) + specialist (one synthesized network).
    Params = lightweight model + coefficient head + specialist shared part +
    N x per-basis part.
    """
    from refbasis.basis.config import BasisNetConfig, per_basis_param_names

    fn = "basisnet_cost"
    if not isinstance(config, BasisNetConfig):
        raise TypeError(f"{fn}: argument 'config' must be a BasisNetConfig, "
                        f"got {type(config).__name__}")
    if not isinstance(convention, CostConvention):
        raise TypeError(f"{fn}: argument 'convention' must be a CostConvention, "
                        f"got {type(convention).__name__}")
    n = config.num_bases
    light = arch_cost(config.light, convention)
    layers = list(light.layers)
    if convention.coefficient_head:
        layers.append(_dense("coef", "coef", config.light.feature_channels,
                             config.coefficient_dim))
    light = replace(light, model=f"light {light.model}", layers=tuple(layers))
    spec = arch_cost(config.specialist, convention)
    spec = replace(spec, model=f"specialist {spec.model}")
    per_mult = n if convention.synthesis == "N" else n - 1
    synth = []
    for name in per_basis_param_names(config.specialist, config.per_basis_layers,
                                      config.per_basis_kinds):
        size = _param_size(config.specialist, name)
        block = ".".join(name.split(".")[:2])
        synth.append(LayerCost(name=f"synthesis.{name}", block=block, op="synthesis",
                               in_hw=1, out_hw=1, in_channels=n, out_channels=1, kernel=1,
                               stride=1, madds=size * per_mult, weights=0))
    return BasisNetCost(light=light, specialist=spec, synthesis=tuple(synth), num_bases=n,
                        per_basis_params=per_basis_param_count(config, convention),
                        convention=convention)


# ---------------------------------------------------------------------------
# Text table
# ---------------------------------------------------------------------------


def _fmt_rows(mc: ModelCost, title: str) -> list[str]:
    lines = [title, f"  {'layer':<28}{'op':<18}{'in':>5}{'out':>5}{'cin':>6}{'cout':>6}"
             f"{'k':>3}{'s':>3}{'MAdds':>14}{'params':>12}"]
    for la in mc.layers:
        lines.append(f"  {la.name:<28}{la.op:<18}{la.in_hw:>5}{la.out_hw:>5}"
                     f"{la.in_channels:>6}{la.out_channels:>6}{la.kernel:>3}{la.stride:>3}"
                     f"{la.madds:>14,}{la.params(mc.convention):>12,}")
    lines.append(f"  {'total':<28}{'':<18}{'':>5}{'':>5}{'':>6}{'':>6}{'':>3}{'':>3}"
                 f"{mc.madds:>14,}{mc.params:>12,}")
    lines.append(f"  = {mc.madds / 1e6:.2f}M MAdds, {mc.params / 1e6:.4f}M params")
    return lines


def format_cost(cost) -> str:
    """Readable per-layer table with totals for a ModelCost or BasisNetCost."""
    if isinstance(cost, ModelCost):
        return "\n".join(_fmt_rows(cost, cost.model))
    if not isinstance(cost, BasisNetCost):
        raise TypeError(f"format_cost: argument 'cost' must be a ModelCost or BasisNetCost, "
                        f"got {type(cost).__name__}")
    lines = _fmt_rows(cost.light, cost.light.model)
    lines.append("")
    lines.append(f"synthesis (N = {cost.num_bases}, {cost.convention.synthesis} MAdds per weight)")
    for s in cost.synthesis:
        lines.append(f"  {s.name:<44}{s.madds:>14,}")
    lines.append(f"  {'total':<44}{cost.synthesis_madds:>14,}")
    lines.append("")
    lines += _fmt_rows(cost.specialist, cost.specialist.model + " (one synthesized network)")
    lines.append("")
    lines.append(f"per-basis params (one basis): {cost.per_basis_params:,}")
    lines.append(f"BasisNet total: {cost.madds / 1e6:.2f}M MAdds "
                 f"(light {cost.light_madds / 1e6:.2f} + synthesis "
                 f"{cost.synthesis_madds / 1e6:.2f} + specialist "
                 f"{cost.specialist_madds / 1e6:.2f}), {cost.params / 1e6:.4f}M params "
                 f"(light {cost.light_params / 1e6:.4f} + specialist "
                 f"{cost.specialist_params / 1e6:.4f})")
    return "\n".join(lines)


def cost_json(cost) -> str:
    """JSON text of a ModelCost or BasisNetCost (ints exact)."""
    return json.dumps(cost.to_dict(), indent=2, sort_keys=False)

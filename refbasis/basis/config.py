"""BasisNet configuration: which networks, how many bases, which layers differ.

A ``BasisNetConfig`` names the lightweight model (first stage, low
resolution), the specialist architecture shared by the N basis models
(second stage), the inclusive block range whose parameters exist once per
basis (``per_basis_layers``, supplement numbering "L<i>"), which parameter
kinds inside those blocks are per basis, and the training knobs the
supplement gives (basis-model dropout rate) or leaves open (coefficient
normalisation, dropout granularity).

Presets follow supplement A.2:

- ``basisnet_mv2``: MV2 0.5x128 lightweight, 8 bases of MV2 1.0x224,
  per basis L11-L17, basis dropout 1/8 (Sec. 4.2).
- ``basisnet_mv3``: MV3-small 1.0x128 lightweight, 16 bases of MV3-large
  1.0x224, per basis L8-L15, basis dropout 1/16 (Sec. 4.2). The Sec. 4.4
  (supplement Table 2) and 4.5 experiments use ``light_resolution=224`` and
  ``per_basis_layers=(11, 15)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from refbasis._checks import check_choice, check_int, check_real
from refbasis.arch.mobilenet_v2 import mobilenet_v2
from refbasis.arch.mobilenet_v3 import mobilenet_v3_large, mobilenet_v3_small
from refbasis.arch.spec import Arch
from refbasis.basis.basis_dropout import DROPOUT_MODES, default_basis_dropout_rate
from refbasis.basis.coefficients import NORMALIZATIONS

__all__ = [
    "PER_BASIS_KINDS",
    "DEFAULT_PER_BASIS_KINDS",
    "BasisNetConfig",
    "basisnet_mv2",
    "basisnet_mv3",
    "per_basis_param_names",
    "shared_param_names_in_range",
]

# "conv": the block's expand, depthwise and project kernels; "bn": gamma and
# beta of the three BatchNorms; "se": both SE dense layers (kernel and bias).
PER_BASIS_KINDS = ("conv", "bn", "se")

# Supplement Table 2: the parameter count grows by 1.120M per added basis for
# L11-L15 of MV3-large. The conv kernels of L11-L15 hold 1,115,040 weights and
# the coefficient head adds 1024 * 5 + 5 = 5,125 per basis: 1,120,165. Per-basis
# BN (+16,384 for gamma and beta) or SE (+1,033,000) would not fit
# (docs/architectures.md). So conv kernels are per basis; BN and SE are shared.
DEFAULT_PER_BASIS_KINDS = frozenset({"conv"})


# ---------------------------------------------------------------------------
# Parameter names of the per-basis part
# ---------------------------------------------------------------------------


def _check_range(arch: Arch, layers, fn: str) -> tuple[int, int]:
    if not (isinstance(layers, tuple) and len(layers) == 2):
        raise ValueError(f"{fn}: argument 'per_basis_layers' must be a tuple (first, last) "
                         f"of 1-based block indices, got {layers!r}")
    a = check_int(layers[0], "per_basis_layers[0]", min_value=1, fn=fn)
    b = check_int(layers[1], "per_basis_layers[1]", min_value=1, fn=fn)
    n = len(arch.blocks)
    if not (1 <= a <= b <= n):
        raise ValueError(f"{fn}: argument 'per_basis_layers' must satisfy 1 <= first <= "
                         f"last <= {n} (blocks L1..L{n} of {arch.name}), got ({a}, {b})")
    return a, b


def _check_kinds(kinds, fn: str) -> frozenset:
    if not isinstance(kinds, (frozenset, set, tuple, list)) or not kinds:
        raise ValueError(f"{fn}: argument 'per_basis_kinds' must be a non-empty set drawn "
                         f"from {list(PER_BASIS_KINDS)}, got {kinds!r}")
    for k in kinds:
        check_choice(k, "per_basis_kinds", PER_BASIS_KINDS, fn=fn)
    return frozenset(kinds)


def _block_param_names(b, kinds) -> list[str]:
    p = b.name
    names: list[str] = []
    convs = ([f"{p}.expand"] if b.expand else []) + [f"{p}.depthwise"]
    for layer in convs:
        if "conv" in kinds:
            names.append(f"{layer}.kernel")
        if "bn" in kinds:
            names += [f"{layer}.bn.gamma", f"{layer}.bn.beta"]
    if b.se_channels is not None and "se" in kinds:
        names += [f"{p}.se.reduce.kernel", f"{p}.se.reduce.bias",
                  f"{p}.se.expand.kernel", f"{p}.se.expand.bias"]
    if "conv" in kinds:
        names.append(f"{p}.project.kernel")
    if "bn" in kinds:
        names += [f"{p}.project.bn.gamma", f"{p}.project.bn.beta"]
    return names


def per_basis_param_names(arch: Arch, per_basis_layers: tuple[int, int],
                          kinds=DEFAULT_PER_BASIS_KINDS) -> tuple[str, ...]:
    """Names (in the specialist's tree, without the ``bases.`` prefix) of the
    parameters that exist once per basis, in execution order.

    ``per_basis_layers`` is an inclusive 1-based block range; ``kinds`` a
    subset of ``PER_BASIS_KINDS``. BN moving statistics are never per basis
    (reference choice: they describe the synthesized specialist's
    activations and are tracked once, like the shared layers').
    """
    fn = "per_basis_param_names"
    if not isinstance(arch, Arch):
        raise TypeError(f"{fn}: argument 'arch' must be an Arch, got {type(arch).__name__}")
    a, b = _check_range(arch, per_basis_layers, fn)
    kinds = _check_kinds(kinds, fn)
    names: list[str] = []
    for i in range(a, b + 1):
        names += _block_param_names(arch.block(i), kinds)
    return tuple(names)


def shared_param_names_in_range(arch: Arch, per_basis_layers: tuple[int, int],
                                kinds=DEFAULT_PER_BASIS_KINDS) -> tuple[str, ...]:
    """Trainable parameters of the per-basis blocks that stay shared (the
    complement of ``per_basis_param_names`` within those blocks)."""
    fn = "shared_param_names_in_range"
    a, b = _check_range(arch, per_basis_layers, fn)
    kinds = _check_kinds(kinds, fn)
    all_kinds = frozenset(PER_BASIS_KINDS)
    names: list[str] = []
    for i in range(a, b + 1):
        blk = arch.block(i)
        per = set(_block_param_names(blk, kinds))
        names += [n for n in _block_param_names(blk, all_kinds) if n not in per]
    return tuple(names)


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BasisNetConfig:
    """A two-stage BasisNet.

    - ``light``: lightweight model (its own classifier + a coefficient head
      from its features to ``num_synthesized_layers * num_bases`` logits).
    - ``specialist``: the architecture of every basis model.
    - ``per_basis_layers``: inclusive block range (first, last), 1-based.
    - ``per_basis_kinds``: subset of {"conv", "bn", "se"} (default conv only,
      the accounting that reproduces supplement Table 2).
    - ``coefficient_normalization``: over the N bases, per synthesized layer
      (reference choice; default "softmax").
    - ``basis_dropout_rate``: None = supplement B (1/8 for N <= 8 else 1/16);
      must be in [0, 1).
    - ``dropout_granularity``: "example" (one draw per example, all layers)
      or "example_layer" (reference choice; default "example").
    - ``light_loss_weight`` / ``specialist_loss_weight``: weights of the two
      cross-entropy terms (reference choice: 1 and 1).
    """

    light: Arch
    specialist: Arch
    num_bases: int
    per_basis_layers: tuple[int, int]
    per_basis_kinds: frozenset = DEFAULT_PER_BASIS_KINDS
    coefficient_normalization: str = "softmax"
    basis_dropout_rate: float | None = None
    dropout_granularity: str = "example"
    light_loss_weight: float = 1.0
    specialist_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        fn = "BasisNetConfig"
        for nm in ("light", "specialist"):
            if not isinstance(getattr(self, nm), Arch):
                raise TypeError(f"{fn}: argument '{nm}' must be an Arch, "
                                f"got {type(getattr(self, nm)).__name__}")
        if self.light.num_classes != self.specialist.num_classes:
            raise ValueError(f"{fn}: argument 'light' must have the specialist's "
                             f"num_classes {self.specialist.num_classes}, "
                             f"got {self.light.num_classes}")
        check_int(self.num_bases, "num_bases", min_value=1, fn=fn)
        rng = _check_range(self.specialist, self.per_basis_layers, fn)
        object.__setattr__(self, "per_basis_layers", rng)
        object.__setattr__(self, "per_basis_kinds", _check_kinds(self.per_basis_kinds, fn))
        check_choice(self.coefficient_normalization, "coefficient_normalization",
                     NORMALIZATIONS, fn=fn)
        rate = self.basis_dropout_rate
        if rate is None:
            rate = default_basis_dropout_rate(self.num_bases)
        rate = check_real(rate, "basis_dropout_rate", lo=0.0, hi=1.0, hi_open=True, fn=fn)
        object.__setattr__(self, "basis_dropout_rate", rate)
        check_choice(self.dropout_granularity, "dropout_granularity", DROPOUT_MODES, fn=fn)
        for nm in ("light_loss_weight", "specialist_loss_weight"):
            check_real(getattr(self, nm), nm, lo=0.0, fn=fn)

    @property
    def per_basis_blocks(self) -> tuple[int, ...]:
        """1-based indices of the synthesized blocks, in order."""
        a, b = self.per_basis_layers
        return tuple(range(a, b + 1))

    @property
    def num_synthesized_layers(self) -> int:
        """L: one coefficient vector of N per synthesized block."""
        a, b = self.per_basis_layers
        return b - a + 1

    @property
    def coefficient_dim(self) -> int:
        """Width of the coefficient head's output: L * N."""
        return self.num_synthesized_layers * self.num_bases

    def per_basis_param_names(self) -> tuple[str, ...]:
        """``per_basis_param_names(self.specialist, self.per_basis_layers,
        self.per_basis_kinds)``."""
        return per_basis_param_names(self.specialist, self.per_basis_layers,
                                     self.per_basis_kinds)


# ---------------------------------------------------------------------------
# Presets (supplement A.2)
# ---------------------------------------------------------------------------


def _check_n(num_bases, fn: str) -> int:
    return check_int(num_bases, "num_bases", min_value=1, fn=fn)


def basisnet_mv2(num_bases: int = 8, per_basis_layers: tuple[int, int] = (11, 17), *,
                 light_multiplier: float = 0.5, light_resolution: int = 128,
                 specialist_multiplier: float = 1.0, specialist_resolution: int = 224,
                 num_classes: int = 1000, light_options: dict | None = None,
                 specialist_options: dict | None = None, **kw) -> BasisNetConfig:
    """BasisNet-MV2 (supplement A.2, Sec. 4.2): MV2 0.5x128 lightweight model,
    ``num_bases`` MV2 1.0x224 basis models differing in L11-L17.

    The lightweight model scales its 1280 head conv with the multiplier
    (``scale_final="always"``, i.e. 640 at 0.5): that is the architecture
    whose cost matches supplement A.1 (30.3M MAdds, 1.2M parameters); TF-slim's
    finegrain mode (1280 kept) gives 32.6M / 1.95M instead. Override with
    ``light_options``. ``kw`` go to BasisNetConfig.
    """
    fn = "basisnet_mv2"
    _check_n(num_bases, fn)
    lo = {"scale_final": "always", **(light_options or {})}
    light = mobilenet_v2(light_multiplier, light_resolution, num_classes, **lo)
    spec = mobilenet_v2(specialist_multiplier, specialist_resolution, num_classes,
                        **(specialist_options or {}))
    return BasisNetConfig(light=light, specialist=spec, num_bases=num_bases,
                          per_basis_layers=tuple(per_basis_layers), **kw)


def basisnet_mv3(num_bases: int = 16, per_basis_layers: tuple[int, int] = (8, 15), *,
                 light_multiplier: float = 1.0, light_resolution: int = 128,
                 specialist_multiplier: float = 1.0, specialist_resolution: int = 224,
                 num_classes: int = 1000, light_options: dict | None = None,
                 specialist_options: dict | None = None, **kw) -> BasisNetConfig:
    """BasisNet-MV3 (supplement A.2, Sec. 4.2): MV3-small 1.0x128 lightweight
    model, ``num_bases`` MV3-large 1.0x224 basis models differing in L8-L15.

    Supplement Table 2 (Sec. 4.4) and Sec. 4.5: ``light_resolution=224,
    per_basis_layers=(11, 15)``. ``kw`` go to BasisNetConfig.
    """
    fn = "basisnet_mv3"
    _check_n(num_bases, fn)
    light = mobilenet_v3_small(light_multiplier, light_resolution, num_classes,
                               **(light_options or {}))
    spec = mobilenet_v3_large(specialist_multiplier, specialist_resolution, num_classes,
                              **(specialist_options or {}))
    return BasisNetConfig(light=light, specialist=spec, num_bases=num_bases,
                          per_basis_layers=tuple(per_basis_layers), **kw)


"""Architecture tables as data (MobileNetV2, MobileNetV3-Large/Small).

``get_arch(name, **kw)`` resolves a table into an ``Arch`` (see
``refbasis.arch.spec``); blocks are numbered from 1 as in the BasisNet
supplement ("L1".."L17" MV2, "L1".."L15" MV3-large, "L1".."L11" MV3-small).
"""

from __future__ import annotations

from refbasis.arch.mobilenet_v2 import MV2_TABLE, mobilenet_v2
from refbasis.arch.mobilenet_v3 import (
    MV3_LARGE_TABLE,
    MV3_SMALL_TABLE,
    mobilenet_v3_large,
    mobilenet_v3_small,
)
from refbasis.arch.spec import (
    Arch,
    BlockSpec,
    BuildOptions,
    feature_map_sizes,
    make_divisible,
    total_stride,
)

__all__ = [
    "ARCH_NAMES",
    "Arch",
    "BlockSpec",
    "BuildOptions",
    "MV2_TABLE",
    "MV3_LARGE_TABLE",
    "MV3_SMALL_TABLE",
    "feature_map_sizes",
    "get_arch",
    "make_divisible",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "total_stride",
]

_BUILDERS = {
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
}
ARCH_NAMES = tuple(_BUILDERS)


def get_arch(name: str, **kw) -> Arch:
    """Build the named architecture; ``kw`` go to its builder
    (``multiplier``, ``resolution``, ``num_classes``, options)."""
    if name not in _BUILDERS:
        raise ValueError(
            f"get_arch: argument 'name' must be one of {list(ARCH_NAMES)}, got {name!r}"
        )
    return _BUILDERS[name](**kw)

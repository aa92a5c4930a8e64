"""Precision tiers of the JAX backend.

A tier fixes two things, both explicitly (never through a process-wide
default): the dtype the forward and backward passes compute in, and the
``lax.Precision`` passed to every convolution and matmul.

========  ===============  =========================  ==========================
tier      compute dtype    lax precision              intended hardware
========  ===============  =========================  ==========================
highest   float32          ``Precision.HIGHEST``      any; the golden tier
tf32      float32          ``Precision.DEFAULT``      A100/H100 use TF32 here;
                                                      CPU computes float32
bf16      bfloat16         ``Precision.DEFAULT``      TPU / recent GPUs
========  ===============  =========================  ==========================

Sources: design.md "Precision" (backends are compared in float32 at full
precision, ``jax_default_matmul_precision="highest"``, with looser TF32 and
bfloat16 tiers). In the bf16 tier the reference choice is the usual mixed
precision recipe: weights and activations are bfloat16, while reductions whose
rounding would swamp the signal (BatchNorm statistics, global pooling,
softmax and the losses) accumulate in float32, and trainable parameters and
optimizer state stay float32 (master weights). Results handed back to the
harness are always float32 numpy arrays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["TIERS", "Tier", "get_tier", "tier_context", "cast_tree", "to_compute"]


@dataclass(frozen=True)
class Tier:
    """One precision tier: ``name``, compute ``dtype`` and ``precision`` (lax)."""

    name: str
    dtype: object
    precision: lax.Precision

    @property
    def matmul_precision_flag(self) -> str:
        """Value for ``jax.default_matmul_precision`` matching ``precision``."""
        return {lax.Precision.HIGHEST: "highest", lax.Precision.HIGH: "tensorfloat32",
                lax.Precision.DEFAULT: "default"}[self.precision]


TIERS: dict[str, Tier] = {
    "highest": Tier("highest", jnp.float32, lax.Precision.HIGHEST),
    "tf32": Tier("tf32", jnp.float32, lax.Precision.DEFAULT),
    "bf16": Tier("bf16", jnp.bfloat16, lax.Precision.DEFAULT),
}


def get_tier(name) -> Tier:
    """The :class:`Tier` called ``name`` (``"highest"``, ``"tf32"``, ``"bf16"``);
    a ``Tier`` is returned unchanged. Unknown names raise ValueError."""
    if isinstance(name, Tier):
        return name
    if name not in TIERS:
        raise ValueError(
            f"get_tier: argument 'name' must be one of {list(TIERS)}, got {name!r}"
        )
    return TIERS[name]


@contextlib.contextmanager
def tier_context(name) -> Iterator[Tier]:
    """Also set ``jax.default_matmul_precision`` for the enclosed traces, so
    that any op not given an explicit ``precision`` (there should be none)
    still runs at the tier's precision."""
    tier = get_tier(name)
    with jax.default_matmul_precision(tier.matmul_precision_flag):
        yield tier


def to_compute(x, tier: Tier):
    """Cast a floating array to the tier's compute dtype (ints untouched)."""
    if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
        return jnp.asarray(x).astype(tier.dtype)
    return jnp.asarray(x)


def cast_tree(tree, dtype):
    """Cast every floating leaf of ``tree`` to ``dtype`` (ints untouched)."""
    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree_util.tree_map(cast, tree)

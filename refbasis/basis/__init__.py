"""BasisNet: coefficient head, synthesis, epsilon mixing, basis-model dropout,
the two-stage model, early termination, the CondConv baseline and coefficient
analysis (docs/basisnet.md).

Names are re-exported lazily (PEP 562 ``__getattr__``) so that importing one
submodule, e.g. ``refbasis.basis.config`` from ``refbasis.cost``, does not pull
in the whole package (and ``refbasis.model`` with it): no import cycles.
Import from the submodules in library code.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "refbasis.basis.coefficients": (
        "NORMALIZATIONS", "coefficient_head", "coefficient_head_vjp",
        "init_coefficient_head", "normalize_coefficients", "normalize_coefficients_vjp",
    ),
    "refbasis.basis.synthesis": ("synthesize", "synthesize_vjp", "check_coefficients"),
    "refbasis.basis.mixing": ("epsilon_mix", "epsilon_mix_vjp"),
    "refbasis.basis.basis_dropout": (
        "DROPOUT_MODES", "apply_basis_dropout", "apply_basis_dropout_vjp",
        "basis_dropout_mask", "default_basis_dropout_rate",
    ),
    "refbasis.basis.two_stage": (
        "BasisNetCache", "basisnet_backward", "basisnet_forward", "basisnet_param_shapes",
        "basisnet_trainable_names", "init_basisnet", "joint_loss", "light_forward",
        "split_params", "synthesize_specialist_params", "synthesize_specialist_params_vjp",
    ),
    "refbasis.basis.early_exit": (
        "BucketRow", "average_madds", "basisnet_average_madds", "basisnet_predict",
        "confidence_buckets", "confidence_buckets_json", "early_exit_predictions",
        "exit_decisions", "threshold_sweep", "top_probability",
    ),
    "refbasis.basis.condconv": (
        "CONDCONV_KINDS", "CondConvCache", "condconv_backward", "condconv_expert_names",
        "condconv_forward", "condconv_routing", "condconv_routing_vjp", "init_condconv",
    ),
    "refbasis.basis.analysis": (
        "coefficient_tables_json", "per_class_mean_coefficients", "top_classes_per_basis",
    ),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'refbasis.basis' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))

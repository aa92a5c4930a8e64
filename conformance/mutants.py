"""Planted-fault backends: the numpy backend with one oracle function replaced.

Each mutant reproduces a mistake a real port makes; the mutation tests
(tests/test_conformance_mutants.py) check that the goldens catch every one and
that the report names the right first failing layer or training step. They
are how we know the golden set and the tolerances have teeth.

A fault is installed only inside the mutant's ``run`` / ``run_layer`` by
:func:`patch_everywhere`, which rebinds the function in its defining module
and in every ``refbasis`` module that imported it by name, then restores all
of them; no oracle file is edited and nothing leaks outside the call.

Faults (``MUTANTS``):

- ``symmetric_padding``: "SAME" padded symmetrically, k // 2 on each side
  (PyTorch-style) instead of TF's (total // 2, rest). Same output size;
  different values wherever a stride-2 conv meets an even input.
- ``bn_eps_1e5``: BatchNorm epsilon 1e-5 (PyTorch default) instead of the
  configured value (1e-3, TF-slim).
- ``hard_sigmoid_linear``: hard_sigmoid(x) = clip(0.2 x + 0.5, 0, 1) (the old
  Keras/Theano definition) instead of relu6(x + 3) / 6; hard_swish inherits it.
- ``basis_dropout_no_renorm``: dropped bases zeroed but the kept coefficients
  not renormalised to sum to one.
- ``rmsprop_ms_zero``: RMSProp's mean-square slot initialised to 0 instead of
  TF's 1.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from conformance.backends.numpy_backend import NumpyBackend

__all__ = ["Mutant", "MUTANTS", "MutantBackend", "patch_everywhere", "make_mutant"]


@contextlib.contextmanager
def patch_everywhere(module_name: str, attr: str, replacement) -> Iterator[None]:
    """Rebind ``module_name.attr`` and every ``refbasis.*`` global bound to the
    same object to ``replacement`` for the duration of the block."""
    import importlib

    _import_oracle()
    mod = importlib.import_module(module_name)
    original = getattr(mod, attr)
    for m, k in _bindings(original):
        setattr(m, k, replacement)
    try:
        yield
    finally:
        # Also catches a module first imported inside the block, which bound
        # the replacement by name.
        for m, k in _bindings(replacement):
            setattr(m, k, original)


def _oracle_modules():
    return [m for n, m in list(sys.modules.items())
            if m is not None and (n == "refbasis" or n.startswith("refbasis."))]


def _bindings(obj):
    return [(m, k) for m in _oracle_modules() for k, v in list(vars(m).items()) if v is obj]


_IMPORTED = False


def _import_oracle() -> None:
    """Import every oracle module once, so that no module binds a patched
    function by importing it for the first time inside a patch."""
    global _IMPORTED
    if _IMPORTED:
        return
    import importlib
    import pkgutil

    import refbasis

    for info in pkgutil.walk_packages(refbasis.__path__, "refbasis."):
        if info.name.endswith(("__main__", ".cli")):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError:  # an optional part (e.g. a module needing an extra)
            continue
    _IMPORTED = True


# ---------------------------------------------------------------------------
# The faults
# ---------------------------------------------------------------------------

def _symmetric_padding():
    def _same_pads(n, k, s):
        return (k - 1) // 2, (k - 1) // 2

    return patch_everywhere("refbasis.ops.conv", "_same_pads", _same_pads)


def _bn_eps_1e5():
    from refbasis.ops import norm

    bn, bn_vjp = norm.batch_norm, norm.batch_norm_vjp

    def batch_norm(*a, eps=1e-3, **kw):
        return bn(*a, eps=1e-5, **kw)

    def batch_norm_vjp(*a, eps=1e-3, **kw):
        return bn_vjp(*a, eps=1e-5, **kw)

    stack = contextlib.ExitStack()
    stack.enter_context(patch_everywhere("refbasis.ops.norm", "batch_norm", batch_norm))
    stack.enter_context(patch_everywhere("refbasis.ops.norm", "batch_norm_vjp", batch_norm_vjp))
    return stack


def _hard_sigmoid_linear():
    def _hard_sigmoid(x):
        return np.clip(0.2 * x + 0.5, 0.0, 1.0)

    def _hard_sigmoid_grad(x):
        return np.where(np.abs(x) < 2.5, 0.2, 0.0).astype(x.dtype, copy=False)

    stack = contextlib.ExitStack()
    stack.enter_context(patch_everywhere("refbasis.ops.activations", "_hard_sigmoid",
                                         _hard_sigmoid))
    stack.enter_context(patch_everywhere("refbasis.ops.activations", "_hard_sigmoid_grad",
                                         _hard_sigmoid_grad))
    return stack


def _basis_dropout_no_renorm():
    def apply_basis_dropout(alpha, mask):
        return np.asarray(alpha, dtype=np.float64) * np.asarray(mask, dtype=np.float64)

    def apply_basis_dropout_vjp(alpha, mask, dout):
        return np.asarray(dout, dtype=np.float64) * np.asarray(mask, dtype=np.float64)

    stack = contextlib.ExitStack()
    stack.enter_context(patch_everywhere("refbasis.basis.basis_dropout", "apply_basis_dropout",
                                         apply_basis_dropout))
    stack.enter_context(patch_everywhere("refbasis.basis.basis_dropout",
                                         "apply_basis_dropout_vjp", apply_basis_dropout_vjp))
    return stack


def _rmsprop_ms_zero():
    return patch_everywhere("refbasis.train.rmsprop", "_ms_init_value", lambda variant: 0.0)


@dataclass(frozen=True)
class Mutant:
    name: str
    description: str
    install: Callable[[], contextlib.AbstractContextManager]
    #: case id -> the first failing layer / step the report must name
    expected_first_layer: dict


MUTANTS: dict[str, Mutant] = {m.name: m for m in (
    Mutant("symmetric_padding", "SAME padding split symmetrically (k//2 each side)",
           _symmetric_padding,
           {"models/mv2_train": "stem", "models/mv3_large_eval": "stem",
            "basisnet/basisnet_mv3_train_layer_dropout": "light.stem"}),
    Mutant("bn_eps_1e5", "BatchNorm epsilon 1e-5 instead of the configured 1e-3",
           _bn_eps_1e5,
           {"models/mv3_small_train": "stem", "models/mv2_eval": "stem",
            "basisnet/condconv_mv3_small_train": "stem"}),
    Mutant("hard_sigmoid_linear", "hard_sigmoid = clip(0.2x + 0.5, 0, 1)",
           _hard_sigmoid_linear,
           {"models/mv3_large_train": "stem", "models/mv3_small_eval": "stem"}),
    Mutant("basis_dropout_no_renorm", "kept coefficients not renormalised after basis dropout",
           _basis_dropout_no_renorm,
           {"basisnet/basisnet_mv3_train_layer_dropout": "coefficients",
            "training/basisnet_mv3_recipe_2_steps": "step1"}),
    Mutant("rmsprop_ms_zero", "RMSProp mean square initialised to 0 instead of 1",
           _rmsprop_ms_zero,
           {"training/mv3_small_recipe_3_steps": "step1"}),
)}


class MutantBackend(NumpyBackend):
    """The numpy backend with one fault from :data:`MUTANTS` installed."""

    def __init__(self, fault: str):
        super().__init__()
        if fault not in MUTANTS:
            raise ValueError(f"MutantBackend: argument 'fault' must be one of "
                             f"{sorted(MUTANTS)}, got {fault!r}")
        self.mutant = MUTANTS[fault]
        self.name = f"mutant-{fault}"

    def run(self, case, tier):
        with self.mutant.install():
            return super().run(case, tier)

    def run_layer(self, case, layer, inputs, tier):
        with self.mutant.install():
            return super().run_layer(case, layer, inputs, tier)

    def describe(self) -> str:
        return f"numpy oracle with a planted fault: {self.mutant.description}"


def make_mutant(fault: str) -> MutantBackend:
    return MutantBackend(fault)


# One class per fault, constructible without arguments, so a mutant can be run
# from the command line: refbasis conform --backend conformance.mutants:BnEps1e5
def _camel(fault: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in fault.split("_"))


for _fault in MUTANTS:
    globals()[_camel(_fault)] = type(_camel(_fault), (MutantBackend,), {
        "__init__": (lambda f: lambda self: MutantBackend.__init__(self, f))(_fault),
        "__doc__": f"MutantBackend('{_fault}'): {MUTANTS[_fault].description}.",
    })
    __all__.append(_camel(_fault))

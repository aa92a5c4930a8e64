"""The backend protocol: what a port implements to be checked against the goldens.

A backend is an object with

- ``name``: str, e.g. ``"numpy"`` or ``"jax"``;
- ``supported_suites``: a subset of :data:`SUITES`. Cases of any other suite
  are reported SKIPPED (never passed);
- ``tiers``: the precision tiers it can run, a subset of :data:`TIERS`
  (``"highest"`` is float32 at full precision; ``"tf32"`` and ``"bf16"`` are
  the looser accelerator tiers, each with its own tolerances);
- ``run(case, tier) -> dict[str, np.ndarray]``: compute every output of the
  case from the case's stored inputs, named exactly as the golden names them;
- optionally ``run_layer(case, layer, inputs, tier) -> dict[str, np.ndarray]``:
  run ONE layer (or training step) of a layered case alone, on the golden's
  own inputs to it. The harness uses it to say whether the first layer whose
  output leaves tolerance also fails in isolation (a local bug) or only fails
  because of error carried in from earlier layers.

The case a backend receives is a :class:`CaseView`: read-only arrays, a
deep-copied config, nothing the backend can use to reach the golden outputs.
Every case kind, its config keys, its inputs and its outputs are specified in
docs/porting.md ("Case kinds"); that page is the spec for backend authors.

Source: design.md ("Golden files and conformance"): a backend is a plugin
implementing one protocol, registered through the ``refbasis.backends`` entry
point group (see :mod:`conformance.registry`).
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

__all__ = [
    "SUITES",
    "TIERS",
    "KINDS",
    "LAYERED_KINDS",
    "CaseView",
    "Backend",
    "BackendError",
    "UnsupportedCase",
    "readonly_inputs",
]

#: Every suite of the golden set, in the order the runner visits them.
SUITES: tuple[str, ...] = ("ops", "blocks", "models", "basisnet", "training", "schedules")

#: Precision tiers, strictest first (design.md "Precision").
TIERS: tuple[str, ...] = ("highest", "tf32", "bf16")

#: Every case kind -> the suite it belongs to (docs/porting.md, "Case kinds").
KINDS: Mapping[str, str] = MappingProxyType({
    # ops
    "conv2d": "ops",
    "depthwise_conv2d": "ops",
    "batch_norm": "ops",
    "activation": "ops",
    "dense": "ops",
    "global_avg_pool": "ops",
    "dropout": "ops",
    "squeeze_excite": "ops",
    "softmax": "ops",
    "softmax_cross_entropy": "ops",
    "distillation_loss": "ops",
    "synthesize": "ops",
    "coefficient_head": "ops",
    "epsilon_mix": "ops",
    "basis_dropout": "ops",
    # blocks
    "block": "blocks",
    # models
    "model": "models",
    # basisnet
    "basisnet": "basisnet",
    "early_exit": "basisnet",
    "condconv": "basisnet",
    # training
    "train_steps": "training",
    # schedules
    "schedule": "schedules",
})

#: Kinds whose case.json carries a ``layers`` order (first-failing-layer
#: analysis and ``run_layer`` isolation); for ``train_steps`` the "layers" are
#: the steps ``step1..stepK``. A ``block`` case is its own smallest unit.
LAYERED_KINDS: frozenset[str] = frozenset({"model", "basisnet", "condconv", "train_steps"})


class BackendError(RuntimeError):
    """A backend could not be loaded or constructed (one clear line)."""


class UnsupportedCase(Exception):  # noqa: N818 - reads as a verdict, not a crash
    """Raised by ``Backend.run`` for a case it deliberately does not implement.

    The runner reports such a case SKIPPED with the exception's message, never
    passed. Use it sparingly: a kind in a supported suite should be supported.
    """


def readonly_inputs(arrays: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """Read-only views of ``arrays`` in an immutable mapping.

    A backend that writes into an input (an easy bug in ports that reuse
    buffers) gets ``ValueError: assignment destination is read-only`` instead
    of silently corrupting the goldens held in memory.
    """
    out = {}
    for k, v in arrays.items():
        view = np.asarray(v).view()
        view.flags.writeable = False
        out[k] = view
    return MappingProxyType(out)


@dataclass(frozen=True)
class CaseView:
    """What a backend sees of one golden case.

    Attributes:
        suite: one of :data:`SUITES`.
        name: the case's directory name, unique within its suite.
        kind: one of :data:`KINDS` (docs/porting.md specifies each).
        config: the kind's configuration (a JSON object; a private deep copy).
        inputs: name -> read-only array; flat parameter dicts are stored with
            a prefix, e.g. ``"params/blocks.3.expand.kernel"``.
        output_names: the names ``run`` must return, in the golden's order.
        layers: for layered kinds the layer (or step) order, else ``()``.
        dtype: the dtype the inputs are stored in and outputs compared in
            (``"float32"``).
    """

    suite: str
    name: str
    kind: str
    config: dict
    inputs: Mapping[str, np.ndarray]
    output_names: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()
    dtype: str = "float32"

    @property
    def id(self) -> str:
        """``"<suite>/<name>"``, the identifier used in reports and known_failures."""
        return f"{self.suite}/{self.name}"

    @classmethod
    def make(cls, *, suite, name, kind, config, inputs, output_names=(), layers=(),
             dtype="float32") -> CaseView:
        return cls(
            suite=suite, name=name, kind=kind, config=copy.deepcopy(dict(config)),
            inputs=readonly_inputs(inputs), output_names=tuple(output_names),
            layers=tuple(layers), dtype=dtype,
        )


class Backend(abc.ABC):
    """Base class of every backend (subclassing is optional: the runner only
    uses the attributes and methods below, so any object with them works).

    Contract of :meth:`run`:

    - receives a :class:`CaseView` and a tier from ``self.tiers``;
    - returns a dict mapping every name in ``case.output_names`` to an array
      of exactly the golden's shape (numpy arrays, or anything ``np.asarray``
      turns into one; the harness converts to float64 before comparing);
    - must not modify ``case.inputs`` (they are read-only);
    - may raise :class:`UnsupportedCase`; any other exception is reported as
      an ERROR of that case and the run goes on.
    """

    #: short name used on the command line (``refbasis conform --backend NAME``)
    name: str = "unnamed"
    #: suites this backend implements; the others are SKIPPED
    supported_suites: tuple[str, ...] = ()
    #: precision tiers this backend can run
    tiers: tuple[str, ...] = ("highest",)

    @abc.abstractmethod
    def run(self, case: CaseView, tier: str) -> dict[str, np.ndarray]:
        """Compute the case's outputs (see the class docstring)."""

    def run_layer(
        self, case: CaseView, layer: str, inputs: Mapping[str, np.ndarray], tier: str
    ) -> dict[str, np.ndarray]:
        """Run one layer (or one training step) of a layered case alone.

        ``inputs`` holds the golden's own values entering that layer (see
        docs/porting.md, "Layer isolation", for each kind); the return value
        maps the layer's output names to arrays. The default raises
        NotImplementedError, which the harness reports as "isolation: not
        available" (never as a failure).
        """
        raise NotImplementedError(f"backend {self.name!r} does not implement run_layer")

    def describe(self) -> str:
        """One line for the report header (versions, devices); override freely."""
        return f"{self.name} (suites: {', '.join(self.supported_suites)}; "\
               f"tiers: {', '.join(self.tiers)})"

"""Find and construct backends by name (entry-point group ``refbasis.backends``).

Third parties register theirs in their own distribution (docs/porting.md,
"Register a backend"). ``--backend module.path:ClassName`` loads a class
directly, for experiments without an entry point.

A backend whose import fails because a dependency is missing gives ONE line,
e.g. ``backend 'jax' needs the jax extra: pip install 'refbasis[jax]'``,
raised as :class:`~conformance.protocol.BackendError` (the CLI prints it and
exits 2, no traceback).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from conformance.protocol import BackendError

__all__ = ["ENTRY_POINT_GROUP", "available_backends", "load_backend", "backend_importable"]

ENTRY_POINT_GROUP = "refbasis.backends"

# Used when the distribution's metadata is absent (running from a source tree
# that was never pip-installed); pyproject.toml declares the same pairs.
_BUILTIN = {
    "numpy": "conformance.backends.numpy_backend:NumpyBackend",
    "jax": "conformance.backends.jax_backend:JaxBackend",
}

# Top-level module missing -> the hint printed for it.
_EXTRA_HINTS = {
    "jax": "the jax extra: pip install 'refbasis[jax]'",
    "jaxlib": "the jax extra: pip install 'refbasis[jax]'",
}


def available_backends() -> dict[str, str]:
    """name -> ``"module:attr"`` of every registered backend (builtins included)."""
    found = dict(_BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.value
    return found


def _import_target(name: str, target: str):
    modname, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        own = modname.split(".")[0]
        if missing and missing != own and missing != "conformance":
            hint = _EXTRA_HINTS.get(missing, f"the '{missing}' package: pip install {missing}")
            raise BackendError(f"backend '{name}' needs {hint}") from None
        raise BackendError(
            f"backend '{name}': cannot import module '{modname}' ({exc})"
        ) from None
    except ImportError as exc:
        raise BackendError(f"backend '{name}': importing '{modname}' failed: {exc}") from None
    if not attr:
        raise BackendError(f"backend '{name}': target '{target}' must be 'module:ClassName'")
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise BackendError(
            f"backend '{name}': module '{modname}' has no attribute '{attr}'"
        ) from None


def load_backend(name: str):
    """Construct the backend registered as ``name`` (or ``module:Class``)."""
    table = available_backends()
    if name in table:
        target = table[name]
    elif ":" in name:
        target = name
    else:
        raise BackendError(
            f"unknown backend '{name}' (registered: {', '.join(sorted(table))}; "
            f"or give module.path:ClassName)"
        )
    cls = _import_target(name, target)
    try:
        backend = cls()
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        hint = _EXTRA_HINTS.get(missing, f"the '{missing}' package: pip install {missing}")
        raise BackendError(f"backend '{name}' needs {hint}") from None
    except Exception as exc:
        raise BackendError(
            f"backend '{name}': constructing {target} failed: {type(exc).__name__}: {exc}"
        ) from None
    for attr in ("name", "supported_suites", "tiers", "run"):
        if not hasattr(backend, attr):
            raise BackendError(f"backend '{name}' ({target}) lacks '{attr}' "
                               f"(see conformance/protocol.py)")
    return backend


def backend_importable(name: str) -> bool:
    """True when ``load_backend(name)`` would succeed."""
    try:
        load_backend(name)
    except BackendError:
        return False
    return True

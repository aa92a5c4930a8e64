"""The JAX/XLA backend: a jit-compiled port of the oracle, checked by the goldens.

``JaxBackend`` implements :class:`conformance.protocol.Backend`; it is
registered as the ``jax`` entry point of ``refbasis.backends``
(pyproject.toml), so ``refbasis conform --backend jax`` finds it. The
numerical code lives in ``ops``, ``model``, ``basis``, ``train`` (pure JAX,
no dependency on the harness) and ``precision`` (the tiers); ``backend``
adapts them to the golden case kinds. See docs/jax-backend.md.
"""

try:
    import jax  # noqa: F401
except ImportError:  # one clear line, not a chained traceback into jax's internals
    # ModuleNotFoundError with name="jax" lets conformance.registry print its
    # standard one-line hint too.
    raise ModuleNotFoundError(
        "the JAX backend needs jax, which is not installed: pip install 'refbasis[jax]'",
        name="jax",
    ) from None

from conformance.backends.jax_backend.backend import JaxBackend  # noqa: E402

__all__ = ["JaxBackend"]

"""Backend adapters: ``numpy`` (the oracle itself) and ``jax`` (the JAX/XLA port).

Each is registered in pyproject.toml under the ``refbasis.backends`` entry
point group and loaded with :func:`conformance.registry.load_backend`.
"""

"""refbasis: a pure-NumPy reference ("oracle") for BasisNet.

BasisNet (Zhang et al., "Two-stage Model Synthesis for Efficient Inference",
arXiv 2105.03014) previews a low-resolution image with a lightweight MobileNet
that predicts per-layer combination coefficients over N basis models; the
coefficients synthesise one specialist network per image.

The oracle depends on numpy, scipy and tqdm only. It never imports jax or the
``conformance`` package.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

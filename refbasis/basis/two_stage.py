"""Two-stage BasisNet: lightweight model -> coefficients -> synthesized specialist.

Paper Sec. 3 and supplement A (design.md "BasisNet, as the reference
implements it"):

1. The lightweight model (``config.light``) reads the low-resolution image and
   gives class logits (its own ``head.logits``) and, through the coefficient
   head on its features, logits ``(B, L, N)`` normalised per layer to alpha
   (``refbasis.basis.coefficients``).
2. Training stabilisation: alpha is epsilon-mixed towards 1/N
   (``refbasis.basis.mixing``), then, in train mode, basis-model dropout zeroes
   some bases and renormalises (``refbasis.basis.basis_dropout``).
   Order (reference choice): normalise -> eps mix -> dropout/renormalise, so
   a dropped basis gets exactly zero weight whatever eps is, and the final
   coefficients always sum to one (for the simplex normalisations).
3. For every per-basis parameter ``bases.<name>`` ``(N, ...)`` of block L<i>
   (position l = i - first per-basis block) the specialist gets the
   per-example weight ``synthesize(bases.<name>, alpha[:, l])`` ``(B, ...)``;
   shared parameters ``specialist.<name>`` are used as they are.
4. The specialist (``config.specialist``) runs on the high-resolution image
   (``refbasis.model.forward`` with per-example parameters).

Parameter tree: ``light.<name>`` (the lightweight MobileNet's full tree,
model/params.py names), ``coef.kernel`` ``(F_light, L*N)``, ``coef.bias``
``(L*N,)``, ``specialist.<name>`` (every specialist parameter that is not per
basis, BN moving statistics included) and ``bases.<name>`` ``(N, ...)``
(``config.per_basis_param_names()``).

The forward/backward pair is loss-agnostic: :func:`basisnet_backward` takes
dL/d(light logits) and dL/d(specialist logits); :func:`joint_loss` gives the
two-term cross-entropy of the paper (distillation terms are added by
``refbasis.train``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from refbasis._checks import as_float_array, check_real
from refbasis.basis.basis_dropout import (
    apply_basis_dropout,
    apply_basis_dropout_vjp,
    basis_dropout_mask,
)
from refbasis.basis.coefficients import (
    coefficient_head,
    coefficient_head_vjp,
    init_coefficient_head,
)
from refbasis.basis.config import BasisNetConfig
from refbasis.basis.mixing import epsilon_mix, epsilon_mix_vjp
from refbasis.basis.synthesis import check_coefficients, synthesize, synthesize_vjp
from refbasis.model.network import ForwardCache, backward, forward
from refbasis.model.params import init_params, param_shapes, per_example_capable
from refbasis.ops.dropout import dropout_mask as draw_dropout_mask
from refbasis.ops.losses import softmax_cross_entropy, softmax_cross_entropy_vjp

__all__ = [
    "BasisNetCache",
    "basisnet_param_shapes",
    "basisnet_trainable_names",
    "init_basisnet",
    "split_params",
    "synthesize_specialist_params",
    "synthesize_specialist_params_vjp",
    "basisnet_forward",
    "basisnet_backward",
    "joint_loss",
    "light_forward",
    "basisnet_forward_naive",
]

LIGHT, COEF, SPEC, BASES = "light.", "coef.", "specialist.", "bases."


# ---------------------------------------------------------------------------
# Parameter tree
# ---------------------------------------------------------------------------

def _check_config(config, fn):
    if not isinstance(config, BasisNetConfig):
        raise TypeError(f"{fn}: argument 'config' must be a BasisNetConfig "
                        f"(e.g. refbasis.basis.config.basisnet_mv3()), "
                        f"got {type(config).__name__}")
    return config


def _block_position(config: BasisNetConfig, name: str) -> int:
    """Position l in alpha's L axis of the block that parameter ``name`` belongs to."""
    return int(name.split(".")[1]) - config.per_basis_layers[0]


def basisnet_param_shapes(config: BasisNetConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every entry of the BasisNet tree, in the order light, coef,
    specialist, bases."""
    _check_config(config, "basisnet_param_shapes")
    out = {LIGHT + k: v for k, v in param_shapes(config.light).items()}
    out["coef.kernel"] = (config.light.feature_channels, config.coefficient_dim)
    out["coef.bias"] = (config.coefficient_dim,)
    per = set(config.per_basis_param_names())
    spec = param_shapes(config.specialist)
    out.update({SPEC + k: v for k, v in spec.items() if k not in per})
    out.update({BASES + k: (config.num_bases,) + spec[k] for k in config.per_basis_param_names()})
    return out


def basisnet_trainable_names(params) -> list[str]:
    """Entries of a BasisNet tree that get gradients (all but BN moving statistics)."""
    return [k for k in params if per_example_capable(k)]


def init_basisnet(config: BasisNetConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fresh BasisNet parameters.

    Draw order (reference choice; a seed reproduces the tree): the lightweight
    tree (``init_params(config.light, rng)``), the coefficient head
    (``init_coefficient_head``), the shared specialist tree
    (``init_params(config.specialist, rng)``), then one further
    ``init_params(config.specialist, rng)`` per basis from which that basis'
    per-basis parameters are taken (independent draws break the symmetry
    between bases; identical bases would receive identical gradients under
    uniform coefficients).
    """
    fn = "init_basisnet"
    _check_config(config, fn)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{fn}: argument 'rng' must be a numpy.random.Generator, "
                        f"got {type(rng).__name__}")
    out = {LIGHT + k: v for k, v in init_params(config.light, rng).items()}
    out.update(init_coefficient_head(config.light.feature_channels,
                                     config.num_synthesized_layers, config.num_bases, rng))
    per = config.per_basis_param_names()
    shared = init_params(config.specialist, rng)
    out.update({SPEC + k: v for k, v in shared.items() if k not in set(per)})
    draws = [init_params(config.specialist, rng) for _ in range(config.num_bases)]
    for k in per:
        out[BASES + k] = np.stack([d[k] for d in draws])
    return out


def split_params(config: BasisNetConfig, params):
    """Validate a BasisNet tree and split it into
    ``(light_tree, coef_kernel, coef_bias, specialist_shared_tree, bases_tree)``
    with the prefixes removed. Missing, unknown and misshapen entries raise."""
    fn = "split_params"
    _check_config(config, fn)
    if not isinstance(params, dict):
        raise TypeError(f"{fn}: argument 'params' must be a dict name -> array, "
                        f"got {type(params).__name__}")
    shapes = basisnet_param_shapes(config)
    unknown = [k for k in params if k not in shapes]
    if unknown:
        raise ValueError(f"{fn}: argument 'params' has entries this BasisNet does not use: "
                         f"{unknown[:5]} (per-basis parameters carry the prefix 'bases.', "
                         f"shared ones 'specialist.', the lightweight model 'light.')")
    checked = {}
    for k, s in shapes.items():
        if k not in params:
            raise ValueError(f"{fn}: argument 'params' is missing '{k}' (expected shape {s})")
        checked[k] = as_float_array(params[k], f"params['{k}']", shape=s, fn=fn)
    light = {k[len(LIGHT):]: v for k, v in checked.items() if k.startswith(LIGHT)}
    spec = {k[len(SPEC):]: v for k, v in checked.items() if k.startswith(SPEC)}
    bases = {k[len(BASES):]: v for k, v in checked.items() if k.startswith(BASES)}
    return light, checked["coef.kernel"], checked["coef.bias"], spec, bases


# ---------------------------------------------------------------------------
# Synthesis of the specialist tree
# ---------------------------------------------------------------------------

def _check_alpha(config, alpha, fn):
    """alpha must be (B, L, N) for this config: finite, and >= 0 unless the
    normalisation is "none" (the only one that can produce negative values)."""
    shp = np.shape(alpha)
    want = (config.num_synthesized_layers, config.num_bases)
    if len(shp) != 3 or shp[1:] != want:
        raise ValueError(f"{fn}: argument 'alpha' must have shape (B, {want[0]}, {want[1]}) "
                         f"(B, L synthesized layers L{config.per_basis_layers[0]}-"
                         f"L{config.per_basis_layers[1]}, N bases), got {shp}")
    return check_coefficients(alpha, "alpha", ndim=3, num_bases=config.num_bases,
                              allow_negative=config.coefficient_normalization == "none",
                              fn=fn)


def synthesize_specialist_params(config: BasisNetConfig, params, alpha) -> dict:
    """The specialist's parameter tree for coefficients alpha ``(B, L, N)``:
    shared entries as stored, per-basis entries synthesized to ``(B, ...)``."""
    fn = "synthesize_specialist_params"
    _check_config(config, fn)
    _, _, _, spec, bases = split_params(config, params)
    a = _check_alpha(config, alpha, fn)
    neg = config.coefficient_normalization == "none"
    tree = dict(spec)
    for name, b in bases.items():
        tree[name] = synthesize(b, a[:, _block_position(config, name)], allow_negative=neg)
    return tree


def synthesize_specialist_params_vjp(config: BasisNetConfig, params, alpha, dtree) -> tuple:
    """VJP of :func:`synthesize_specialist_params` for the per-basis entries:
    ``dtree`` maps per-basis names to per-example gradients ``(B, ...)`` ->
    ``(d_bases dict bases.<name> -> (N, ...), dalpha (B, L, N))``."""
    fn = "synthesize_specialist_params_vjp"
    _, _, _, _, bases = split_params(config, params)
    a = _check_alpha(config, alpha, fn)
    neg = config.coefficient_normalization == "none"
    d_alpha = np.zeros_like(a)
    d_bases = {}
    for name, b in bases.items():
        pos = _block_position(config, name)
        db, da = synthesize_vjp(b, a[:, pos], dtree[name], allow_negative=neg)
        d_bases[BASES + name] = db
        d_alpha[:, pos] += da
    return d_bases, d_alpha


# ---------------------------------------------------------------------------
# Forward / backward
# ---------------------------------------------------------------------------

@dataclass
class BasisNetCache:
    """Everything :func:`basisnet_backward` needs, and every intermediate a golden stores.

    alpha chain: ``coef_logits`` (B, L, N) -> ``alpha_head`` (normalised) ->
    ``alpha_mixed`` (eps mixing) -> ``alpha`` (after basis dropout; the
    coefficients actually used). ``basis_mask`` (B, L, N) or None (no basis
    dropout). ``new_state``: updated BN moving statistics with their
    ``light.`` / ``specialist.`` names.
    """

    train: bool
    eps: float
    light_cache: ForwardCache
    specialist_cache: ForwardCache
    specialist_params: dict
    coef_logits: np.ndarray
    alpha_head: np.ndarray
    alpha_mixed: np.ndarray
    alpha: np.ndarray
    basis_mask: np.ndarray | None
    new_state: dict = field(default_factory=dict)

    @property
    def features(self) -> np.ndarray:
        """The lightweight model's features (B, F): input of both of its heads."""
        return self.light_cache.features


def basisnet_forward(config: BasisNetConfig, params, x_light, x_specialist, *, train: bool,
                     eps: float = 0.0, rng: np.random.Generator | None = None,
                     basis_mask=None, light_dropout_mask=None,
                     specialist_dropout_mask=None):
    """Two-stage forward. x_light ``(B, r, r, 3)`` (r = config.light.resolution),
    x_specialist ``(B, R, R, 3)`` (R = config.specialist.resolution).

    Returns ``(light_logits (B, K), specialist_logits (B, K), BasisNetCache)``.

    ``eps`` in [0, 1]: epsilon mixing (applied in train and eval mode; pass 0
    at inference). Train mode: basis dropout at ``config.basis_dropout_rate``
    with ``config.dropout_granularity`` unless the rate is 0; classifier
    dropout in both MobileNets at their ``arch.dropout_rate``. Masks given
    explicitly are used as they are; missing ones are drawn from ``rng`` in
    execution order (light classifier mask, basis mask, specialist classifier
    mask; reference choice). Eval mode takes no masks.
    """
    fn = "basisnet_forward"
    _check_config(config, fn)
    train = _check_bool(train, "train", fn)
    eps = check_real(eps, "eps", lo=0.0, hi=1.0, fn=fn)
    light, ck, cb, _, _ = split_params(config, params)
    xl = as_float_array(x_light, "x_light", ndim=4, fn=fn)
    xs = as_float_array(x_specialist, "x_specialist", ndim=4, fn=fn)
    if xs.shape[0] != xl.shape[0]:
        raise ValueError(f"{fn}: argument 'x_specialist' must have the batch size of "
                         f"'x_light' ({xl.shape[0]}), got {xs.shape[0]}")
    bsz = xl.shape[0]
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"{fn}: argument 'rng' must be a numpy.random.Generator, "
                        f"got {type(rng).__name__}")
    if not train:
        for nm, v in (("basis_mask", basis_mask), ("light_dropout_mask", light_dropout_mask),
                      ("specialist_dropout_mask", specialist_dropout_mask)):
            if v is not None:
                raise ValueError(f"{fn}: argument '{nm}' must be None in eval mode "
                                 f"(train=False applies no dropout), got shape {np.shape(v)}")

    lmask = _classifier_mask(config.light, train, rng, light_dropout_mask, bsz,
                             "light_dropout_mask", fn)
    light_logits, lcache = forward(config.light, light, xl, train=train, dropout_mask=lmask)
    nl, n = config.num_synthesized_layers, config.num_bases
    alpha_head, coef_logits_ = coefficient_head(
        lcache.features, ck, cb, num_layers=nl, num_bases=n,
        normalization=config.coefficient_normalization)
    alpha_mixed = epsilon_mix(alpha_head, eps)
    bmask = None
    if train:
        if basis_mask is not None:
            bmask = as_float_array(basis_mask, "basis_mask", shape=(bsz, nl, n), fn=fn)
        elif config.basis_dropout_rate > 0:
            if rng is None:
                raise ValueError(
                    f"{fn}: train=True with basis_dropout_rate={config.basis_dropout_rate} "
                    f"needs argument 'rng' (a numpy.random.Generator) or 'basis_mask' of "
                    f"shape {(bsz, nl, n)}, got neither")
            bmask = basis_dropout_mask(bsz, nl, n, config.basis_dropout_rate, rng,
                                       mode=config.dropout_granularity)
    alpha = apply_basis_dropout(alpha_mixed, bmask) if bmask is not None else alpha_mixed

    tree = synthesize_specialist_params(config, params, alpha)
    smask = _classifier_mask(config.specialist, train, rng, specialist_dropout_mask, bsz,
                             "specialist_dropout_mask", fn)
    spec_logits, scache = forward(config.specialist, tree, xs, train=train, dropout_mask=smask)
    state = {LIGHT + k: v for k, v in lcache.new_state.items()}
    state.update({SPEC + k: v for k, v in scache.new_state.items()})
    cache = BasisNetCache(train=train, eps=eps, light_cache=lcache, specialist_cache=scache,
                          specialist_params=tree, coef_logits=coef_logits_,
                          alpha_head=alpha_head, alpha_mixed=alpha_mixed, alpha=alpha,
                          basis_mask=bmask, new_state=state)
    return light_logits, spec_logits, cache


def basisnet_backward(config: BasisNetConfig, params, cache: BasisNetCache,
                      dlight_logits, dspecialist_logits) -> dict:
    """Gradients of a scalar loss through :func:`basisnet_forward`.

    dlight_logits, dspecialist_logits ``(B, K)``. Returns dL/dp for every
    trainable BasisNet parameter (network order of the tree) plus
    ``"input.light"`` and ``"input.specialist"``. The chain: specialist
    backward -> shared grads and per-example grads of the synthesized weights
    -> (d bases, d alpha) -> basis dropout VJP -> eps mixing VJP -> coefficient
    head VJP -> lightweight backward with ``dfeatures``.
    """
    fn = "basisnet_backward"
    _check_config(config, fn)
    if not isinstance(cache, BasisNetCache):
        raise TypeError(f"{fn}: argument 'cache' must be the BasisNetCache returned by "
                        f"basisnet_forward, got {type(cache).__name__}")
    light, ck, cb, _, bases = split_params(config, params)
    gs = backward(config.specialist, cache.specialist_params, cache.specialist_cache,
                  dspecialist_logits)
    grads: dict[str, np.ndarray] = {}
    d_bases, dalpha = synthesize_specialist_params_vjp(
        config, params, cache.alpha, {k: gs[k] for k in bases})
    if cache.basis_mask is not None:
        dalpha = apply_basis_dropout_vjp(cache.alpha_mixed, cache.basis_mask, dalpha)
    dalpha = epsilon_mix_vjp(cache.alpha_head, cache.eps, dalpha)
    dfeat, dck, dcb = coefficient_head_vjp(
        cache.features, ck, cb, dalpha, num_layers=config.num_synthesized_layers,
        num_bases=config.num_bases, normalization=config.coefficient_normalization)
    gl = backward(config.light, light, cache.light_cache, dlight_logits, dfeatures=dfeat)
    grads.update({LIGHT + k: v for k, v in gl.items() if k != "input"})
    grads["coef.kernel"] = dck
    grads["coef.bias"] = dcb
    grads.update({SPEC + k: v for k, v in gs.items() if k != "input" and k not in bases})
    grads.update(d_bases)
    ordered = {k: grads[k] for k in params if k in grads}
    ordered["input.light"] = gl["input"]
    ordered["input.specialist"] = gs["input"]
    return ordered


def joint_loss(config: BasisNetConfig, light_logits, specialist_logits, labels, *,
               label_smoothing: float = 0.0):
    """``mean_b [w_light * CE(light) + w_spec * CE(specialist)]`` and its gradients.

    Weights ``config.light_loss_weight`` / ``config.specialist_loss_weight``;
    batch mean (reference choice). Returns ``(loss, dlight_logits, dspecialist_logits)``.
    """
    fn = "joint_loss"
    _check_config(config, fn)
    zl = as_float_array(light_logits, "light_logits", ndim=2, fn=fn)
    zs = as_float_array(specialist_logits, "specialist_logits", shape=zl.shape, fn=fn)
    bsz = zl.shape[0]
    wl, ws = config.light_loss_weight, config.specialist_loss_weight
    cl = softmax_cross_entropy(zl, labels, label_smoothing=label_smoothing)
    cs = softmax_cross_entropy(zs, labels, label_smoothing=label_smoothing)
    loss = float(np.mean(wl * cl + ws * cs))
    dl = softmax_cross_entropy_vjp(zl, labels, np.full(bsz, wl / bsz),
                                   label_smoothing=label_smoothing)
    ds = softmax_cross_entropy_vjp(zs, labels, np.full(bsz, ws / bsz),
                                   label_smoothing=label_smoothing)
    return loss, dl, ds


def light_forward(config: BasisNetConfig, params, x_light, *, eps: float = 0.0):
    """First stage only, eval mode: ``(light_logits (B, K), alpha (B, L, N))``.

    What an early-terminating deployment computes for every image, and what
    the coefficient analysis (supplement E) reads. No basis dropout (eval).
    """
    fn = "light_forward"
    _check_config(config, fn)
    eps = check_real(eps, "eps", lo=0.0, hi=1.0, fn=fn)
    light, ck, cb, _, _ = split_params(config, params)
    xl = as_float_array(x_light, "x_light", ndim=4, fn=fn)
    logits, lcache = forward(config.light, light, xl, train=False)
    alpha, _ = coefficient_head(lcache.features, ck, cb,
                                num_layers=config.num_synthesized_layers,
                                num_bases=config.num_bases,
                                normalization=config.coefficient_normalization)
    return logits, epsilon_mix(alpha, eps)


def basisnet_forward_naive(config: BasisNetConfig, params, x_light, x_specialist, *,
                           eps: float = 0.0):
    """Loop twin of :func:`basisnet_forward` in eval mode (tests only): one image
    at a time, weights synthesized by explicit loops over the bases, and the
    specialist run as a plain MobileNet with shared (not per-example) weights.
    Returns ``(light_logits, specialist_logits, alpha)``."""
    light, ck, cb, spec, bases = split_params(config, params)
    nl, n = config.num_synthesized_layers, config.num_bases
    out_l, out_s, out_a = [], [], []
    for b in range(x_light.shape[0]):
        zl, lc = forward(config.light, light, x_light[b:b + 1], train=False)
        f = lc.features[0]
        logits = np.array([cb[j] + sum(f[c] * ck[c, j] for c in range(f.shape[0]))
                           for j in range(nl * n)]).reshape(nl, n)
        alpha = np.zeros((nl, n))
        for layer in range(nl):
            if config.coefficient_normalization == "softmax":
                e = np.exp(logits[layer] - logits[layer].max())
                alpha[layer] = e / e.sum()
            elif config.coefficient_normalization == "sigmoid":
                alpha[layer] = 1.0 / (1.0 + np.exp(-logits[layer]))
            else:
                alpha[layer] = logits[layer]
            alpha[layer] = [(1.0 - eps) * a + eps / n for a in alpha[layer]]
        tree = dict(spec)
        for name, w in bases.items():
            pos = _block_position(config, name)
            acc = np.zeros(w.shape[1:])
            for i in range(n):
                acc = acc + alpha[pos, i] * w[i]
            tree[name] = acc
        zs, _ = forward(config.specialist, tree, x_specialist[b:b + 1], train=False)
        out_l.append(zl[0])
        out_s.append(zs[0])
        out_a.append(alpha)
    return np.stack(out_l), np.stack(out_s), np.stack(out_a)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def _check_bool(v, name, fn):
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{fn}: argument '{name}' must be a bool, got {type(v).__name__} {v!r}")
    return bool(v)


def _classifier_mask(arch, train, rng, mask, bsz, name, fn):
    shape = (bsz, arch.feature_channels)
    if not train:
        return None
    if mask is not None:
        return as_float_array(mask, name, shape=shape, fn=fn)
    if arch.dropout_rate == 0:
        return None
    if rng is None:
        raise ValueError(f"{fn}: train=True with {arch.name}.dropout_rate={arch.dropout_rate} "
                         f"needs argument 'rng' or '{name}' of shape {shape}, got neither")
    return draw_dropout_mask(shape, arch.dropout_rate, rng)

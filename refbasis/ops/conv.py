"""2-D convolutions (NHWC activations, HWIO kernels) and their VJPs.

Mirrors ``jax.lax.conv_general_dilated`` with ``dimension_numbers=("NHWC", "HWIO",
"NHWC")`` and ``feature_group_count=groups`` (TF ``tf.nn.conv2d`` /
``tf.nn.depthwise_conv2d`` semantics): a cross-correlation, no kernel flip.

    y[b, oh, ow, o] = sum_{i, j, c} xp[b, oh*sh + i, ow*sw + j, g(o)*Cg + c] * w[i, j, c, o]

with ``xp`` the zero-padded input, ``Cg = Cin // groups`` and ``g(o) = o // (Cout //
groups)`` (groups own contiguous channel blocks, as in TF and XLA).

Shapes: x ``(B, H, W, Cin)``; w ``(kh, kw, Cin // groups, Cout)`` shared by the
batch, or ``(B, kh, kw, Cin // groups, Cout)`` with one kernel per example
(BasisNet synthesises one specialist kernel per image; design.md); y ``(B, Ho,
Wo, Cout)``. Depthwise kernels are ``(kh, kw, 1, C)`` (design.md), i.e. a
grouped conv with ``groups = C``.

Padding (design.md; TF ``tf.nn.conv2d``): ``"SAME"`` gives ``Ho = ceil(H / sh)``
with total padding ``max((Ho - 1)*sh + kh - H, 0)``, ``top = total // 2`` and the
odd pixel at the bottom (likewise left/right); ``"VALID"`` pads nothing; explicit
``((top, bottom), (left, right))`` expresses e.g. torchvision's symmetric padding.

Every op computes in ``refbasis.precision.compute_dtype()``. The VJPs are pure
(they recompute what they need from the forward inputs); the op is bilinear in
(x, w), so the gradient is exact everywhere (no subgradient choice is needed).

Kernels: the fast paths below are what the oracle runs; the ``*_naive`` twins
loop over output pixels and exist only so tests can check the fast paths.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from refbasis._checks import as_float_array, check_int, check_pair
from refbasis.precision import compute_dtype

__all__ = [
    "resolve_padding",
    "conv2d",
    "conv2d_vjp",
    "depthwise_conv2d",
    "depthwise_conv2d_vjp",
    "conv2d_naive",
    "conv2d_vjp_naive",
    "depthwise_conv2d_naive",
    "depthwise_conv2d_vjp_naive",
]

_PADDING_NAMES = ("SAME", "VALID")


# --------------------------------------------------------------------------
# Padding
# --------------------------------------------------------------------------


def _same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    # TF's rule (tensorflow/core/framework/kernel_shape_util.cc,
    # GetWindowedOutputSize with Padding::SAME): the odd pixel goes after.
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return (total // 2, total - total // 2)


def _explicit_pads(padding, fn: str | None) -> tuple[tuple[int, int], tuple[int, int]]:
    def bad(detail: str) -> ValueError:
        return ValueError(
            f"{fn + ': ' if fn else ''}argument 'padding' must be 'SAME', 'VALID' or "
            f"((top, bottom), (left, right)) of non-negative ints, got {padding!r} ({detail})"
        )

    if not isinstance(padding, (tuple, list)) or len(padding) != 2:
        raise bad("not a pair of pairs")
    pads = []
    for a, side in enumerate(padding):
        if not isinstance(side, (tuple, list)) or len(side) != 2:
            raise bad(f"padding[{a}] is not a pair")
        pair = []
        for b, v in enumerate(side):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise bad(f"padding[{a}][{b}] is not an int")
            if v < 0:
                raise bad(f"padding[{a}][{b}] is negative")
            pair.append(int(v))
        pads.append(tuple(pair))
    return (pads[0], pads[1])


def resolve_padding(padding, in_hw, kernel_hw, stride, *, _fn: str = "resolve_padding"):
    """Resolve ``padding`` to ``((top, bottom), (left, right))``.

    ``padding``: ``"SAME"`` (TF rule, see module docstring; source: design.md,
    TF), ``"VALID"`` (no padding) or explicit ``((top, bottom), (left, right))``
    of non-negative ints. ``in_hw``, ``kernel_hw``, ``stride``: ints or (h, w)
    pairs, each >= 1. Padding strings are case-sensitive (reference choice).
    """
    in_hw = check_pair(in_hw, "in_hw", fn=_fn)
    kernel_hw = check_pair(kernel_hw, "kernel_hw", fn=_fn)
    stride = check_pair(stride, "stride", fn=_fn)
    if isinstance(padding, str):
        if padding not in _PADDING_NAMES:
            raise ValueError(
                f"{_fn}: argument 'padding' must be one of {list(_PADDING_NAMES)} or "
                f"((top, bottom), (left, right)), got {padding!r}"
            )
        if padding == "VALID":
            return ((0, 0), (0, 0))
        return (
            _same_pads(in_hw[0], kernel_hw[0], stride[0]),
            _same_pads(in_hw[1], kernel_hw[1], stride[1]),
        )
    return _explicit_pads(padding, _fn)


# --------------------------------------------------------------------------
# Validation and geometry shared by every entry point
# --------------------------------------------------------------------------


class _Geom:
    """Resolved geometry of one conv call (plain attributes, no behaviour)."""

    __slots__ = ("B", "H", "W", "cin", "cout", "kh", "kw", "sh", "sw", "pads",
                 "ho", "wo", "groups", "per_example")


def _prepare(fn, x, w, stride, padding, groups, *, depthwise=False):
    x = as_float_array(x, "x", ndim=4, fn=fn)
    w = as_float_array(w, "w", ndim=(4, 5), fn=fn, finite=True)
    g = _Geom()
    g.B, g.H, g.W, g.cin = x.shape
    g.per_example = w.ndim == 5
    if g.per_example and w.shape[0] != g.B:
        raise ValueError(
            f"{fn}: argument 'w' is a per-example kernel and must have batch {g.B} "
            f"(x.shape[0]), got shape {w.shape}"
        )
    g.kh, g.kw, cin_g, g.cout = w.shape[-4:]
    if depthwise:
        if cin_g != 1 or g.cout != g.cin:
            lead = f"{g.B}, " if g.per_example else ""
            raise ValueError(
                f"{fn}: argument 'w' must have shape ({lead}kh, kw, 1, {g.cin}) for a "
                f"depthwise conv of x with {g.cin} channels, got {w.shape}"
            )
        groups = g.cin
    g.groups = check_int(groups, "groups", min_value=1, fn=fn)
    if g.cin % g.groups:
        raise ValueError(
            f"{fn}: argument 'groups' must divide the input channels Cin={g.cin} "
            f"of 'x' {x.shape}, got {g.groups}"
        )
    if g.cout % g.groups:
        raise ValueError(
            f"{fn}: argument 'groups' must divide the output channels Cout={g.cout} "
            f"of 'w' {w.shape}, got {g.groups}"
        )
    if cin_g * g.groups != g.cin:
        raise ValueError(
            f"{fn}: argument 'w' must have w.shape[-2] == Cin // groups = "
            f"{g.cin} // {g.groups} = {g.cin // g.groups}, got shape {w.shape}"
        )
    if min(g.kh, g.kw, g.cout) < 1:
        raise ValueError(f"{fn}: argument 'w' must be non-empty, got shape {w.shape}")
    g.sh, g.sw = check_pair(stride, "stride", min_value=1, fn=fn)
    g.pads = resolve_padding(padding, (g.H, g.W), (g.kh, g.kw), (g.sh, g.sw), _fn=fn)
    (t, b), (left, r) = g.pads
    hp, wp = g.H + t + b, g.W + left + r
    g.ho = (hp - g.kh) // g.sh + 1 if hp >= g.kh else 0
    g.wo = (wp - g.kw) // g.sw + 1 if wp >= g.kw else 0
    if g.ho <= 0 or g.wo <= 0 or min(g.H, g.W, g.B, g.cin) <= 0:
        raise ValueError(
            f"{fn}: argument 'x' of spatial size ({g.H}, {g.W}) padded by {g.pads} is "
            f"too small for the kernel ({g.kh}, {g.kw}) of argument 'w' "
            f"(output size ({g.ho}, {g.wo}) must be >= 1, and x must be non-empty, "
            f"got x.shape {x.shape})"
        )
    return x, w, g


def _check_dy(fn, dy, g):
    return as_float_array(dy, "dy", ndim=4, shape=(g.B, g.ho, g.wo, g.cout), fn=fn)


# --------------------------------------------------------------------------
# Stride phases: the padded input split into sh*sw sub-grids so that every
# kernel tap reads a contiguous slice of one flattened phase (no im2col).
# --------------------------------------------------------------------------
#
# Phase (a, b) holds xp[:, a::sh, b::sw] on a (Hq, Wq) grid with
# Hq = Ho + (kh - 1) // sh. Tap (i, j) reads phase (i % sh, j % sw) shifted by
# (i // sh, j // sw); flattened over (Hq, Wq) that shift is one offset
# di*Wq + dj, and for every valid output (oh < Ho, ow < Wo) the shifted index
# stays in the same row and image, so no wrap-around reaches a valid output.
# The Hq*Wq - Ho*Wo grid positions beyond the output are computed and dropped.


def _phase_grid(g):
    return g.ho + (g.kh - 1) // g.sh, g.wo + (g.kw - 1) // g.sw


def _pad_extended(x, g, hq, wq):
    """Zero-padded input on an (sh*Hq, sw*Wq) canvas (rows past it are never read)."""
    (t, _), (left, _) = g.pads
    he, we = g.sh * hq, g.sw * wq
    if t == 0 and left == 0 and he == g.H and we == g.W:
        return x
    xe = np.zeros((g.B, he, we, g.cin), dtype=x.dtype)
    hh, ww = max(0, min(g.H, he - t)), max(0, min(g.W, we - left))
    xe[:, t:t + hh, left:left + ww] = x[:, :hh, :ww]
    return xe


def _phases(xe, g, hq, wq):
    """dict (a, b) -> contiguous (B, Hq*Wq, C) phase of the extended input."""
    if g.sh == 1 and g.sw == 1:
        return {(0, 0): np.ascontiguousarray(xe).reshape(g.B, hq * wq, -1)}
    out = {}
    for a in range(min(g.sh, g.kh)):
        for b in range(min(g.sw, g.kw)):
            out[(a, b)] = np.ascontiguousarray(xe[:, a::g.sh, b::g.sw]).reshape(
                g.B, hq * wq, -1)
    return out


def _unphase(dphases, g, hq, wq, dtype):
    """Inverse of _pad_extended + _phases for gradients: crop back to (B, H, W, C)."""
    (t, _), (left, _) = g.pads
    he, we = g.sh * hq, g.sw * wq
    c = next(iter(dphases.values())).shape[-1]
    if g.sh == 1 and g.sw == 1:
        dxe = dphases[(0, 0)].reshape(g.B, hq, wq, c)
    else:
        dxe = np.zeros((g.B, he, we, c), dtype=dtype)
        for (a, b), p in dphases.items():
            dxe[:, a::g.sh, b::g.sw] = p.reshape(g.B, hq, wq, c)
    if t == 0 and left == 0 and he == g.H and we == g.W:
        return dxe
    dx = np.zeros((g.B, g.H, g.W, c), dtype=dtype)
    hh, ww = max(0, min(g.H, he - t)), max(0, min(g.W, we - left))
    dx[:, :hh, :ww] = dxe[:, t:t + hh, left:left + ww]
    return dx


def _taps(g, wq):
    """(i, j, phase key, flat offset) for every kernel tap."""
    for i in range(g.kh):
        for j in range(g.kw):
            yield i, j, (i % g.sh, j % g.sw), (i // g.sh) * wq + j // g.sw


# --------------------------------------------------------------------------
# Dense / grouped conv: k*k shifted GEMMs
# --------------------------------------------------------------------------
#
# Shared kernels flatten the whole batch into one GEMM row dimension (one big
# GEMM per tap); per-example kernels keep the batch as a matmul batch axis.
# Groups become a matmul batch axis over strided views (BLAS reads them with
# a leading dimension, no copy).


def _rows(a, g, groups):
    """(B, L, C) -> matmul operand (E, G, L', C/G): E = 1 (shared) or B."""
    if not g.per_example:
        a = a.reshape(1, -1, a.shape[-1])
    e, n, c = a.shape
    return a.reshape(e, n, groups, c // groups).transpose(0, 2, 1, 3)


def _tap_kernels(w, g):
    """w -> (E, kh, kw, G, Cin_g, Cout_g) with E = 1 (shared) or B."""
    wk = w if g.per_example else w[None]
    e, kh, kw, cin_g, cout = wk.shape
    gr = g.groups
    return wk.reshape(e, kh, kw, cin_g, gr, cout // gr).transpose(0, 1, 2, 4, 3, 5)


def _from_rows(acc, g, hq, wq):
    """Inverse of _rows: (E, G, N, C/G) -> (B, Hq, Wq, C) (a view when G == 1)."""
    return acc.transpose(0, 2, 1, 3).reshape(g.B, hq, wq, -1)


# With few input channels per group a tap's GEMM has a tiny inner dimension
# (the stem: Cin = 3) and is bound by writing the output k*k times; there one
# GEMM over an explicit patch matrix (im2col, inner dimension kh*kw*Cin_g)
# measured several times faster (benchmarks/bench_conv.py, stem row), so it
# is used below _IM2COL_MAX_CIN input channels per group, for y and dw.

_IM2COL_MAX_CIN = 16


def _use_im2col(g):
    return g.cin // g.groups < _IM2COL_MAX_CIN and g.kh * g.kw > 1


def _im2col(x, g):
    """Patch matrix (E, G, M, kh*kw*Cin_g) in the row order of _rows."""
    cin_g = g.cin // g.groups
    v = _windows(_pad_input(x, g), g, g.ho, g.wo)          # (B, ho, wo, Cin, kh, kw)
    v = v.reshape(g.B, g.ho, g.wo, g.groups, cin_g, g.kh, g.kw)
    order = (0, 3, 1, 2, 5, 6, 4) if g.per_example else (3, 0, 1, 2, 5, 6, 4)
    cols = np.ascontiguousarray(v.transpose(order))
    e = g.B if g.per_example else 1
    return cols.reshape(e, g.groups, -1, g.kh * g.kw * cin_g)


def _im2col_kernels(wt, g):
    """(E, kh, kw, G, Cin_g, Cout_g) -> (E, G, kh*kw*Cin_g, Cout_g)."""
    e, kh, kw, gr, cin_g, cout_g = wt.shape
    return wt.transpose(0, 3, 1, 2, 4, 5).reshape(e, gr, kh * kw * cin_g, cout_g)


def _conv_im2col(x, w, g):
    y = np.matmul(_im2col(x, g), _im2col_kernels(_tap_kernels(w, g), g))
    return _from_rows(y, g, g.ho, g.wo)


def _conv_im2col_dw(x, dy, g):
    cols = _im2col(x, g)
    d = _rows(np.ascontiguousarray(dy).reshape(g.B, g.ho * g.wo, g.cout), g, g.groups)
    dwk = np.matmul(cols.transpose(0, 1, 3, 2), d)         # (E, G, kh*kw*Cin_g, Cout_g)
    e, cin_g = dwk.shape[0], g.cin // g.groups
    dwk = dwk.reshape(e, g.groups, g.kh, g.kw, cin_g, g.cout // g.groups)
    dw = dwk.transpose(0, 2, 3, 4, 1, 5).reshape(e, g.kh, g.kw, cin_g, g.cout)
    return dw if g.per_example else dw[0]


def _conv_gemm(x, w, g):
    hq, wq = _phase_grid(g)
    ph = _phases(_pad_extended(x, g, hq, wq), g, hq, wq)
    wt = _tap_kernels(w, g)
    acc = tmp = None
    for i, j, key, off in _taps(g, wq):
        a = _rows(ph[key], g, g.groups)[:, :, off:]
        n = a.shape[2]
        if acc is None:
            # tap (0, 0) has offset 0 and covers every row: it initialises the
            # accumulator (a 1x1 conv is this single GEMM, no extra pass).
            acc = np.matmul(a, wt[:, i, j])
            continue
        if n == 0:
            continue
        if tmp is None:
            tmp = np.empty_like(acc)
        t = tmp[:, :, :n]
        np.matmul(a, wt[:, i, j], out=t)
        acc[:, :, :n] += t
    return _from_rows(acc, g, hq, wq)[:, :g.ho, :g.wo]


def _dy_grid(dy, g, hq, wq):
    """dy on the (Hq, Wq) phase grid, zeros at the dropped positions."""
    if hq == g.ho and wq == g.wo:
        return np.ascontiguousarray(dy).reshape(g.B, hq * wq, g.cout)
    d = np.zeros((g.B, hq, wq, g.cout), dtype=dy.dtype)
    d[:, :g.ho, :g.wo] = dy
    return d.reshape(g.B, hq * wq, g.cout)


def _conv_gemm_vjp(x, w, dy, g):
    hq, wq = _phase_grid(g)
    ph = _phases(_pad_extended(x, g, hq, wq), g, hq, wq)
    wt = _tap_kernels(w, g)
    drow = _rows(_dy_grid(dy, g, hq, wq), g, g.groups)     # (E, G, N, Cout_g)
    n_all = drow.shape[2]
    drows = {}                                             # phase -> (E, G, N, Cin_g)
    tmp = None
    e = wt.shape[0]
    dwt = np.zeros_like(wt)
    im2col_dw = _use_im2col(g)
    for i, j, key, off in _taps(g, wq):
        if off >= n_all:
            continue
        d = drow[:, :, :n_all - off]
        if not im2col_dw:
            a = _rows(ph[key], g, g.groups)[:, :, off:]        # (E, G, N', Cin_g)
            dwt[:, i, j] = np.matmul(a.transpose(0, 1, 3, 2), d)
        wT = wt[:, i, j].transpose(0, 1, 3, 2)
        if key not in drows:
            # the first tap of each phase has offset 0 and covers every row
            drows[key] = np.matmul(d, wT)
            continue
        if tmp is None:
            tmp = np.empty_like(drows[key])
        t = tmp[:, :, :n_all - off]
        np.matmul(d, wT, out=t)
        drows[key][:, :, off:] += t
    dph = {k: _from_rows(v, g, hq, wq).reshape(g.B, hq * wq, g.cin) for k, v in drows.items()}
    dx = _unphase(dph, g, hq, wq, x.dtype)
    if im2col_dw:
        return dx, _conv_im2col_dw(x, dy, g)
    cin_g = g.cin // g.groups
    dw = dwt.transpose(0, 1, 2, 4, 3, 5).reshape(e, g.kh, g.kw, cin_g, g.cout)
    return dx, (dw if g.per_example else dw[0])


# --------------------------------------------------------------------------
# Depthwise conv: sliding windows + einsum, or shifted multiply-adds
# --------------------------------------------------------------------------
#
# No GEMM to hide behind, so the kernel is chosen per shape from measurements
# (benchmarks/bench_conv.py, float32, batch 8, MobileNetV3-Large shapes):
# with few channels the einsum over a sliding-window view iterates a short
# inner loop and the per-tap multiply-add into preallocated buffers wins; from
# _EINSUM_MIN_CHANNELS channels on the single-pass einsum is 1.5-2.5x faster.
# dx is the transposed correlation, computed per stride phase (see below).

_EINSUM_MIN_CHANNELS = 32


def _pad_input(x, g):
    (t, b), (left, r) = g.pads
    if t == b == left == r == 0:
        return x
    xp = np.zeros((g.B, g.H + t + b, g.W + left + r, x.shape[-1]), dtype=x.dtype)
    xp[:, t:t + g.H, left:left + g.W] = x
    return xp


def _windows(xp, g, ho, wo):
    """(B, ho, wo, C, kh, kw) strided view of the kernel windows (no copy)."""
    v = sliding_window_view(xp, (g.kh, g.kw), axis=(1, 2))
    return v[:, :g.sh * (ho - 1) + 1:g.sh, :g.sw * (wo - 1) + 1:g.sw]


def _tap_window(xp, g, i, j):
    return xp[:, i:i + g.sh * (g.ho - 1) + 1:g.sh, j:j + g.sw * (g.wo - 1) + 1:g.sw]


def _dw_kernel(w, g):
    """(kh, kw, C) shared or (B, kh, kw, C) per example."""
    return w[..., 0, :]


def _depthwise_taps(xp, wk, g):
    out = np.empty((g.B, g.ho, g.wo, xp.shape[-1]), dtype=xp.dtype)
    tmp = np.empty_like(out)
    for i in range(g.kh):
        for j in range(g.kw):
            wt = wk[:, i, j][:, None, None, :] if g.per_example else wk[i, j]
            if i == 0 and j == 0:
                np.multiply(_tap_window(xp, g, i, j), wt, out=out)
            else:
                np.multiply(_tap_window(xp, g, i, j), wt, out=tmp)
                out += tmp
    return out


def _depthwise_einsum(xp, wk, g):
    spec = "bhwcij,bijc->bhwc" if g.per_example else "bhwcij,ijc->bhwc"
    return np.einsum(spec, _windows(xp, g, g.ho, g.wo), wk)


def _depthwise(x, w, g):
    xp = _pad_input(x, g)
    wk = _dw_kernel(w, g)
    if x.shape[-1] >= _EINSUM_MIN_CHANNELS:
        return _depthwise_einsum(xp, wk, g)
    return _depthwise_taps(xp, wk, g)


def _depthwise_vjp(x, w, dy, g):
    xp = _pad_input(x, g)
    wk = _dw_kernel(w, g)
    c = x.shape[-1]
    spec = "bhwcij,bhwc->bijc" if g.per_example else "bhwcij,bhwc->ijc"
    dw = np.einsum(spec, _windows(xp, g, g.ho, g.wo), dy)[..., None, :]
    # dx, one stride phase of the padded input at a time: rows a + sh*r are read
    # only by taps i = a (mod sh), at output row r - i // sh. That is a stride-1
    # "full" correlation of dy with the flipped sub-kernel w[a::sh, b::sw]
    # (no multiplications by the zeros of a dilated dy).
    (t, _), (left, _) = g.pads
    hp, wp = (g.ho - 1) * g.sh + g.kh, (g.wo - 1) * g.sw + g.kw   # rows ever read
    dxp = np.zeros((g.B, hp, wp, c), dtype=dy.dtype)
    for a in range(min(g.sh, g.kh)):
        for b in range(min(g.sw, g.kw)):
            sub = wk[..., a::g.sh, b::g.sw, :][..., ::-1, ::-1, :]
            ka, kb = sub.shape[-3], sub.shape[-2]
            dyp = np.zeros((g.B, g.ho + 2 * (ka - 1), g.wo + 2 * (kb - 1), c), dtype=dy.dtype)
            dyp[:, ka - 1:ka - 1 + g.ho, kb - 1:kb - 1 + g.wo] = dy
            gt = _Geom()
            gt.B, gt.kh, gt.kw, gt.sh, gt.sw = g.B, ka, kb, 1, 1
            gt.ho, gt.wo, gt.per_example = g.ho + ka - 1, g.wo + kb - 1, g.per_example
            part = (_depthwise_einsum(dyp, sub, gt) if c >= _EINSUM_MIN_CHANNELS
                    else _depthwise_taps(dyp, sub, gt))
            target = dxp[:, a::g.sh, b::g.sw]
            target[...] = part[:, :target.shape[1], :target.shape[2]]
    dx = np.zeros((g.B, g.H, g.W, c), dtype=dy.dtype)
    hh, ww = min(g.H, hp - t), min(g.W, wp - left)
    if hh > 0 and ww > 0:
        dx[:, :hh, :ww] = dxp[:, t:t + hh, left:left + ww]
    return dx, dw


def _is_depthwise(g):
    return g.groups == g.cin


def _as_depthwise(x, w, g):
    """Grouped conv with Cin_g = 1 and channel multiplier m = Cout // Cin as a
    depthwise conv over Cout channels: input channel c feeds outputs c*m..c*m+m-1."""
    m = g.cout // g.cin
    return (np.repeat(x, m, axis=-1) if m > 1 else x), m


# --------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------


def conv2d(x, w, *, stride=1, padding="SAME", groups=1):
    """2-D cross-correlation, TF/XLA semantics (see module docstring).

    x ``(B, H, W, Cin)``; w ``(kh, kw, Cin // groups, Cout)`` or per example
    ``(B, kh, kw, Cin // groups, Cout)``; stride int or ``(sh, sw)``; padding
    ``"SAME"`` (default, TF-slim/design.md), ``"VALID"`` or
    ``((top, bottom), (left, right))``; groups divides Cin and Cout.
    Returns y ``(B, Ho, Wo, Cout)`` in the compute dtype.
    """
    x, w, g = _prepare("conv2d", x, w, stride, padding, groups)
    if _is_depthwise(g):
        xr, _ = _as_depthwise(x, w, g)
        return _depthwise(xr, w, g)
    if _use_im2col(g):
        return _conv_im2col(x, w, g)
    return _conv_gemm(x, w, g)


def conv2d_vjp(x, w, dy, *, stride=1, padding="SAME", groups=1):
    """VJP of :func:`conv2d`: returns ``(dx, dw)`` with x's and w's shapes.

    dy ``(B, Ho, Wo, Cout)``. dx[b, p] = sum over taps/outputs reading input
    pixel p of dy * w; dw = sum over the batch and output pixels of x-patch * dy
    (per example when w is per example).
    """
    x, w, g = _prepare("conv2d_vjp", x, w, stride, padding, groups)
    dy = _check_dy("conv2d_vjp", dy, g)
    if _is_depthwise(g):
        xr, m = _as_depthwise(x, w, g)
        dxr, dw = _depthwise_vjp(xr, w, dy, g)
        dx = dxr.reshape(g.B, g.H, g.W, g.cin, m).sum(axis=-1) if m > 1 else dxr
        return np.ascontiguousarray(dx), dw
    return _conv_gemm_vjp(x, w, dy, g)


def depthwise_conv2d(x, w, *, stride=1, padding="SAME"):
    """Depthwise conv: ``conv2d`` with ``groups = C``.

    x ``(B, H, W, C)``; w ``(kh, kw, 1, C)`` (design.md) or per example
    ``(B, kh, kw, 1, C)``. Returns y ``(B, Ho, Wo, C)``.
    """
    x, w, g = _prepare("depthwise_conv2d", x, w, stride, padding, None, depthwise=True)
    return _depthwise(x, w, g)


def depthwise_conv2d_vjp(x, w, dy, *, stride=1, padding="SAME"):
    """VJP of :func:`depthwise_conv2d`: returns ``(dx, dw)`` with x's and w's shapes."""
    fn = "depthwise_conv2d_vjp"
    x, w, g = _prepare(fn, x, w, stride, padding, None, depthwise=True)
    dy = _check_dy(fn, dy, g)
    dx, dw = _depthwise_vjp(x, w, dy, g)
    return np.ascontiguousarray(dx), dw


# --------------------------------------------------------------------------
# Naive loop twins (tests only)
# --------------------------------------------------------------------------


def _naive_setup(fn, x, w, stride, padding, groups):
    x, w, g = _prepare(fn, x, w, stride, padding, groups)
    (t, b), (left, r) = g.pads
    xp = np.zeros((g.B, g.H + t + b, g.W + left + r, g.cin), dtype=compute_dtype())
    xp[:, t:t + g.H, left:left + g.W] = x
    return x, w, g, xp


def conv2d_naive(x, w, *, stride=1, padding="SAME", groups=1):
    """Loop over (example, output pixel, output channel); tests only."""
    x, w, g, xp = _naive_setup("conv2d_naive", x, w, stride, padding, groups)
    cin_g, cout_g = g.cin // g.groups, g.cout // g.groups
    y = np.zeros((g.B, g.ho, g.wo, g.cout), dtype=compute_dtype())
    for n in range(g.B):
        wn = w[n] if g.per_example else w
        for oh in range(g.ho):
            for ow in range(g.wo):
                h0, w0 = oh * g.sh, ow * g.sw
                for o in range(g.cout):
                    c0 = (o // cout_g) * cin_g
                    patch = xp[n, h0:h0 + g.kh, w0:w0 + g.kw, c0:c0 + cin_g]
                    y[n, oh, ow, o] = np.sum(patch * wn[:, :, :, o])
    return y


def conv2d_vjp_naive(x, w, dy, *, stride=1, padding="SAME", groups=1):
    """Loop twin of :func:`conv2d_vjp`; tests only."""
    x, w, g, xp = _naive_setup("conv2d_vjp_naive", x, w, stride, padding, groups)
    dy = _check_dy("conv2d_vjp_naive", dy, g)
    cin_g, cout_g = g.cin // g.groups, g.cout // g.groups
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for n in range(g.B):
        wn = w[n] if g.per_example else w
        dwn = dw[n] if g.per_example else dw
        for oh in range(g.ho):
            for ow in range(g.wo):
                h0, w0 = oh * g.sh, ow * g.sw
                for o in range(g.cout):
                    c0 = (o // cout_g) * cin_g
                    d = dy[n, oh, ow, o]
                    dxp[n, h0:h0 + g.kh, w0:w0 + g.kw, c0:c0 + cin_g] += d * wn[:, :, :, o]
                    dwn[:, :, :, o] += d * xp[n, h0:h0 + g.kh, w0:w0 + g.kw, c0:c0 + cin_g]
    (t, _), (left, _) = g.pads
    return dxp[:, t:t + g.H, left:left + g.W].copy(), dw


def depthwise_conv2d_naive(x, w, *, stride=1, padding="SAME"):
    """Loop twin of :func:`depthwise_conv2d` (conv2d_naive with groups=C); tests only."""
    x, w, _ = _prepare("depthwise_conv2d_naive", x, w, stride, padding, None, depthwise=True)
    return conv2d_naive(x, w, stride=stride, padding=padding, groups=x.shape[-1])


def depthwise_conv2d_vjp_naive(x, w, dy, *, stride=1, padding="SAME"):
    """Loop twin of :func:`depthwise_conv2d_vjp`; tests only."""
    x, w, _ = _prepare("depthwise_conv2d_vjp_naive", x, w, stride, padding, None,
                       depthwise=True)
    return conv2d_vjp_naive(x, w, dy, stride=stride, padding=padding, groups=x.shape[-1])

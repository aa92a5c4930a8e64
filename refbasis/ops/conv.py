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
# (benchmarks/bench_conv.py and bench_mobilenet.py, float32, batch 8,
# MobileNetV3-Large shapes, 1 thread): from _EINSUM_MIN_CHANNELS channels on
# the single-pass einsum over a sliding-window view is fastest; below it
# einsum's inner loop runs over the few channels only, and the per-tap
# multiply-add wins (blocks.1, 16 channels: 2-3x faster than einsum).
#
# The taps kernel keeps every operand's (width, channel) axes contiguous so
# that numpy runs one long inner loop per row instead of one per pixel: a
# tap's weights are tiled along the row, strided inputs are first split into
# contiguous stride phases, and the output is built in chunks of a few rows
# that stay in cache across the k*k taps.
#
# dx is the transposed correlation, computed per stride phase of the input
# (see _depthwise_dx) with the same two kernels, and dw is one dot product
# per tap.

_EINSUM_MIN_CHANNELS = 32
_TAPS_CHUNK = 1 << 15  # output elements per chunk of the taps kernel (fits L2)


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


def _dw_kernel(w, g):
    """(kh, kw, C) shared or (B, kh, kw, C) per example."""
    return w[..., 0, :]


def _tap_phases(xp, g):
    """Contiguous stride phases of the padded input and the taps reading them.

    Returns (src, taps): src maps (a, b) to xp[:, a::sh, b::sw] (xp itself at
    stride 1); tap (key, di, dj, i, j) reads src[key][:, di + r, dj + q] for
    output pixel (r, q), i.e. xp[:, r*sh + i, q*sw + j].
    """
    if g.sh == 1 and g.sw == 1:
        src = {(0, 0): xp}
    else:
        src = {(a, b): np.ascontiguousarray(xp[:, a::g.sh, b::g.sw])
               for a in range(min(g.sh, g.kh)) for b in range(min(g.sw, g.kw))}
    taps = [((i % g.sh, j % g.sw), i // g.sh, j // g.sw, i, j)
            for i in range(g.kh) for j in range(g.kw)]
    return src, taps


def _tile_taps(wk, wo):
    """(kh, kw, C) -> contiguous (kh, kw, wo, C): each tap's weights repeated
    along an output row, so they stream alongside the row's (wo, C) pixels."""
    kh, kw, c = wk.shape
    return np.ascontiguousarray(np.broadcast_to(wk[:, :, None, :], (kh, kw, wo, c)))


def _tap_sum(src, taps, wk, per_example, ho, wo):
    """out[b, r, q] = sum over taps (key, di, dj, i, j), in order, of
    src[key][b, r + di, q + dj] * wk[(b,) i, j]; out (B, ho, wo, C)."""
    first = next(iter(src.values()))
    bsz, c = first.shape[0], first.shape[-1]
    out = np.empty((bsz, ho, wo, c), dtype=first.dtype)
    if out.size == 0:
        return out
    rows = max(1, min(ho, _TAPS_CHUNK // (wo * c)))
    tmp = np.empty((rows, wo, c), dtype=out.dtype)
    shared = None if per_example else _tile_taps(wk, wo)
    for b in range(bsz):
        wt = _tile_taps(wk[b], wo) if per_example else shared
        for r0 in range(0, ho, rows):
            r1 = min(ho, r0 + rows)
            o, t = out[b, r0:r1], tmp[:r1 - r0]
            for n, (key, di, dj, i, j) in enumerate(taps):
                win = src[key][b, r0 + di:r1 + di, dj:dj + wo]
                if n == 0:
                    np.multiply(win, wt[i, j], out=o)
                else:
                    np.multiply(win, wt[i, j], out=t)
                    o += t
    return out


def _correlate_valid(src, wk, per_example, ho, wo, einsum):
    """Stride-1 unpadded depthwise correlation of src (B, ho+kh-1, wo+kw-1, C)
    with wk (kh, kw, C) or (B, kh, kw, C): (B, ho, wo, C)."""
    kh, kw = wk.shape[-3:-1]
    if einsum:
        spec = "bhwcij,bijc->bhwc" if per_example else "bhwcij,ijc->bhwc"
        v = sliding_window_view(src, (kh, kw), axis=(1, 2))[:, :ho, :wo]
        return np.einsum(spec, v, wk)
    taps = [((0, 0), i, j, i, j) for i in range(kh) for j in range(kw)]
    return _tap_sum({(0, 0): src}, taps, wk, per_example, ho, wo)


def _tap_dots(src, taps, dy, per_example, kh, kw):
    """dw[(b,) i, j] = sum over (b,) r, q of xp[b, r*sh + i, q*sw + j] * dy[b, r, q]."""
    ho, wo, c = dy.shape[1:]
    lead = (dy.shape[0],) if per_example else ()
    dw = np.empty(lead + (kh, kw, c), dtype=dy.dtype)
    spec = "bhwc,bhwc->bc" if per_example else "bhwc,bhwc->c"
    for key, di, dj, i, j in taps:
        dw[..., i, j, :] = np.einsum(spec, src[key][:, di:di + ho, dj:dj + wo], dy)
    return dw


def _zero_extended(a, r0, nr, c0, nc):
    """a[:, r0:r0+nr, c0:c0+nc] of a (B, H, W, C), zeros outside a (r0, c0 may be
    negative, the window may overhang); a view when it lies inside a."""
    bsz, h, w, c = a.shape
    if r0 >= 0 and c0 >= 0 and r0 + nr <= h and c0 + nc <= w:
        return a[:, r0:r0 + nr, c0:c0 + nc]
    out = np.zeros((bsz, nr, nc, c), dtype=a.dtype)
    lo_r, hi_r = max(r0, 0), min(r0 + nr, h)
    lo_c, hi_c = max(c0, 0), min(c0 + nc, w)
    if lo_r < hi_r and lo_c < hi_c:
        out[:, lo_r - r0:hi_r - r0, lo_c - c0:hi_c - c0] = a[:, lo_r:hi_r, lo_c:hi_c]
    return out


def _phase_span(n_in, pad, k, s, a):
    """Input positions h = h0 + s*n (n < count) whose padded index h + pad is
    a (mod s); m0 = (h0 + pad) // s is the output index aligned with n = 0 and
    ka the number of kernel taps a, a + s, ... < k reading them."""
    h0 = (a - pad) % s
    count = len(range(h0, n_in, s))
    return h0, count, (h0 + pad) // s, len(range(a, k, s))


def _depthwise_dx(wk, dy, g, einsum):
    """dx of the depthwise conv, one stride phase (a, b) of the padded input at
    a time. Padded row p = a + s*m is read by taps i = a + s*u at output row
    m - u, so dx over the phase is a stride-1 correlation of dy (zero-extended)
    with the flipped sub-kernel w[a::s][::-1]: no multiplications by the zeros
    of a dilated dy, and at stride 1 one correlation that is dx itself."""
    (t, _), (left, _) = g.pads
    c = dy.shape[-1]
    covered = g.sh <= g.kh and g.sw <= g.kw      # every input pixel is read by a tap
    dx = (np.empty if covered else np.zeros)((g.B, g.H, g.W, c), dtype=dy.dtype)
    for a in range(min(g.sh, g.kh)):
        h0, nh, m0, ka = _phase_span(g.H, t, g.kh, g.sh, a)
        for b in range(min(g.sw, g.kw)):
            w0, nw, q0, kb = _phase_span(g.W, left, g.kw, g.sw, b)
            if nh == 0 or nw == 0:
                continue
            sub = wk[..., a::g.sh, b::g.sw, :][..., ::-1, ::-1, :]
            src = _zero_extended(dy, m0 - ka + 1, nh + ka - 1, q0 - kb + 1, nw + kb - 1)
            part = _correlate_valid(src, sub, g.per_example, nh, nw, einsum)
            if g.sh == 1 and g.sw == 1:
                return part
            dx[:, h0::g.sh, w0::g.sw] = part
    return dx


def _depthwise(x, w, g):
    xp = _pad_input(x, g)
    wk = _dw_kernel(w, g)
    if x.shape[-1] >= _EINSUM_MIN_CHANNELS:
        spec = "bhwcij,bijc->bhwc" if g.per_example else "bhwcij,ijc->bhwc"
        return np.einsum(spec, _windows(xp, g, g.ho, g.wo), wk)
    src, taps = _tap_phases(xp, g)
    return _tap_sum(src, taps, wk, g.per_example, g.ho, g.wo)


def _depthwise_vjp(x, w, dy, g):
    xp = _pad_input(x, g)
    wk = _dw_kernel(w, g)
    einsum = x.shape[-1] >= _EINSUM_MIN_CHANNELS
    if einsum:
        spec = "bhwcij,bhwc->bijc" if g.per_example else "bhwcij,bhwc->ijc"
        dw = np.einsum(spec, _windows(xp, g, g.ho, g.wo), dy)
    else:
        src, taps = _tap_phases(xp, g)
        dw = _tap_dots(src, taps, dy, g.per_example, g.kh, g.kw)
    return _depthwise_dx(wk, dy, g, einsum), dw[..., None, :]


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

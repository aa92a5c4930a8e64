"""Speed of refbasis.ops.conv on MobileNetV3-Large (1.0x224) conv shapes.

Times the oracle's fast kernels (in ``float32_mode``) against peers measured
in the same run: a NumPy im2col (sliding-window view copied to a patch matrix,
then one GEMM; for depthwise convs the sliding-window view + einsum) and, if
importable, ``torch.nn.functional.conv2d`` on the CPU. Prints per layer: ms,
GFLOP/s (2 * MAdds / time) and the ratio of our time to each peer's
(> 1 means slower than the peer). Nothing here is asserted; tests never time.

    python benchmarks/bench_conv.py [--batch 8] [--repeats 5] [--vjp]
        [--per-example] [--layers stem,blocks.14.depthwise] [--json out.json]

``--per-example`` gives blocks 11-15 one kernel per image, as BasisNet's
synthesised specialist does (torch peer: the batch folded into groups).
The layer table is written out here (MobileNetV3 paper, Table 1) so the
benchmark does not depend on refbasis.arch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from functools import partial

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from refbasis.ops import conv as C
from refbasis.precision import float32_mode

# (index, input resolution, kernel, expanded, out, stride, in) — MobileNetV3-Large
_BLOCKS = [
    (1, 112, 3, 16, 16, 1, 16), (2, 112, 3, 64, 24, 2, 16), (3, 56, 3, 72, 24, 1, 24),
    (4, 56, 5, 72, 40, 2, 24), (5, 28, 5, 120, 40, 1, 40), (6, 28, 5, 120, 40, 1, 40),
    (7, 28, 3, 240, 80, 2, 40), (8, 14, 3, 200, 80, 1, 80), (9, 14, 3, 184, 80, 1, 80),
    (10, 14, 3, 184, 80, 1, 80), (11, 14, 3, 480, 112, 1, 80), (12, 14, 3, 672, 112, 1, 112),
    (13, 14, 5, 672, 160, 2, 112), (14, 7, 5, 960, 160, 1, 160), (15, 7, 5, 960, 160, 1, 160),
]
_PER_EXAMPLE_BLOCKS = range(11, 16)  # BasisNet-MV3 synthesises L11-15 (supplement)


def mv3_large_convs():
    """[(name, H, kernel, cin, cout, stride, groups, basis_layer)]"""
    convs = [("stem", 224, 3, 3, 16, 2, 1, False)]
    for i, res, k, exp, out, s, cin in _BLOCKS:
        pe = i in _PER_EXAMPLE_BLOCKS
        if exp != cin:
            convs.append((f"blocks.{i}.expand", res, 1, cin, exp, 1, 1, pe))
        convs.append((f"blocks.{i}.depthwise", res, k, exp, exp, s, exp, pe))
        convs.append((f"blocks.{i}.project", -(-res // s), 1, exp, out, 1, 1, pe))
    convs.append(("head.conv", 7, 1, 160, 960, 1, 1, False))
    return convs


def _best_ms(fns, repeats):
    """Best-of-``repeats`` milliseconds per callable in ``fns`` (a dict).

    The callables are timed round-robin, so a burst of load from other
    processes on a shared machine hits every contender alike; the minimum is
    the least-disturbed run."""
    for fn in fns.values():
        fn()  # warm-up (allocations, BLAS threads)
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t0)
    return {k: v * 1e3 for k, v in best.items()}


# ---------------------------------------------------------------- im2col peer


def im2col_conv2d(x, w, stride, padding, groups):
    """Patch matrix (B*Ho*Wo, kh*kw*Cin) then one GEMM; depthwise: window einsum."""
    kh, kw_, _, _ = w.shape[-4:]
    (t, b), (le, r) = C.resolve_padding(padding, x.shape[1:3], (kh, kw_), stride)
    xp = np.pad(x, ((0, 0), (t, b), (le, r), (0, 0)))
    v = sliding_window_view(xp, (kh, kw_), axis=(1, 2))[:, ::stride, ::stride]
    if groups == x.shape[-1]:
        spec = "bhwcij,bijc->bhwc" if w.ndim == 5 else "bhwcij,ijc->bhwc"
        return np.einsum(spec, v, w[..., 0, :])
    bsz, ho, wo, cin = v.shape[:4]
    cols = np.ascontiguousarray(v.transpose(0, 1, 2, 4, 5, 3))
    if w.ndim == 5:
        return np.matmul(cols.reshape(bsz, ho * wo, -1),
                         w.reshape(bsz, -1, w.shape[-1])).reshape(bsz, ho, wo, -1)
    return (cols.reshape(-1, kh * kw_ * cin) @ w.reshape(-1, w.shape[-1])).reshape(
        bsz, ho, wo, -1)


# ---------------------------------------------------------------- torch peer


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_fns(torch, x, w, stride, padding, groups, dy):
    """(forward, vjp) closures on NCHW/OIHW copies made outside the timing."""
    F = torch.nn.functional
    kh, kw_ = w.shape[-4:-2]
    (t, b), (le, r) = C.resolve_padding(padding, x.shape[1:3], (kh, kw_), stride)
    bsz = x.shape[0]
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    dyt = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))
    if w.ndim == 5:  # per example: fold the batch into groups
        wt = torch.from_numpy(np.ascontiguousarray(
            w.transpose(0, 4, 3, 1, 2).reshape(-1, w.shape[3], kh, kw_)))
        xt = xt.reshape(1, -1, *xt.shape[2:])
        dyt = dyt.reshape(1, -1, *dyt.shape[2:])
        g = groups * bsz
    else:
        wt = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        g = groups

    def fwd():
        with torch.no_grad():
            return F.conv2d(F.pad(xt, (le, r, t, b)), wt, stride=stride, groups=g)

    xg, wg = xt.clone().requires_grad_(True), wt.clone().requires_grad_(True)

    def vjp():
        y = F.conv2d(F.pad(xg, (le, r, t, b)), wg, stride=stride, groups=g)
        return torch.autograd.grad(y, (xg, wg), dyt)

    return fwd, vjp


# ---------------------------------------------------------------- driver


def _in_float32(fn, *args, **kwargs):
    with float32_mode():
        return fn(*args, **kwargs)


def run(batch, repeats, vjp, per_example, only):
    torch = _torch()
    rng = np.random.default_rng(0)
    rows = []
    for name, res, k, cin, cout, s, groups, basis in mv3_large_convs():
        if only and name not in only:
            continue
        pe = per_example and basis
        x = rng.standard_normal((batch, res, res, cin)).astype(np.float32)
        wshape = (k, k, cin // groups, cout)
        w = (0.1 * rng.standard_normal(((batch,) if pe else ()) + wshape)).astype(np.float32)
        ho = -(-res // s)
        dy = rng.standard_normal((batch, ho, ho, cout)).astype(np.float32)
        flops = 2.0 * batch * ho * ho * cout * k * k * (cin // groups)
        row = {"layer": name, "shape": f"{res}x{res}x{cin}->{cout} k{k} s{s}"
               + (" dw" if groups > 1 else "") + (" pe" if pe else ""), "gflop": flops / 1e9}
        fwd = {"ours_ms": partial(_in_float32, C.conv2d, x, w, stride=s, groups=groups),
               "im2col_ms": partial(im2col_conv2d, x, w, s, "SAME", groups)}
        bwd = {"ours_vjp_ms": partial(_in_float32, C.conv2d_vjp, x, w, dy, stride=s,
                                      groups=groups)}
        if torch is not None:
            fwd["torch_ms"], bwd["torch_vjp_ms"] = torch_fns(torch, x, w, s, "SAME", groups, dy)
        row.update(_best_ms(fwd, repeats))
        if vjp:
            row.update(_best_ms(bwd, repeats))
        rows.append(row)
    return rows, torch


def _fmt(rows, vjp, has_torch):
    cols = ["layer", "shape", "ours ms", "GF/s", "im2col ms", "x im2col"]
    if has_torch:
        cols += ["torch ms", "x torch"]
    if vjp:
        cols += ["vjp ms", "vjp GF/s"] + (["torch vjp ms", "x torch"] if has_torch else [])
    lines = [" | ".join(cols)]
    tot = {}
    for r in rows:
        g = r["gflop"]
        cells = [r["layer"], r["shape"], f"{r['ours_ms']:.2f}", f"{g / r['ours_ms'] * 1e3:.1f}",
                 f"{r['im2col_ms']:.2f}", f"{r['ours_ms'] / r['im2col_ms']:.2f}"]
        if has_torch:
            cells += [f"{r['torch_ms']:.2f}", f"{r['ours_ms'] / r['torch_ms']:.2f}"]
        if vjp:
            cells += [f"{r['ours_vjp_ms']:.2f}", f"{2 * g / r['ours_vjp_ms'] * 1e3:.1f}"]
            if has_torch:
                cells += [f"{r['torch_vjp_ms']:.2f}",
                          f"{r['ours_vjp_ms'] / r['torch_vjp_ms']:.2f}"]
        lines.append(" | ".join(cells))
        for key in r:
            if key.endswith("_ms"):
                tot[key] = tot.get(key, 0.0) + r[key]
    lines.append("totals: " + ", ".join(f"{k} {v:.1f}" for k, v in tot.items()))
    if has_torch:
        lines.append(f"total ratio ours/torch forward: {tot['ours_ms'] / tot['torch_ms']:.2f}")
        if vjp:
            lines.append(
                f"total ratio ours/torch vjp: {tot['ours_vjp_ms'] / tot['torch_vjp_ms']:.2f}")
    return "\n".join(lines)


def _write_json_atomic(path, payload):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".bench_conv.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--vjp", action="store_true", help="also time conv2d_vjp vs torch autograd")
    p.add_argument("--per-example", action="store_true",
                   help="per-example kernels for blocks 11-15 (BasisNet specialist)")
    p.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    a = p.parse_args(argv)
    only = {s for s in a.layers.split(",") if s}
    rows, torch = run(a.batch, a.repeats, a.vjp, a.per_example, only)
    env = {"numpy": np.__version__, "torch": getattr(torch, "__version__", None),
           "torch_threads": torch.get_num_threads() if torch else None,
           "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
           "batch": a.batch, "dtype": "float32", "per_example": a.per_example}
    print(f"# bench_conv: MobileNetV3-Large 224 convs, {env}")
    if torch is None:
        print("# torch not importable: torch columns omitted")
    print(_fmt(rows, a.vjp, torch is not None))
    if a.json:
        _write_json_atomic(a.json, {"env": env, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

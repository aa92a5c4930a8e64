"""BasisNet-MV3 in JAX against a plain MobileNetV3-Large, one run, same batch.

Measures (jit-compiled, compile time reported separately, then the median of
``--repeats`` timed calls with ``block_until_ready``):

- forward (eval mode): the two-stage BasisNet-MV3 (MV3-small lightweight model
  -> coefficients -> synthesis of the per-basis layers -> MV3-large
  specialist) vs a plain MV3-Large of the specialist's shape;
- train step (forward, jax.grad, clipping, RMSProp, EMA) of both;
- ``--synthesis``: the per-example convolution of the synthesized layers,
  grouped convolution (feature_group_count = batch * groups) vs jax.vmap,
  on the shapes of MV3-Large L11-L15; this is what picked
  ``ops.DEFAULT_PER_EXAMPLE``.

Reports the time ratio BasisNet / MV3-Large next to the MAdds ratio from
``refbasis.cost`` (supplement Table 2: 290M for 16 bases vs 273M for one
basis, i.e. the two-stage overhead; 217M for MV3-Large alone).

Defaults follow supplement Table 2 / Sec. 4.5 (16 bases, L11-L15 per basis,
MV3-small 1.0x224 lightweight model, MV3-Large 1.0x224); use ``--resolution``
and ``--batch`` to keep CPU runs short. ``--json FILE`` writes the numbers
(atomically). Never imported by tests; no timed assertions anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def _timeit(fn, args, repeats):
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, statistics.median(times)


def _write_json(path, data):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".bench_", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def bench_synthesis(batch, resolution, repeats, precision):
    """Per-example conv of MV3-Large L11-L15 shapes: grouped vs vmap."""
    import jax
    import jax.numpy as jnp

    from conformance.backends.jax_backend import ops
    from refbasis.arch import feature_map_sizes, get_arch

    arch = get_arch("mobilenet_v3_large", multiplier=1.0, resolution=resolution)
    sizes = feature_map_sizes(arch)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(11, 16):
        b = arch.block(i)
        h = sizes[b.name][0]
        ho = sizes[b.name][1]
        cases = [("expand 1x1", (batch, h, h, b.in_channels),
                  (batch, 1, 1, b.in_channels, b.expanded_channels), 1, 1),
                 (f"depthwise {b.kernel}x{b.kernel}/s{b.stride}",
                  (batch, h, h, b.expanded_channels),
                  (batch, b.kernel, b.kernel, 1, b.expanded_channels), b.stride,
                  b.expanded_channels),
                 ("project 1x1", (batch, ho, ho, b.expanded_channels),
                  (batch, 1, 1, b.expanded_channels, b.out_channels), 1, 1)]
        for label, xs, ws, stride, groups in cases:
            x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
            w = jnp.asarray(rng.standard_normal(ws), jnp.float32)
            row = {"layer": f"L{i} {label}", "x": list(xs), "w": list(ws)}
            for impl, f in ops.PER_EXAMPLE_IMPLS.items():
                fn = jax.jit(lambda x, w, f=f, s=stride, g=groups: f(
                    x, w, stride=s, groups=g, precision=precision))
                _, t = _timeit(fn, (x, w), repeats)
                row[f"{impl}_ms"] = 1e3 * t
            rows.append(row)
    tot = {impl: sum(r[f"{impl}_ms"] for r in rows) for impl in ops.PER_EXAMPLE_IMPLS}
    return {"rows": rows, "total_ms": tot,
            "faster": min(tot, key=tot.get), "default": ops.DEFAULT_PER_EXAMPLE}


def bench_models(batch, resolution, light_resolution, num_bases, layers, repeats, precision,
                 depthwise):
    import jax
    import jax.numpy as jnp

    from conformance.backends.jax_backend import basis as jbasis
    from conformance.backends.jax_backend import model as jmodel
    from conformance.backends.jax_backend import train as jtrain
    from refbasis import model as rmodel
    from refbasis.basis import two_stage
    from refbasis.basis.config import basisnet_mv3
    from refbasis.train.step import HeadLoss, TrainConfig

    bc = basisnet_mv3(num_bases, layers, light_resolution=light_resolution,
                      specialist_resolution=resolution)
    plain = bc.specialist
    rng = np.random.default_rng(0)
    bp = {k: jnp.asarray(v, jnp.float32) for k, v in two_stage.init_basisnet(bc, rng).items()}
    pp = {k: jnp.asarray(v, jnp.float32) for k, v in rmodel.init_params(plain, rng).items()}
    xs = jnp.asarray(rng.standard_normal((batch, resolution, resolution, 3)), jnp.float32)
    xl = jnp.asarray(rng.standard_normal((batch, light_resolution, light_resolution, 3)),
                     jnp.float32)
    labels = jnp.asarray(rng.integers(0, plain.num_classes, batch))
    out = {}

    # forward, eval mode
    f_basis = jax.jit(lambda p, xl, xs: jbasis.basisnet_forward(
        bc, p, xl, xs, train=False, precision=precision, depthwise=depthwise)[:2])
    f_plain = jax.jit(lambda p, x: jmodel.forward(plain, p, x, train=False,
                                                  precision=precision, depthwise=depthwise)[0])
    out["forward_basisnet"] = _timeit(f_basis, (bp, xl, xs), repeats)
    out["forward_mv3_large"] = _timeit(f_plain, (pp, xs), repeats)

    # train step (masks: all-ones classifier dropout, one dropped basis)
    nl, n = bc.num_synthesized_layers, bc.num_bases
    bmask = np.ones((batch, nl, n), np.float32)
    bmask[:, :, 0] = 0.0
    keep = 1.0 / (1.0 - plain.dropout_rate)
    smask = jnp.full((batch, plain.feature_channels), keep, jnp.float32)
    lmask = jnp.full((batch, bc.light.feature_channels), keep, jnp.float32)
    head = HeadLoss(label_smoothing=0.1)
    conf_b = TrainConfig(clip_norm=0.1, heads=(("light", head), ("specialist", head)))
    conf_p = TrainConfig(heads=(("logits", head),))

    def apply_b(p, batch_, eps):
        zl, zs, aux = jbasis.basisnet_forward(
            bc, p, batch_["image_light"], batch_["image"], train=True, eps=eps,
            basis_mask=batch_["basis_mask"], light_dropout_mask=batch_["light_dropout_mask"],
            specialist_dropout_mask=batch_["specialist_dropout_mask"], precision=precision,
            depthwise=depthwise)
        return {"light": zl, "specialist": zs}, aux["new_state"]

    def apply_p(p, batch_, eps):
        z, aux = jmodel.forward(plain, p, batch_["image"], train=True,
                                dropout_mask=batch_["dropout_mask"], precision=precision,
                                depthwise=depthwise)
        return {"logits": z}, aux["new_state"]

    sb = jax.jit(jtrain.make_train_step(apply_b, conf_b))
    sp = jax.jit(jtrain.make_train_step(apply_p, conf_p))
    ob, eb = jtrain.init_train_state(bp, conf_b)
    op_, ep = jtrain.init_train_state(pp, conf_p)
    batch_b = {"image": xs, "image_light": xl, "label": labels,
               "basis_mask": jnp.asarray(bmask), "light_dropout_mask": lmask,
               "specialist_dropout_mask": smask}
    batch_p = {"image": xs, "label": labels, "dropout_mask": smask}
    out["train_step_basisnet"] = _timeit(sb, (bp, ob, eb, batch_b, 20_000), repeats)
    out["train_step_mv3_large"] = _timeit(sp, (pp, op_, ep, batch_p, 20_000), repeats)

    madds = {}
    try:
        from refbasis import cost
        total = float(cost.basisnet_cost(bc).madds)
        plain_m = float(cost.arch_cost(plain).madds)
        madds = {"basisnet": total, "mv3_large": plain_m, "ratio": total / plain_m}
    except Exception as exc:  # the cost model is another module's; report, don't fail
        madds = {"error": f"{type(exc).__name__}: {exc}"}
    return bc, out, madds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=224, help="specialist / MV3-Large input")
    ap.add_argument("--light-resolution", type=int, default=None,
                    help="lightweight model input (default: same as --resolution, Table 2)")
    ap.add_argument("--num-bases", type=int, default=16)
    ap.add_argument("--layers", default="11,15", help="per-basis block range, e.g. 11,15")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tier", default="highest", choices=["highest", "tf32"])
    ap.add_argument("--depthwise", default="shifted", choices=["shifted", "conv"],
                    help="depthwise conv implementation (shifted: far faster on CPU)")
    ap.add_argument("--synthesis", action="store_true",
                    help="also compare grouped vs vmap per-example convolutions")
    ap.add_argument("--synthesis-only", action="store_true")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args(argv)

    import jax

    from conformance.backends.jax_backend.precision import get_tier

    tier = get_tier(args.tier)
    layers = tuple(int(v) for v in args.layers.split(","))
    lres = args.light_resolution or args.resolution
    result = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
              "batch": args.batch, "resolution": args.resolution, "light_resolution": lres,
              "num_bases": args.num_bases, "per_basis_layers": list(layers),
              "tier": args.tier, "repeats": args.repeats, "depthwise": args.depthwise}
    if args.synthesis or args.synthesis_only:
        syn = bench_synthesis(max(args.batch, 8), args.resolution, args.repeats,
                              tier.precision)
        result["synthesis"] = syn
        print(f"per-example conv, MV3-Large L11-L15 shapes, batch {max(args.batch, 8)}:")
        for r in syn["rows"]:
            print(f"  {r['layer']:28s} grouped {r['grouped_ms']:8.2f} ms   "
                  f"vmap {r['vmap_ms']:8.2f} ms")
        print(f"  total: grouped {syn['total_ms']['grouped']:.1f} ms, "
              f"vmap {syn['total_ms']['vmap']:.1f} ms -> faster: {syn['faster']} "
              f"(default: {syn['default']})")
    if not args.synthesis_only:
        bc, t, madds = bench_models(args.batch, args.resolution, lres, args.num_bases, layers,
                                    args.repeats, tier.precision, args.depthwise)
        result["timings_s"] = {k: {"compile": v[0], "median": v[1]} for k, v in t.items()}
        fwd = t["forward_basisnet"][1] / t["forward_mv3_large"][1]
        trn = t["train_step_basisnet"][1] / t["train_step_mv3_large"][1]
        result["ratio_forward"] = fwd
        result["ratio_train_step"] = trn
        result["madds"] = madds
        print(f"BasisNet-MV3 ({args.num_bases} bases, L{layers[0]}-L{layers[1]}, light "
              f"MV3-small {lres}) vs MV3-Large {args.resolution}, batch {args.batch}, "
              f"tier {args.tier}, depthwise {args.depthwise}, {result['devices']}")
        for k, (c, m) in t.items():
            print(f"  {k:22s} compile {c:7.2f} s   median {1e3 * m:9.2f} ms")
        print(f"  time ratio BasisNet / MV3-Large: forward {fwd:.3f}, train step {trn:.3f}")
        if "ratio" in madds:
            print(f"  MAdds ratio (refbasis.cost): {madds['basisnet'] / 1e6:.1f}M / "
                  f"{madds['mv3_large'] / 1e6:.1f}M = {madds['ratio']:.3f}")
        print("  supplement Table 2: 290M (16 bases) / 273M (1 basis) = 1.062; "
              "MV3-Large alone 217M")
    if args.json:
        _write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

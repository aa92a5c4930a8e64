"""Whole-network speed of the oracle against PyTorch (CPU), in one run.

Times ``refbasis.model.forward`` (eval and train mode) and ``forward`` +
``backward`` (one training step's gradients, no optimizer) of a MobileNet built
from ``refbasis.arch`` against an equivalent ``torch.nn`` network built here
from the same ``Arch`` table and loaded with the oracle's parameters (NHWC/HWIO
transposed to NCHW/OIHW). Before timing, the script asserts that both give the
same logits (eval and train mode) and the same gradients of a few parameters,
so the peer is really the same network. Same batch, same dtype, same thread
count (torch.set_num_threads = numpy's BLAS thread count; both printed).

Prints a table of ms per iteration (median of ``--repeats``, the contenders
timed round-robin so that load from other processes hits both alike),
images/s and the ratio oracle/torch (> 1: the oracle is slower), then a
per-layer-kind profile of one oracle training step (median over
``--profile-repeats``): where the time goes in the forward pass and in the
backward pass (which recomputes each layer's forward from its cached input,
then runs the VJPs). Nothing is asserted about speed.

    python benchmarks/bench_mobilenet.py [--model mobilenet_v3_large]
        [--multiplier 1.0] [--resolution 224] [--batch 8] [--dtype float32]
        [--repeats 5] [--profile-repeats 3] [--threads N] [--json out.json]

OPENBLAS_CORETYPE (set on this project's machines) changes which OpenBLAS
kernel numpy uses; this script never changes it, only reports it. To compare,
run it with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python ...``
(benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np

import refbasis
from refbasis.arch import ARCH_NAMES, get_arch
from refbasis.model import backward, forward, init_params
from refbasis.model import blocks as _blocks
from refbasis.ops.conv import resolve_padding
from refbasis.precision import compute_precision

_DTYPES = {"float32": np.float32, "float64": np.float64}

# Equality tolerances (oracle vs torch): max |oracle - torch| / max |oracle|.
# Gradients are compared in float64 whatever --dtype is: train-mode BN in a
# randomly initialised net amplifies rounding by ~1e7 on the way down (float64
# relative errors of ~4e-9 observed), which would drown float32 gradients.
# Logits are also compared in float32 when --dtype is float32: both sides are
# float32 roundings of the same float64 values, so the peer must agree with
# the oracle within a few times the oracle's own float32-vs-float64 error
# (1e-4 to 2e-3 here after ~50 layers; a different network would be off by O(1)).
_TOL = {"logits_float64": 1e-9, "grads_float64": 1e-6,
        "logits_float32_floor": 1e-3, "logits_float32_factor": 4.0}


# ---------------------------------------------------------------------------
# Environment report
# ---------------------------------------------------------------------------


def environment(threads):
    """Thread counts, BLAS kernel and load, as printed and stored in --json."""
    env = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "refbasis": getattr(refbasis, "__version__", "?"),
        "refbasis_path": os.path.dirname(refbasis.__file__),
        "cpu_count": os.cpu_count(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        "numpy_threads": threads,
    }
    try:
        import threadpoolctl

        env["blas"] = [
            {k: info.get(k) for k in ("internal_api", "version", "architecture",
                                      "num_threads", "threading_layer", "prefix")}
            for info in threadpoolctl.threadpool_info()
            if info.get("user_api") == "blas"
        ]
    except ImportError:
        env["blas"] = "threadpoolctl not installed"
    env["loadavg_start"] = os.getloadavg()
    return env


def blas_threads():
    try:
        import threadpoolctl
    except ImportError:
        return None
    counts = [i["num_threads"] for i in threadpoolctl.threadpool_info()
              if i.get("user_api") == "blas"]
    return max(counts) if counts else None


@contextlib.contextmanager
def limit_blas(threads):
    if threads is None:
        yield
        return
    import threadpoolctl

    with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
        yield


# ---------------------------------------------------------------------------
# The torch peer, built from the same Arch table
# ---------------------------------------------------------------------------


def build_torch_net(torch, arch, params, dtype):
    """An ``nn.Module`` computing ``arch`` with the oracle's ``params``.

    NCHW activations. TF "SAME" padding is asymmetric for stride 2 (the odd
    pixel bottom/right), so a layer whose resolved padding is not symmetric
    gets an explicit ``ZeroPad2d`` in front of an unpadded conv.
    ``forward(x, dropout_mask=None)``: x (B, 3, R, R); the classifier dropout
    multiplies the features by the given mask (train mode), as the oracle does.
    """
    nn = torch.nn
    tdt = {"float32": torch.float32, "float64": torch.float64}[dtype]

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(tdt)

    def act(name):
        return {"relu": nn.ReLU(), "relu6": nn.ReLU6(), "hard_swish": nn.Hardswish(),
                "hard_sigmoid": nn.Hardsigmoid(), "sigmoid": nn.Sigmoid(),
                "identity": nn.Identity(), None: nn.Identity()}[name]

    def conv_bn_act(prefix, cin, cout, k, stride, hw, activation, groups=1):
        (pt, pb), (pl, pr) = resolve_padding(arch.padding, (hw, hw), (k, k), stride)
        layers = []
        if pt == pb and pl == pr:
            pad = (pt, pl)
        else:
            layers.append(nn.ZeroPad2d((pl, pr, pt, pb)))
            pad = 0
        conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups, bias=False)
        # HWIO (kh, kw, Cin/groups, Cout) -> OIHW; depthwise (kh, kw, 1, C) -> (C, 1, kh, kw).
        conv.weight.data = t(params[f"{prefix}.kernel"].transpose(3, 2, 0, 1))
        bn = nn.BatchNorm2d(cout, eps=arch.bn_eps, momentum=1.0 - arch.bn_decay)
        bn.weight.data = t(params[f"{prefix}.bn.gamma"])
        bn.bias.data = t(params[f"{prefix}.bn.beta"])
        bn.running_mean.data = t(params[f"{prefix}.bn.moving_mean"])
        bn.running_var.data = t(params[f"{prefix}.bn.moving_var"])
        layers += [conv, bn, act(activation)]
        return nn.Sequential(*layers)

    def linear(prefix):
        w = params[f"{prefix}.kernel"]                    # (Cin, Cout)
        lin = nn.Linear(w.shape[0], w.shape[1])
        lin.weight.data = t(w.T)
        lin.bias.data = t(params[f"{prefix}.bias"])
        return lin

    class SqueezeExcite(nn.Module):
        def __init__(self, prefix):
            super().__init__()
            self.reduce, self.expand = linear(f"{prefix}.reduce"), linear(f"{prefix}.expand")
            self.inner, self.gate = act(arch.se_inner), act(arch.se_gate)

        def forward(self, x):
            s = x.mean(dim=(2, 3))
            g = self.gate(self.expand(self.inner(self.reduce(s))))
            return x * g[:, :, None, None]

    class Block(nn.Module):
        def __init__(self, spec, hw):
            super().__init__()
            pre, c = spec.name, spec.expanded_channels
            self.expand = (conv_bn_act(f"{pre}.expand", spec.in_channels, c, 1, 1, hw,
                                       spec.activation) if spec.expand else nn.Identity())
            self.depthwise = conv_bn_act(f"{pre}.depthwise", c, c, spec.kernel, spec.stride,
                                         hw, spec.activation, groups=c)
            self.se = SqueezeExcite(f"{pre}.se") if spec.se_channels else nn.Identity()
            hw_out = -(-hw // spec.stride)
            self.project = conv_bn_act(f"{pre}.project", c, spec.out_channels, 1, 1, hw_out,
                                       None)
            self.residual = spec.residual

        def forward(self, x):
            y = self.project(self.se(self.depthwise(self.expand(x))))
            return y + x if self.residual else y

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            hw = arch.resolution
            self.stem = conv_bn_act("stem", 3, arch.stem_channels, 3, 2, hw,
                                    arch.stem_activation)
            hw = -(-hw // 2)
            blocks = []
            for spec in arch.blocks:
                blocks.append(Block(spec, hw))
                hw = -(-hw // spec.stride)
            self.blocks = nn.Sequential(*blocks)
            self.head_conv = conv_bn_act("head.conv", arch.blocks[-1].out_channels,
                                         arch.head_channels, 1, 1, hw, arch.head_activation)
            if arch.pre_logits_channels is not None:
                self.pre_logits = nn.Sequential(linear("head.pre_logits"),
                                                act(arch.pre_logits_activation))
            else:
                self.pre_logits = nn.Identity()
            self.logits = linear("head.logits")

        def forward(self, x, dropout_mask=None):
            h = self.head_conv(self.blocks(self.stem(x)))
            f = self.pre_logits(h.mean(dim=(2, 3)))
            if dropout_mask is not None:
                f = f * dropout_mask
            return self.logits(f)

    return Net()


def torch_grads_as_oracle(net, arch):
    """Gradients of a few torch parameters in the oracle's names and layouts."""
    out = {"stem.kernel": net.stem[-3].weight.grad.numpy().transpose(2, 3, 1, 0),
           "head.logits.kernel": net.logits.weight.grad.numpy().T,
           "head.conv.bn.gamma": net.head_conv[-2].weight.grad.numpy()}
    last = arch.blocks[-1]
    dw = net.blocks[-1].depthwise[-3].weight.grad.numpy()
    out[f"{last.name}.depthwise.kernel"] = dw.transpose(2, 3, 1, 0)
    return out


# ---------------------------------------------------------------------------
# Equality check: the peer must be the same network
# ---------------------------------------------------------------------------


def _rel_err(ours, theirs):
    return float(np.max(np.abs(ours - theirs)) / max(np.max(np.abs(ours)), 1e-30))


def _compare(torch, arch, params, x, mask, dlogits, dtype, with_grads):
    """Oracle and a fresh torch net in ``dtype``; returns (errors, oracle logits)."""
    dt = _DTYPES[dtype]
    params = {k: v.astype(dt) for k, v in params.items()}
    x, mask, dlogits = x.astype(dt), mask.astype(dt), dlogits.astype(dt)
    net = build_torch_net(torch, arch, params, dtype)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    errs, ours = {}, {}
    with compute_precision(dt):
        net.eval()
        with torch.no_grad():
            ours["eval"] = forward(arch, params, x, train=False)[0]
            errs[f"logits eval {dtype}"] = _rel_err(ours["eval"], net(xt).numpy())
        net.train()
        xg = xt.clone().requires_grad_(True)
        lt = net(xg, torch.from_numpy(mask))
        ours["train"], cache = forward(arch, params, x, train=True, dropout_mask=mask)
        errs[f"logits train {dtype}"] = _rel_err(ours["train"], lt.detach().numpy())
        if with_grads:
            lt.backward(torch.from_numpy(dlogits))
            grads = backward(arch, params, cache, dlogits)
            for name, g in torch_grads_as_oracle(net, arch).items():
                errs[f"grad {name} {dtype}"] = _rel_err(grads[name], g)
            errs[f"grad input {dtype}"] = _rel_err(
                grads["input"], xg.grad.numpy().transpose(0, 2, 3, 1))
    return errs, ours


def check_same_network(torch, arch, params, x, mask, dlogits, dtype):
    """Max relative errors oracle vs torch (see _TOL); raises AssertionError
    beyond tolerance. Also reports the oracle's own float32 rounding."""
    errs, ours64 = _compare(torch, arch, params, x, mask, dlogits, "float64", True)
    if dtype == "float32":
        e32, ours32 = _compare(torch, arch, params, x, mask, dlogits, "float32", False)
        errs.update(e32)
        for mode in ("eval", "train"):
            errs[f"(oracle float32 vs float64, {mode})"] = _rel_err(ours64[mode], ours32[mode])
    bad = {}
    for k, v in errs.items():
        if k.startswith("("):
            continue
        if k.startswith("grad"):
            tol = _TOL["grads_float64"]
        elif k.endswith("float64"):
            tol = _TOL["logits_float64"]
        else:
            own = errs[f"(oracle float32 vs float64, {k.split()[1]})"]
            tol = max(_TOL["logits_float32_floor"], _TOL["logits_float32_factor"] * own)
        if not v <= tol:
            bad[k] = (v, tol)
    if bad:
        raise AssertionError(f"oracle and torch disagree beyond tolerance: {bad}")
    return errs


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------


def time_round_robin(fns, repeats, warmup):
    """Median ms per callable of ``fns`` (dict), timed round-robin after
    ``warmup`` untimed calls each (torch's first calls pick kernels and grow
    its allocator); returns {key: {"median_ms", "samples_ms"}}."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[key].append((time.perf_counter() - t0) * 1e3)
    return {k: {"median_ms": float(np.median(v)), "samples_ms": v} for k, v in samples.items()}


def contenders(torch, net, arch, params, x, mask, dlogits):
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    mt, dlt = torch.from_numpy(mask), torch.from_numpy(dlogits)

    def oracle_eval():
        forward(arch, params, x, train=False)

    def oracle_train():
        forward(arch, params, x, train=True, dropout_mask=mask)

    def oracle_step():
        _, cache = forward(arch, params, x, train=True, dropout_mask=mask)
        backward(arch, params, cache, dlogits)

    def torch_eval():
        net.eval()
        with torch.inference_mode():
            net(xt)

    def torch_train():
        # Autograd records the graph, as the oracle keeps its cache.
        net.train()
        net(xt.clone().requires_grad_(True), mt)

    def torch_step():
        # The oracle also returns dL/dinput, so torch computes it too.
        net.train()
        net.zero_grad(set_to_none=True)
        net(xt.clone().requires_grad_(True), mt).backward(dlt)

    return {
        "forward (eval)": (oracle_eval, torch_eval),
        "forward (train)": (oracle_train, torch_train),
        "forward+backward (train)": (oracle_step, torch_step),
    }


# ---------------------------------------------------------------------------
# Per-layer-kind profile of the oracle
# ---------------------------------------------------------------------------
#
# The oracle's blocks module calls its ops through module globals, so they are
# wrapped there for the profile run only (and restored after). Time is
# exclusive: a wrapped call nested in another (SE's dense layers, ...) is
# charged to the outermost kind, and everything unwrapped (argument checks,
# residual adds, padding of the cache) lands in "other".

_OP_KINDS = {
    "depthwise_conv2d": "depthwise conv", "depthwise_conv2d_vjp": "depthwise conv",
    "batch_norm": "batch norm", "batch_norm_vjp": "batch norm",
    "apply_activation": "activations", "apply_activation_vjp": "activations",
    "squeeze_excite": "squeeze-excite", "squeeze_excite_vjp": "squeeze-excite",
}
_HEAD_FNS = ("head_conv_forward", "head_conv_backward", "head_pool_forward",
             "head_pool_backward", "pre_logits_forward", "pre_logits_backward",
             "logits_forward", "logits_backward")
KINDS = ("conv 1x1", "conv kxk (stem)", "depthwise conv", "batch norm", "activations",
         "squeeze-excite", "head", "other")


class KindProfiler:
    def __init__(self):
        self.depth = 0
        self.times = defaultdict(float)
        self.phase = "forward"

    def wrap(self, fn, kind_of):
        def timed(*args, **kwargs):
            if self.depth:
                return fn(*args, **kwargs)
            self.depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.times[(self.phase, kind_of(args))] += time.perf_counter() - t0
                self.depth -= 1
        return timed

    @contextlib.contextmanager
    def installed(self):
        saved = {}

        def conv_kind(args):
            return "conv 1x1" if np.shape(args[1])[-4:-2] == (1, 1) else "conv kxk (stem)"

        for name in ("conv2d", "conv2d_vjp"):
            saved[name] = getattr(_blocks, name)
            setattr(_blocks, name, self.wrap(saved[name], conv_kind))
        for name, kind in _OP_KINDS.items():
            saved[name] = getattr(_blocks, name)
            setattr(_blocks, name, self.wrap(saved[name], lambda a, k=kind: k))
        for name in _HEAD_FNS:
            saved[name] = getattr(_blocks, name)
            setattr(_blocks, name, self.wrap(saved[name], lambda a: "head"))
        try:
            yield self
        finally:
            for name, fn in saved.items():
                setattr(_blocks, name, fn)


def profile_step(arch, params, x, mask, dlogits, repeats):
    """Median seconds per (phase, kind) of one oracle training step."""
    runs = []
    for _ in range(repeats):
        prof = KindProfiler()
        with prof.installed():
            t0 = time.perf_counter()
            _, cache = forward(arch, params, x, train=True, dropout_mask=mask)
            t1 = time.perf_counter()
            prof.phase = "backward"
            backward(arch, params, cache, dlogits)
            t2 = time.perf_counter()
        times = dict(prof.times)
        for phase, total in (("forward", t1 - t0), ("backward", t2 - t1)):
            known = sum(v for (p, _), v in times.items() if p == phase)
            times[(phase, "other")] = total - known
            times[(phase, "total")] = total
        runs.append(times)
    keys = {k for r in runs for k in r}
    return {k: float(np.median([r.get(k, 0.0) for r in runs])) for k in keys}


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mobilenet_v3_large", choices=ARCH_NAMES)
    ap.add_argument("--multiplier", type=float, default=1.0)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="float32", choices=tuple(_DTYPES),
                    help="float32 runs the oracle in refbasis.precision.float32_mode")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    ap.add_argument("--profile-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS threads for numpy and torch (default: numpy's BLAS default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results to this file")
    return ap.parse_args(argv)


def _write_json(path, obj):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _fmt_env(env, torch):
    lines = [f"python {env['python']}, numpy {env['numpy']}, torch {torch.__version__}, "
             f"refbasis {env['refbasis']} ({env['refbasis_path']}), {env['cpu_count']} CPUs"]
    for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        v = env[k]
        lines.append(f"{k}: " + (f"set to {v!r}" if v is not None else "not set"))
    if isinstance(env["blas"], str):
        lines.append(f"numpy BLAS: {env['blas']}")
    for b in env["blas"] if isinstance(env["blas"], list) else []:
        lines.append(f"numpy BLAS: {b['internal_api']} {b['version']}, kernel "
                     f"{b['architecture']}, {b['num_threads']} threads ({b['prefix']})")
    lines.append(f"threads: numpy BLAS {env['numpy_threads']}, torch intra-op "
                 f"{env['torch_threads']} (interop {env['torch_interop_threads']})")
    lines.append("load average at start: " + " ".join(f"{v:.2f}" for v in env["loadavg_start"]))
    busy = env["loadavg_start"][0]
    if (env["numpy_threads"] or 1) > 1 and busy + 1 > (env["cpu_count"] or 1):
        # Measured here: with other processes on every core, OpenBLAS and
        # torch's OpenMP threads spin waiting for each other and 2-thread
        # GEMMs ran 10-20x slower than 1-thread ones.
        lines.append(f"WARNING: load {busy:.1f} on {env['cpu_count']} CPUs: multi-threaded "
                     f"timings are unreliable; compare with --threads 1")
    return lines


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        sys.exit("bench_mobilenet: torch is needed for the peer (pip install torch, CPU build)")
    threads = args.threads if args.threads is not None else blas_threads()
    with limit_blas(args.threads):
        env = environment(blas_threads())
        torch.set_num_threads(threads or os.cpu_count())
        env["torch_threads"] = torch.get_num_threads()
        env["torch_interop_threads"] = torch.get_num_interop_threads()
        arch = get_arch(args.model, multiplier=args.multiplier, resolution=args.resolution)
        dt = _DTYPES[args.dtype]
        with compute_precision(dt):
            result = run(torch, arch, args, dt, env)
    result["lines"] = result.pop("_lines")
    if args.json:
        _write_json(args.json, result)
        print(f"wrote {args.json}")


def _emit(lines, *new):
    """Print as we go (a run takes minutes) and keep the lines for the JSON."""
    lines.extend(new)
    print(*new, sep="\n", flush=True)


def run(torch, arch, args, dt, env):
    rng = np.random.default_rng(args.seed)
    params = init_params(arch, rng)
    # Non-trivial BN state and affine parameters, so eval mode is exercised.
    for name in params:
        if name.endswith(".bn.moving_mean") or name.endswith(".bn.beta"):
            params[name] = (0.1 * rng.standard_normal(params[name].shape)).astype(dt)
        elif name.endswith(".bn.moving_var") or name.endswith(".bn.gamma"):
            params[name] = rng.uniform(0.5, 1.5, params[name].shape).astype(dt)
    r = args.resolution
    x = rng.standard_normal((args.batch, r, r, 3)).astype(dt)
    mask = (rng.random((args.batch, arch.feature_channels)) >= arch.dropout_rate)
    mask = (mask / (1.0 - arch.dropout_rate)).astype(dt)
    dlogits = rng.standard_normal((args.batch, arch.num_classes)).astype(dt) / args.batch
    torch.manual_seed(args.seed)

    lines: list[str] = []
    _emit(lines, f"{arch.name} {arch.multiplier}x{arch.resolution}, batch {args.batch}, "
             f"{args.dtype}, median of {args.repeats} (round-robin, {args.warmup} warm-up)")
    _emit(lines, *_fmt_env(env, torch))
    errs = check_same_network(torch, arch, params, x, mask, dlogits, args.dtype)
    _emit(lines, f"same network (max |oracle - torch| / max |oracle|, tolerances {_TOL}):")
    _emit(lines, *[f"  {k}: {v:.1e}" for k, v in errs.items()])

    net = build_torch_net(torch, arch, params, args.dtype)
    timings = {}
    for what, (ours, theirs) in contenders(torch, net, arch, params, x, mask,
                                           dlogits).items():
        t = time_round_robin({"oracle": ours, "torch": theirs}, args.repeats, args.warmup)
        timings[what] = t
    _emit(lines, "")
    _emit(lines, "ms per iteration: median (min) of the repeats; img/s and the ratio from "
                 "the medians")
    _emit(lines, f"{'':26s} {'oracle ms':>16s} {'img/s':>6s} {'torch ms':>16s} {'img/s':>6s} "
                 f"{'oracle/torch':>12s}")
    for what, t in timings.items():
        o, p = t["oracle"]["median_ms"], t["torch"]["median_ms"]
        om, pm = min(t["oracle"]["samples_ms"]), min(t["torch"]["samples_ms"])
        _emit(lines, f"{what:26s} {o:8.1f} ({om:6.1f}) {args.batch / o * 1e3:6.1f} "
                     f"{p:8.1f} ({pm:6.1f}) {args.batch / p * 1e3:6.1f} {o / p:12.2f}")

    prof = profile_step(arch, params, x, mask, dlogits, args.profile_repeats)
    tot = prof[("forward", "total")] + prof[("backward", "total")]
    _emit(lines, "")
    _emit(lines, f"oracle profile, one training step (forward + backward), median of "
                 f"{args.profile_repeats}; backward includes recomputing each layer's forward")
    _emit(lines, f"{'kind':18s} {'fwd ms':>8s} {'bwd ms':>8s} {'step ms':>8s} {'share':>6s}")
    for kind in KINDS + ("total",):
        f, b = prof.get(("forward", kind), 0.0), prof.get(("backward", kind), 0.0)
        _emit(lines, f"{kind:18s} {f * 1e3:8.1f} {b * 1e3:8.1f} {(f + b) * 1e3:8.1f} "
                     f"{(f + b) / tot:6.1%}")
    _emit(lines, "head = head.conv (1x1 conv, BN, act) + pool + pre_logits + logits; "
                 "other = argument checks, residual adds, glue")
    env["loadavg_end"] = os.getloadavg()
    _emit(lines, "load average at end: " + " ".join(f"{v:.2f}" for v in env["loadavg_end"]))
    return {
        "_lines": lines,
        "config": {"model": arch.name, "multiplier": arch.multiplier,
                   "resolution": arch.resolution, "batch": args.batch, "dtype": args.dtype,
                   "repeats": args.repeats, "profile_repeats": args.profile_repeats,
                   "command": " ".join(sys.argv)},
        "environment": env,
        "same_network_rel_err": errs,
        "timings": timings,
        "profile_ms": {f"{p}/{k}": v * 1e3 for (p, k), v in sorted(prof.items())},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


if __name__ == "__main__":
    main()

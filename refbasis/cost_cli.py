"""``refbasis cost``: per-layer MAdds and parameters of a MobileNet or BasisNet.

Examples::

    refbasis cost mobilenet_v3_large
    refbasis cost mobilenet_v2 --multiplier 0.5 --resolution 128 --json
    refbasis cost basisnet_mv3 --bases 16 --per-basis-layers 11-15 \\
        --light-resolution 224 --convention all_variables
"""

from __future__ import annotations

import argparse
import sys

MODELS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
          "basisnet_mv2", "basisnet_mv3")


def _layer_range(text: str) -> tuple[int, int]:
    parts = text.replace("L", "").split("-")
    try:
        a, b = (int(parts[0]), int(parts[1])) if len(parts) == 2 else (None, None)
    except ValueError:
        a = b = None
    if a is None:
        raise argparse.ArgumentTypeError(
            f"--per-basis-layers must look like A-B (e.g. 11-15 or L11-L15), got {text!r}")
    return (a, b)


def _kinds(text: str) -> frozenset:
    return frozenset(k.strip() for k in text.split(",") if k.strip())


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``cost`` on ``subparsers`` (see refbasis.cli)."""
    from refbasis.cost import CONVENTIONS

    p = subparsers.add_parser(
        "cost",
        help="MAdds and parameters per layer (MobileNets, BasisNet)",
        description="Per-layer multiply-adds and parameter counts, as the MobileNet papers "
        "count them (docs/architectures.md). For basisnet_* models --multiplier and "
        "--resolution describe the specialist (basis) network.",
    )
    p.add_argument("model", choices=MODELS, metavar="MODEL",
                   help="one of: " + ", ".join(MODELS))
    p.add_argument("--multiplier", type=float, default=None,
                   help="width multiplier (default 1.0)")
    p.add_argument("--resolution", type=int, default=None,
                   help="input resolution (default 224)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--convention", choices=sorted(CONVENTIONS), default="trainable",
                   help="what is counted (default: trainable)")
    p.add_argument("--synthesis", choices=("N", "N-1"), default=None,
                   help="MAdds per synthesized weight (default: the convention's, N-1)")
    p.add_argument("--scale-final", choices=("never", "above_one", "always"), default=None,
                   help="scale MV2's 1280 head conv / MV3's pre-logits with the multiplier")
    p.add_argument("--arch-convention", choices=("tf_slim", "keras", "torchvision"),
                   default=None, help="channel-resolution rules (default tf_slim)")
    g = p.add_argument_group("BasisNet")
    g.add_argument("--bases", type=int, default=None, help="number of bases N")
    g.add_argument("--per-basis-layers", type=_layer_range, default=None, metavar="A-B",
                   help="inclusive block range with per-basis parameters")
    g.add_argument("--per-basis-kinds", type=_kinds, default=None, metavar="K[,K]",
                   help="per-basis parameter kinds among conv,bn,se (default conv)")
    g.add_argument("--light-multiplier", type=float, default=None)
    g.add_argument("--light-resolution", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
    return p


def _arch_options(args) -> dict:
    opts = {}
    if args.scale_final is not None:
        opts["scale_final"] = args.scale_final
    if args.arch_convention is not None:
        opts["convention"] = args.arch_convention
    return opts


def build(args):
    """The cost object the arguments describe (ModelCost or BasisNetCost)."""
    from dataclasses import replace

    from refbasis.arch import get_arch
    from refbasis.cost import CONVENTIONS, arch_cost, basisnet_cost

    conv = CONVENTIONS[args.convention]
    if args.synthesis is not None:
        conv = replace(conv, synthesis=args.synthesis)
    basis_flags = ("bases", "per_basis_layers", "per_basis_kinds", "light_multiplier",
                   "light_resolution")
    if not args.model.startswith("basisnet"):
        used = [f"--{f.replace('_', '-')}" for f in basis_flags if getattr(args, f) is not None]
        if used:
            raise ValueError(f"{', '.join(used)} only apply to basisnet_mv2/basisnet_mv3, "
                             f"got model {args.model!r}")
        kw = dict(num_classes=args.num_classes, **_arch_options(args))
        if args.multiplier is not None:
            kw["multiplier"] = args.multiplier
        if args.resolution is not None:
            kw["resolution"] = args.resolution
        return arch_cost(get_arch(args.model, **kw), conv)

    from refbasis.basis import config as bc

    preset = bc.basisnet_mv2 if args.model == "basisnet_mv2" else bc.basisnet_mv3
    kw = dict(num_classes=args.num_classes)
    if args.bases is not None:
        kw["num_bases"] = args.bases
    if args.per_basis_layers is not None:
        kw["per_basis_layers"] = args.per_basis_layers
    if args.per_basis_kinds is not None:
        kw["per_basis_kinds"] = args.per_basis_kinds
    if args.light_multiplier is not None:
        kw["light_multiplier"] = args.light_multiplier
    if args.light_resolution is not None:
        kw["light_resolution"] = args.light_resolution
    if args.multiplier is not None:
        kw["specialist_multiplier"] = args.multiplier
    if args.resolution is not None:
        kw["specialist_resolution"] = args.resolution
    opts = _arch_options(args)
    if opts:
        kw["specialist_options"] = opts
    return basisnet_cost(preset(**kw), conv)


def run(args) -> int:
    from refbasis.cost import cost_json, format_cost

    try:
        cost = build(args)
    except (ValueError, TypeError) as exc:
        print(f"refbasis cost: error: {exc}", file=sys.stderr)
        return 2
    print(cost_json(cost) if args.json else format_cost(cost))
    return 0

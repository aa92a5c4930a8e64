"""``refbasis conform`` and ``refbasis golden {build,verify}``.

Registered by ``refbasis.cli`` through :func:`add_parser`. ``conform`` exits
0 when nothing failed, 1 on any failure or error, 2 on a usage problem (an
unknown or unloadable backend, a tier the backend lacks). ``golden build`` is
the only thing that writes golden files.
"""

from __future__ import annotations

import sys
from pathlib import Path

from conformance.protocol import SUITES, TIERS

__all__ = ["add_parser", "cmd_conform", "cmd_golden_build", "cmd_golden_verify"]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "conform", help="check a backend against the golden files",
        description="Run a backend over the goldens and report, per case, max abs/rel error, "
                    "margin to tolerance and verdict; exit 1 on any failure.")
    p.add_argument("--backend", default="jax",
                   help="registered backend name (entry point group refbasis.backends) or "
                        "module.path:ClassName (default: jax)")
    p.add_argument("--suite", action="extend", nargs="+", choices=SUITES,
                   help="suites to run (one or more, repeatable; default: all)")
    p.add_argument("--tier", default="highest", choices=TIERS, help="precision tier")
    p.add_argument("--case", dest="case_glob", default=None,
                   help="only cases whose '<suite>/<name>' matches this glob")
    p.add_argument("--golden-dir", type=Path, default=None, help="golden directory")
    p.add_argument("--json", type=Path, default=None, help="also write a JSON report here")
    p.add_argument("--known-failures", type=Path, default=None,
                   help="known-failures file (default conformance/known_failures.txt)")
    p.add_argument("--no-isolation", action="store_true",
                   help="do not re-run the first failing layer alone")
    p.add_argument("--verbose", "-v", action="store_true", help="one line per output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_conform)

    g = subparsers.add_parser("golden", help="build or verify the golden files",
                              description="Build (explicitly) or verify the golden set.")
    gs = g.add_subparsers(dest="golden_command", metavar="{build,verify}")
    b = gs.add_parser("build", help="compute the goldens with the oracle and write them")
    b.add_argument("--suite", action="extend", nargs="+", choices=SUITES,
                   help="suites (one or more, repeatable)")
    b.add_argument("--out", type=Path, default=None, help="output directory (default golden/)")
    b.add_argument("--no-prune", action="store_true",
                   help="keep case directories the catalogue no longer has")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=cmd_golden_build)
    v = gs.add_parser("verify", help="regenerate in memory and check the committed set")
    v.add_argument("--suite", action="extend", nargs="+", choices=SUITES,
                   help="suites (one or more, repeatable)")
    v.add_argument("--golden-dir", type=Path, default=None)
    v.add_argument("--no-progress", action="store_true")
    v.set_defaults(func=cmd_golden_verify)

    def _golden_help(args):
        g.print_help()
        return 2

    g.set_defaults(func=_golden_help)


def cmd_conform(args) -> int:
    from conformance.protocol import BackendError
    from conformance.registry import load_backend
    from conformance.report import format_report, write_json
    from conformance.runner import run_conformance

    try:
        backend = load_backend(args.backend)
    except BackendError as exc:
        print(f"refbasis conform: {exc}", file=sys.stderr)
        return 2
    if args.tier not in tuple(backend.tiers):
        print(f"refbasis conform: backend '{backend.name}' has no tier '{args.tier}' "
              f"(tiers: {', '.join(backend.tiers)})", file=sys.stderr)
        return 2
    run = run_conformance(backend, golden_dir=args.golden_dir, suites=args.suite,
                          tier=args.tier, case_glob=args.case_glob,
                          isolation=not args.no_isolation, known_failures=args.known_failures,
                          progress=not args.no_progress)
    print(format_report(run, verbose=args.verbose))
    if args.json:
        write_json(run, args.json)
    return 0 if run.ok else 1


def cmd_golden_build(args) -> int:
    from conformance.golden import build_goldens, default_golden_dir

    out = args.out or default_golden_dir()
    ids = build_goldens(out, args.suite, progress=not args.no_progress,
                        prune=not args.no_prune)
    print(f"wrote {len(ids)} cases under {out}")
    return 0


def cmd_golden_verify(args) -> int:
    from conformance.golden import default_golden_dir, verify_goldens

    root = args.golden_dir or default_golden_dir()
    problems = verify_goldens(root, args.suite, progress=not args.no_progress)
    for p in problems:
        print(p)
    if problems:
        print(f"golden verify: {len(problems)} problem(s) in {root}")
        return 1
    print(f"golden verify: the committed set under {root} is reproduced")
    return 0

"""The ``refbasis`` command.

Subcommands live in their own modules; each exposes ``add_parser(subparsers)``
which registers its parser and sets ``func`` (called with the parsed args,
returning the exit status). ``conform`` and ``golden`` belong to the
``conformance`` package of the same distribution; they are imported lazily so
that the oracle library itself never imports the harness.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from refbasis import __version__

# (module, description) in the order shown by --help.
_SUBCOMMAND_MODULES = (
    "refbasis.cost_cli",
    "refbasis.train.cli",
    "conformance.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refbasis",
        description="NumPy reference (oracle) for BasisNet: costs, training, goldens, "
        "and conformance of accelerator ports.",
    )
    parser.add_argument("--version", action="version", version=f"refbasis {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname in _SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            # Only tolerate the subcommand module itself being absent (partial
            # install); a missing dependency inside it is a real error.
            if exc.name != modname:
                raise
            continue
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``refbasis train``: run a training preset.

    refbasis train --preset digits [--epochs N] [--checkpoint-dir DIR] [--resume]
                   [--checkpoint-every K] [--json FILE] [--set KEY=VALUE ...] [--no-progress]

Prints the report as markdown tables; ``--json FILE`` also writes it as JSON
(atomically). ``--set`` overrides any preset field (value parsed as JSON,
e.g. ``--set base_lr=0.01 --set per_basis_layers=[14,15]``). With
``--resume`` the run continues from the newest checkpoint under
``--checkpoint-dir`` and refuses one written by another configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

__all__ = ["add_parser", "main"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    from refbasis.train.presets import PRESETS

    p = subparsers.add_parser(
        "train", help="run a training preset (supplement-B recipe)",
        description="Train a preset with the supplement-B recipe and report accuracies "
                    "and the early-termination trade-off.")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS),
                   help="preset name")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--checkpoint-dir", default=None, help="write checkpoints here")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="checkpoint every K steps (default: only at the end)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --checkpoint-dir")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field (VALUE is JSON); repeatable")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=main)
    return p


def _overrides(items, epochs) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"refbasis train: --set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    if epochs is not None:
        out["epochs"] = epochs
    return out


def _write_json_atomic(path: str, obj) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(args) -> int:
    from refbasis.train.presets import PRESETS, DigitsPreset, format_report, run_digits

    if args.resume and not args.checkpoint_dir:
        print("refbasis train: --resume needs --checkpoint-dir", file=sys.stderr)
        return 2
    base = PRESETS[args.preset]
    try:
        preset = DigitsPreset.from_dict({**base.as_dict(), **_overrides(args.set, args.epochs)})
    except (TypeError, ValueError) as exc:
        print(f"refbasis train: {exc}", file=sys.stderr)
        return 2
    from refbasis.train.checkpoint import CheckpointMismatchError

    try:
        report = run_digits(preset, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                            progress=not args.no_progress,
                            checkpoint_every=args.checkpoint_every)
    except CheckpointMismatchError as exc:
        print(f"refbasis train: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        _write_json_atomic(args.json, report)
        print(f"report written to {args.json}")
    return 0

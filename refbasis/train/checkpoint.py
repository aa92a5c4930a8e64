"""Training checkpoints: npz arrays + a JSON manifest, written atomically.

A checkpoint of step ``k`` (the number of updates already applied) is the pair

    <dir>/ckpt-<k:08d>.npz    params/<name>, opt/ms/<name>, opt/mom/<name>, ema/<name>
    <dir>/ckpt-<k:08d>.json   format, version, step, rng state, fingerprint,
                              the run description, sha256 of the npz, metrics

Each file is written to a temporary file in the same directory and moved into
place with ``os.replace``; the JSON is written last and is the commit marker:
a checkpoint without its JSON (a run killed mid-write) does not exist. The rng
state is ``Generator.bit_generator.state`` (JSON-able ints), restored into a
fresh Generator of the same bit generator, so a resumed run draws exactly the
numbers the uninterrupted run would have drawn.

Loading with an ``expected`` description refuses a checkpoint written by
another configuration, naming every differing entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile

import numpy as np

from refbasis.train.step import TrainState, config_fingerprint

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointMismatchError",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "rng_from_state",
    "describe_differences",
]

CHECKPOINT_FORMAT = "refbasis-train-checkpoint"
_VERSION = 1
_NAME_RE = re.compile(r"^ckpt-(\d{8})\.json$")


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by a different configuration."""


# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------


def _atomic_write_bytes(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write_json(path: str, obj) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


# ---------------------------------------------------------------------------
# Flattening of the train state
# ---------------------------------------------------------------------------


def _flatten(state: TrainState) -> dict[str, np.ndarray]:
    arrays = {f"params/{n}": v for n, v in state.params.items()}
    arrays.update({f"opt/ms/{n}": v for n, v in state.opt["ms"].items()})
    arrays.update({f"opt/mom/{n}": v for n, v in state.opt["mom"].items()})
    if state.ema is not None:
        arrays.update({f"ema/{n}": v for n, v in state.ema.items()})
    return arrays


def _unflatten(arrays, order: dict) -> TrainState:
    params = {n: arrays[f"params/{n}"] for n in order["params"]}
    opt = {"ms": {n: arrays[f"opt/ms/{n}"] for n in order["opt"]},
           "mom": {n: arrays[f"opt/mom/{n}"] for n in order["opt"]}}
    ema = None if order["ema"] is None else {n: arrays[f"ema/{n}"] for n in order["ema"]}
    return TrainState(params=params, opt=opt, ema=ema)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


# ---------------------------------------------------------------------------
# Differences between run descriptions
# ---------------------------------------------------------------------------


def _flat_items(obj, prefix=""):
    if isinstance(obj, dict):
        for k in sorted(obj):
            yield from _flat_items(obj[k], f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, obj


def describe_differences(saved: dict, current: dict) -> list[str]:
    """Human-readable ``"key: checkpoint X, current Y"`` lines, sorted by key."""
    a, b = dict(_flat_items(_jsonable(saved))), dict(_flat_items(_jsonable(current)))
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if va != vb:
            out.append(f"{k}: checkpoint {va!r}, current {vb!r}")
    return out


# ---------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------


def _paths(directory: str, step: int) -> tuple[str, str]:
    base = os.path.join(directory, f"ckpt-{step:08d}")
    return base + ".npz", base + ".json"


def save_checkpoint(directory: str, state: TrainState, step: int, rng: np.random.Generator,
                    description: dict, *, metrics: dict | None = None,
                    keep: int | None = None) -> str:
    """Write checkpoint ``step`` into ``directory`` (created if needed); returns the
    JSON path. ``description``: the JSON-able run description (config, model,
    data) whose fingerprint guards resumption. ``keep``: delete all but the
    newest ``keep`` checkpoints afterwards (None keeps all).
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"save_checkpoint: argument 'rng' must be a numpy.random.Generator, "
                        f"got {type(rng).__name__}")
    os.makedirs(directory, exist_ok=True)
    npz_path, json_path = _paths(directory, step)
    buf = io.BytesIO()
    np.savez(buf, **_flatten(state))
    data = buf.getvalue()
    _atomic_write_bytes(npz_path, data)
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "version": _VERSION,
        "step": int(step),
        "arrays": os.path.basename(npz_path),
        "arrays_sha256": hashlib.sha256(data).hexdigest(),
        "order": {"params": list(state.params), "opt": list(state.opt["ms"]),
                  "ema": None if state.ema is None else list(state.ema)},
        "rng_state": rng.bit_generator.state,
        "fingerprint": config_fingerprint(description),
        "description": _jsonable(description),
        "metrics": _jsonable(metrics or {}),
    }
    _atomic_write_json(json_path, manifest)
    if keep is not None:
        for old in list_checkpoints(directory)[:-keep]:
            # JSON first: an npz left without its JSON is not a checkpoint.
            for p in reversed(_paths(directory, old)):
                if os.path.exists(p):
                    os.unlink(p)
    return json_path


def list_checkpoints(directory: str) -> list[int]:
    """Steps of the committed checkpoints in ``directory`` (those with a JSON), ascending."""
    if not os.path.isdir(directory):
        return []
    steps = []
    for name in os.listdir(directory):
        m = _NAME_RE.match(name)
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps)


def latest_checkpoint(directory: str) -> int | None:
    """The newest committed checkpoint step, or None."""
    steps = list_checkpoints(directory)
    return steps[-1] if steps else None


def rng_from_state(rng_state: dict) -> np.random.Generator:
    """A fresh Generator whose bit generator is set to ``rng_state``."""
    name = rng_state.get("bit_generator") if isinstance(rng_state, dict) else None
    cls = getattr(np.random, str(name), None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, np.random.BitGenerator):
        raise ValueError(f"rng_from_state: argument 'rng_state' must name a numpy bit "
                         f"generator, got {name!r}")
    bg = cls()
    bg.state = rng_state
    return np.random.Generator(bg)


def load_checkpoint(directory: str, step: int | None = None, *,
                    expected: dict | None = None):
    """Load checkpoint ``step`` (default: the latest) -> ``(state, step, rng, manifest)``.

    With ``expected`` (the current run description) a checkpoint whose
    fingerprint differs raises :class:`CheckpointMismatchError` listing every
    differing entry. A corrupted npz (sha256 mismatch) raises ValueError.
    """
    fn = "load_checkpoint"
    if step is None:
        step = latest_checkpoint(directory)
        if step is None:
            raise FileNotFoundError(f"{fn}: no checkpoint in {directory!r}")
    npz_path, json_path = _paths(directory, step)
    with open(json_path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != CHECKPOINT_FORMAT or manifest.get("version") != _VERSION:
        raise ValueError(f"{fn}: {json_path} is not a version-{_VERSION} {CHECKPOINT_FORMAT} "
                         f"(format {manifest.get('format')!r}, "
                         f"version {manifest.get('version')!r})")
    if expected is not None and manifest["fingerprint"] != config_fingerprint(expected):
        diffs = describe_differences(manifest["description"], expected)
        raise CheckpointMismatchError(
            f"{fn}: checkpoint {json_path} was written by a different configuration; "
            f"differences: " + ("; ".join(diffs) if diffs else "(fingerprint only)"))
    with open(npz_path, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != manifest["arrays_sha256"]:
        raise ValueError(f"{fn}: {npz_path} does not match the sha256 in {json_path} "
                         f"(corrupted or replaced)")
    with np.load(io.BytesIO(data)) as z:
        arrays = {k: z[k] for k in z.files}
    state = _unflatten(arrays, manifest["order"])
    return state, int(manifest["step"]), rng_from_state(manifest["rng_state"]), manifest

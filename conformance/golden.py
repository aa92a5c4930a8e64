"""The golden file format: read, write (atomically) and verify one case.

Layout (design.md, "Golden files and conformance")::

    golden/<suite>/<case>/case.json    metadata (below)
    golden/<suite>/<case>/arrays.npz   every input and output array

``case.json`` holds: ``format`` (int), ``suite``, ``name``, ``kind``,
``config`` (the kind's JSON configuration, docs/porting.md), ``dtype`` (the
dtype inputs are stored in and outputs are compared in), ``family`` (the
tolerance family, conformance/tolerances.json), ``oracle_version``,
``numpy_version``, ``inputs`` and ``outputs`` (array names; outputs in the
order the report checks them), ``layers`` and ``layer_outputs`` (for layered
kinds: layer or step order, and which outputs belong to each), and ``arrays``
(name -> ``{"shape", "dtype", "sha256"}``).

The sha256 of an array is taken over ``dtype.str``, the shape and the C-order
bytes (:func:`array_sha256`), so it is independent of how the npz was zipped.

Writes are atomic per file (temporary file in the same directory, then
``os.replace``); ``arrays.npz`` is written before ``case.json`` so that an
interrupted write leaves either the old case or a case whose hashes do not
match (caught by :func:`load_case`), never a silently mixed one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "GoldenError",
    "GoldenCase",
    "array_sha256",
    "atomic_write_bytes",
    "write_case",
    "load_case",
    "list_cases",
    "default_golden_dir",
]

FORMAT_VERSION = 1
CASE_JSON = "case.json"
ARRAYS_NPZ = "arrays.npz"


class GoldenError(Exception):
    """A golden case is missing, unreadable, or fails its checksums."""


def default_golden_dir() -> Path:
    """The repository's ``golden/`` (next to the ``conformance`` package)."""
    return Path(__file__).resolve().parent.parent / "golden"


@dataclass
class GoldenCase:
    """One golden case in memory (see the module docstring for the fields)."""

    suite: str
    name: str
    kind: str
    config: dict
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    family: str
    dtype: str = "float32"
    layers: tuple[str, ...] = ()
    layer_outputs: dict[str, list[str]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.suite}/{self.name}"


def array_sha256(a: np.ndarray) -> str:
    """sha256 over dtype, shape and C-order bytes of ``a``."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256()
    h.update(a.dtype.str.encode())
    h.update(repr(tuple(a.shape)).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same dir + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; committed data files get the usual 0644 (umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def case_metadata(case: GoldenCase) -> dict:
    """The ``case.json`` object of ``case`` (versions taken from the running oracle)."""
    import refbasis

    names = list(case.inputs) + list(case.outputs)
    clash = set(case.inputs) & set(case.outputs)
    if clash:
        raise ValueError(f"case {case.id}: names used as both input and output: {sorted(clash)}")
    arrays = {}
    for n in names:
        a = case.inputs[n] if n in case.inputs else case.outputs[n]
        arrays[n] = {"shape": list(a.shape), "dtype": a.dtype.str, "sha256": array_sha256(a)}
    return {
        "format": FORMAT_VERSION,
        "suite": case.suite,
        "name": case.name,
        "kind": case.kind,
        "config": case.config,
        "dtype": case.dtype,
        "family": case.family,
        "oracle_version": refbasis.__version__,
        "numpy_version": np.__version__,
        "inputs": list(case.inputs),
        "outputs": list(case.outputs),
        "layers": list(case.layers),
        "layer_outputs": {k: list(v) for k, v in case.layer_outputs.items()},
        "draws": int(case.meta.get("draws", 1)),
        "float32_error": dict(case.meta.get("float32_error", {})),
        "arrays": arrays,
    }


def _case_json_text(meta: dict) -> str:
    """Readable but compact: one line per top-level key, and one line per
    array / layer inside ``arrays`` and ``layer_outputs`` (the big maps)."""
    lines = []
    for k, v in meta.items():
        if k in ("arrays", "layer_outputs", "float32_error") and v:
            inner = ",\n".join(f"  {json.dumps(n)}: {json.dumps(e, separators=(',', ':'))}"
                               for n, e in v.items())
            lines.append(f" {json.dumps(k)}: {{\n{inner}\n }}")
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_case(root: Path, case: GoldenCase) -> Path:
    """Write ``case`` under ``root/<suite>/<name>/`` atomically; returns the directory."""
    d = Path(root) / case.suite / case.name
    meta = case_metadata(case)
    all_arrays = {**case.inputs, **case.outputs}
    atomic_write_bytes(d / ARRAYS_NPZ, _npz_bytes(all_arrays))
    atomic_write_bytes(d / CASE_JSON, _case_json_text(meta).encode())
    return d


def load_case(case_dir: Path, *, check_sha: bool = True) -> GoldenCase:
    """Read one case; raise :class:`GoldenError` with a one-line reason if it is
    missing, unreadable, inconsistent with its metadata or fails a sha256."""
    d = Path(case_dir)
    jpath, npath = d / CASE_JSON, d / ARRAYS_NPZ
    if not jpath.is_file():
        raise GoldenError(f"missing {jpath}")
    try:
        meta = json.loads(jpath.read_text())
    except (OSError, ValueError) as exc:
        raise GoldenError(f"unreadable {jpath}: {exc}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise GoldenError(f"{jpath}: format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    if not npath.is_file():
        raise GoldenError(f"missing {npath}")
    try:
        with np.load(npath, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise GoldenError(f"corrupt {npath}: {type(exc).__name__}: {exc}") from None
    declared = meta.get("arrays", {})
    missing = [n for n in declared if n not in arrays]
    extra = [n for n in arrays if n not in declared]
    if missing or extra:
        raise GoldenError(
            f"{npath}: arrays do not match case.json (missing {missing}, unexpected {extra})"
        )
    if check_sha:
        for n, info in declared.items():
            got = array_sha256(arrays[n])
            if got != info.get("sha256"):
                raise GoldenError(
                    f"{npath}: sha256 mismatch for array '{n}' "
                    f"(case.json {str(info.get('sha256'))[:12]}..., file {got[:12]}...)"
                )
    inputs = {n: arrays[n] for n in meta["inputs"]}
    outputs = {n: arrays[n] for n in meta["outputs"]}
    return GoldenCase(
        suite=meta["suite"], name=meta["name"], kind=meta["kind"], config=meta["config"],
        inputs=inputs, outputs=outputs, family=meta["family"], dtype=meta.get("dtype", "float32"),
        layers=tuple(meta.get("layers", ())), layer_outputs=meta.get("layer_outputs", {}),
        meta={k: meta[k] for k in ("oracle_version", "numpy_version", "float32_error")
              if k in meta},
    )


def list_cases(root: Path, suites=None) -> list[tuple[str, str]]:
    """``(suite, name)`` of every case directory under ``root`` (sorted), for
    the given suites (default all). A directory counts as a case when it holds
    a ``case.json`` or an ``arrays.npz``."""
    from conformance.protocol import SUITES

    root = Path(root)
    out = []
    for s in suites or SUITES:
        sd = root / s
        if not sd.is_dir():
            continue
        for d in sorted(sd.iterdir()):
            if d.is_dir() and ((d / CASE_JSON).exists() or (d / ARRAYS_NPZ).exists()):
                out.append((s, d.name))
    return out


# ---------------------------------------------------------------------------
# Building and verifying the whole set (`refbasis golden build|verify`)
# ---------------------------------------------------------------------------

INDEX_NAME = "INDEX.json"


def _write_index(root: Path, cases: dict[str, list[str]]) -> None:
    body = {"format": FORMAT_VERSION,
            "note": "written by 'refbasis golden build'; lists every committed case",
            "cases": {s: sorted(v) for s, v in cases.items()}}
    atomic_write_bytes(Path(root) / INDEX_NAME, (json.dumps(body, indent=1) + "\n").encode())


def build_goldens(root: Path | None = None, suites=None, *, progress: bool = True,
                  prune: bool = True) -> list[str]:
    """Compute every case of ``suites`` with the oracle and write it under
    ``root`` (default the repository's golden/). Cases of those suites that the
    catalogue no longer has are removed when ``prune``. Returns the ids written.
    """
    import shutil

    from tqdm import tqdm

    from conformance import catalogue
    from conformance.protocol import SUITES

    root = Path(root) if root else default_golden_dir()
    suites = list(suites) if suites else list(SUITES)
    specs = catalogue.all_specs(suites)
    written = []
    for spec in tqdm(specs, desc="golden build", unit="case", disable=not progress):
        write_case(root, catalogue.build_case(spec))
        written.append(spec.id)
    index_path = root / INDEX_NAME
    cases: dict[str, list[str]] = {}
    if index_path.is_file():
        cases = json.loads(index_path.read_text()).get("cases", {})
    for s in suites:
        names = [sp.name for sp in specs if sp.suite == s]
        cases[s] = names
        if prune and (root / s).is_dir():
            for d in (root / s).iterdir():
                if d.is_dir() and d.name not in names:
                    shutil.rmtree(d)
    _write_index(root, {s: cases.get(s, []) for s in SUITES if s in cases})
    return written


def verify_goldens(root: Path | None = None, suites=None, *, progress: bool = True,
                   tier: str = "highest") -> list[str]:
    """Regenerate every case in memory and check the committed set: sha256 of
    every array, no case added or lost (catalogue vs directories vs
    INDEX.json), same config and array names, inputs and outputs reproduced
    within the ``tier`` tolerance. Returns the list of problems (empty = ok).
    """
    from tqdm import tqdm

    from conformance import catalogue
    from conformance.compare import compare_output, output_scales
    from conformance.protocol import SUITES
    from conformance.tolerances import load_policy

    root = Path(root) if root else default_golden_dir()
    suites = list(suites) if suites else list(SUITES)
    policy = load_policy()
    problems: list[str] = []
    specs = catalogue.all_specs(suites)
    want = {sp.id for sp in specs}
    have = {f"{s}/{n}" for s, n in list_cases(root, suites)}
    index = None
    if (root / INDEX_NAME).is_file():
        index = json.loads((root / INDEX_NAME).read_text()).get("cases", {})
        indexed = {f"{s}/{n}" for s in suites for n in index.get(s, [])}
        for cid in sorted(indexed ^ want):
            where = "INDEX.json" if cid in indexed else "the catalogue"
            problems.append(f"{cid}: only in {where} (INDEX.json and catalogue disagree)")
    else:
        problems.append(f"{root / INDEX_NAME}: missing")
    for cid in sorted(want - have):
        problems.append(f"{cid}: lost (in the catalogue, no golden directory)")
    for cid in sorted(have - want):
        problems.append(f"{cid}: added (golden directory not in the catalogue)")
    for spec in tqdm([s for s in specs if s.id in have], desc="golden verify", unit="case",
                     disable=not progress):
        try:
            g = load_case(root / spec.suite / spec.name)
        except GoldenError as exc:
            problems.append(f"{spec.id}: {exc}")
            continue
        fresh = catalogue.build_case(spec)
        if (g.kind, g.family) != (fresh.kind, fresh.family):
            problems.append(f"{spec.id}: kind/family {g.kind}/{g.family}, catalogue "
                            f"{fresh.kind}/{fresh.family}")
        if json.loads(json.dumps(fresh.config)) != g.config:
            problems.append(f"{spec.id}: config differs from the catalogue's")
        for what, old, new in (("inputs", g.inputs, fresh.inputs),
                               ("outputs", g.outputs, fresh.outputs)):
            if list(old) != list(new):
                problems.append(f"{spec.id}: {what} names differ: committed {list(old)[:6]}..., "
                                f"regenerated {list(new)[:6]}...")
                continue
            if what == "outputs" and list(g.layers) != list(fresh.layers):
                problems.append(f"{spec.id}: layer order differs")
            f32 = g.meta.get("float32_error", {})
            scales = output_scales(old)
            for n in old:
                tol = policy.lookup(g.family, g.dtype, tier, n, f32.get(n))
                r = compare_output(n, new[n], old[n], tol, scales[n])
                if not r.ok:
                    problems.append(f"{spec.id}: {what[:-1]} {n} not reproduced: {r.message}")
    return problems

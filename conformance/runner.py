"""Run a backend over the goldens: load, run, compare, localise, never crash.

Every failure mode is reported per case and the run goes on (docs/porting.md,
"Read the report"): an unreadable or tampered golden (ERROR, "golden: ..."), a
case missing from or unknown to the golden index (ERROR), a backend that
raises (ERROR with the exception), returns a non-dict, misses an output, or
returns the wrong shape, dtype class or NaN/Inf (ERROR naming the output),
values out of tolerance (FAIL naming the output). Nothing under the golden
directory is ever written.

For a failing layered case the first layer (in layer order) or training step
whose outputs leave tolerance is named, and the backend's ``run_layer`` is
called on the golden's own inputs to that layer to say whether it fails alone.
If no forward output fails but gradients do, the first failing layer in
*backward* order is named instead (the last layer whose parameter gradients
fail).
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from conformance import golden as G
from conformance.compare import OutputResult, compare_outputs
from conformance.protocol import SUITES, CaseView, UnsupportedCase, readonly_inputs
from conformance.tolerances import TolerancePolicy, load_policy

__all__ = [
    "PASS", "FAIL", "ERROR", "SKIP", "XFAIL", "XPASS",
    "CaseResult", "RunResult", "KnownFailure", "load_known_failures", "run_conformance",
    "read_index", "INDEX_NAME", "DEFAULT_KNOWN_FAILURES",
]

PASS, FAIL, ERROR, SKIP, XFAIL, XPASS = "PASS", "FAIL", "ERROR", "SKIP", "XFAIL", "XPASS"
INDEX_NAME = "INDEX.json"
DEFAULT_KNOWN_FAILURES = Path(__file__).with_name("known_failures.txt")


@dataclass
class CaseResult:
    id: str
    kind: str = "?"
    verdict: str = PASS
    message: str = ""
    outputs: list[OutputResult] = field(default_factory=list)
    max_abs: float = 0.0
    max_rel: float = 0.0
    margin: float = 0.0
    first_failing_output: str | None = None
    first_failing_layer: str | None = None
    layer_direction: str | None = None  # "forward" | "backward"
    isolation: str | None = None  # "fails alone" | "passes alone" | "not available: ..."
    isolation_margin: float | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.verdict in (FAIL, ERROR, XPASS)

    def to_json(self) -> dict:
        def num(v):
            return v if v is None or math.isfinite(v) else str(v)

        return {
            "case": self.id, "kind": self.kind, "verdict": self.verdict, "message": self.message,
            "max_abs": num(self.max_abs), "max_rel": num(self.max_rel), "margin": num(self.margin),
            "first_failing_output": self.first_failing_output,
            "first_failing_layer": self.first_failing_layer,
            "layer_direction": self.layer_direction, "isolation": self.isolation,
            "isolation_margin": num(self.isolation_margin), "seconds": round(self.seconds, 4),
            "outputs": [o.to_json() for o in self.outputs],
        }


@dataclass
class RunResult:
    backend: str
    backend_description: str
    tier: str
    golden_dir: str
    cases: list[CaseResult]

    def counts(self) -> dict[str, int]:
        c = {PASS: 0, FAIL: 0, ERROR: 0, SKIP: 0, XFAIL: 0, XPASS: 0}
        for r in self.cases:
            c[r.verdict] += 1
        return c

    @property
    def ok(self) -> bool:
        return not any(r.failed for r in self.cases)

    def summary(self) -> str:
        c = self.counts()
        s = f"{c[PASS]} passed, {c[FAIL] + c[ERROR] + c[XPASS]} failed, {c[SKIP]} skipped"
        extra = []
        if c[ERROR]:
            extra.append(f"{c[ERROR]} of the failures are errors")
        if c[XPASS]:
            extra.append(f"{c[XPASS]} unexpectedly passed (stale known_failures entry)")
        if c[XFAIL]:
            extra.append(f"{c[XFAIL]} known failures")
        return s + (f" ({'; '.join(extra)})" if extra else "")

    def by_id(self, case_id: str) -> CaseResult:
        for r in self.cases:
            if r.id == case_id:
                return r
        raise KeyError(case_id)

    def to_json(self) -> dict:
        return {"backend": self.backend, "description": self.backend_description,
                "tier": self.tier, "golden_dir": self.golden_dir, "summary": self.summary(),
                "counts": self.counts(), "ok": self.ok,
                "cases": [r.to_json() for r in self.cases]}


# ---------------------------------------------------------------------------
# Known failures and the index
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class KnownFailure:
    backend: str
    pattern: str
    tier: str | None
    reason: str

    def matches(self, backend: str, case_id: str, tier: str) -> bool:
        return (fnmatch.fnmatchcase(backend, self.backend)
                and fnmatch.fnmatchcase(case_id, self.pattern)
                and (self.tier is None or self.tier == tier))


def load_known_failures(path: Path | None = None) -> list[KnownFailure]:
    """Parse ``<backend> <case glob> [tier=<tier>] -- <reason>`` lines."""
    path = Path(path) if path else DEFAULT_KNOWN_FAILURES
    if not path.is_file():
        return []
    out = []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        head, sep, reason = line.partition("--")
        parts = head.split()
        if not sep or not reason.strip() or len(parts) not in (2, 3):
            raise ValueError(f"{path}:{lineno}: expected '<backend> <case glob> [tier=<tier>] "
                             f"-- <reason>', got {raw!r}")
        tier = None
        if len(parts) == 3:
            if not parts[2].startswith("tier="):
                raise ValueError(f"{path}:{lineno}: third field must be tier=<tier>, "
                                 f"got {parts[2]!r}")
            tier = parts[2][5:]
        out.append(KnownFailure(parts[0], parts[1], tier, reason.strip()))
    return out


def read_index(golden_dir: Path) -> dict[str, list[str]] | None:
    """``{suite: [case names]}`` from ``<golden_dir>/INDEX.json`` (None if absent)."""
    p = Path(golden_dir) / INDEX_NAME
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())["cases"]
    except (OSError, ValueError, KeyError) as exc:
        raise G.GoldenError(f"unreadable {p}: {exc}") from None


# ---------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------

def _worst(results: list[OutputResult]) -> tuple[float, float, float]:
    if not results:
        return 0.0, 0.0, 0.0
    return (max(r.max_abs for r in results), max(r.max_rel for r in results),
            max(r.margin for r in results))


def _localise(res: CaseResult, g: G.GoldenCase, by_name: dict[str, OutputResult]) -> None:
    if not g.layers:
        return
    for layer in g.layers:
        names = g.layer_outputs.get(layer, [])
        if any(n in by_name and not by_name[n].ok for n in names):
            res.first_failing_layer, res.layer_direction = layer, "forward"
            return
    for layer in reversed(g.layers):
        bad = [n for n, r in by_name.items() if not r.ok and n.startswith(f"grad/{layer}.")]
        if bad:
            res.first_failing_layer, res.layer_direction = layer, "backward"
            return


def _isolate(res, backend, view, g, tier, tol_for) -> None:
    layer = res.first_failing_layer
    if not hasattr(backend, "run_layer"):
        res.isolation = "not available: backend has no run_layer"
        return
    from conformance import catalogue

    try:
        ins, expected = catalogue.isolation_inputs(g, layer)
    except NotImplementedError as exc:
        res.isolation = f"not available: {exc}"
        return
    try:
        got = backend.run_layer(view, layer, readonly_inputs(ins), tier)
    except NotImplementedError as exc:
        res.isolation = f"not available: {exc}"
        return
    except Exception as exc:  # a crash in isolation is itself a finding
        res.isolation = f"fails alone: run_layer raised {type(exc).__name__}: {exc}"
        res.isolation_margin = math.inf
        return
    names = g.layer_outputs.get(layer, [])
    primary = names[0] if names else layer

    def tol(n):
        # The layer's own outputs use the tolerance of the matching golden output.
        return tol_for(primary if n == "y" else f"{layer}/{n}" if g.kind == "train_steps" else n)

    results = compare_outputs(got if isinstance(got, dict) else got, expected, tol)
    _, _, m = _worst(results)
    res.isolation_margin = m
    bad = [r for r in results if not r.ok]
    if bad:
        res.isolation = f"fails alone on the golden's own inputs ({bad[0].name}: {bad[0].message})"
    else:
        res.isolation = "passes alone on the golden's own inputs (error carried in from upstream)"


def run_case(backend, case_dir: Path, *, tier: str, policy: TolerancePolicy,
             known: list[KnownFailure], isolation: bool = True) -> CaseResult:
    suite, name = case_dir.parent.name, case_dir.name
    res = CaseResult(id=f"{suite}/{name}")
    t0 = time.perf_counter()
    try:
        g = G.load_case(case_dir)
    except G.GoldenError as exc:
        res.verdict, res.message = ERROR, f"golden: {exc}"
        return res
    res.kind = g.kind
    kf = next((k for k in known if k.matches(backend.name, res.id, tier)), None)
    if suite not in tuple(getattr(backend, "supported_suites", ())):
        res.verdict = SKIP
        res.message = f"backend {backend.name!r} does not support suite {suite!r}"
        return res
    if tier not in tuple(getattr(backend, "tiers", ())):
        res.verdict, res.message = SKIP, f"backend {backend.name!r} has no tier {tier!r}"
        return res
    view = CaseView.make(suite=g.suite, name=g.name, kind=g.kind, config=g.config,
                         inputs=g.inputs, output_names=tuple(g.outputs), layers=g.layers,
                         dtype=g.dtype)

    f32 = g.meta.get("float32_error", {})

    def tol_for(n):
        return policy.lookup(g.family, g.dtype, tier, n, f32.get(n))

    try:
        got = backend.run(view, tier)
    except UnsupportedCase as exc:
        res.verdict, res.message = SKIP, f"unsupported by backend: {exc}"
        return res
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        res.verdict = ERROR
        res.message = f"backend raised {type(exc).__name__}: {exc}{where}"
        res.seconds = time.perf_counter() - t0
        return _apply_known(res, kf)
    try:
        results = compare_outputs(got, g.outputs, tol_for)
    except KeyError as exc:  # a family/tier missing from the tolerance policy
        res.verdict, res.message = ERROR, f"tolerance policy: {exc.args[0]}"
        return res
    res.outputs = results
    res.max_abs, res.max_rel, res.margin = _worst(results)
    res.seconds = time.perf_counter() - t0
    bad = [r for r in results if not r.ok]
    if bad:
        first = bad[0]
        res.first_failing_output = first.name
        res.verdict = ERROR if any(r.status == "error" for r in bad) else FAIL
        res.message = f"{first.name}: {first.message}"
        if len(bad) > 1:
            res.message += f" (+{len(bad) - 1} more outputs)"
        by_name = {r.name: r for r in results}
        _localise(res, g, by_name)
        if res.first_failing_layer:
            # Name the failing output of the first failing layer, not merely
            # the first in storage order (which is often the final logits).
            layer = res.first_failing_layer
            if res.layer_direction == "forward":
                names = g.layer_outputs.get(layer, [])
            else:
                names = [n for n in by_name if n.startswith(f"grad/{layer}.")]
            lb = [by_name[n] for n in names if n in by_name and not by_name[n].ok]
            if lb:
                res.first_failing_output = lb[0].name
                res.message = f"{lb[0].name}: {lb[0].message} (+{len(bad) - 1} more outputs)"
        if isolation and res.first_failing_layer and res.layer_direction == "forward":
            _isolate(res, backend, view, g, tier, tol_for)
    return _apply_known(res, kf)


def _apply_known(res: CaseResult, kf: KnownFailure | None) -> CaseResult:
    if kf is None:
        return res
    if res.failed:
        res.verdict, res.message = XFAIL, f"known failure: {kf.reason} [{res.message}]"
    elif res.verdict == PASS:
        res.verdict = XPASS
        res.message = f"listed in known_failures.txt ({kf.reason}) but passes: remove the entry"
    return res


# ---------------------------------------------------------------------------
# A whole run
# ---------------------------------------------------------------------------

def run_conformance(backend, *, golden_dir: Path | None = None, suites=None, tier="highest",
                    case_glob: str | None = None, isolation: bool = True,
                    known_failures: Path | None = None, policy: TolerancePolicy | None = None,
                    progress: bool = True) -> RunResult:
    """Run ``backend`` over every golden case of ``suites`` at ``tier``."""
    from tqdm import tqdm

    golden_dir = Path(golden_dir) if golden_dir else G.default_golden_dir()
    suites = list(suites) if suites else list(SUITES)
    policy = policy or load_policy()
    known = load_known_failures(known_failures)
    results: list[CaseResult] = []
    try:
        index = read_index(golden_dir)
    except G.GoldenError as exc:
        index = None
        results.append(CaseResult(id="golden/INDEX.json", verdict=ERROR, message=str(exc)))
    present = G.list_cases(golden_dir, suites)
    ids = {f"{s}/{n}" for s, n in present}
    expected = set()
    if index is not None:
        expected = {f"{s}/{n}" for s in suites for n in index.get(s, [])}
    elif not present:
        results.append(CaseResult(id=f"{golden_dir}", verdict=ERROR,
                                  message="no golden cases found (and no INDEX.json)"))
    todo = sorted(ids | expected, key=lambda i: (SUITES.index(i.split("/")[0]), i))
    if case_glob:
        todo = [i for i in todo if fnmatch.fnmatchcase(i, case_glob)]
    desc = getattr(backend, "describe", lambda: backend.name)()
    bar = tqdm(todo, desc=f"conform {backend.name}/{tier}", unit="case", disable=not progress,
               leave=False)
    for cid in bar:
        bar.set_postfix_str(cid, refresh=False)
        if index is not None and cid not in expected:
            results.append(CaseResult(id=cid, verdict=ERROR,
                                      message="case directory not listed in golden/INDEX.json"
                                              " (added by hand? rebuild with 'refbasis golden"
                                              " build')"))
            continue
        if cid not in ids:
            results.append(CaseResult(id=cid, verdict=ERROR,
                                      message="golden: case listed in INDEX.json is missing"))
            continue
        s, n = cid.split("/", 1)
        try:
            results.append(run_case(backend, golden_dir / s / n, tier=tier, policy=policy,
                                    known=known, isolation=isolation))
        except Exception as exc:  # a harness bug must not hide the other cases
            results.append(CaseResult(id=cid, verdict=ERROR,
                                      message=f"harness error {type(exc).__name__}: {exc}"))
    bar.close()
    return RunResult(backend=backend.name, backend_description=desc, tier=tier,
                     golden_dir=str(golden_dir), cases=results)

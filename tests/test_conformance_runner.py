"""The harness under bad goldens and bad backends: every problem is reported
per case with a clear message, the run goes on, the exit status is 1, and
nothing under the golden directory is touched."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from conformance import golden as G
from conformance.backends.numpy_backend import NumpyBackend
from conformance.protocol import Backend, UnsupportedCase
from conformance.runner import run_conformance
from refbasis.cli import main

CASES = ["ops/activation_relu6", "ops/conv2d_3x3_s2_same_even", "models/mv3_small_eval",
         "schedules/mixing_epsilon_step"]


@pytest.fixture
def gdir(tmp_path):
    src = G.default_golden_dir()
    index = {}
    for cid in CASES:
        s, n = cid.split("/")
        shutil.copytree(src / s / n, tmp_path / s / n)
        index.setdefault(s, []).append(n)
    G._write_index(tmp_path, index)
    return tmp_path


def _tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _run(backend, gdir, **kw):
    return run_conformance(backend, golden_dir=gdir, progress=False, **kw)


def test_numpy_backend_passes_the_copied_set(gdir):
    r = _run(NumpyBackend(), gdir)
    assert r.ok and r.counts()["PASS"] == len(CASES), r.summary()
    assert r.summary() == f"{len(CASES)} passed, 0 failed, 0 skipped"


def test_bad_goldens_are_reported_per_case_and_untouched(gdir, capsys):
    # corrupt one npz, break one sha256 in case.json, delete one case, add one
    npz = gdir / "ops/conv2d_3x3_s2_same_even/arrays.npz"
    npz.write_bytes(npz.read_bytes()[:200])
    cj = gdir / "ops/activation_relu6/case.json"
    meta = json.loads(cj.read_text())
    meta["arrays"]["y"]["sha256"] = "0" * 64
    cj.write_text(json.dumps(meta))
    shutil.rmtree(gdir / "schedules/mixing_epsilon_step")
    shutil.copytree(gdir / "models/mv3_small_eval", gdir / "models/stray_case")
    before = _tree_digest(gdir)
    r = _run(NumpyBackend(), gdir)
    v = {c.id: (c.verdict, c.message) for c in r.cases}
    assert v["ops/conv2d_3x3_s2_same_even"][0] == "ERROR"
    assert "golden: corrupt" in v["ops/conv2d_3x3_s2_same_even"][1]
    assert v["ops/activation_relu6"][0] == "ERROR"
    assert "sha256 mismatch for array 'y'" in v["ops/activation_relu6"][1]
    assert v["schedules/mixing_epsilon_step"] == (
        "ERROR", "golden: case listed in INDEX.json is missing")
    assert v["models/stray_case"][0] == "ERROR" and "not listed" in v["models/stray_case"][1]
    assert v["models/mv3_small_eval"][0] == "PASS"  # the run went on
    assert not r.ok
    rc = main(["conform", "--backend", "numpy", "--golden-dir", str(gdir), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1 and "1 passed, 4 failed, 0 skipped" in out
    assert _tree_digest(gdir) == before


class _Faulty(Backend):
    name = "faulty"
    supported_suites = ("ops", "models", "schedules")
    tiers = ("highest",)

    def __init__(self, mode):
        self.mode = mode
        self.inner = NumpyBackend()

    def run(self, case, tier):
        if self.mode == "raise":
            raise RuntimeError("kernel exploded")
        if self.mode == "unsupported":
            raise UnsupportedCase("no such kernel here")
        out = self.inner.run(case, tier)
        first = case.output_names[0]
        if self.mode == "nan":
            out[first] = np.full_like(out[first], np.nan)
        elif self.mode == "shape":
            out[first] = out[first][..., None]
        elif self.mode == "missing":
            del out[first]
        elif self.mode == "not_dict":
            return list(out.values())
        elif self.mode == "write_input":
            next(iter(case.inputs.values()))[...] = 0.0
        return out


@pytest.mark.parametrize("mode,pattern", [
    ("raise", "backend raised RuntimeError: kernel exploded at test_conformance_runner.py"),
    ("nan", "non-finite value nan"),
    ("shape", "shape"),
    ("missing", "missing: the backend did not return it"),
    ("not_dict", "expected a dict"),
    ("write_input", "read-only"),
])
def test_bad_backend_outputs_are_errors_and_the_run_goes_on(gdir, mode, pattern):
    before = _tree_digest(gdir)
    r = _run(_Faulty(mode), gdir)
    for c in r.cases:
        assert c.verdict == "ERROR", (c.id, c.verdict)
        assert pattern in c.message, c.message
    assert len(r.cases) == len(CASES) and not r.ok
    assert _tree_digest(gdir) == before


def test_unsupported_is_skipped_never_passed(gdir):
    r = _run(_Faulty("unsupported"), gdir)
    assert {c.verdict for c in r.cases} == {"SKIP"}
    assert r.ok and r.summary() == f"0 passed, 0 failed, {len(CASES)} skipped"

    class OpsOnly(NumpyBackend):
        supported_suites = ("ops",)

    r = _run(OpsOnly(), gdir)
    v = {c.id: c.verdict for c in r.cases}
    assert v["models/mv3_small_eval"] == "SKIP" and v["ops/activation_relu6"] == "PASS"
    assert "does not support suite 'models'" in r.by_id("models/mv3_small_eval").message


def test_known_failures_xfail_and_stale_entries_xpass(gdir, tmp_path):
    kf = tmp_path / "kf.txt"
    kf.write_text("faulty ops/* -- kernels not written yet\nnumpy ops/activation_relu6 -- stale\n")
    r = _run(_Faulty("raise"), gdir, known_failures=kf)
    assert r.by_id("ops/activation_relu6").verdict == "XFAIL"
    assert "kernels not written yet" in r.by_id("ops/activation_relu6").message
    assert r.by_id("models/mv3_small_eval").verdict == "ERROR"
    r = _run(NumpyBackend(), gdir, known_failures=kf)
    assert r.by_id("ops/activation_relu6").verdict == "XPASS" and not r.ok


class _Perturb(NumpyBackend):
    """Adds a relative error to chosen outputs; run_layer stays correct."""

    def __init__(self, names, rel=1e-2):
        super().__init__()
        self.names, self.rel = names, rel

    def run(self, case, tier):
        out = super().run(case, tier)
        for n in self.names:
            out[n] = out[n] * (1 + self.rel)
        return out


def test_first_failing_layer_forward_and_isolation_passes_alone(gdir):
    b = _Perturb(["act/blocks.3", "act/blocks.4", "logits"])
    c = _run(b, gdir, case_glob="models/*").by_id("models/mv3_small_eval")
    assert c.verdict == "FAIL" and c.first_failing_output == "act/blocks.3"
    assert c.first_failing_layer == "blocks.3" and c.layer_direction == "forward"
    # run_layer is exact: the layer passes alone on the golden's own input
    assert c.isolation.startswith("passes alone") and c.isolation_margin < 1


def test_first_failing_layer_backward(gdir):
    b = _Perturb(["grad/blocks.2.depthwise.kernel", "grad/blocks.5.expand.kernel"])
    c = _run(b, gdir, case_glob="models/*").by_id("models/mv3_small_eval")
    assert c.first_failing_layer == "blocks.5" and c.layer_direction == "backward"
    assert c.isolation is None


def test_json_report(gdir, tmp_path):
    out = tmp_path / "r.json"
    rc = main(["conform", "--backend", "numpy", "--golden-dir", str(gdir), "--json", str(out),
               "--no-progress", "--suite", "ops"])
    rep = json.loads(out.read_text())
    assert rc == 0 and rep["ok"] and rep["counts"]["PASS"] == 2
    assert {c["case"] for c in rep["cases"]} == {"ops/activation_relu6",
                                                 "ops/conv2d_3x3_s2_same_even"}
    assert all(o["status"] == "ok" for c in rep["cases"] for o in c["outputs"])

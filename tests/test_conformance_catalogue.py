"""The case catalogue: seeds, coverage, determinism, layer isolation wiring,
and the tolerance policy against a genuine float32 computation."""

from __future__ import annotations

import numpy as np
import pytest

from conformance import catalogue as C
from conformance import golden as G
from conformance.backends.numpy_backend import NumpyBackend
from conformance.compare import compare_outputs, output_scales
from conformance.protocol import KINDS, LAYERED_KINDS, CaseView, readonly_inputs
from conformance.runner import run_conformance
from conformance.tolerances import load_policy

SPECS = C.all_specs()


def test_seeds_unique_and_kinds_in_their_suite():
    seeds = {C.case_seed(s.suite, s.name) for s in SPECS}
    assert len(seeds) == len(SPECS)
    assert C.case_seed("ops", "x") == C.case_seed("ops", "x") != C.case_seed("blocks", "x")
    for s in SPECS:
        assert KINDS[s.kind] == s.suite, s.id
    assert {s.kind for s in SPECS} == set(KINDS)  # every kind has at least one case


def test_ops_coverage():
    cfgs = {}
    for s in C.specs_for("ops"):
        cfg, ins = s.make(np.random.default_rng(0))
        cfgs[s.name] = (s.kind, cfg, ins)
    conv = [c for k, c, _ in cfgs.values() if k in ("conv2d", "depthwise_conv2d")]
    assert {tuple(c["stride"]) for c in conv} >= {(1, 1), (2, 2), (1, 2)}
    pads = {c["padding"] if isinstance(c["padding"], str) else "explicit" for c in conv}
    assert pads == {"SAME", "VALID", "explicit"}
    assert {c.get("groups", 1) for k, c, _ in cfgs.values() if k == "conv2d"} >= {1, 2, 4}
    same = [(ins["x"].shape[1], c["stride"][0]) for k, c, ins in cfgs.values()
            if k in ("conv2d", "depthwise_conv2d") and c["padding"] == "SAME"]
    assert any(h % 2 for h, s in same if s == 2) and any(h % 2 == 0 for h, s in same if s == 2)
    assert {c["train"] for k, c, _ in cfgs.values() if k == "batch_norm"} == {True, False}
    for name, kinks in C._KINKS.items():
        x = cfgs[f"activation_{name}"][2]["x"]
        for v in kinks:
            assert np.any(x == np.float32(v)), (name, v)


def test_build_is_deterministic_and_inputs_are_float32():
    for s in [SPECS[0], C.specs_for("blocks")[0], C.specs_for("schedules")[0]]:
        a, b = C.build_case(s), C.build_case(s)
        for k in a.inputs:
            assert G.array_sha256(a.inputs[k]) == G.array_sha256(b.inputs[k])
            assert a.inputs[k].dtype in (np.float32, np.int64, np.bool_)
        for k in a.outputs:
            assert G.array_sha256(a.outputs[k]) == G.array_sha256(b.outputs[k])


LAYERED = ["models/mv3_large_train", "basisnet/basisnet_mv3_train_layer_dropout",
           "basisnet/condconv_mv3_small_train", "training/mv3_small_recipe_3_steps"]


@pytest.mark.parametrize("case_id", LAYERED)
def test_every_layer_passes_alone_on_the_goldens_own_inputs(case_id):
    # The isolation wiring (which golden arrays feed which layer) must be
    # exact: the oracle run one layer at a time reproduces every layer.
    s, n = case_id.split("/")
    g = G.load_case(G.default_golden_dir() / s / n)
    assert g.kind in LAYERED_KINDS and g.layers
    view = CaseView.make(suite=g.suite, name=g.name, kind=g.kind, config=g.config,
                         inputs=g.inputs, output_names=tuple(g.outputs), layers=g.layers)
    pol, b = load_policy(), NumpyBackend()
    f32 = g.meta.get("float32_error", {})
    for layer in g.layers:
        ins, expected = C.isolation_inputs(g, layer)
        got = b.run_layer(view, layer, readonly_inputs(ins), "highest")
        primary = g.layer_outputs[layer][0]

        def tol(name, layer=layer, primary=primary):
            full = primary if name == "y" else (f"{layer}/{name}" if g.kind == "train_steps"
                                                else name)
            return pol.lookup(g.family, g.dtype, "highest", full, f32.get(full))

        res = compare_outputs(got, expected, tol)
        bad = [r for r in res if not r.ok]
        assert not bad, (case_id, layer, bad[0].name, bad[0].message)
    # the layer map covers every act/ output exactly once
    acts = [n for n in g.outputs if n.startswith(("act/", "coef/"))]
    mapped = [n for v in g.layer_outputs.values() for n in v if n.startswith(("act/", "coef/"))]
    assert sorted(acts) == sorted(mapped)


def test_float32_oracle_passes_every_case_at_highest():
    # A genuine float32 computation of the same maths must pass: the
    # "highest" tolerances admit float32 rounding (docs/tolerances.md).
    r = run_conformance(NumpyBackend("float32"), progress=False, isolation=False)
    assert r.ok, [(c.id, c.message) for c in r.cases if c.failed]
    # the measured floor alone gives this run a margin of 1/safety
    assert max(c.margin for c in r.cases) < 0.6


def test_family_tolerances_cover_the_measured_op_errors():
    # For the ops suite the family numbers themselves (not the per-output
    # measured floor) must be at least 10x the oracle's own float32 error.
    pol = load_policy()
    for s, n in G.list_cases(G.default_golden_dir(), ["ops"]):
        g = G.load_case(G.default_golden_dir() / s / n)
        for out, e in g.meta.get("float32_error", {}).items():
            t = pol.lookup(g.family, g.dtype, "highest", out)
            assert min(t.rtol, t.atol) >= 10 * e, (g.id, out, e, t)


def test_recorded_float32_errors_match_a_fresh_measurement():
    g = G.load_case(G.default_golden_dir() / "models" / "mv3_small_eval")
    ref = C.evaluate(g.kind, g.config, g.inputs)
    fresh = C.float32_errors(g.kind, g.config, g.inputs, ref)
    for k, v in g.meta["float32_error"].items():
        assert fresh.get(k, 0) <= v * 1.1 + 1e-12, k
    assert set(output_scales(ref)) == set(g.outputs)

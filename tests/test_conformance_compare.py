"""Comparison of one output, tolerance policy lookups, known-failure parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conformance.compare import compare_output, compare_outputs, output_scales
from conformance.runner import load_known_failures
from conformance.tolerances import Tolerance, TolerancePolicy, load_policy

TOL = Tolerance(rtol=1e-5, atol=1e-5)
G = np.array([1.0, -2.0, 0.5])


def test_margin_matches_hand_computation():
    got = G + np.array([1e-5, 0.0, 0.0])
    r = compare_output("y", got, G, TOL)
    # allowed at element 0: atol * max|g| + rtol * |g0| = 1e-5 * 2 + 1e-5 * 1 = 3e-5
    assert r.ok
    assert r.margin == pytest.approx(1e-5 / 3e-5, rel=1e-6)
    assert r.max_abs == pytest.approx(1e-5, rel=1e-6)
    assert r.max_rel == pytest.approx(1e-5, rel=1e-6)


def test_value_failure_names_worst_element():
    got = G.copy()
    got[2] += 1e-4  # allowed there: 2e-5 + 0.5e-5
    r = compare_output("dw", got, G, TOL)
    assert r.status == "fail"
    assert r.margin == pytest.approx(1e-4 / 2.5e-5, rel=1e-6)
    assert "(2,)" in r.message and "golden 0.5" in r.message


@pytest.mark.parametrize("got,pattern", [
    (None, "missing"),
    (np.zeros(4), r"shape \(4,\), expected \(3,\)"),
    (np.array([1, -2, 0]), "dtype int64 .*expected floating"),
    (np.array([1.0, np.nan, 0.5]), r"non-finite value nan at \(1,\)"),
    (np.array([1.0, np.inf, 0.5]), r"non-finite value inf at \(1,\)"),
])
def test_structural_problems_are_errors(got, pattern):
    r = compare_output("y", got, G, TOL)
    assert r.status == "error"
    assert r.margin == math.inf or got is None
    import re
    assert re.search(pattern, r.message), r.message


def test_integer_and_bool_outputs_compare_exactly():
    g = np.array([3, 1, 4])
    assert compare_output("p", g.copy(), g, TOL).ok
    r = compare_output("p", np.array([3, 2, 4]), g, TOL)
    assert r.status == "fail" and "first at (1,)" in r.message
    r = compare_output("e", np.array([True, False]), np.array([True, True]), TOL)
    assert r.status == "fail"


def test_uncompared_output_still_checks_structure():
    skip = Tolerance(math.inf, math.inf, "bf16 kinks", compare=False)
    r = compare_output("dx", G * 100, G, skip)
    assert r.ok and "not compared" in r.message and "bf16 kinks" in r.message
    assert compare_output("dx", np.zeros(2), G, skip).status == "error"
    assert compare_output("dx", np.array([np.nan, 0, 0]), G, skip).status == "error"


def test_scale_floor_is_relative_to_the_group():
    outs = {"grad/a": np.array([1000.0]), "grad/b": np.array([1e-9]), "act/c": np.array([1e-9]),
            "y": np.zeros(2)}
    s = output_scales(outs)
    assert s["grad/a"] == 1000.0
    assert s["grad/b"] == pytest.approx(1.0)  # 1e-3 * the group's max
    assert s["act/c"] == pytest.approx(1e-9)  # alone in its group: its own magnitude
    assert s["y"] == 1.0  # all zero


def test_compare_outputs_rejects_non_dict():
    r = compare_outputs([1, 2], {"y": G}, lambda n: TOL)
    assert len(r) == 1 and r[0].status == "error" and "expected a dict" in r[0].message


def test_policy_overrides_and_measured_floor():
    pol = TolerancePolicy({
        "families": {"conv": {"float32": {"highest": [1e-5, 2e-5], "tf32": [1e-2, 1e-2]}}},
        "overrides": [{"family": "conv", "output": "dw", "tier": "highest", "rtol": 1e-4,
                       "atol": 1e-4, "reason": "weight gradients sum over B*H*W"}],
        "measured": {"safety": 10.0, "tier_factor": {"highest": 1.0, "tf32": 8192.0},
                     "cap": 1.0},
    })
    t = pol.lookup("conv", "float32", "highest", "y")
    assert (t.rtol, t.atol) == (1e-5, 2e-5)
    t = pol.lookup("conv", "float32", "highest", "dw")
    assert (t.rtol, t.atol) == (1e-4, 1e-4) and "B*H*W" in t.source
    assert pol.lookup("conv", "float32", "tf32", "dw").rtol == 1e-2  # override is per tier
    t = pol.lookup("conv", "float32", "highest", "y", measured=3e-6)
    assert t.rtol == pytest.approx(3e-5) and t.atol == pytest.approx(3e-5)
    assert pol.lookup("conv", "float32", "tf32", "y", measured=1e-3).atol == 1.0  # capped
    with pytest.raises(KeyError, match="unknown family 'nope'"):
        pol.lookup("nope", "float32", "highest")
    with pytest.raises(KeyError, match="no tier 'bf16'"):
        pol.lookup("conv", "float32", "bf16")


def test_override_without_reason_is_rejected():
    pol = TolerancePolicy({"families": {"model": {"float32": {"bf16": [0.05, 0.05]}}},
                           "overrides": [{"family": ["model"], "output": ["grad/*", "dx"],
                                          "tier": "bf16", "compare": False, "reason": "kinks"}]})
    assert not pol.lookup("model", "float32", "bf16", "grad/stem.kernel").compare
    assert pol.lookup("model", "float32", "bf16", "act/stem").compare
    with pytest.raises(ValueError, match="has no reason"):
        TolerancePolicy({"families": {}, "overrides": [{"family": "conv", "rtol": 1, "atol": 1}]})


def test_shipped_policy_covers_every_family_and_tier():
    from conformance.catalogue import all_specs
    from conformance.protocol import TIERS

    pol = load_policy()
    for fam in {s.family for s in all_specs()}:
        for tier in TIERS:
            t = pol.lookup(fam, "float32", tier)
            assert 0 < t.rtol < 1 and 0 < t.atol < 1, (fam, tier)
    # Looser tiers are never stricter than the strict one.
    for fam in pol.families:
        hi = pol.lookup(fam, "float32", "highest")
        for tier in ("tf32", "bf16"):
            assert pol.lookup(fam, "float32", tier).atol >= hi.atol


def test_known_failures_parsing(tmp_path):
    p = tmp_path / "kf.txt"
    p.write_text("# comment\n\njax ops/conv2d_* tier=bf16 -- bf16 rounding of dw\n"
                 "* models/mv2_* -- ill-conditioned  # trailing comment\n")
    kf = load_known_failures(p)
    assert [(k.backend, k.pattern, k.tier) for k in kf] == [
        ("jax", "ops/conv2d_*", "bf16"), ("*", "models/mv2_*", None)]
    assert kf[0].matches("jax", "ops/conv2d_1x1_s1", "bf16")
    assert not kf[0].matches("jax", "ops/conv2d_1x1_s1", "highest")
    assert kf[1].reason == "ill-conditioned"
    p.write_text("jax ops/x\n")
    with pytest.raises(ValueError, match=":1: expected"):
        load_known_failures(p)
    shipped = load_known_failures()  # the shipped list parses; entries are narrow
    assert all(k.reason and k.tier and "*" not in k.pattern for k in shipped)

"""Mutation tests: a backend with one planted fault must fail, and the report
must name the right first failing layer or training step, which must fail
alone on the golden's own inputs. The unmutated backend passes the same cases."""

from __future__ import annotations

import pytest

from conformance.backends.numpy_backend import NumpyBackend
from conformance.golden import default_golden_dir
from conformance.mutants import MUTANTS, MutantBackend, patch_everywhere
from conformance.runner import run_case
from conformance.tolerances import load_policy


def _run(backend, case_id):
    s, n = case_id.split("/")
    return run_case(backend, default_golden_dir() / s / n, tier="highest", policy=load_policy(),
                    known=[], isolation=True)


@pytest.mark.parametrize("fault", sorted(MUTANTS))
def test_mutant_is_caught_at_the_right_layer(fault):
    m = MUTANTS[fault]
    backend = MutantBackend(fault)
    for case_id, layer in m.expected_first_layer.items():
        r = _run(backend, case_id)
        assert r.verdict == "FAIL", (fault, case_id, r.verdict, r.message)
        assert r.first_failing_layer == layer, (fault, case_id, r.first_failing_layer)
        assert r.layer_direction == "forward"
        assert r.isolation.startswith("fails alone"), r.isolation
        clean = _run(NumpyBackend(), case_id)
        assert clean.verdict == "PASS", (case_id, clean.message)


@pytest.mark.parametrize("fault,caught,missed", [
    # symmetric and TF padding agree on odd inputs and VALID: only even SAME differs
    ("symmetric_padding", ["ops/conv2d_3x3_s2_same_even", "ops/depthwise_3x3_s2_same_even"],
     ["ops/conv2d_3x3_s2_same_odd", "ops/conv2d_3x3_s2_valid", "ops/conv2d_1x1_s1"]),
    ("bn_eps_1e5", ["ops/batch_norm_train_4d", "ops/batch_norm_eval_4d"],
     ["ops/batch_norm_train_eps1e-5", "ops/conv2d_1x1_s1"]),
    ("hard_sigmoid_linear", ["ops/activation_hard_sigmoid", "ops/activation_hard_swish",
                             "ops/squeeze_excite_hsig_relu"],
     ["ops/activation_relu6", "ops/squeeze_excite_sigmoid_relu6"]),
    ("basis_dropout_no_renorm", ["ops/basis_dropout"], ["ops/epsilon_mix"]),
    ("rmsprop_ms_zero", ["training/mv3_small_recipe_3_steps"],
     # Keras' RMSProp starts ms at 0 anyway: that case must not change
     ["training/mv3_large_keras_rmsprop_2_steps"]),
])
def test_mutant_fails_exactly_the_affected_op_cases(fault, caught, missed):
    backend = MutantBackend(fault)
    for cid in caught:
        assert _run(backend, cid).verdict == "FAIL", (fault, cid)
    for cid in missed:
        r = _run(backend, cid)
        assert r.verdict == "PASS", (fault, cid, r.message)


def test_patch_everywhere_restores_every_binding():
    import refbasis.model.blocks as blocks
    import refbasis.ops.norm as norm

    orig = norm.batch_norm
    assert blocks.batch_norm is orig  # imported by name: must be patched there too
    with patch_everywhere("refbasis.ops.norm", "batch_norm", lambda *a, **k: None):
        assert norm.batch_norm is not orig and blocks.batch_norm is norm.batch_norm
    assert norm.batch_norm is orig and blocks.batch_norm is orig


def test_unknown_fault_rejected():
    with pytest.raises(ValueError, match="argument 'fault' must be one of"):
        MutantBackend("nope")


def test_mutants_load_from_the_command_line_path():
    from conformance.registry import load_backend

    b = load_backend("conformance.mutants:RmspropMsZero")
    assert b.name == "mutant-rmsprop_ms_zero" and b.mutant is MUTANTS["rmsprop_ms_zero"]

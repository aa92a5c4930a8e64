"""The JAX backend adapter on cases built fresh by the catalogue (oracle answers).

Cases come from ``conformance.catalogue`` (the same builders as the committed
goldens) so these tests do not depend on golden/ being present. Small cases
only: per-kind dispatch, output naming/shapes/dtypes, tiers, layer isolation
and error paths.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from conformance import catalogue  # noqa: E402
from conformance.backends.jax_backend import JaxBackend  # noqa: E402
from conformance.backends.jax_backend import precision as jprec  # noqa: E402
from conformance.compare import output_scales  # noqa: E402
from conformance.protocol import CaseView, UnsupportedCase  # noqa: E402

pytestmark = pytest.mark.jax


@functools.cache
def _backend():
    return JaxBackend()


@functools.cache
def _golden(suite, name):
    spec = next(s for s in catalogue.specs_for(suite) if s.name == name)
    return catalogue.build_case(spec)


def _view(g, **over):
    kw = dict(suite=g.suite, name=g.name, kind=g.kind, config=g.config, inputs=g.inputs,
              output_names=tuple(g.outputs), layers=g.layers, dtype=g.dtype)
    kw.update(over)
    return CaseView.make(**kw)


def _margin(got, want, rtol, atol, scale=None):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape
    if scale is None:
        scale = max(float(np.max(np.abs(want))), 1e-30) if want.size else 1.0
    allowed = atol * scale + rtol * np.abs(want)
    return float(np.max(np.abs(got - want) / np.maximum(allowed, 1e-300)))


OP_CASES = ["conv2d_3x3_s2_same_odd", "conv2d_3x3_s1_per_example", "depthwise_5x5_s1_per_example",
            "batch_norm_train_4d", "activation_hard_swish", "squeeze_excite_hsig_relu",
            "xent_int_labels_smoothing", "distillation_t4", "synthesize_conv_kernel",
            "basis_dropout", "epsilon_mix", "dense_no_bias"]


@pytest.mark.parametrize("name", OP_CASES)
def test_op_cases_match_oracle_at_highest(name):
    g = _golden("ops", name)
    out = _backend().run(_view(g), "highest")
    assert list(out) == list(g.outputs)
    for k, want in g.outputs.items():
        assert out[k].dtype == np.float32, k
        assert _margin(out[k], want, 2e-5, 2e-5) < 1.0, k


def test_bf16_tier_is_looser_but_close():
    g = _golden("ops", "conv2d_3x3_s2_same_odd")
    hi = _backend().run(_view(g), "highest")
    lo = _backend().run(_view(g), "bf16")
    for k, want in g.outputs.items():
        assert lo[k].dtype == np.float32
        # bfloat16 keeps 8 bits of mantissa: errors ~1e-2 of the scale, not 1e-6
        assert _margin(lo[k], want, 5e-2, 5e-2) < 1.0, k
    assert max(_margin(lo[k], g.outputs[k], 1e-5, 1e-5) for k in g.outputs) > \
        max(_margin(hi[k], g.outputs[k], 1e-5, 1e-5) for k in g.outputs)


def test_tiers_are_explicit():
    from jax import lax
    assert jprec.get_tier("highest").precision == lax.Precision.HIGHEST
    assert jprec.get_tier("bf16").dtype == jax.numpy.bfloat16
    with pytest.raises(ValueError, match="argument 'name' must be one of"):
        jprec.get_tier("fp8")


def test_early_exit_and_schedule_cases():
    for suite, name in (("basisnet", "early_exit_t0.8"), ("schedules", "lr_basisnet_mv3"),
                        ("schedules", "mixing_epsilon_paper")):
        g = _golden(suite, name)
        out = _backend().run(_view(g), "highest")
        for k, want in g.outputs.items():
            if want.dtype.kind in "biu":
                np.testing.assert_array_equal(out[k], want, err_msg=k)
            else:
                assert _margin(out[k], want, 2e-5, 2e-5) < 1.0, k


def test_model_layer_isolation_matches_golden_layer():
    g = _golden("models", "mv3_small_eval")
    view = _view(g)
    for layer in ("stem", "blocks.3", "head.logits"):
        ins, exp = catalogue.isolation_inputs(g, layer)
        out = _backend().run_layer(view, layer, ins, "highest")
        assert _margin(out["y"], exp["y"], 1e-4, 1e-4) < 1.0, layer


def test_unknown_kind_and_missing_output_are_reported():
    g = _golden("ops", "epsilon_mix")
    with pytest.raises(UnsupportedCase, match="unknown case kind"):
        _backend().run(_view(g, kind="fft"), "highest")
    with pytest.raises(KeyError, match="did not compute"):
        _backend().run(_view(g, output_names=("mixed", "d2alpha")), "highest")


def test_bad_implementation_choices_are_rejected():
    with pytest.raises(ValueError, match="argument 'per_example' must be one of"):
        JaxBackend(per_example="loop")
    with pytest.raises(ValueError, match="argument 'depthwise' must be one of"):
        JaxBackend(depthwise="fft")


def test_alternative_conv_implementations_agree():
    g = _golden("ops", "depthwise_5x5_s1_per_example")
    for be in (JaxBackend(per_example="vmap"), JaxBackend(depthwise="shifted")):
        out = be.run(_view(g), "highest")
        for k, want in g.outputs.items():
            assert _margin(out[k], want, 2e-5, 2e-5) < 1.0, k


def test_inputs_are_not_modified():
    g = _golden("ops", "batch_norm_train_4d")
    view = _view(g)
    before = {k: np.array(v) for k, v in view.inputs.items()}
    _backend().run(view, "highest")
    for k, v in view.inputs.items():
        np.testing.assert_array_equal(v, before[k])


def test_train_step_autodiff_matches_oracle_train_step():
    """Two steps of a supplement-B-style recipe (TF RMSProp with ms0 = 1, warm-up
    then staircase decay, label smoothing, L2 "half" on kernels, global-norm
    clipping, EMA with num_updates): jax.grad + the JAX optimizer against
    refbasis.train.step.train_step and its hand-written backward."""
    import jax.numpy as jnp

    from conformance.backends.jax_backend import model as jmodel
    from conformance.backends.jax_backend import train as jtrain
    from refbasis import model as rmodel
    from refbasis.arch import get_arch
    from refbasis.train import step as rstep

    arch = get_arch("mobilenet_v3_small", multiplier=0.05, resolution=32, num_classes=4,
                    scale_final="always", divisor=4, min_depth=4, dropout_rate=0.0)
    rng = np.random.default_rng(0)
    params = {k: v.astype(np.float32) for k, v in rmodel.init_params(arch, rng).items()}
    x = rng.standard_normal((6, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 4, 6)
    conf = rstep.TrainConfig(base_lr=0.02, warmup_epochs=1.0, decay_epochs=1.0,
                             decay_rate=0.9, steps_per_epoch=1.0, clip_norm=0.5,
                             ema_decay=0.99, eps_hold_steps=1, eps_decay_steps=2,
                             heads=(("logits", rstep.HeadLoss(label_smoothing=0.1)),))
    model = rstep.MobileNetModel(arch)
    state = rstep.init_train_state({k: v.astype(np.float64) for k, v in params.items()},
                                   model, conf)

    def apply(p, batch, eps):
        z, aux = jmodel.forward(arch, p, batch["image"], train=True)
        return {"logits": z}, aux["new_state"]
    fn = jax.jit(jtrain.make_train_step(apply, conf))
    jp = {k: jnp.asarray(v) for k, v in params.items()}
    opt, ema = jtrain.init_train_state(jp, conf)
    batch = {"image": x, "label": labels}
    for step in (1, 2):
        state, metrics = rstep.train_step(state, batch, step, np.random.default_rng(0),
                                          model=model, config=conf)
        jp, opt, ema, jm = fn(jp, opt, ema, {"image": jnp.asarray(x),
                                             "label": jnp.asarray(labels)}, step)
        assert abs(float(jm["lr"]) - metrics["lr"]) < 1e-7
        assert abs(float(jm["loss"]) - metrics["loss"]) < 1e-4 * abs(metrics["loss"])
        assert abs(float(jm["grad_norm"]) - metrics["grad_norm"]) < 1e-3 * metrics["grad_norm"]
        groups = {"params": (jp, state.params), "ms": (opt["ms"], state.opt["ms"]),
                  "mom": (opt["mom"], state.opt["mom"]), "ema": (ema, state.ema)}
        for what, (got, want) in groups.items():
            scales = output_scales(want)
            for k in want:
                m = _margin(got[k], want[k], 1e-3, 1e-3, scales[k])
                assert m < 1.0, (step, what, k, m)
    # The updates themselves (small next to the parameters) agree too.
    for k in ("stem.kernel", "blocks.5.se.reduce.kernel", "head.logits.kernel"):
        dj = np.asarray(jp[k], np.float64) - params[k]
        dr = state.params[k] - params[k]
        assert np.max(np.abs(dr)) > 0
        assert _margin(dj, dr, 1e-2, 1e-2) < 1.0, k


def test_compiled_cache_is_bounded_and_reused():
    be = JaxBackend()
    be.cache_size = 2
    names = ("epsilon_mix", "basis_dropout", "global_avg_pool")
    for n in names:
        be.run(_view(_golden("ops", n)), "highest")
    assert len(be._cache) == 2
    fn = be._cache[next(reversed(be._cache))]
    be.run(_view(_golden("ops", names[-1])), "highest")  # same key: same object
    assert be._cache[next(reversed(be._cache))] is fn

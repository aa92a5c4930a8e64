"""The train step wired to the real models (plain MobileNet and two-stage
BasisNet), the paper recipes, the digits data and the CLI."""

import json

import numpy as np
import pytest

from refbasis.arch import mobilenet_v3_large, mobilenet_v3_small
from refbasis.basis.config import BasisNetConfig
from refbasis.basis.two_stage import init_basisnet
from refbasis.model import init_params
from refbasis.precision import float32_mode
from refbasis.train.checkpoint import list_checkpoints
from refbasis.train.loop import ArrayDataset, train
from refbasis.train.presets import (
    DigitsPreset,
    load_digits_arrays,
    paper_recipe,
    upsample_nearest,
)
from refbasis.train.step import (
    BasisNetModel,
    HeadLoss,
    MobileNetModel,
    TrainConfig,
    init_train_state,
    loss_and_grads,
    train_step,
)


def _bcfg(num_classes=5):
    light = mobilenet_v3_small(0.35, 32, num_classes)
    spec = mobilenet_v3_large(0.35, 32, num_classes)
    return BasisNetConfig(light=light, specialist=spec, num_bases=2, per_basis_layers=(14, 15))


def _batch(n=3, num_classes=5, seed=0, light=32, spec=32):
    rng = np.random.default_rng(seed)
    return {"image_light": rng.normal(size=(n, light, light, 3)),
            "image": rng.normal(size=(n, spec, spec, 3)),
            "label": rng.integers(0, num_classes, size=n)}


def _cfg(heads, **kw):
    base = dict(base_lr=0.01, warmup_epochs=0.0, steps_per_epoch=10.0, decay_epochs=1.0,
                eps_hold_steps=0, eps_decay_steps=10, weight_decay=1e-3)
    base.update(kw)
    return TrainConfig(heads=heads, **base)


def _fd_check(model, params, batch, cfg, names, step, teacher=None, h=1e-5):
    def f(p):
        return loss_and_grads(p, batch, step, np.random.default_rng(11), model=model,
                              config=cfg, teacher=teacher)[0]

    _, grads, _, _ = loss_and_grads(params, batch, step, np.random.default_rng(11), model=model,
                                    config=cfg, teacher=teacher)
    pick = np.random.default_rng(4)
    for n in names:
        i = tuple(int(pick.integers(0, s)) for s in params[n].shape)
        pp = {k: v.copy() for k, v in params.items()}
        pm = {k: v.copy() for k, v in params.items()}
        pp[n][i] += h
        pm[n][i] -= h
        fd = (f(pp) - f(pm)) / (2 * h)
        assert grads[n][i] == pytest.approx(fd, rel=1e-5, abs=1e-8), n
    return grads


def test_basisnet_step_gradients_match_central_differences():
    bc = _bcfg()
    model = BasisNetModel(bc)
    params = init_basisnet(bc, np.random.default_rng(0))
    batch = _batch()
    teacher = np.random.default_rng(1).normal(size=(3, 5))
    cfg = _cfg((("light", HeadLoss(label_smoothing=0.1, weight=0.5)),
                ("specialist", HeadLoss(distill=True, distill_weight=0.7, temperature=2.0))))
    names = ["coef.kernel", "bases.blocks.15.project.kernel", "bases.blocks.14.expand.kernel",
             "light.head.logits.kernel", "light.blocks.3.depthwise.kernel",
             "specialist.head.logits.bias", "specialist.blocks.2.project.bn.gamma"]
    # step 5: eps = 0.5, so the coefficient head gets gradient through the mixing
    grads = _fd_check(model, params, batch, cfg, names, 5,
                      teacher=lambda b: teacher)
    assert np.abs(grads["coef.kernel"]).max() > 0
    assert "specialist.blocks.15.project.kernel" not in grads  # per basis, not shared


def test_mobilenet_step_gradients_match_central_differences():
    arch = mobilenet_v3_small(0.35, 32, 5)
    model = MobileNetModel(arch)
    params = init_params(arch, np.random.default_rng(0))
    batch = _batch()
    cfg = _cfg((("logits", HeadLoss(label_smoothing=0.1)),))
    _fd_check(model, params, batch, cfg,
              ["stem.kernel", "blocks.1.se.reduce.kernel", "head.pre_logits.kernel",
               "head.logits.bias"], 0)


def test_basisnet_training_reduces_loss_and_eps_reaches_the_model():
    bc = _bcfg()
    model = BasisNetModel(bc)
    batch = _batch(n=6)
    cfg = _cfg((("light", HeadLoss()), ("specialist", HeadLoss())), base_lr=0.02,
               eps_hold_steps=1, eps_decay_steps=4, weight_decay=1e-5)
    state = init_train_state(init_basisnet(bc, np.random.default_rng(0)), model, cfg)
    rng = np.random.default_rng(3)
    losses, eps = [], []
    with float32_mode():
        for s in range(8):
            state, m = train_step(state, batch, s, rng, model=model, config=cfg)
            losses.append(m["loss"])
            eps.append(m["eps"])
    assert eps[:6] == [1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    # dropout and basis dropout make single steps noisy: compare the last three
    assert np.mean(losses[-3:]) < 0.6 * losses[0], losses
    # BN moving statistics moved (both stages) and are part of the EMA
    assert not np.allclose(state.params["light.stem.bn.moving_mean"], 0.0)
    assert not np.allclose(state.params["specialist.head.conv.bn.moving_var"], 1.0)
    assert "specialist.head.conv.bn.moving_var" in state.ema


def test_basisnet_kill_and_resume_bitwise(tmp_path):
    bc = _bcfg(num_classes=3)
    data = ArrayDataset(_batch(n=8, num_classes=3), 4, seed=2, name="random")
    cfg = _cfg((("light", HeadLoss()), ("specialist", HeadLoss(label_smoothing=0.1))),
               clip_norm=0.1, steps_per_epoch=2.0, eps_hold_steps=1, eps_decay_steps=2)

    def run(ckdir=None, num_steps=4, resume=False, seed=0):
        model = BasisNetModel(bc)
        st = init_train_state(init_basisnet(bc, np.random.default_rng(seed)), model, cfg)
        return train(model, cfg, st, data, num_steps=num_steps, rng=np.random.default_rng(seed),
                     checkpoint_dir=ckdir, resume=resume, progress=False)

    with float32_mode():
        ref = run()
        ck = str(tmp_path)
        run(ck, num_steps=2)
        assert list_checkpoints(ck) == [2]
        res = run(ck, resume=True, seed=5)
    assert res.resumed_from == 2
    for n in ref.state.params:
        assert ref.state.params[n].dtype == np.float32
        np.testing.assert_array_equal(res.state.params[n], ref.state.params[n], err_msg=n)
        np.testing.assert_array_equal(res.state.ema[n], ref.state.ema[n], err_msg=n)


# ---------------------------------------------------------------------------
# Recipes, data, CLI
# ---------------------------------------------------------------------------


def test_paper_recipes():
    mv2, mv3 = paper_recipe("mv2"), paper_recipe("mv3")
    assert (mv2.decay_epochs, mv3.decay_epochs) == (6.0, 4.5)
    assert mv2.clip_norm is None and mv3.clip_norm == 0.1
    h2, h3 = mv2.head_losses(), mv3.head_losses()
    assert not h2["light"].distill and h2["light"].label_smoothing == 0.0
    assert h2["specialist"].distill and h3["light"].distill and h3["specialist"].distill
    for c in (mv2, mv3):
        assert (c.base_lr, c.warmup_epochs, c.decay_rate) == (0.006, 20.0, 0.99)
        assert (c.rmsprop_decay, c.rmsprop_momentum) == (0.9, 0.9)
        assert (c.weight_decay, c.ema_decay) == (1e-5, 0.9999)
        assert (c.eps_hold_steps, c.eps_decay_steps) == (10_000, 40_000)
        assert c.steps_per_epoch == 1281167 / 16384
    with pytest.raises(ValueError, match="argument 'variant'"):
        paper_recipe("mv1")


def upsample_nearest_naive(x, f):
    b, h, w, c = x.shape
    out = np.empty((b, h * f, w * f, c), dtype=x.dtype)
    for i in range(h * f):
        for j in range(w * f):
            out[:, i, j, :] = x[:, i // f, j // f, :]
    return out


def test_upsample_and_digits_arrays():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 3))
    np.testing.assert_array_equal(upsample_nearest(x, 3), upsample_nearest_naive(x, 3))
    pytest.importorskip("sklearn")
    tr, te = load_digits_arrays(32, 48)
    assert tr["image_light"].shape == (1437, 32, 32, 3) and te["image"].shape == (360, 48, 48, 3)
    assert tr["image"].min() == -1.0 and tr["image"].max() == 1.0
    assert np.array_equal(np.bincount(te["label"]) >= 35, np.ones(10, bool))  # stratified
    # the light copy is the 48x48 copy's 8x8 source replicated 4x
    src = tr["image"][:, ::6, ::6, :]
    np.testing.assert_array_equal(tr["image_light"], upsample_nearest(src, 4))
    with pytest.raises(ValueError, match="multiple of 8"):
        load_digits_arrays(30, 48)


def test_preset_validation_and_cli_parser(capsys):
    with pytest.raises(ValueError, match="argument 'base_lr'"):
        DigitsPreset(base_lr=-1.0)
    with pytest.raises(ValueError, match="unknown field"):
        DigitsPreset.from_dict({"nope": 1})
    from refbasis.cli import build_parser, main

    args = build_parser().parse_args(["train", "--preset", "digits", "--epochs", "2",
                                      "--set", "per_basis_layers=[14,15]"])
    assert args.preset == "digits" and args.epochs == 2
    assert main(["train", "--preset", "digits", "--resume"]) == 2
    assert "--resume needs --checkpoint-dir" in capsys.readouterr().err
    assert main(["train", "--preset", "digits", "--set", "base_lr=-1"]) == 2
    assert "argument 'base_lr'" in capsys.readouterr().err
    assert json.loads(json.dumps(DigitsPreset().as_dict()))["num_bases"] == 4


def test_digits_preset_smoke_report_is_consistent():
    pytest.importorskip("sklearn")
    from refbasis.train.presets import format_report, run_digits

    preset = DigitsPreset(epochs=1, batch_size=32, specialist_resolution=32,
                          per_basis_layers=(15, 15), base_lr=0.005, warmup_epochs=0.0,
                          max_train=320, max_test=100)
    r = run_digits(preset, progress=False)
    assert r["data"]["test"] == 100
    assert r["data"]["steps"] == 10 == len(r["history"]["basisnet_loss"])
    # (learning itself is checked with a margin in test_basisnet_training_reduces_loss...)
    assert np.all(np.isfinite(r["history"]["basisnet_loss"]))
    m, et = r["models"], r["early_termination"]
    # threshold 0: every example exits -> the lightweight model alone
    assert et[0]["exit_share"] == 1.0 and et[0]["accuracy"] == m["light"]["accuracy_ema"]
    assert et[0]["average_madds"] == m["light"]["madds"]
    # threshold above 1: nobody exits -> the specialist, at the full BasisNet cost
    assert et[-1]["exit_share"] == 0.0
    assert et[-1]["accuracy"] == m["basisnet_specialist"]["accuracy_ema"]
    assert et[-1]["average_madds"] == pytest.approx(m["basisnet_specialist"]["madds"])
    shares = [row["exit_share"] for row in et]
    assert shares == sorted(shares, reverse=True)
    assert "| mobilenet |" in format_report(r)
    json.dumps(r)  # the report is JSON-able

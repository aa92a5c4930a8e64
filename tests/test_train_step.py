"""The train step, checkpoints and the resumable loop, on a small toy model.

The toy (a dropout + linear classifier per head with a BN-like moving mean) is
written here so these tests do not depend on the MobileNet stack; the real
models are exercised in test_train_basisnet.py.
"""

import copy
import json
import os

import numpy as np
import pytest

from refbasis.train.checkpoint import (
    CheckpointMismatchError,
    list_checkpoints,
    load_checkpoint,
    rng_from_state,
    save_checkpoint,
)
from refbasis.train.loop import ArrayDataset, train
from refbasis.train.step import (
    HeadLoss,
    TrainConfig,
    TrainState,
    init_train_state,
    loss_and_grads,
    train_step,
)

# ---------------------------------------------------------------------------
# Toy model
# ---------------------------------------------------------------------------


class ToyModel:
    """z_h = sqrt(g) * ((x * mask) @ W_h + b_h); mask = inverted dropout (rate 0.2)."""

    def __init__(self, heads=("logits",), d=4, k=3):
        self.heads, self.d, self.k = tuple(heads), d, k
        self.seen_eps = []

    def init(self, rng):
        p = {}
        for h in self.heads:
            p[f"{h}.kernel"] = rng.normal(size=(self.d, self.k)) * 0.5
            p[f"{h}.bias"] = np.zeros(self.k)
        p["gate.kernel"] = np.ones(1)
        p["in.bn.moving_mean"] = np.zeros(self.d)
        return p

    def trainable_names(self, params):
        return [n for n in params if not n.endswith("moving_mean")]

    def forward(self, params, batch, *, rng, eps):
        self.seen_eps.append(eps)
        x = batch["image"]
        mask = (rng.random(x.shape) >= 0.2) / 0.8
        xm = x * mask
        s = np.sqrt(params["gate.kernel"][0])
        pre = {h: xm @ params[f"{h}.kernel"] + params[f"{h}.bias"] for h in self.heads}
        cache = {"xm": xm, "pre": pre, "x": x, "mm": params["in.bn.moving_mean"]}
        return {h: s * pre[h] for h in self.heads}, cache

    def backward(self, params, cache, dlogits):
        g = params["gate.kernel"][0]
        s = np.sqrt(g)
        grads = {"gate.kernel": np.zeros(1)}
        for h in self.heads:
            dz = dlogits[h]
            grads[f"{h}.kernel"] = cache["xm"].T @ (s * dz)
            grads[f"{h}.bias"] = (s * dz).sum(axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                grads["gate.kernel"] = grads["gate.kernel"] + np.sum(dz * cache["pre"][h]) / (
                    2.0 * s)
        return grads

    def new_state(self, cache):
        return {"in.bn.moving_mean": 0.9 * cache["mm"] + 0.1 * cache["x"].mean(axis=0)}

    def describe(self):
        return {"model": "toy", "heads": list(self.heads), "d": self.d, "k": self.k}


def _data(n=48, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    centers = rng.normal(size=(k, d)) * 2.0
    x = centers[y] + rng.normal(size=(n, d))
    return x, y


def _config(**kw):
    base = dict(base_lr=0.05, warmup_epochs=0.0, decay_epochs=1.0, decay_rate=1.0,
                steps_per_epoch=6.0, weight_decay=1e-4, clip_norm=None,
                ema_decay=0.9999, eps_hold_steps=2, eps_decay_steps=4)
    base.update(kw)
    return TrainConfig(**base)


def _deep(state):
    return copy.deepcopy(state)


def _assert_state_equal(a: TrainState, b: TrainState):
    for x, y in ((a.params, b.params), (a.opt["ms"], b.opt["ms"]), (a.opt["mom"], b.opt["mom"]),
                 (a.ema, b.ema)):
        assert list(x) == list(y)
        for n in x:
            assert x[n].dtype == y[n].dtype
            np.testing.assert_array_equal(x[n], y[n], err_msg=n)


# ---------------------------------------------------------------------------
# Loss and gradients
# ---------------------------------------------------------------------------


def test_loss_and_grads_central_differences_two_heads_with_distillation():
    model = ToyModel(heads=("light", "specialist"))
    params = model.init(np.random.default_rng(1))
    params["gate.kernel"] = np.array([1.3])
    x, y = _data(n=6)
    teacher = np.random.default_rng(2).normal(size=(6, 3)) * 2
    batch = {"image": x, "label": y, "teacher_logits": teacher}
    cfg = _config(weight_decay=0.05, heads=(
        ("light", HeadLoss(label_smoothing=0.1, weight=0.7)),
        ("specialist", HeadLoss(label_smoothing=0.1, distill=True, distill_weight=0.6,
                                temperature=2.0))))

    def f(p):
        return loss_and_grads(p, batch, 3, np.random.default_rng(5), model=model, config=cfg)[0]

    _, grads, _, metrics = loss_and_grads(params, batch, 3, np.random.default_rng(5),
                                          model=model, config=cfg)
    assert set(grads) == set(model.trainable_names(params))
    h = 1e-6
    for n in grads:
        for i in np.ndindex(params[n].shape):
            pp = {k: v.copy() for k, v in params.items()}
            pm = {k: v.copy() for k, v in params.items()}
            pp[n][i] += h
            pm[n][i] -= h
            fd = (f(pp) - f(pm)) / (2 * h)
            assert grads[n][i] == pytest.approx(fd, rel=1e-6, abs=1e-9), (n, i)
    # total = 0.7 * light + specialist + weight decay (kernels only, half form)
    wd = 0.5 * 0.05 * sum(float(np.sum(params[n] ** 2)) for n in params if n.endswith(".kernel"))
    assert metrics["weight_decay"] == pytest.approx(wd, rel=1e-14)
    assert metrics["loss"] == pytest.approx(
        0.7 * metrics["loss/light"] + metrics["loss/specialist"] + wd, rel=1e-14)


def test_teacher_from_array_or_callable_agree_and_teacher_is_required():
    model = ToyModel()
    params = model.init(np.random.default_rng(1))
    x, y = _data(n=5)
    t = np.random.default_rng(3).normal(size=(5, 3))
    cfg = _config(heads=(("logits", HeadLoss(distill=True)),))
    a = loss_and_grads(params, {"image": x, "label": y, "teacher_logits": t}, 0,
                       np.random.default_rng(0), model=model, config=cfg)
    calls = []

    def oracle(batch):
        calls.append(batch["image"].shape)
        return t

    b = loss_and_grads(params, {"image": x, "label": y}, 0, np.random.default_rng(0),
                       model=model, config=cfg, teacher=oracle)
    assert calls == [(5, 4)]
    assert a[0] == b[0]
    for n in a[1]:
        np.testing.assert_array_equal(a[1][n], b[1][n])
    with pytest.raises(ValueError, match="teacher"):
        loss_and_grads(params, {"image": x, "label": y}, 0, np.random.default_rng(0),
                       model=model, config=cfg)


# ---------------------------------------------------------------------------
# One step by hand
# ---------------------------------------------------------------------------


def test_train_step_matches_hand_update_and_is_pure():
    model = ToyModel()
    params = model.init(np.random.default_rng(1))
    x, y = _data(n=8)
    batch = {"image": x, "label": y}
    cfg = _config(clip_norm=0.05, rmsprop_epsilon=1.0)
    state = init_train_state(params, model, cfg)
    before = _deep(state)
    new, m = train_step(state, batch, 0, np.random.default_rng(9), model=model, config=cfg)
    _assert_state_equal(state, before)  # inputs untouched
    _, g, moving, _ = loss_and_grads(params, batch, 0, np.random.default_rng(9), model=model,
                                     config=cfg)
    norm = np.sqrt(sum(float(np.sum(v * v)) for v in g.values()))
    assert m["grad_norm"] == pytest.approx(norm, rel=1e-14) and norm > 0.05  # clipping active
    assert m["lr"] == 0.05 and m["eps"] == 1.0
    for n in g:
        gc = g[n] * 0.05 / norm
        ms = 1.0 + (gc * gc - 1.0) * 0.1
        mom = 0.05 * gc / np.sqrt(ms + 1.0)
        np.testing.assert_allclose(new.opt["ms"][n], ms, rtol=1e-14)
        np.testing.assert_allclose(new.params[n], params[n] - mom, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(new.params["in.bn.moving_mean"], moving["in.bn.moving_mean"])
    np.testing.assert_allclose(new.params["in.bn.moving_mean"], 0.1 * x.mean(axis=0), rtol=1e-14)
    # EMA with num_updates = step + 1 = 1: decay 2/11, BN moving stats included
    d = 2.0 / 11.0
    for n in params:
        np.testing.assert_allclose(new.ema[n], params[n] - (1 - d) * (params[n] - new.params[n]),
                                   rtol=1e-13, atol=1e-16)


def test_step_zero_of_warmup_changes_only_slots_and_bn():
    model = ToyModel()
    params = model.init(np.random.default_rng(1))
    x, y = _data(n=8)
    cfg = _config(warmup_epochs=1.0)  # lr(0) = 0 during linear warm-up
    state = init_train_state(params, model, cfg)
    new, m = train_step(state, {"image": x, "label": y}, 0, np.random.default_rng(0),
                        model=model, config=cfg)
    assert m["lr"] == 0.0
    for n in model.trainable_names(params):
        np.testing.assert_array_equal(new.params[n], params[n])
        assert np.any(new.opt["ms"][n] != 1.0)
    assert np.any(new.params["in.bn.moving_mean"] != 0.0)


def test_eps_schedule_is_fed_to_the_model():
    model = ToyModel()
    params = model.init(np.random.default_rng(1))
    x, y = _data(n=8)
    cfg = _config(eps_hold_steps=2, eps_decay_steps=4)
    state = init_train_state(params, model, cfg)
    for s in range(8):
        state, _ = train_step(state, {"image": x, "label": y}, s, np.random.default_rng(s),
                              model=model, config=cfg)
    assert model.seen_eps == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]


# ---------------------------------------------------------------------------
# Non-finite values
# ---------------------------------------------------------------------------


def test_nonfinite_parameter_is_named():
    model = ToyModel()
    params = model.init(np.random.default_rng(1))
    params["logits.bias"] = np.array([0.0, np.nan, 0.0])
    x, y = _data(n=4)
    state = init_train_state(params, model, _config())
    with pytest.raises(FloatingPointError, match=r"'logits\.bias' \(nan at index \(1,\)\)"):
        train_step(state, {"image": x, "label": y}, 0, np.random.default_rng(0), model=model,
                   config=_config())


def test_nonfinite_gradient_is_named():
    # sqrt gate at 0: logits are finite (all zero) but d/dg sqrt(g) = inf
    model = ToyModel()
    params = model.init(np.random.default_rng(1))
    params["gate.kernel"] = np.array([0.0])
    x, y = _data(n=4)
    state = init_train_state(params, model, _config())
    with pytest.raises(FloatingPointError, match=r"gradient of parameter 'gate\.kernel'"):
        train_step(state, {"image": x, "label": y}, 0, np.random.default_rng(0), model=model,
                   config=_config())


def test_nonfinite_loss_names_the_offending_parameter():
    # weight decay of a huge (finite) kernel overflows the loss to inf
    model = ToyModel()
    params = model.init(np.random.default_rng(1))
    params["unused.kernel"] = np.array([1e200])
    x, y = _data(n=4)
    state = init_train_state(params, model, _config())
    with pytest.raises(FloatingPointError,
                       match=r"loss is not finite \(inf\).*largest magnitude in 'unused\.kernel'"):
        train_step(state, {"image": x, "label": y}, 0, np.random.default_rng(0), model=model,
                   config=_config())


def test_bad_arguments():
    model = ToyModel()
    params = model.init(np.random.default_rng(1))
    x, y = _data(n=4)
    state = init_train_state(params, model, _config())
    with pytest.raises(ValueError, match="argument 'step'"):
        train_step(state, {"image": x, "label": y}, -1, np.random.default_rng(0), model=model,
                   config=_config())
    with pytest.raises(TypeError, match="argument 'rng'"):
        train_step(state, {"image": x, "label": y}, 0, 0, model=model, config=_config())
    with pytest.raises(ValueError, match="config.heads"):
        train_step(state, {"image": x, "label": y}, 0, np.random.default_rng(0), model=model,
                   config=_config(heads=(("light", HeadLoss()),)))
    with pytest.raises(ValueError, match="argument 'clip_norm'"):
        _config(clip_norm=-1.0)
    with pytest.raises(ValueError, match="argument 'rmsprop_variant'"):
        _config(rmsprop_variant="adam")


def test_config_roundtrip():
    cfg = _config(heads=(("light", HeadLoss()), ("specialist", HeadLoss(distill=True))))
    d = json.loads(json.dumps(cfg.as_dict()))
    assert TrainConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_dict({"lr": 1})


# ---------------------------------------------------------------------------
# Checkpoints and resumption
# ---------------------------------------------------------------------------


class Killed(Exception):
    pass


def _run(tmp, *, num_steps, kill_at=None, resume=False, seed_rng=7, init_seed=1, cfg=None,
         checkpoint_every=3):
    model = ToyModel()
    x, y = _data()
    data = ArrayDataset({"image": x, "label": y}, 8, seed=3, name="toy")
    cfg = cfg or _config(clip_norm=0.5, warmup_epochs=0.5,
                         steps_per_epoch=float(data.steps_per_epoch))
    state = init_train_state(model.init(np.random.default_rng(init_seed)), model, cfg)

    def on_step(step, st, m):
        if kill_at is not None and step == kill_at:
            raise Killed

    return train(model, cfg, state, data, num_steps=num_steps, rng=np.random.default_rng(seed_rng),
                 checkpoint_dir=tmp, checkpoint_every=checkpoint_every if tmp else None,
                 resume=resume, progress=False, on_step=on_step)


def test_kill_and_resume_is_bitwise_identical(tmp_path):
    ref = _run(None, num_steps=10)
    ckdir = str(tmp_path / "ck")
    with pytest.raises(Killed):
        _run(ckdir, num_steps=10, kill_at=5)
    assert list_checkpoints(ckdir) == [3]  # step 5 was never checkpointed
    # fresh objects, a different init and rng seed: all must come from the checkpoint
    res = _run(ckdir, num_steps=10, resume=True, seed_rng=12345, init_seed=99)
    assert res.resumed_from == 3 and res.step == 10 and len(res.history) == 7
    _assert_state_equal(res.state, ref.state)
    assert res.rng.bit_generator.state == ref.rng.bit_generator.state
    assert [h["loss"] for h in res.history] == [h["loss"] for h in ref.history[3:]]
    # the training moved the parameters (the comparison is not vacuous)
    init = ToyModel().init(np.random.default_rng(1))
    assert not np.array_equal(ref.state.params["logits.kernel"], init["logits.kernel"])
    # the finished run wrote its final checkpoint (10 is not a multiple of 3)
    assert list_checkpoints(ckdir)[-1] == 10


def test_checkpoint_from_other_configuration_is_refused(tmp_path):
    ckdir = str(tmp_path / "ck")
    _run(ckdir, num_steps=3)
    model = ToyModel()
    x, y = _data()
    data = ArrayDataset({"image": x, "label": y}, 8, seed=3, name="toy")
    cfg = _config(clip_norm=0.5, warmup_epochs=0.5, weight_decay=1e-3,
                  steps_per_epoch=float(data.steps_per_epoch))
    state = init_train_state(model.init(np.random.default_rng(1)), model, cfg)
    with pytest.raises(CheckpointMismatchError,
                       match=r"config\.weight_decay: checkpoint 0\.0001, current 0\.001"):
        train(model, cfg, state, data, num_steps=5, rng=np.random.default_rng(0),
              checkpoint_dir=ckdir, resume=True, progress=False)
    other = ArrayDataset({"image": x, "label": y}, 4, seed=3, name="toy")
    cfg2 = _config(clip_norm=0.5, warmup_epochs=0.5, steps_per_epoch=float(data.steps_per_epoch))
    with pytest.raises(CheckpointMismatchError, match=r"data\.batch_size: checkpoint 8, current 4"):
        train(model, cfg2, state, other, num_steps=5, rng=np.random.default_rng(0),
              checkpoint_dir=ckdir, resume=True, progress=False)


def test_checkpoint_files_are_atomic_and_verified(tmp_path):
    ckdir = str(tmp_path)
    model = ToyModel()
    cfg = _config()
    state = init_train_state(model.init(np.random.default_rng(1)), model, cfg)
    rng = np.random.default_rng(4)
    rng.random(3)
    save_checkpoint(ckdir, state, 2, rng, {"a": 1})
    assert sorted(os.listdir(ckdir)) == ["ckpt-00000002.json", "ckpt-00000002.npz"]
    # an npz without its JSON (killed mid-write) is not a checkpoint
    with open(os.path.join(ckdir, "ckpt-00000005.npz"), "wb") as f:
        f.write(b"partial")
    assert list_checkpoints(ckdir) == [2]
    st2, step, rng2, manifest = load_checkpoint(ckdir, expected={"a": 1})
    assert step == 2 and manifest["description"] == {"a": 1}
    _assert_state_equal(st2, state)
    assert rng2.random() == rng.random()
    with pytest.raises(CheckpointMismatchError, match="a: checkpoint 1, current 2"):
        load_checkpoint(ckdir, expected={"a": 2})
    with open(os.path.join(ckdir, "ckpt-00000002.npz"), "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="sha256"):
        load_checkpoint(ckdir)
    with pytest.raises(ValueError, match="argument 'rng_state'"):
        rng_from_state({"bit_generator": "Nope"})


def test_array_dataset_is_a_function_of_the_step():
    x, y = _data(n=20)
    data = ArrayDataset({"image": x, "label": y}, 6, seed=1)
    assert data.steps_per_epoch == 3
    first_epoch = np.concatenate([data.indices(s) for s in range(3)])
    assert len(set(first_epoch.tolist())) == 18  # no repeats within an epoch
    np.testing.assert_array_equal(data.indices(4), ArrayDataset(
        {"image": x, "label": y}, 6, seed=1).indices(4))
    assert not np.array_equal(data.indices(0), data.indices(3))  # new epoch, new order
    with pytest.raises(ValueError, match="argument 'batch_size'"):
        ArrayDataset({"image": x}, 21)
    with pytest.raises(ValueError, match="share the leading axis"):
        ArrayDataset({"image": x, "label": y[:3]}, 2)

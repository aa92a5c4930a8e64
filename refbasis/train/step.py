"""The pure train step of the supplement-B recipe.

``train_step(state, batch, step, rng, *, model, config, teacher=None)`` returns
``(new_state, metrics)`` and never mutates its inputs (the Generator ``rng`` is
the one thing it advances: every random draw of the step comes from it, in the
model's documented order). One step, in TF's order:

1. ``lr = learning_rate(step)``, ``eps = mixing_epsilon(step)`` (schedules);
2. forward in train mode (dropout, basis dropout, epsilon mixing with eps);
3. loss per head (cross-entropy with label smoothing, or distillation from
   teacher logits, see :class:`HeadLoss`), averaged over the batch, summed
   over heads, plus L2 weight decay (:mod:`.clipping`);
4. backward; non-finite logits or gradients raise ``FloatingPointError``
   naming the head or the first non-finite parameter;
5. global-norm clipping (if ``clip_norm``), RMSProp update with ``lr``;
6. BN moving statistics replaced by the forward's train-mode updates;
7. EMA of every parameter, BN moving statistics included, with
   ``num_updates = step + 1`` (TF order, see :mod:`.ema`).

Models plug in through the small :class:`TrainModel` protocol: ``forward``
returns a dict head -> logits ``(B, K)`` and an opaque cache; ``backward``
takes dict head -> dlogits and returns gradients for every trainable
parameter. Adapters: :class:`MobileNetModel` (one head, ``"logits"``) and
:class:`BasisNetModel` (heads ``"light"`` and ``"specialist"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from refbasis._checks import check_choice, check_int, check_real
from refbasis.train.clipping import (
    L2_FORMS,
    clip_by_global_norm,
    global_norm,
    l2_penalty,
    l2_penalty_vjp,
    weight_decay_names,
)
from refbasis.train.ema import ema_init, ema_update
from refbasis.train.rmsprop import RMSPROP_VARIANTS, rmsprop_init, rmsprop_update
from refbasis.train.schedules import DECAY_FROM, learning_rate, mixing_epsilon

__all__ = [
    "HeadLoss",
    "TrainConfig",
    "TrainModel",
    "TrainState",
    "MobileNetModel",
    "BasisNetModel",
    "init_train_state",
    "train_step",
    "loss_and_grads",
    "head_loss",
    "config_fingerprint",
]


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadLoss:
    """Loss of one output head.

    Without a teacher (``distill=False``): mean_b CE(labels, logits) with TF
    label smoothing. With ``distill=True``:
    ``(1 - distill_weight) * CE(labels, ls) + distill_weight * T^2 CE(softmax(t/T), s/T)``
    per example (``refbasis.ops.losses.distillation_loss``). Reference choice
    (paper silent): distill_weight = 1 (teacher soft labels only), T = 1.
    ``weight`` scales the head's term in the total loss.
    """

    label_smoothing: float = 0.0
    distill: bool = False
    distill_weight: float = 1.0
    temperature: float = 1.0
    weight: float = 1.0

    def __post_init__(self):
        fn = "HeadLoss"
        check_real(self.label_smoothing, "label_smoothing", lo=0.0, hi=1.0, fn=fn)
        if not isinstance(self.distill, bool):
            raise TypeError(f"{fn}: argument 'distill' must be a bool, got {self.distill!r}")
        check_real(self.distill_weight, "distill_weight", lo=0.0, hi=1.0, fn=fn)
        check_real(self.temperature, "temperature", lo=0.0, lo_open=True, fn=fn)
        check_real(self.weight, "weight", lo=0.0, fn=fn)


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of the recipe (defaults: supplement B, BasisNet-MV2).

    Learning rate: :func:`refbasis.train.schedules.learning_rate` arguments.
    ``steps_per_epoch`` default: batch 16384 over ImageNet's 1,281,167 images.
    Optimizer: RMSProp decay/momentum 0.9, epsilon 1.0 (reference choice).
    ``clip_norm`` None = no clipping (0.1 for BasisNet-MV3).
    ``ema_decay`` None = no EMA; ``ema_num_updates`` switches TF's warm-up.
    ``heads``: tuple of (head name, :class:`HeadLoss`).
    """

    base_lr: float = 0.006
    warmup_epochs: float = 20.0
    decay_epochs: float = 6.0
    decay_rate: float = 0.99
    decay_from: str = "start"
    steps_per_epoch: float = 1281167 / 16384
    rmsprop_variant: str = "tf"
    rmsprop_decay: float = 0.9
    rmsprop_momentum: float = 0.9
    rmsprop_epsilon: float = 1.0
    weight_decay: float = 1e-5
    l2_form: str = "half"
    clip_norm: float | None = None
    ema_decay: float | None = 0.9999
    ema_num_updates: bool = True
    eps_hold_steps: int = 10_000
    eps_decay_steps: int = 40_000
    heads: tuple = field(default_factory=lambda: (("logits", HeadLoss()),))

    def __post_init__(self):
        fn = "TrainConfig"
        # Validate eagerly so a bad value fails at construction, naming the field.
        learning_rate(0, **self.lr_kwargs())
        check_choice(self.decay_from, "decay_from", DECAY_FROM, fn=fn)
        check_choice(self.rmsprop_variant, "rmsprop_variant", RMSPROP_VARIANTS, fn=fn)
        check_real(self.rmsprop_decay, "rmsprop_decay", lo=0.0, hi=1.0, fn=fn)
        check_real(self.rmsprop_momentum, "rmsprop_momentum", lo=0.0, hi=1.0, fn=fn)
        check_real(self.rmsprop_epsilon, "rmsprop_epsilon", lo=0.0, lo_open=True, fn=fn)
        if not isinstance(self.ema_num_updates, bool):
            raise TypeError(f"{fn}: argument 'ema_num_updates' must be a bool, "
                            f"got {self.ema_num_updates!r}")
        check_real(self.weight_decay, "weight_decay", lo=0.0, fn=fn)
        check_choice(self.l2_form, "l2_form", L2_FORMS, fn=fn)
        if self.clip_norm is not None:
            check_real(self.clip_norm, "clip_norm", lo=0.0, lo_open=True, fn=fn)
        if self.ema_decay is not None:
            check_real(self.ema_decay, "ema_decay", lo=0.0, hi=1.0, fn=fn)
        check_int(self.eps_hold_steps, "eps_hold_steps", min_value=0, fn=fn)
        check_int(self.eps_decay_steps, "eps_decay_steps", min_value=0, fn=fn)
        heads = tuple(self.heads)
        if not heads or not all(
            isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], str)
            and isinstance(h[1], HeadLoss) for h in heads
        ):
            raise TypeError(f"{fn}: argument 'heads' must be a non-empty tuple of "
                            f"(name, HeadLoss) pairs, got {self.heads!r}")
        object.__setattr__(self, "heads", heads)

    def lr_kwargs(self) -> dict:
        return dict(steps_per_epoch=self.steps_per_epoch, base_lr=self.base_lr,
                    warmup_epochs=self.warmup_epochs, decay_epochs=self.decay_epochs,
                    decay_rate=self.decay_rate, decay_from=self.decay_from)

    def head_losses(self) -> dict[str, HeadLoss]:
        return dict(self.heads)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["heads"] = {name: dataclasses.asdict(h) for name, h in self.heads}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"TrainConfig.from_dict: unknown field(s) {unknown}")
        if "heads" in d:
            d["heads"] = tuple((k, HeadLoss(**v)) for k, v in d["heads"].items())
        return cls(**d)

    def replace(self, **kw) -> TrainConfig:
        return dataclasses.replace(self, **kw)


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_fingerprint(description: dict) -> str:
    """sha256 of the canonical JSON of a run description (config + model + data)."""
    return hashlib.sha256(_canonical(description).encode()).hexdigest()


# ---------------------------------------------------------------------------
# Model protocol and state
# ---------------------------------------------------------------------------


class TrainModel(Protocol):
    """What :func:`train_step` needs from a model.

    - ``heads``: names of the logits heads, matching ``TrainConfig.heads``;
    - ``trainable_names(params)``: names that get gradients;
    - ``forward(params, batch, *, rng, eps) -> (dict head -> (B, K), cache)``
      in train mode, drawing every random number from ``rng``;
    - ``backward(params, cache, dlogits: dict head -> (B, K)) -> dict name -> grad``
      (every trainable name, shapes as in params);
    - ``new_state(cache) -> dict``: the BN moving statistics after the step;
    - ``describe() -> dict``: JSON-able description (checkpoint fingerprints).
    """

    heads: tuple[str, ...]

    def trainable_names(self, params) -> list[str]: ...
    def forward(self, params, batch, *, rng, eps): ...
    def backward(self, params, cache, dlogits): ...
    def new_state(self, cache) -> dict: ...
    def describe(self) -> dict: ...


@dataclass(frozen=True)
class TrainState:
    """params (flat dict incl. BN moving stats), opt (RMSProp state over the
    trainable names), ema (flat dict over every param name, or None)."""

    params: dict
    opt: dict
    ema: dict | None


def init_train_state(params: dict, model: TrainModel, config: TrainConfig) -> TrainState:
    """Fresh optimizer slots and an EMA shadow equal to the initial params."""
    opt = rmsprop_init(params, config.rmsprop_variant, names=model.trainable_names(params))
    ema = ema_init(params) if config.ema_decay is not None else None
    return TrainState(params=dict(params), opt=opt, ema=ema)


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------


def head_loss(logits, labels, spec: HeadLoss, teacher_logits=None):
    """``(per_example_loss (B,), dlogits (B, K))`` of one head, dloss = 1 per example.

    Uses ``refbasis.ops.losses``; teacher_logits (B, K) required iff spec.distill.
    """
    from refbasis.ops.losses import (
        distillation_loss,
        distillation_loss_vjp,
        softmax_cross_entropy,
        softmax_cross_entropy_vjp,
    )

    ones = np.ones(logits.shape[0], dtype=logits.dtype)
    w = spec.distill_weight if spec.distill else 0.0
    loss = np.zeros(logits.shape[0], dtype=logits.dtype)
    dlog = np.zeros_like(logits)
    if w < 1.0:
        ls = spec.label_smoothing
        loss = loss + (1.0 - w) * softmax_cross_entropy(logits, labels, label_smoothing=ls)
        dlog = dlog + (1.0 - w) * softmax_cross_entropy_vjp(logits, labels, ones,
                                                             label_smoothing=ls)
    if w > 0.0:
        if teacher_logits is None:
            raise ValueError("head_loss: argument 'teacher_logits' must be given when "
                             "spec.distill is True, got None")
        t = spec.temperature
        loss = loss + w * distillation_loss(logits, teacher_logits, temperature=t)
        dlog = dlog + w * distillation_loss_vjp(logits, teacher_logits, ones, temperature=t)
    return loss, dlog


# ---------------------------------------------------------------------------
# Non-finite checks
# ---------------------------------------------------------------------------


def _first_nonfinite(arrays: dict, order) -> tuple[str, tuple, float] | None:
    for n in order:
        a = np.asarray(arrays[n])
        if not np.all(np.isfinite(a)):
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
            return n, idx, float(a[idx])
    return None


def _describe_params(params) -> str:
    """Name the first non-finite parameter, or (all finite) the largest one."""
    bad = _first_nonfinite(params, list(params))
    if bad is not None:
        return f"first non-finite parameter: '{bad[0]}' ({bad[2]} at index {bad[1]})"
    big = max(params, key=lambda n: float(np.max(np.abs(params[n]), initial=0.0)))
    return (f"every parameter is finite (largest magnitude in '{big}': "
            f"{float(np.max(np.abs(params[big]), initial=0.0)):.3g}; check the batch)")


def _raise_nonfinite_output(head, step, params):
    raise FloatingPointError(f"train_step: logits of head '{head}' are not finite at step "
                             f"{step}; {_describe_params(params)}")


# ---------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------


def _teacher_logits(batch, teacher, need, fn):
    if not need:
        return None
    if "teacher_logits" in batch:
        return batch["teacher_logits"]
    if teacher is None:
        raise ValueError(f"{fn}: a head distills but neither batch['teacher_logits'] nor "
                         f"argument 'teacher' was given")
    return teacher(batch)


def _check_step_args(state, batch, step, rng, model, config, fn):
    step = check_int(step, "step", min_value=0, fn=fn)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{fn}: argument 'rng' must be a numpy.random.Generator, "
                        f"got {type(rng).__name__}")
    if not isinstance(batch, dict) or "label" not in batch:
        raise ValueError(f"{fn}: argument 'batch' must be a dict with a 'label' entry, "
                         f"got {type(batch).__name__} with keys "
                         f"{sorted(batch) if isinstance(batch, dict) else None}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"{fn}: argument 'config' must be a TrainConfig, "
                        f"got {type(config).__name__}")
    specs = config.head_losses()
    if tuple(specs) != tuple(model.heads):
        raise ValueError(f"{fn}: config.heads must name the model's heads {list(model.heads)}, "
                         f"got {list(specs)}")
    return step, specs


def loss_and_grads(params: dict, batch: dict, step: int, rng: np.random.Generator, *,
                   model: TrainModel, config: TrainConfig,
                   teacher: Callable[[dict], Any] | None = None):
    """Forward, loss and backward of one step, before clipping and the update.

    Returns ``(total_loss, grads, moving, metrics)``: total = sum over heads of
    ``weight * mean_b loss`` + L2 weight decay; grads for every trainable name
    (weight decay included); moving = the BN moving statistics after the
    forward; metrics as in :func:`train_step` (without ``grad_norm``/``lr``).
    Raises ``FloatingPointError`` on non-finite logits, loss or gradients,
    naming the head or the first non-finite parameter.
    """
    fn = "loss_and_grads"
    step, specs = _check_step_args(TrainState(params, {}, None), batch, step, rng, model,
                                   config, fn)
    eps = float(mixing_epsilon(step, hold_steps=config.eps_hold_steps,
                               decay_steps=config.eps_decay_steps))
    names = model.trainable_names(params)

    outputs, cache = model.forward(params, batch, rng=rng, eps=eps)
    for head in specs:
        if not np.all(np.isfinite(outputs[head])):
            _raise_nonfinite_output(head, step, params)

    need_teacher = any(s.distill and s.distill_weight > 0 for s in specs.values())
    t_logits = _teacher_logits(batch, teacher, need_teacher, fn)
    labels = batch["label"]
    metrics: dict[str, float] = {"eps": eps}
    dlogits = {}
    total = 0.0
    for head, spec in specs.items():
        z = outputs[head]
        per_ex, dz = head_loss(z, labels, spec, t_logits if spec.distill else None)
        loss_h = float(per_ex.mean())
        metrics[f"loss/{head}"] = loss_h
        metrics[f"accuracy/{head}"] = float(np.mean(np.argmax(z, axis=1) == labels))
        total += spec.weight * loss_h
        dlogits[head] = dz * (spec.weight / z.shape[0])  # d(weight * batch mean)

    name_set = set(names)
    wd_names = [n for n in weight_decay_names(params) if n in name_set]
    wd = l2_penalty(params, config.weight_decay, names=wd_names, form=config.l2_form)
    total += wd
    metrics["weight_decay"] = float(wd)
    if not np.isfinite(total):
        raise FloatingPointError(f"{fn}: loss is not finite ({total}) at step {step}; "
                                 f"{_describe_params(params)}")

    grads = model.backward(params, cache, dlogits)
    missing = [n for n in names if n not in grads]
    if missing:
        raise ValueError(f"{fn}: model.backward must return a gradient for every trainable "
                         f"parameter, missing {missing[:5]}")
    grads = {n: grads[n] for n in names}
    for n, g in l2_penalty_vjp(params, config.weight_decay, 1.0, names=wd_names,
                               form=config.l2_form).items():
        grads[n] = grads[n] + g
    bad = _first_nonfinite(grads, names)
    if bad is not None:
        raise FloatingPointError(
            f"{fn}: gradient of parameter '{bad[0]}' is not finite ({bad[2]} at index "
            f"{bad[1]}) at step {step}")
    moving = dict(model.new_state(cache))
    unknown = [n for n in moving if n not in params]
    if unknown:
        raise ValueError(f"{fn}: model.new_state returned unknown names {unknown[:5]}")
    metrics["loss"] = float(total)
    return float(total), grads, moving, metrics


def train_step(state: TrainState, batch: dict, step: int, rng: np.random.Generator, *,
               model: TrainModel, config: TrainConfig,
               teacher: Callable[[dict], Any] | None = None):
    """One update of the recipe; returns ``(new_state, metrics)``.

    batch: dict with ``"label"`` int (B,) and the model's inputs (``"image"``
    ...), optionally ``"teacher_logits"`` (B, K); ``teacher`` (any callable
    batch -> (B, K) logits, e.g. an oracle model in eval mode) is used when a
    head distills and the batch has no teacher logits. step: the 0-based index
    of this update (drives the schedules). metrics: floats ``loss`` (total),
    ``loss/<head>``, ``accuracy/<head>``, ``weight_decay``, ``grad_norm``
    (before clipping), ``lr``, ``eps``.
    """
    fn = "train_step"
    if not isinstance(state, TrainState):
        raise TypeError(f"{fn}: argument 'state' must be a TrainState, got {type(state).__name__}")
    step, _ = _check_step_args(state, batch, step, rng, model, config, fn)
    lr = float(learning_rate(step, **config.lr_kwargs()))
    _, grads, moving, metrics = loss_and_grads(state.params, batch, step, rng, model=model,
                                               config=config, teacher=teacher)
    if config.clip_norm is not None:
        grads, gnorm = clip_by_global_norm(grads, config.clip_norm)
    else:
        gnorm = global_norm(grads)
    new_params, new_opt = rmsprop_update(
        state.params, grads, state.opt, lr, decay=config.rmsprop_decay,
        momentum=config.rmsprop_momentum, epsilon=config.rmsprop_epsilon,
        variant=config.rmsprop_variant)
    # TF runs the BN moving-average updates with the train op; they come from
    # this step's forward (pre-update weights).
    new_params.update(moving)

    new_ema = None
    if state.ema is not None:
        if config.ema_decay is None:
            raise ValueError(f"{fn}: state has an EMA but config.ema_decay is None")
        nu = step + 1 if config.ema_num_updates else None
        new_ema = ema_update(state.ema, new_params, decay=config.ema_decay, num_updates=nu)

    metrics.update(grad_norm=float(gnorm), lr=lr)
    return TrainState(params=new_params, opt=new_opt, ema=new_ema), metrics


# ---------------------------------------------------------------------------
# Plain MobileNet adapter
# ---------------------------------------------------------------------------


class MobileNetModel:
    """A plain MobileNet (``refbasis.model``) as a :class:`TrainModel` with one
    head ``"logits"``; ``eps`` is ignored. Batch: ``"image"`` (B, R, R, 3).

    The classifier-dropout mask (rate ``arch.dropout_rate``, keep 0.8 by
    default, supplement B) is drawn from the step's rng by ``refbasis.model``.
    """

    heads = ("logits",)

    def __init__(self, arch, *, image_key: str = "image"):
        self.arch = arch
        self.image_key = image_key

    def trainable_names(self, params):
        from refbasis.model.params import trainable_names
        return trainable_names(params)

    def forward(self, params, batch, *, rng, eps):
        from refbasis.model import forward
        logits, cache = forward(self.arch, params, batch[self.image_key], train=True, rng=rng)
        return {"logits": logits}, cache

    def backward(self, params, cache, dlogits):
        from refbasis.model import backward
        g = backward(self.arch, params, cache, dlogits["logits"])
        g.pop("input", None)
        return g

    def new_state(self, cache):
        return dict(cache.new_state)

    def describe(self):
        return {"model": "mobilenet", "arch": _arch_description(self.arch),
                "image_key": self.image_key}


def _arch_description(arch) -> dict:
    if dataclasses.is_dataclass(arch):
        return json.loads(_canonical(dataclasses.asdict(arch)))
    return {"repr": repr(arch)}


# ---------------------------------------------------------------------------
# BasisNet adapter
# ---------------------------------------------------------------------------


class BasisNetModel:
    """A two-stage BasisNet (``refbasis.basis.two_stage``) as a :class:`TrainModel`.

    Heads ``"light"`` (the lightweight model's initial prediction) and
    ``"specialist"`` (the synthesized specialist). Batch: ``"image_light"``
    (B, r, r, 3) at the lightweight model's resolution and ``"image"``
    (B, R, R, 3) at the specialist's. ``eps`` (the mixing schedule) is passed
    to ``basisnet_forward``; its random draws (light classifier dropout, basis
    dropout, specialist classifier dropout) come from the step's rng.
    """

    heads = ("light", "specialist")

    def __init__(self, config, *, light_key: str = "image_light", specialist_key: str = "image"):
        self.config = config
        self.light_key = light_key
        self.specialist_key = specialist_key

    def trainable_names(self, params):
        from refbasis.basis.two_stage import basisnet_trainable_names
        return basisnet_trainable_names(params)

    def forward(self, params, batch, *, rng, eps):
        from refbasis.basis.two_stage import basisnet_forward
        zl, zs, cache = basisnet_forward(self.config, params, batch[self.light_key],
                                         batch[self.specialist_key], train=True, eps=eps,
                                         rng=rng)
        return {"light": zl, "specialist": zs}, cache

    def backward(self, params, cache, dlogits):
        from refbasis.basis.two_stage import basisnet_backward
        g = basisnet_backward(self.config, params, cache, dlogits["light"],
                              dlogits["specialist"])
        return {k: v for k, v in g.items() if not k.startswith("input")}

    def new_state(self, cache):
        return dict(cache.new_state)

    def describe(self):
        c = self.config
        return {"model": "basisnet", "light": _arch_description(c.light),
                "specialist": _arch_description(c.specialist), "num_bases": c.num_bases,
                "per_basis_layers": list(c.per_basis_layers),
                "per_basis_kinds": sorted(c.per_basis_kinds),
                "coefficient_normalization": c.coefficient_normalization,
                "basis_dropout_rate": c.basis_dropout_rate,
                "dropout_granularity": c.dropout_granularity,
                "light_key": self.light_key, "specialist_key": self.specialist_key}

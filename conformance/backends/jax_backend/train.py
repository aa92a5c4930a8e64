"""Training pieces in JAX: RMSProp (TF semantics), schedules, EMA, clipping.

Each mirrors its oracle twin in ``refbasis.train`` exactly, arithmetic form
included (rounding must follow the same expression tree to stay inside float32
tolerances over several steps):

- RMSProp (``refbasis.train.rmsprop``; TF ``ApplyRMSProp``):
  ``ms <- ms + (g*g - ms) * (1 - decay)``;
  ``mom <- momentum*mom + lr*g / sqrt(ms + eps)``; ``p <- p - mom``; ms starts
  at 1 ("tf"), or 0 for the "keras" and "eps_outside" variants.
- learning rate (``refbasis.train.schedules``): linear warm-up
  ``base*step/warmup_steps`` then staircase ``base * rate**floor(step/decay_steps)``.
- mixing epsilon: ``clip(1 - (s - hold)/decay, 0, 1)``.
- EMA (TF ``ExponentialMovingAverage``): ``d = min(decay, (1+n)/(10+n))``,
  ``shadow <- shadow - (1 - d) * (shadow - value)``.
- gradient clipping by global norm (TF ``clip_by_global_norm``):
  ``g * clip_norm / max(global_norm, clip_norm)``.

Every function is pure and jit-able; dicts are pytrees.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = [
    "RMSPROP_VARIANTS",
    "rmsprop_init",
    "rmsprop_update",
    "learning_rate",
    "mixing_epsilon",
    "ema_decay",
    "ema_update",
    "global_norm",
    "clip_by_global_norm",
]

RMSPROP_VARIANTS = ("tf", "keras", "eps_outside")


# --------------------------------------------------------------------------
# RMSProp
# --------------------------------------------------------------------------


def rmsprop_init(params, variant="tf", *, names=None):
    """``{"ms": {...}, "mom": {...}}`` for ``names`` (default every key)."""
    if variant not in RMSPROP_VARIANTS:
        raise ValueError(f"rmsprop_init: argument 'variant' must be one of "
                         f"{list(RMSPROP_VARIANTS)}, got {variant!r}")
    names = list(params) if names is None else list(names)
    ms0 = 1.0 if variant == "tf" else 0.0
    return {"ms": {n: jnp.full_like(params[n], ms0) for n in names},
            "mom": {n: jnp.zeros_like(params[n]) for n in names}}


def rmsprop_update(params, grads, state, lr, *, decay=0.9, momentum=0.9, epsilon=1.0,
                   variant="tf"):
    """One step; ``(new_params, new_state)``. Parameters without a state entry
    (BN moving statistics) pass through."""
    new_params = dict(params)
    new_ms, new_mom = {}, {}
    for n in state["ms"]:
        g, ms, mom = grads[n], state["ms"][n], state["mom"][n]
        if variant == "tf":
            ms = ms + (g * g - ms) * (1.0 - decay)
            mom = momentum * mom + lr * g / jnp.sqrt(ms + epsilon)
        elif variant == "keras":
            ms = decay * ms + (1.0 - decay) * (g * g)
            mom = momentum * mom + lr * g / jnp.sqrt(ms + epsilon)
        else:
            ms = decay * ms + (1.0 - decay) * (g * g)
            mom = momentum * mom + lr * g / (jnp.sqrt(ms) + epsilon)
        new_params[n] = params[n] - mom
        new_ms[n], new_mom[n] = ms, mom
    return new_params, {"ms": new_ms, "mom": new_mom}


# --------------------------------------------------------------------------
# Schedules (jnp, so a traced step works inside jit)
# --------------------------------------------------------------------------


def learning_rate(step, *, steps_per_epoch, base_lr=0.006, warmup_epochs=20.0,
                  decay_epochs=6.0, decay_rate=0.99, decay_from="start"):
    """Warm-up + staircase decay (``refbasis.train.schedules.learning_rate``).

    Static hyper-parameters; ``step`` may be traced. float32 result: the
    harness compares it against the float64 oracle at float32 tolerance."""
    w = int(math.floor(warmup_epochs * steps_per_epoch))
    dsteps = decay_epochs * steps_per_epoch
    s = jnp.asarray(step)
    counted = s if decay_from == "start" else jnp.maximum(s - w, 0)
    decayed = base_lr * jnp.power(decay_rate, jnp.floor(counted / dsteps))
    if w == 0:
        return decayed
    return jnp.where(s < w, base_lr * s / w, decayed)


def mixing_epsilon(step, *, hold_steps=10_000, decay_steps=40_000):
    """``eps(s) = clip(1 - (s - hold)/decay, 0, 1)``; a step at ``hold`` if decay = 0."""
    s = jnp.asarray(step)
    if decay_steps == 0:
        return jnp.where(s <= hold_steps, 1.0, 0.0)
    return jnp.clip(1.0 - (s - hold_steps) / decay_steps, 0.0, 1.0)


# --------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------


def ema_decay(decay=0.9999, num_updates=None):
    """``decay`` or ``min(decay, (1 + n) / (10 + n))`` (TF)."""
    if num_updates is None:
        return decay
    n = jnp.asarray(num_updates)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def ema_update(ema, params, *, decay=0.9999, num_updates=None):
    """``shadow - (1 - d) * (shadow - value)`` for every name of ``ema``."""
    d = ema_decay(decay, num_updates)
    return {n: s - (1.0 - d) * (s - params[n]) for n, s in ema.items()}


# --------------------------------------------------------------------------
# Clipping
# --------------------------------------------------------------------------


def global_norm(tree):
    """``sqrt(sum of squares of every leaf)``."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))


def clip_by_global_norm(grads, clip_norm):
    """TF ``clip_by_global_norm``: ``g * clip_norm / max(norm, clip_norm)``;
    returns ``(clipped, norm)``."""
    norm = global_norm(grads)
    scale = clip_norm / jnp.maximum(norm, clip_norm)
    return {n: g * scale for n, g in grads.items()}, norm


# --------------------------------------------------------------------------
# Losses and the train step (refbasis.train.step)
# --------------------------------------------------------------------------


def head_loss(logits, labels, spec, teacher_logits=None):
    """Per-example loss of one head (``refbasis.train.step.HeadLoss``):
    ``(1 - w) * CE(labels, ls) + w * T^2 CE(softmax(t/T), s/T)`` with
    ``w = distill_weight`` if ``distill`` else 0."""
    from conformance.backends.jax_backend import ops

    w = spec.distill_weight if spec.distill else 0.0
    loss = jnp.zeros(logits.shape[0], jnp.float32)
    if w < 1.0:
        loss = loss + (1.0 - w) * ops.softmax_cross_entropy(
            logits, labels, label_smoothing=spec.label_smoothing)
    if w > 0.0:
        loss = loss + w * ops.distillation_loss(logits, teacher_logits,
                                                temperature=spec.temperature)
    return loss


def l2_penalty(params, weight_decay, names, form="half"):
    """``coef * wd * sum ||w||^2`` over ``names``; coef 1/2 ("half", TF
    ``l2_regularizer``) or 1 ("full")."""
    coef = 0.5 if form == "half" else 1.0
    if not names:
        return jnp.float32(0.0)
    return coef * weight_decay * sum(jnp.sum(jnp.square(params[n])) for n in names)


def make_train_step(apply, config, *, state_suffixes=(".bn.moving_mean", ".bn.moving_var")):
    """Build ``step_fn(params, opt, ema, batch, step) -> (params, opt, ema, metrics)``.

    ``apply(params, batch, eps) -> (dict head -> logits, new_bn_state)`` runs
    the model in train mode with the batch's replayed masks. ``config`` is the
    oracle's ``TrainConfig``. One step in TF's order (refbasis.train.step):
    schedules at ``step`` -> forward -> sum over heads of weight * batch-mean
    loss + L2 on every ``*.kernel`` -> ``jax.grad`` -> global-norm clipping ->
    RMSProp -> BN moving statistics from this forward -> EMA of every
    parameter with ``num_updates = step + 1``. ``step`` may be traced.
    """
    heads = tuple(config.heads)
    lr_kw = config.lr_kwargs()

    def loss_fn(tp, sp, batch, eps):
        outputs, new_state = apply({**sp, **tp}, batch, eps)
        total = jnp.float32(0.0)
        metrics = {}
        for head, spec in heads:
            z = outputs[head]
            per_ex = head_loss(z, batch["label"], spec,
                               batch.get("teacher_logits") if spec.distill else None)
            lh = jnp.mean(per_ex)
            metrics[f"loss/{head}"] = lh
            total = total + spec.weight * lh
        wd_names = [n for n in tp if n.endswith(".kernel")]
        total = total + l2_penalty(tp, config.weight_decay, wd_names, config.l2_form)
        return total, (new_state, metrics)

    def step_fn(params, opt, ema, batch, step):
        step = jnp.asarray(step)
        lr = learning_rate(step, **lr_kw)
        eps = mixing_epsilon(step, hold_steps=config.eps_hold_steps,
                             decay_steps=config.eps_decay_steps)
        tp = {k: v for k, v in params.items() if not k.endswith(state_suffixes)}
        sp = {k: v for k, v in params.items() if k.endswith(state_suffixes)}
        (total, (new_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            tp, sp, batch, eps)
        if config.clip_norm is not None:
            grads, gnorm = clip_by_global_norm(grads, config.clip_norm)
        else:
            gnorm = global_norm(grads)
        new_params, new_opt = rmsprop_update(
            params, grads, opt, lr, decay=config.rmsprop_decay,
            momentum=config.rmsprop_momentum, epsilon=config.rmsprop_epsilon,
            variant=config.rmsprop_variant)
        new_params.update({k: v.astype(params[k].dtype) for k, v in new_state.items()})
        new_ema = ema
        if ema is not None:
            nu = step + 1 if config.ema_num_updates else None
            new_ema = ema_update(ema, new_params, decay=config.ema_decay, num_updates=nu)
        metrics.update(loss=total, lr=lr, grad_norm=gnorm, eps=eps)
        return new_params, new_opt, new_ema, metrics

    return step_fn


def init_train_state(params, config, *, state_suffixes=(".bn.moving_mean", ".bn.moving_var")):
    """``(opt, ema)``: RMSProp slots over the trainable names and an EMA shadow
    equal to the initial parameters (None when ``config.ema_decay`` is None)."""
    names = [k for k in params if not k.endswith(state_suffixes)]
    opt = rmsprop_init(params, config.rmsprop_variant, names=names)
    ema = dict(params) if config.ema_decay is not None else None
    return opt, ema

"""Early termination of BasisNet (paper Sec. 4.6, supplement D.4).

If the lightweight model's top softmax probability reaches a threshold, its
prediction is final and the second stage (synthesis + specialist) is skipped:

    exited[b] = max_k softmax(light_logits[b])_k >= threshold
    average MAdds = light + (1 - mean(exited)) * (synthesis + specialist)

Reference choices (docs/_conventions_basis.md): the comparison is ``>=`` (so
threshold 0 exits every example and any threshold > 1 none); the threshold is
any finite real >= 0, not clipped to [0, 1]. The reference computes both
stages for every example (the specialist's outputs for exited examples are
simply not used), so the exit decisions are a pure function of the logits.

Supplement D.4's bucket table: sort the examples by the lightweight model's top
probability (descending), split them into equal-count buckets
(``numpy.array_split``, so the first ``B % K`` buckets hold one more), and report
per bucket the accuracy of the lightweight model, the specialist and
(optionally) a plain baseline MobileNet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from refbasis._checks import as_float_array, check_int, check_real
from refbasis.basis.coefficients import normalize_coefficients

__all__ = [
    "top_probability",
    "exit_decisions",
    "exit_decisions_naive",
    "early_exit_predictions",
    "average_madds",
    "basisnet_average_madds",
    "BucketRow",
    "confidence_buckets",
    "confidence_buckets_json",
    "threshold_sweep",
    "basisnet_predict",
]


# ---------------------------------------------------------------------------
# Exit decisions
# ---------------------------------------------------------------------------

def top_probability(light_logits) -> np.ndarray:
    """``(B, K)`` logits -> ``(B,)`` top softmax probability."""
    z = as_float_array(light_logits, "light_logits", ndim=2, fn="top_probability", finite=True)
    return np.max(normalize_coefficients(z, "softmax"), axis=-1)


def exit_decisions(light_logits, threshold: float) -> np.ndarray:
    """``(B,)`` bool: True where the lightweight prediction is final (top prob >= threshold)."""
    t = check_real(threshold, "threshold", lo=0.0, fn="exit_decisions")
    return top_probability(light_logits) >= t


def exit_decisions_naive(light_logits, threshold: float) -> np.ndarray:
    """Loop twin of :func:`exit_decisions` (tests only)."""
    z = np.asarray(light_logits, dtype=np.float64)
    out = np.zeros(z.shape[0], dtype=bool)
    for b in range(z.shape[0]):
        m = max(z[b])
        e = [np.exp(v - m) for v in z[b]]
        out[b] = max(e) / sum(e) >= threshold
    return out


def _check_labels(labels, batch: int, fn: str) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"{fn}: argument 'labels' must be an integer array, got {lab.dtype}")
    if lab.shape != (batch,):
        raise ValueError(f"{fn}: argument 'labels' must have shape ({batch},), got {lab.shape}")
    return lab


def early_exit_predictions(light_logits, specialist_logits, threshold: float):
    """Final class per example: ``(pred (B,) int, exited (B,) bool)``.

    light_logits and specialist_logits ``(B, K)``; exited examples take the
    lightweight model's argmax, the others the specialist's.
    """
    fn = "early_exit_predictions"
    zl = as_float_array(light_logits, "light_logits", ndim=2, fn=fn, finite=True)
    zs = as_float_array(specialist_logits, "specialist_logits", shape=zl.shape, fn=fn,
                        finite=True)
    exited = exit_decisions(zl, threshold)
    pred = np.where(exited, np.argmax(zl, axis=-1), np.argmax(zs, axis=-1))
    return pred, exited


# ---------------------------------------------------------------------------
# Average cost
# ---------------------------------------------------------------------------

def average_madds(exited, light_madds: float, synthesis_madds: float,
                  specialist_madds: float) -> float:
    """``light + (1 - mean(exited)) * (synthesis + specialist)``.

    exited: ``(B,)`` bool array of decisions, or a float share of exited
    examples in [0, 1]. Costs are non-negative MAdds (any unit, e.g. millions).
    """
    fn = "average_madds"
    if isinstance(exited, np.ndarray):
        if exited.dtype != bool or exited.ndim != 1 or exited.size == 0:
            raise ValueError(f"{fn}: argument 'exited' must be a non-empty 1-D bool array, "
                             f"got dtype {exited.dtype} shape {exited.shape}")
        share = float(np.mean(exited))
    else:
        share = check_real(exited, "exited", lo=0.0, hi=1.0, fn=fn)
    lm = check_real(light_madds, "light_madds", lo=0.0, fn=fn)
    sm = check_real(synthesis_madds, "synthesis_madds", lo=0.0, fn=fn)
    pm = check_real(specialist_madds, "specialist_madds", lo=0.0, fn=fn)
    return lm + (1.0 - share) * (sm + pm)


def basisnet_average_madds(config, exited, convention=None) -> float:
    """:func:`average_madds` with the three costs of ``refbasis.cost.basisnet_cost``.

    ``light_madds`` there includes the coefficient head; ``convention`` (a
    ``refbasis.cost.CostConvention``, default the module's paper convention)
    fixes the accounting, e.g. N or N - 1 multiply-adds per synthesized weight.
    """
    from refbasis import cost  # lazily: keeps this module importable without cost

    c = cost.basisnet_cost(config) if convention is None else cost.basisnet_cost(
        config, convention)
    return average_madds(exited, float(c.light_madds), float(c.synthesis_madds),
                         float(c.specialist_madds))


# ---------------------------------------------------------------------------
# Supplement D.4: accuracy per confidence bucket
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class BucketRow:
    """One bucket of supplement D.4 (examples sorted by top probability, descending)."""

    bucket: int           # 0 = most confident
    count: int
    top_prob_max: float   # highest top probability in the bucket
    top_prob_min: float   # lowest top probability in the bucket
    acc_light: float
    acc_specialist: float
    acc_baseline: float | None


def confidence_buckets(light_logits, specialist_logits, labels, *, baseline_logits=None,
                       num_buckets: int = 10) -> list[BucketRow]:
    """Supplement D.4 table. Logits ``(B, K)``; labels ``(B,)`` int; ``num_buckets <= B``.

    Sorting is stable on the negated top probability, so ties keep input order.
    """
    fn = "confidence_buckets"
    zl = as_float_array(light_logits, "light_logits", ndim=2, fn=fn, finite=True)
    zs = as_float_array(specialist_logits, "specialist_logits", shape=zl.shape, fn=fn,
                        finite=True)
    zb = None
    if baseline_logits is not None:
        zb = as_float_array(baseline_logits, "baseline_logits", shape=zl.shape, fn=fn,
                            finite=True)
    lab = _check_labels(labels, zl.shape[0], fn)
    k = check_int(num_buckets, "num_buckets", min_value=1, fn=fn)
    if k > zl.shape[0]:
        raise ValueError(f"{fn}: argument 'num_buckets' must be <= batch size "
                         f"{zl.shape[0]}, got {k}")
    p = top_probability(zl)
    order = np.argsort(-p, kind="stable")
    ok_l = np.argmax(zl, -1) == lab
    ok_s = np.argmax(zs, -1) == lab
    ok_b = None if zb is None else np.argmax(zb, -1) == lab
    rows = []
    for i, idx in enumerate(np.array_split(order, k)):
        rows.append(BucketRow(
            bucket=i, count=int(idx.size),
            top_prob_max=float(p[idx].max()), top_prob_min=float(p[idx].min()),
            acc_light=float(ok_l[idx].mean()), acc_specialist=float(ok_s[idx].mean()),
            acc_baseline=None if ok_b is None else float(ok_b[idx].mean()),
        ))
    return rows


def confidence_buckets_json(rows: list[BucketRow]) -> dict:
    """JSON-able form of :func:`confidence_buckets`: ``{"source": ..., "buckets": [...]}``."""
    return {"source": "supplement D.4", "order": "top probability, descending",
            "buckets": [asdict(r) for r in rows]}


def threshold_sweep(light_logits, specialist_logits, labels, thresholds, *,
                    light_madds: float, synthesis_madds: float,
                    specialist_madds: float) -> list[dict]:
    """Accuracy / exit share / average MAdds per threshold (paper Sec. 4.6 curve)."""
    fn = "threshold_sweep"
    zl = as_float_array(light_logits, "light_logits", ndim=2, fn=fn, finite=True)
    lab = _check_labels(labels, zl.shape[0], fn)
    out = []
    for t in thresholds:
        pred, exited = early_exit_predictions(zl, specialist_logits, t)
        out.append({
            "threshold": float(t),
            "exit_share": float(exited.mean()),
            "accuracy": float((pred == lab).mean()),
            "average_madds": average_madds(exited, light_madds, synthesis_madds,
                                           specialist_madds),
        })
    return out


# ---------------------------------------------------------------------------
# Inference with the second stage actually skipped
# ---------------------------------------------------------------------------

def basisnet_predict(config, params, x_light, x_specialist, threshold: float):
    """Eval-mode BasisNet inference with early termination: the specialist
    runs only on the examples that did not exit (BN uses moving statistics in
    eval mode, so a sub-batch gives the same logits as the full batch).

    Returns ``(pred (B,) int, exited (B,) bool, light_logits (B, K))``.
    """
    from refbasis.basis.two_stage import light_forward, synthesize_specialist_params
    from refbasis.model.network import forward

    fn = "basisnet_predict"
    t = check_real(threshold, "threshold", lo=0.0, fn=fn)
    xs = as_float_array(x_specialist, "x_specialist", ndim=4, fn=fn)
    light_logits, alpha = light_forward(config, params, x_light)
    if xs.shape[0] != light_logits.shape[0]:
        raise ValueError(f"{fn}: argument 'x_specialist' must have the batch size of "
                         f"'x_light' ({light_logits.shape[0]}), got {xs.shape[0]}")
    exited = exit_decisions(light_logits, t)
    pred = np.argmax(light_logits, axis=-1)
    rest = np.flatnonzero(~exited)
    if rest.size:
        tree = synthesize_specialist_params(config, params, alpha[rest])
        zs, _ = forward(config.specialist, tree, xs[rest], train=False)
        pred[rest] = np.argmax(zs, axis=-1)
    return pred, exited, light_logits

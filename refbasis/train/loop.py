"""The resumable train loop: batches as a pure function of the step, a tqdm bar,
periodic atomic checkpoints, and resumption that reproduces the uninterrupted
run bit for bit.

Determinism contract: the batch of step ``k`` depends only on the data, the
batch size, the data seed and ``k`` (:class:`ArrayDataset`); every other
random draw comes from the loop's Generator, whose state is checkpointed.
Resuming from checkpoint ``k`` therefore replays steps ``k, k+1, ...`` with the
same batches and the same random numbers as the uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from refbasis._checks import check_int
from refbasis.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from refbasis.train.step import TrainConfig, TrainModel, TrainState, train_step

__all__ = ["ArrayDataset", "TrainResult", "run_description", "train"]


class ArrayDataset:
    """In-memory examples served as ``batch(step) -> dict``.

    arrays: dict key -> array with a common leading axis n (e.g. "image",
    "label"). Epoch ``e`` visits the examples in the order
    ``default_rng([seed, e]).permutation(n)``; the trailing partial batch of an
    epoch is dropped (reference choice, ``steps_per_epoch = n // batch_size``,
    the "floor" rounding of :func:`refbasis.train.schedules.steps_per_epoch`).
    ``transform(batch, step)`` (optional, pure) post-processes a batch.
    """

    def __init__(self, arrays: dict, batch_size: int, *, seed: int = 0,
                 transform: Callable[[dict, int], dict] | None = None, name: str = "arrays"):
        fn = "ArrayDataset"
        if not isinstance(arrays, dict) or not arrays:
            raise ValueError(f"{fn}: argument 'arrays' must be a non-empty dict, got {arrays!r}")
        sizes = {k: len(v) for k, v in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"{fn}: argument 'arrays' must share the leading axis, got {sizes}")
        self.n = next(iter(sizes.values()))
        self.batch_size = check_int(batch_size, "batch_size", min_value=1, fn=fn)
        if self.batch_size > self.n:
            raise ValueError(f"{fn}: argument 'batch_size' must be <= {self.n} examples, "
                             f"got {self.batch_size}")
        self.seed = check_int(seed, "seed", min_value=0, fn=fn)
        self.arrays = arrays
        self.transform = transform
        self.name = name

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def indices(self, step: int) -> np.ndarray:
        step = check_int(step, "step", min_value=0, fn="ArrayDataset.indices")
        epoch, i = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return perm[i * self.batch_size:(i + 1) * self.batch_size]

    def batch(self, step: int) -> dict:
        idx = self.indices(step)
        b = {k: v[idx] for k, v in self.arrays.items()}
        return self.transform(b, step) if self.transform is not None else b

    def describe(self) -> dict:
        return {"name": self.name, "n": self.n, "batch_size": self.batch_size,
                "seed": self.seed,
                "shapes": {k: list(np.shape(v)[1:]) for k, v in self.arrays.items()}}


@dataclass
class TrainResult:
    state: TrainState
    step: int
    rng: np.random.Generator
    history: list  # one metrics dict per step run in this call (with "step")
    resumed_from: int | None


def run_description(model: TrainModel, config: TrainConfig, data) -> dict:
    """The JSON-able description whose fingerprint guards checkpoint resumption."""
    desc = {"config": config.as_dict(), "model": model.describe()}
    if hasattr(data, "describe"):
        desc["data"] = data.describe()
    return desc


def train(model: TrainModel, config: TrainConfig, state: TrainState, data, *,
          num_steps: int, rng: np.random.Generator, start_step: int = 0,
          checkpoint_dir: str | None = None, checkpoint_every: int | None = None,
          keep: int | None = 3, resume: bool = False, teacher=None, progress: bool = True,
          on_step: Callable[[int, TrainState, dict], None] | None = None,
          description: dict | None = None) -> TrainResult:
    """Run steps ``start_step .. num_steps - 1`` of ``train_step``.

    data: object with ``batch(step) -> dict``. Checkpoints (if
    ``checkpoint_dir``) after every ``checkpoint_every`` steps and at the end.
    ``resume=True`` restarts from the newest checkpoint in ``checkpoint_dir``
    (its state, step and rng replace ``state``, ``start_step`` and ``rng``),
    refusing one written by another configuration
    (:class:`refbasis.train.checkpoint.CheckpointMismatchError`).
    ``on_step(step, state, metrics)`` is called after each step (after its
    checkpoint); an exception there stops the run (used to simulate kills).
    """
    fn = "train"
    num_steps = check_int(num_steps, "num_steps", min_value=0, fn=fn)
    step = check_int(start_step, "start_step", min_value=0, fn=fn)
    if checkpoint_every is not None:
        checkpoint_every = check_int(checkpoint_every, "checkpoint_every", min_value=1, fn=fn)
    if (resume or checkpoint_every) and checkpoint_dir is None:
        raise ValueError(f"{fn}: argument 'checkpoint_dir' must be given with resume or "
                         f"checkpoint_every")
    desc = run_description(model, config, data) if description is None else description
    resumed_from = None
    if resume and latest_checkpoint(checkpoint_dir) is not None:
        state, step, rng, _ = load_checkpoint(checkpoint_dir, expected=desc)
        resumed_from = step
    history = []
    bar = tqdm(total=num_steps, initial=min(step, num_steps), disable=not progress,
               desc="train", unit="step", dynamic_ncols=True)
    metrics: dict = {}
    try:
        while step < num_steps:
            state, metrics = train_step(state, data.batch(step), step, rng,
                                        model=model, config=config, teacher=teacher)
            step += 1
            metrics = dict(metrics, step=step)
            history.append(metrics)
            if checkpoint_every and step % checkpoint_every == 0:
                save_checkpoint(checkpoint_dir, state, step, rng, desc, metrics=metrics,
                                keep=keep)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                            refresh=False)
            if on_step is not None:
                on_step(step, state, metrics)
    finally:
        bar.close()
    if checkpoint_dir is not None and history and (
            not checkpoint_every or step % checkpoint_every != 0):
        save_checkpoint(checkpoint_dir, state, step, rng, desc, metrics=metrics, keep=keep)
    return TrainResult(state=state, step=step, rng=rng, history=history,
                       resumed_from=resumed_from)

"""Training recipe of supplement B, as a reference.

RMSProp with TF semantics (:mod:`.rmsprop`), learning-rate / epsilon-mixing
schedules (:mod:`.schedules`), weight EMA (:mod:`.ema`), global-norm clipping
and L2 weight decay (:mod:`.clipping`), the pure train step (:mod:`.step`),
checkpoints (:mod:`.checkpoint`), the resumable loop (:mod:`.loop`) and the
"digits" preset (:mod:`.presets`). See docs/training.md.

Submodules are imported explicitly (``from refbasis.train.step import
train_step``); this package module imports nothing so that importing one piece
never pulls in the model stack.
"""

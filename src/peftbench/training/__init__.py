"""Training and evaluation: the trainer, the evaluator, checkpoints of run state, trackers."""

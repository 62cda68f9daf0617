"""Training, evaluation, prediction and checkpoints; task-agnostic where it can be."""

"""Training: the graph-mode train step, the trainer (data parallel, resume), checkpoints, progress."""

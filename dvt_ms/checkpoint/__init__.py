"""MindSpore checkpoint files: atomic writes, checked reads, model weights (with EMA preference)."""
from .store import atomic_save_checkpoint, check_shapes, read_checkpoint
from .weights import EMA_PREFIX, load_model_weights, load_pretrained

__all__ = ["EMA_PREFIX", "atomic_save_checkpoint", "check_shapes", "load_model_weights", "load_pretrained",
           "read_checkpoint"]

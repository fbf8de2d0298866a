"""Published PyTorch checkpoints -> MindSpore checkpoints, without PyTorch (docs/checkpoints.md)."""
from .published import convert_checkpoint, convert_state_dict, published_results_path
from .torch_pickle import load_torch_checkpoint

__all__ = ["convert_checkpoint", "convert_state_dict", "load_torch_checkpoint", "published_results_path"]

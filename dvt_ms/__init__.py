"""dvt-ms: the Dynamic Vision Transformer (DVT, NeurIPS 2021) in MindSpore.

Importing the package registers the presets in mindcv's model registry, so
``mindcv.create_model("dvt_t2t_vit_12")`` works too.
"""
from .cascade import DVT, create_model
from .presets import PRESETS, DVTConfig, build_config

__all__ = ["DVT", "DVTConfig", "PRESETS", "build_config", "create_model"]

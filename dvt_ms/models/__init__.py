"""The DVT model: presets and per-exit geometry, the Cells, analytic FLOPs.

Importing this package registers the presets in mindcv's model registry, so
``mindcv.create_model("dvt_t2t_vit_12")`` works too.
"""
from .cascade import DVT, create_model
from .presets import PRESETS, DVTConfig, ExitGeometry, build_config

__all__ = ["DVT", "DVTConfig", "ExitGeometry", "PRESETS", "build_config", "create_model"]

"""The DVT model: presets and per-exit geometry, the Cells, analytic FLOPs.

Importing this package registers every preset in mindcv's model registry, so
``mindcv.create_model("dvt_t2t_vit_12")`` works too. ``dvt-flops --list`` (``python -m dvt_ms.models.flops
--list``) lists the presets.
"""
from .cascade import DVT, create_model
from .presets import PRESETS, DVTConfig, ExitGeometry, build_config, list_presets, register_preset

__all__ = ["DVT", "DVTConfig", "ExitGeometry", "PRESETS", "build_config", "create_model", "list_presets",
           "register_preset"]

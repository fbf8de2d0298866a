"""dvt-ms: the Dynamic Vision Transformer (DVT, NeurIPS 2021) in MindSpore."""
from .presets import DVTConfig, PRESETS, build_config

__all__ = ["DVTConfig", "PRESETS", "build_config", "create_model"]


def create_model(name, **overrides):
    """Build preset ``name`` (see ``dvt_ms.presets.PRESETS``) with architecture ``overrides``."""
    from .cascade import create_model as _create
    return _create(name, **overrides)

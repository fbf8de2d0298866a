"""dvt-ms: the Dynamic Vision Transformer (DVT, NeurIPS 2021) in MindSpore.

The package follows the data flow (docs/architecture.md): ``models`` -> ``convert`` / ``train``
-> ``calibrate`` -> ``export`` -> ``deploy``. ``dvt_ms.create_model`` and the other model names
below load ``dvt_ms.models`` on first use (which registers the presets with mindcv), so that
deployment, which needs neither the model code nor mindcv, can import ``dvt_ms.deploy`` alone.
"""
import importlib

__version__ = "0.2.0"
__all__ = ["DVT", "DVTConfig", "PRESETS", "build_config", "create_model", "list_presets"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(".models", __name__), name)
    raise AttributeError(f"module 'dvt_ms' has no attribute {name!r}")

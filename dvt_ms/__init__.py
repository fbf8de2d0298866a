"""dvt-ms: the Dynamic Vision Transformer (DVT, NeurIPS 2021) in MindSpore.

The package follows the data flow (docs/architecture.md): ``models`` -> ``convert`` / ``train``
-> ``calibrate`` -> ``export`` -> ``deploy``. ``dvt_ms.create_model`` and the other model names
below load ``dvt_ms.models`` on first use (which registers the presets with mindcv), so that
deployment, which needs neither the model code nor mindcv, can import ``dvt_ms.deploy`` alone.
"""
import atexit
import importlib
import sys

__version__ = "0.2.0"
__all__ = ["DVT", "DVTConfig", "PRESETS", "build_config", "create_model", "list_presets"]


def _quiet_cell_teardown():
    """At interpreter exit, make MindSpore's ``Cell.__del__`` ignore the teardown's missing globals.

    Python clears modules' globals at exit before it frees what a script's globals still hold (a
    model at module level): ``Cell.__del__`` then finds ``mindspore.nn.cell.Cell`` set to None and
    prints "Exception ignored in: Cell.__del__" once per cell (763 for a T2T model). Exit handlers
    run before that clearing, so this one (registered when dvt_ms is imported) swaps in a
    ``__del__`` that keeps what it needs in default arguments and drops that error; the process is
    ending, and its resources go with it."""
    cell_module = sys.modules.get("mindspore.nn.cell")
    if cell_module is None:
        return

    def __del__(self, _original=cell_module.Cell.__del__, _teardown_errors=(AttributeError, TypeError)):
        try:
            _original(self)
        except _teardown_errors:
            pass

    cell_module.Cell.__del__ = __del__


atexit.register(_quiet_cell_teardown)


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module(".models", __name__), name)
    raise AttributeError(f"module 'dvt_ms' has no attribute {name!r}")

"""Write checkpoints in PyTorch's zip format without PyTorch, to build the converter's error cases.

Tensors are pickled exactly as torch.save does: a REDUCE of torch._utils._rebuild_tensor_v2 over a
persistent-id storage. The ``torch`` globals are stand-in modules that exist only while pickling.
"""
import collections
import contextlib
import io
import pickle
import sys
import types
import zipfile

import numpy as np

_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


@contextlib.contextmanager
def _fake_torch():
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only used for pickling")

    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    for name in _STORAGE_NAMES.values():
        storage_type = type(name, (), {"__module__": "torch", "__qualname__": name})
        setattr(torch, name, storage_type)
    torch._utils = utils
    saved = {key: sys.modules.get(key) for key in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield torch, utils
    finally:
        for key, module in saved.items():
            if module is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = module


class _Storage:
    def __init__(self, array, key):
        self.array, self.key = array, key


class _Tensor:
    def __init__(self, storage, rebuild):
        self.storage, self.rebuild = storage, rebuild

    def __reduce__(self):
        array = self.storage.array
        strides = tuple(s // array.itemsize for s in array.strides)
        return self.rebuild, (self.storage, 0, array.shape, strides, False, collections.OrderedDict())


def save_torch_checkpoint(path, obj):
    """torch.save(obj, path) for dicts/lists of numpy arrays (float32 or int64) and plain values."""
    storages = {}
    with _fake_torch() as (torch, utils):
        def wrap(value):
            if isinstance(value, np.ndarray):
                array = np.ascontiguousarray(value)
                storage = _Storage(array, str(len(storages)))
                storages[storage.key] = array
                return _Tensor(storage, utils._rebuild_tensor_v2)
            if isinstance(value, collections.OrderedDict):
                return collections.OrderedDict((k, wrap(v)) for k, v in value.items())
            if isinstance(value, dict):
                return {k: wrap(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return type(value)(wrap(v) for v in value)
            return value

        class _Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, _Storage):
                    storage_type = getattr(torch, _STORAGE_NAMES[obj.array.dtype])
                    return ("storage", storage_type, obj.key, "cpu", obj.array.size)
                return None

        buffer = io.BytesIO()
        _Pickler(buffer, protocol=2).dump(wrap(obj))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/version", "3\n")
        for key, array in storages.items():
            archive.writestr(f"archive/data/{key}", array.astype(array.dtype.newbyteorder("<")).tobytes())

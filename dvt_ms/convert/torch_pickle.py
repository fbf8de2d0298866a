"""Read PyTorch ``torch.save`` zip checkpoints without PyTorch, and without running their code.

A checkpoint is a zip archive holding ``<name>/data.pkl`` (a pickle) and ``<name>/data/<key>``
(raw little-endian tensor storages). The pickle refers to storages by persistent id and rebuilds
tensors through ``torch._utils._rebuild_tensor_v2``. We unpickle with an allow-list of exactly
those globals, so a malicious pickle cannot import or call anything else.
"""
import collections
import pickle
import zipfile

import numpy as np

from ..errors import CheckpointFormatError, UnsafeCheckpointError

__all__ = ["load_torch_checkpoint"]


_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": None,  # no numpy dtype: converted from raw uint16 below
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands in for ``torch.FloatStorage`` and friends: only carries the element type."""

    def __init__(self, name):
        self.name = name


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
    """Equivalent of ``torch._utils._rebuild_tensor_v2`` on a numpy storage."""
    del requires_grad, backward_hooks, metadata
    size = tuple(int(s) for s in size)
    if not size:
        return storage[storage_offset].copy()
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=tuple(int(s) * itemsize for s in stride))
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    del requires_grad, backward_hooks
    return data


def _ordered_dict(*args):
    return collections.OrderedDict(*args)


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): _ordered_dict,
}
_ALLOWED_GLOBALS.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, archive, prefix, source):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._source = source
        self._storages = {}

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self._source}: refusing to load '{module}.{name}': a tensor checkpoint only needs "
                "tensors, storages, ordered dicts, plain containers and numbers") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafeCheckpointError(f"{self._source}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            self._storages[key] = self._read_storage(storage_type.name, str(key), int(numel))
        return self._storages[key]

    def _read_storage(self, type_name, key, numel):
        member = f"{self._prefix}/data/{key}"
        try:
            raw = self._archive.read(member)
        except KeyError:
            raise CheckpointFormatError(f"{self._source}: storage '{member}' is missing") from None
        dtype = _STORAGE_DTYPES[type_name]
        if dtype is None:  # bfloat16: the high half of a float32
            bits = np.frombuffer(raw, dtype="<u2", count=numel).astype(np.uint32) << 16
            return bits.view(np.float32)
        array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"), count=numel)
        return array.astype(dtype, copy=False)


def load_torch_checkpoint(path):
    """Return the object saved in a PyTorch zip checkpoint, with tensors as numpy arrays.

    Raises ``CheckpointFormatError`` if ``path`` is not such a checkpoint and
    ``UnsafeCheckpointError`` if its pickle references anything outside the allow-list.
    """
    path = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise CheckpointFormatError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, IsADirectoryError, OSError) as err:
        raise CheckpointFormatError(
            f"{path}: not a PyTorch checkpoint (expected the zip format of torch.save: {err})") from None
    with archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointFormatError(
                f"{path}: not a PyTorch checkpoint (expected one '*/data.pkl' in the zip, found {len(pickles)})")
        prefix = pickles[0][: -len("/data.pkl")]
        with archive.open(pickles[0]) as handle:
            unpickler = _RestrictedUnpickler(handle, archive, prefix, path)
            try:
                return unpickler.load()
            except CheckpointFormatError:
                raise
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as err:
                raise CheckpointFormatError(f"{path}: corrupt checkpoint pickle ({err})") from None

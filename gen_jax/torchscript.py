"""Read the tensors and attributes of a TorchScript archive without torch.

A TorchScript file (`torch.jit.save`) is a zip archive: `<name>/data.pkl` pickles the module tree,
each tensor's bytes are in `<name>/data/<key>`, and `<name>/code/` holds the modules' source. The
pickle is read by a restricted unpickler that builds only tensors (as numpy arrays) and module
containers, and refuses every other global, so opening a file runs none of its code.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from gen_jax.errors import GenJaxError

STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class ScriptModule:
    """A pickled module: its attributes (tensors, submodules, ints and lists). Each TorchScript
    class becomes a subclass whose `class_name` is the class's qualified name."""

    class_name = ""
    attributes: dict[str, Any]

    def __setstate__(self, state: dict) -> None:
        self.attributes = dict(state)


def _module_class(qualified_name: str) -> type:
    return type("ScriptModule", (ScriptModule,), {"class_name": qualified_name})


def _rebuild_tensor(storage, offset, size, stride, *_ignored) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2: a view of `storage` (a flat array) with element strides."""
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)  # a contiguous copy


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        if module == "collections" and name == "OrderedDict":
            return dict
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_doublelist"):
            return list  # typed lists of module attributes (e.g. a convolution's padding)
        if module.startswith("__torch__."):
            return _module_class(f"{module}.{name}")
        raise pickle.UnpicklingError(f"refused to load {module}.{name} from a TorchScript file")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or storage_type not in STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unknown TorchScript storage {pid[:2]}")
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        return np.frombuffer(raw, STORAGE_DTYPES[storage_type], count=numel)


def load(path: str | Path) -> ScriptModule:
    """The root module of the TorchScript archive at `path`."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise GenJaxError(f"{path} is not a TorchScript archive (no single data.pkl)")
            prefix = pickles[0].rsplit("/", 1)[0]
            with archive.open(pickles[0]) as file:
                return _Unpickler(file, archive, prefix).load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, KeyError, ValueError, EOFError) as error:
        raise GenJaxError(f"{path} is not a readable TorchScript archive ({error})") from error


def named_tensors(module: ScriptModule, prefix: str = "") -> dict[str, np.ndarray]:
    """Every tensor below `module` by dotted path, as torch's `state_dict()` names them."""
    tensors = {}
    for name, value in module.attributes.items():
        if isinstance(value, np.ndarray):
            tensors[prefix + name] = value
        elif isinstance(value, ScriptModule):
            tensors.update(named_tensors(value, f"{prefix}{name}."))
    return tensors


def named_modules(module: ScriptModule, prefix: str = "") -> dict[str, ScriptModule]:
    """Every module below `module` (itself included, as "") by dotted path."""
    modules = {prefix.rstrip("."): module}
    for name, value in module.attributes.items():
        if isinstance(value, ScriptModule):
            modules.update(named_modules(value, f"{prefix}{name}."))
    return modules

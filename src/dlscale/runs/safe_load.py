"""Reading a checkpoint without running its code.

DCP's metadata file is a pickle, so it is read with an unpickler that only admits exact
(module, name) pairs of DCP's own metadata classes and a few torch types, and sets state
only on instances of them; every entry it lists must lie inside a plain shard file of the
checkpoint. DCP's non-tensor entries (optimizer hyperparameters) are pickled too: they go
through ``weights_only`` loading, and are taken only where the job expects a plain value,
of the kind it expects.
"""

from __future__ import annotations

import functools
import math
import pickle
from pathlib import Path
from typing import Any

import torch


# Every global DCP's metadata pickle names, as exact (module, name) pairs. Pickle resolves a
# dotted name attribute by attribute (``os.system`` reached through a module that imports
# os), so a name with a dot is never admitted, whatever module it claims to be in.
_METADATA_GLOBALS = frozenset({
    ("torch.distributed.checkpoint.metadata", "Metadata"),
    ("torch.distributed.checkpoint.metadata", "MetadataIndex"),
    ("torch.distributed.checkpoint.metadata", "StorageMeta"),
    ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "BytesStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "TensorProperties"),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
})


def _allowed(module: str, name: str) -> bool:
    """What DCP's metadata pickle may name: its own metadata classes and plain torch types."""
    if "." in name:
        return False
    if (module, name) in _METADATA_GLOBALS:
        return True
    return module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)


@functools.cache
def _metadata_classes() -> frozenset[Any]:
    """The allowed globals themselves, looked up once: only their instances may get state."""
    import importlib

    return frozenset(getattr(importlib.import_module(module), name) for module, name in _METADATA_GLOBALS)


class _MetadataUnpickler(pickle._Unpickler):  # the Python unpickler: its BUILD can be checked
    """Names only from the allow-list, and state set only on *instances* of those classes:
    pickle's BUILD calls setattr on whatever is on the stack, so a crafted file could
    otherwise rewrite an allowed class or function (``PosixPath.__fspath__``) for the rest
    of the process."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if not _allowed(module, name):
            raise pickle.UnpicklingError(f"its .metadata names {module}.{name}, which a checkpoint never needs")
        return super().find_class(module, name)

    def load_build(self) -> None:
        target, state = self.stack[-2], self.stack[-1]
        if isinstance(target, type) or type(target) not in _metadata_classes():
            raise pickle.UnpicklingError(f"its .metadata sets the state of {type(target).__name__}, which a checkpoint never does")
        if "__setstate__" not in vars(type(target)):  # (TensorProperties reads its own tuple)
            if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
                state = state[0]
            if not isinstance(state, dict) or not all(isinstance(k, str) and not k.startswith("__") for k in state):
                raise pickle.UnpicklingError("its .metadata holds an object state that is not plain data")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def safe_reader(path: Path):
    """DCP's file reader, with the metadata pickle read through the allow-list above."""
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            folder = Path(self.path)
            with (folder / ".metadata").open("rb") as handle:
                metadata = _MetadataUnpickler(handle).load()
            _check_storage(folder, metadata)
            if getattr(metadata, "storage_meta", None) is not None:
                metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(Path(path))


def _check_storage(folder: Path, metadata: Any) -> None:
    """Every entry lies inside a shard file of this checkpoint: never a path outside it
    (an absolute path, ``..``), a FIFO that blocks, or bytes past the end of the file."""
    from torch.distributed.checkpoint.metadata import Metadata

    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
        raise pickle.UnpicklingError("its .metadata is not DCP's metadata")
    sizes: dict[str, int] = {}
    for info in metadata.storage_data.values():
        name = getattr(info, "relative_path", None)
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            raise pickle.UnpicklingError(f"an entry points at {name!r}, outside the checkpoint's own files")
        if name not in sizes:
            shard = folder / name
            if shard.is_symlink() or not shard.is_file():
                raise pickle.UnpicklingError(f"an entry points at {name}, which is not a plain file of the checkpoint")
            sizes[name] = shard.stat().st_size
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (offset, length)) or offset + length > sizes[name]:
            raise pickle.UnpicklingError(f"an entry lies outside its shard file {name}")


def safe_planner():
    """DCP's load planner, but a non-tensor ("byte") entry is read with
    ``torch.load(weights_only=True)`` and only where the state dict expects a plain value.

    DCP stores what is not a tensor (the optimizer's ``param_groups`` values) as pickled
    bytes and its own planner unpickles them with ``weights_only=False``: a tampered entry
    would run code. Here such an entry can only be plain data (numbers, strings, lists,
    tensors), it may not replace a tensor, and it must have the type the job expects."""
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import get_element, set_element

    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    class SafePlanner(DefaultLoadPlanner):
        def create_local_plan(self) -> Any:
            plan = super().create_local_plan()
            # parts not asked for (the optimizer, when only the model is loaded) are never read
            asked = tuple(f"{key}." for key in self.original_state_dict)
            for fqn, entry in self.metadata.state_dict_metadata.items():
                if isinstance(entry, BytesStorageMetadata) and fqn.startswith(asked) and fqn not in self.state_dict:
                    raise ValueError(f"it holds a pickled entry {fqn} that this run does not expect")
            return plan

        def load_bytes(self, read_item: Any, value: Any) -> None:
            fqn = read_item.dest_index.fqn
            if fqn not in self.state_dict:
                raise ValueError(f"it holds a pickled entry {fqn} that this run does not expect")
            path = self.mappings.get(fqn) if self.flatten_state_dict else None
            expected = get_element(self.original_state_dict, path) if path is not None else self.state_dict[fqn]
            if isinstance(expected, torch.Tensor):
                raise ValueError(f"it stores {fqn} as a pickled object where this run expects a tensor")
            try:
                loaded = torch.load(value, map_location="cpu", weights_only=True)
            except Exception as exc:  # UnpicklingError names the global weights_only refused
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                for line in str(exc).splitlines():
                    if "Unsupported global" in line or "GLOBAL" in line:
                        reason = line.strip()
                        break
                raise ValueError(f"its entry {fqn} is not plain data ({reason[:160]})") from None
            if not same_kind(loaded, expected):
                raise ValueError(
                    f"its entry {fqn} holds a {type(loaded).__name__} where this run expects a {type(expected).__name__}"
                )
            if path is not None:
                set_element(self.original_state_dict, path, loaded)
            else:
                self.state_dict[fqn] = loaded

    return SafePlanner()


def same_kind(loaded: Any, expected: Any) -> bool:
    """Plain values keep their kind, all the way down: a number stays a number, a pair of
    numbers a pair of numbers, a dict keeps its keys."""
    numbers = (int, float)
    if isinstance(expected, bool) or isinstance(loaded, bool):
        return type(loaded) is type(expected)
    if isinstance(expected, numbers):
        return isinstance(loaded, numbers) and (not isinstance(loaded, float) or math.isfinite(loaded) or not math.isfinite(expected))
    if isinstance(expected, torch.Tensor):
        return isinstance(loaded, torch.Tensor) and loaded.dtype == expected.dtype
    if isinstance(expected, (list, tuple)):
        if not isinstance(loaded, (list, tuple)):
            return False
        if isinstance(expected, tuple) or (expected and len({type(e) for e in expected}) > 1):
            return len(loaded) == len(expected) and all(same_kind(a, b) for a, b in zip(loaded, expected))
        return not expected or all(same_kind(a, expected[0]) for a in loaded)  # a list of like items, any length
    if isinstance(expected, dict):
        return isinstance(loaded, dict) and loaded.keys() == expected.keys() and all(
            same_kind(loaded[k], expected[k]) for k in expected
        )
    return type(loaded) is type(expected)

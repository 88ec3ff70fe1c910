"""Refuse a PyTorch checkpoint whose pickle could run code, before anything unpickles it.

Unpickling calls whatever the pickle names: `torch.load` of a third-party `.pt` can run `os.system`. We walk the
pickle's opcodes with `pickletools.genops` (which decodes, never executes) and follow a symbolic stack, so that
every global the pickle imports and every call it makes is checked against an allow-list:

- globals: `collections.OrderedDict`, the builtins `set` and `getattr`, torch's tensor rebuilders, storages and
  `torch.Size`, and `torch.nn.Module` subclasses defined in `torch` or `ultralytics` (the layers of a YOLO model);
- calls (REDUCE): only the rebuilders, `OrderedDict`, `set`, `torch.Size` and `getattr`, the last only as
  `getattr(<an Ultralytics layer class>, "<public name>")` (Ultralytics' checkpoints store `Detect.forward` that way)
  and its result never called;
- object creation (NEWOBJ, OBJ, INST): only the allowed layer classes (`cls.__new__`, no `__init__` with pickled
  arguments).

Both of torch's formats are read: the zip archive (one `*/data.pkl`) and the legacy stream of pickles.
"""

from __future__ import annotations

import importlib
import io
import pickletools
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# torch._utils functions that rebuild tensors from storages. `_rebuild_from_type_v2` is left out: it calls an
# argument taken from the pickle.
_REBUILDERS = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state"}
_CALLABLE_BUILTINS = {"set", "getattr"}
_LEGACY_PICKLES = 5  # magic number, protocol version, sys info, the object, storage keys (torch's _legacy_load)
_MUTATING = {"BUILD", "SETITEM", "SETITEMS", "APPEND", "APPENDS", "ADDITEMS"}  # they change their target object
_PUBLIC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")  # no dunders: getattr(cls, "__globals__") is refused


class UnsafeCheckpoint(Exception):
    """The checkpoint names a global or makes a call outside the allow-list; it was not loaded."""


@dataclass(frozen=True)
class _Global:
    module: str
    name: str
    kind: str  # "layer" (an nn.Module class), "call" (an allowed callable), "value" (storage type, dtype)

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class _Attr:
    """The result of the allowed getattr: a function, which must not be called."""

    of: str


@dataclass(frozen=True)
class _Str:
    value: str


@dataclass(frozen=True)
class _Tuple:
    items: tuple[Any, ...]


class _Mark:
    pass


_MARK = _Mark()
_OTHER = object()  # any other value: numbers, dicts, objects under construction


def scan_checkpoint(path: Path) -> int:
    """Check every pickle torch.load would unpickle from `path`; returns how many globals were checked.

    Raises UnsafeCheckpoint naming the first global or call outside the allow-list, or when the file is not a
    checkpoint in a format we can check.
    """
    data = path.read_bytes()
    # The format is told the way torch.load tells it (the first bytes), so a file that is a zip to one reader and a
    # pickle stream to the other is judged by what torch would unpickle.
    if data[:4] == b"PK\x03\x04":
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as exc:
            raise UnsafeCheckpoint(f"{path.name}: a broken zip checkpoint ({exc})") from exc
        with archive:
            names = archive.namelist()
            if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
                raise UnsafeCheckpoint(f"{path.name}: a TorchScript archive (runs its own code), not a checkpoint")
            pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise UnsafeCheckpoint(
                    f"{path.name}: expected one data.pkl in the zip checkpoint, found {len(pickles)}"
                )
            return _scan(archive.read(pickles[0]), f"{path.name}:{pickles[0]}")
    if tarfile.is_tarfile(io.BytesIO(data)):
        # torch's oldest format (a tar of pickles) is tried before the legacy stream: refuse rather than guess
        raise UnsafeCheckpoint(f"{path.name}: a tar checkpoint (torch's oldest format) is not supported")
    stream = io.BytesIO(data)
    checked = 0
    for index in range(_LEGACY_PICKLES):
        start = stream.tell()
        if start >= len(data):
            break
        try:
            ops = list(pickletools.genops(stream))
        except Exception as exc:  # genops raises ValueError and others on bytes that are not a pickle
            raise UnsafeCheckpoint(
                f"{path.name}: not a torch checkpoint (pickle {index} at byte {start}: {exc})"
            ) from exc
        checked += _check(ops, f"{path.name} (legacy pickle {index})")
    return checked


def _scan(pickle_bytes: bytes, where: str) -> int:
    try:
        ops = list(pickletools.genops(pickle_bytes))
    except Exception as exc:
        raise UnsafeCheckpoint(f"{where}: unreadable pickle ({exc})") from exc
    return _check(ops, where)


def _resolve(module: str, name: str, where: str) -> _Global:
    """Classify an imported global, or refuse it. Importing torch/ultralytics modules runs only installed code."""
    refused = UnsafeCheckpoint(
        f"{where}: refuses global {module}.{name} (allowed: torch tensors and layers, Ultralytics layers, "
        "collections.OrderedDict, set, getattr); the file was not loaded"
    )
    root = module.split(".")[0]
    if module in {"builtins", "__builtin__"}:
        if name in _CALLABLE_BUILTINS:
            return _Global("builtins", name, "call")
        raise refused
    if module == "collections":
        if name == "OrderedDict":
            return _Global(module, name, "call")
        raise refused
    if root not in {"torch", "ultralytics"} or "." in name:
        raise refused
    import torch

    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UnsafeCheckpoint(f"{where}: names {module}.{name}, which does not exist here ({exc})") from exc
    if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__module__.split(".")[0] == root:
        return _Global(module, name, "layer")
    if root == "torch":
        if module == "torch._utils" and name in _REBUILDERS:
            return _Global(module, name, "call")
        if obj is torch.Size:
            return _Global(module, name, "call")
        if isinstance(obj, torch.dtype) or (isinstance(obj, type) and name.endswith("Storage")):
            return _Global(module, name, "value")  # named in persistent ids; torch's own loader builds them
    raise refused


def _check(ops: list[tuple[pickletools.OpcodeInfo, Any, int | None]], where: str) -> int:
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    checked = 0

    def pop_mark() -> list[Any]:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1 :]
                del stack[i:]
                return items
        raise UnsafeCheckpoint(f"{where}: malformed pickle (no mark)")

    def pop() -> Any:
        if not stack:
            raise UnsafeCheckpoint(f"{where}: malformed pickle (stack underflow)")
        return stack.pop()

    def call(func: Any, args: Any, op: str) -> None:
        if isinstance(func, _Global) and func.kind == "call":
            if func.name == "getattr" and func.module == "builtins":
                items = args.items if isinstance(args, _Tuple) else ()
                ok = (
                    len(items) == 2
                    and isinstance(items[0], _Global)
                    and items[0].kind == "layer"
                    and items[0].module.split(".")[0] == "ultralytics"
                    and isinstance(items[1], _Str)
                    and _PUBLIC_NAME.match(items[1].value) is not None
                )
                if not ok:
                    raise UnsafeCheckpoint(
                        f"{where}: refuses a getattr other than getattr(<Ultralytics layer class>, '<public name>'); "
                        "the file was not loaded"
                    )
                stack.append(_Attr(f"{items[0]}.{items[1].value}"))
                return
            stack.append(_OTHER)
            return
        raise UnsafeCheckpoint(
            f"{where}: refuses {op} of {_describe(func)} (not an allowed call); the file was not loaded"
        )

    def construct(cls: Any, op: str) -> None:
        if not (isinstance(cls, _Global) and cls.kind == "layer"):
            raise UnsafeCheckpoint(
                f"{where}: refuses {op} of {_describe(cls)} (only layer classes); the file was not loaded"
            )
        stack.append(_OTHER)

    for op, arg, _pos in ops:
        name = op.name
        if name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            stack.append(_resolve(module, attr, where))
            checked += 1
        elif name == "STACK_GLOBAL":
            attr, module = pop(), pop()
            if not (isinstance(module, _Str) and isinstance(attr, _Str)):
                raise UnsafeCheckpoint(f"{where}: STACK_GLOBAL with computed names")
            stack.append(_resolve(module.value, attr.value, where))
            checked += 1
        elif name == "REDUCE":
            args, func = pop(), pop()
            call(func, args, "call")
        elif name == "NEWOBJ":
            pop()
            construct(pop(), "creation")
        elif name == "NEWOBJ_EX":
            pop(), pop()
            construct(pop(), "creation")
        elif name == "OBJ":
            items = pop_mark()
            construct(items[0] if items else None, "creation")
        elif name == "INST":
            module, _, attr = str(arg).partition(" ")
            pop_mark()
            construct(_resolve(module, attr, where), "creation")
            checked += 1
        elif name == "BINPERSID":
            # torch's legacy format saves a layer class as the persistent id ("module", cls, file, source), and its
            # persistent_load returns cls; storages ("storage", ...) come back as opaque values
            pid = pop()
            pid_items: tuple[Any, ...] = pid.items if isinstance(pid, _Tuple) else ()
            module_class = len(pid_items) > 1 and pid_items[0] == _Str("module") and isinstance(pid_items[1], _Global)
            stack.append(pid_items[1] if module_class else _OTHER)
        elif name in {"EXT1", "EXT2", "EXT4"}:
            raise UnsafeCheckpoint(f"{where}: refuses copyreg extension codes ({name})")
        elif name == "MARK":
            stack.append(_MARK)
        elif name in {"PUT", "BINPUT", "LONG_BINPUT"}:
            memo[int(arg)] = stack[-1] if stack else _OTHER
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else _OTHER
        elif name in {"GET", "BINGET", "LONG_BINGET"}:
            if int(arg) not in memo:
                raise UnsafeCheckpoint(f"{where}: malformed pickle (memo {arg} unset)")
            stack.append(memo[int(arg)])
        elif name in {
            "UNICODE",
            "BINUNICODE",
            "SHORT_BINUNICODE",
            "BINUNICODE8",
            "STRING",
            "BINSTRING",
            "SHORT_BINSTRING",
        }:
            stack.append(_Str(str(arg)))
        elif name in {"TUPLE1", "TUPLE2", "TUPLE3"}:
            n = int(name[-1])
            stack.append(_Tuple(tuple(pop() for _ in range(n))[::-1]))
        elif name == "TUPLE":
            stack.append(_Tuple(tuple(pop_mark())))
        elif name == "EMPTY_TUPLE":
            stack.append(_Tuple(()))
        elif name == "STOP":
            break
        else:
            _generic(op, stack, pop, pop_mark, where)
    return checked


def _generic(op: pickletools.OpcodeInfo, stack: list[Any], pop: Any, pop_mark: Any, where: str) -> None:
    """Any other opcode: take what it consumes, push an opaque value for what it produces (pickletools' own model).

    Opaque values are never callable, so losing track of a value can only refuse more, never allow more.
    """
    before = list(op.stack_before)
    if pickletools.markobject in before:
        pop_mark()
        before = before[: before.index(pickletools.markobject)]
    taken = [pop() for _ in before]
    if op.name in _MUTATING and taken and isinstance(taken[-1], (_Global, _Attr)):
        # BUILD/SETITEM on a class or function would set attributes on trusted code
        raise UnsafeCheckpoint(f"{where}: refuses {op.name} on {_describe(taken[-1])}; the file was not loaded")
    for _ in op.stack_after:
        stack.append(_OTHER)


def _describe(value: Any) -> str:
    if isinstance(value, _Global):
        return str(value)
    if isinstance(value, _Attr):
        return f"getattr result {value.of}"
    return "a computed value"

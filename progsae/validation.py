"""Checks at the boundary: JSON files, dataclass fields read from JSON, safetensors headers, tensor values.

Every reader of a file a user hands us goes through these, so a hostile file gives one line naming it
(a ProgsaeError) instead of a traceback, a MemoryError or a silent NaN.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch

from progsae.errors import ProgsaeError

MAX_JSON_BYTES = 64 << 20  # configs and metadata are kilobytes; a larger file is not one of ours
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on a header
ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def read_json_object(path, what: str = "JSON file") -> dict[str, Any]:
    """The JSON object in `path`; anything else (missing, unreadable, not JSON, not an object, too deep) is one line."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ProgsaeError(f"{path}: is a folder, expected a {what}")
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ProgsaeError(f"{path}: {path.stat().st_size} bytes is too large for a {what}")
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ProgsaeError(f"{path}: no such file") from None
    except PermissionError:
        raise ProgsaeError(f"{path}: permission denied") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProgsaeError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise ProgsaeError(f"{path}: JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProgsaeError(f"{path}: expected a JSON object, got {_json_kind(obj)}")
    return obj


def _json_kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(v), "a number")


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type annotation (int, float, str, bool, list[X], tuple[X, Y], dict, X | None, Any)."""
    if hint is Any:
        return True
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, p) for p in params)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list or hint is list:
        return isinstance(value, list) and all(_matches(v, params[0]) for v in value) if params else isinstance(value, list)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and len(value) == len(params) and all(_matches(v, p) for v, p in zip(value, params))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, (dict, hint))
    return True  # a type JSON cannot spell: checked by the dataclass's own validate()


def _hint_text(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def from_json_dict(cls, values: Any, source: str, where: str = ""):
    """An instance of dataclass `cls` from a JSON object: unknown keys, missing required keys and wrong types are one line."""
    at = f" in '{where}'" if where else ""
    if not isinstance(values, dict):
        raise ProgsaeError(f"{source}: {where or 'the config'} must be a JSON object, got {_json_kind(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ProgsaeError(f"{source}: unknown keys {unknown}{at} (known: {sorted(fields)})")
    missing = [n for n, f in fields.items() if f.init and n not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ProgsaeError(f"{source}: missing required key '{missing[0]}'{at}")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if not _matches(value, hints[name]):
            raise ProgsaeError(f"{source}: '{(where + '.') if where else ''}{name}' must be {_hint_text(hints[name])}, got {_json_kind(value)} {_short(value)}")
    return cls(**values)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def safetensors_header(path) -> tuple[int, dict[str, Any]]:
    """(byte offset of the data, header) of a safetensors file, checked against the file's size before anything is read."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ProgsaeError(f"{path}: truncated safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8 or header_len > MAX_HEADER_BYTES:
                raise ProgsaeError(f"{path}: corrupt safetensors header (it claims {header_len} bytes, the file has {size})")
            header = json.loads(f.read(header_len).decode("utf-8"))
    except FileNotFoundError:
        raise ProgsaeError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ProgsaeError(f"{path}: is a folder, expected a safetensors file") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ProgsaeError(f"{path}: corrupt safetensors header (not a JSON object)") from None
    if not isinstance(header, dict):
        raise ProgsaeError(f"{path}: corrupt safetensors header (not a JSON object)")
    base = 8 + header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(info, dict) and isinstance(info.get("dtype"), str) and _int_list(info.get("shape"))
                and _int_list(info.get("data_offsets")) and len(info["data_offsets"]) == 2):
            raise ProgsaeError(f"{path}: corrupt safetensors header (entry {name!r} lacks dtype, shape or data_offsets)")
        start, end = info["data_offsets"]
        itemsize = ST_ITEMSIZE.get(info["dtype"])
        if not 0 <= start <= end or base + end > size:
            raise ProgsaeError(f"{path}: truncated or corrupt safetensors file (tensor {name} needs bytes up to {base + end}, the file has {size})")
        if itemsize is not None and math.prod(info["shape"]) * itemsize != end - start:
            raise ProgsaeError(f"{path}: corrupt safetensors header (tensor {name}: shape {info['shape']} does not fill {end - start} bytes)")
    return base, header


def _int_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


def first_nonfinite(t: torch.Tensor | np.ndarray) -> tuple[int, ...] | None:
    """Index of the first NaN or inf of a floating tensor, None when all are finite (or it is not floating)."""
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        return None
    bad = ~torch.isfinite(t)
    return tuple(int(i) for i in bad.nonzero()[0]) if bool(bad.any()) else None


def check_finite(tensors: dict[str, torch.Tensor | np.ndarray], source: str) -> None:
    """Refuse NaN or inf in any floating tensor, naming the tensor and its first bad index."""
    for name, t in tensors.items():
        first = first_nonfinite(t)
        if first is not None:
            raise ProgsaeError(f"{source}: tensor {name} holds NaN or inf (first at index {first[0] if len(first) == 1 else first})")

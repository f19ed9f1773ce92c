"""OIP tensors: datatypes, shapes, JSON ``data`` and the binary tensor data extension.

Binary data follows the JSON header (its length in ``Inference-Header-Content-Length``), one
slice per input in input order, sized by the input's ``parameters.binary_data_size``; numbers
are little-endian and a BYTES element is a 4-byte little-endian length, then its bytes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..errors import APIError

HEADER_LENGTH = "Inference-Header-Content-Length"

# Datatype -> little-endian numpy dtype of one element (BYTES elements are length-prefixed).
DATATYPES: dict[str, str | None] = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "BYTES": None,
}
INT_TYPES = frozenset(name for name in DATATYPES if "INT" in name)
NUMBER_TYPES = INT_TYPES | {"FP16", "FP32", "FP64"}


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    values: list  # flat, row-major: str for BYTES, else bool / int / float


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it (binary tensor data extension)."""
    if header_length is None:
        return body, b""
    try:
        size = int(header_length)
    except ValueError:
        raise APIError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
    if not 0 <= size <= len(body):
        raise APIError(f"{HEADER_LENGTH} must be from 0 to the body size {len(body)}, got {size}")
    return body[:size], body[size:]


class BinaryReader:
    """Hands out the binary data after the JSON header, in input order, by ``binary_data_size``."""

    def __init__(self, data: bytes, has_header: bool) -> None:
        self.data, self.offset, self.has_header = data, 0, has_header

    def take(self, name: str, size: object) -> bytes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise APIError(f"input '{name}': parameters.binary_data_size must be an integer >= 0, got {describe(size)}")
        if not self.has_header:
            raise APIError(f"input '{name}' has parameters.binary_data_size but the request has no {HEADER_LENGTH} header")
        left = len(self.data) - self.offset
        if size > left:
            raise APIError(f"input '{name}': binary_data_size is {size} but only {left} bytes of binary data remain")
        self.offset += size
        return self.data[self.offset - size:self.offset]

    def check_consumed(self) -> None:
        if self.offset != len(self.data):
            raise APIError(f"{len(self.data) - self.offset} bytes of binary data after the JSON header "
                           "belong to no input's binary_data_size")


def parse_tensor(item: object, reader: BinaryReader, accepted: Mapping[str, frozenset[str]]) -> Tensor:
    """One input tensor, its values flat; ``accepted`` maps each input name we take to its datatypes."""
    if not isinstance(item, dict):
        raise APIError(f"each input must be a tensor object, got {describe(item)}")
    name = item.get("name")
    if not isinstance(name, str):
        raise APIError(f"each input needs a string 'name', got {describe(name)}")
    if name not in accepted:
        raise APIError(f"unknown input '{name}'; this model takes {', '.join(accepted)}")
    datatype = item.get("datatype")
    if datatype not in DATATYPES:
        raise APIError(f"input '{name}': unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    if datatype not in accepted[name]:
        raise APIError(f"input '{name}' must have datatype {' or '.join(sorted(accepted[name]))}, got {datatype}")
    shape = item.get("shape")
    if not isinstance(shape, list) or any(isinstance(d, bool) or not isinstance(d, int) for d in shape):
        raise APIError(f"input '{name}': shape must be a list of integers, got {describe(shape)}")
    if any(d < 0 for d in shape):
        raise APIError(f"input '{name}': shape dimensions must be >= 0, got {shape}")
    count = math.prod(shape)
    parameters = item.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise APIError(f"input '{name}': parameters must be an object, got {describe(parameters)}")
    if "binary_data_size" in parameters:
        if "data" in item:
            raise APIError(f"input '{name}' has both 'data' and parameters.binary_data_size; give one")
        values = _decode_binary(name, datatype, count, reader.take(name, parameters["binary_data_size"]))
    elif "data" in item:
        values = [_check_element(name, datatype, v) for v in _flatten(item["data"])]
    else:
        raise APIError(f"input '{name}' has no data: give 'data' or parameters.binary_data_size")
    if len(values) != count:
        raise APIError(f"input '{name}': shape {shape} needs {count} elements, got {len(values)}")
    return Tensor(name, datatype, shape, values)


def _flatten(data: object) -> list:
    """Row-major elements of flat or nested JSON data (iterative: the nesting depth is the client's)."""
    flat, stack = [], [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def _check_element(name: str, datatype: str, value: object) -> object:
    if datatype == "BYTES":
        ok = isinstance(value, str)
    elif datatype == "BOOL":
        ok = isinstance(value, bool)
    elif datatype in INT_TYPES:
        info = np.iinfo(DATATYPES[datatype])
        ok = isinstance(value, int) and not isinstance(value, bool) and info.min <= value <= info.max
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise APIError(f"input '{name}': {describe(value)} is not a valid {datatype} element")
    return value


def _decode_binary(name: str, datatype: str, count: int, raw: bytes) -> list:
    if datatype == "BYTES":
        return _decode_bytes(name, raw)
    dtype = np.dtype(DATATYPES[datatype])
    if len(raw) != count * dtype.itemsize:
        raise APIError(f"input '{name}': {count} {datatype} elements take {count * dtype.itemsize} bytes, "
                       f"got binary_data_size {len(raw)}")
    return np.frombuffer(raw, dtype).tolist()


def _decode_bytes(name: str, raw: bytes) -> list[str]:
    """BYTES elements in binary form: each a 4-byte little-endian length, then that many UTF-8 bytes."""
    values, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise APIError(f"input '{name}': binary BYTES data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise APIError(f"input '{name}': a BYTES element claims {length} bytes, only {len(raw) - offset} remain")
        try:
            values.append(raw[offset:offset + length].decode("utf-8"))
        except UnicodeDecodeError as err:
            raise APIError(f"input '{name}': BYTES element {len(values)} is not UTF-8 text ({err})") from None
        offset += length
    return values


def encode_bytes(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(data)) + data for data in (v.encode("utf-8") for v in values))


def describe(value: object) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"

"""The header of a GGUF file: its metadata and tensor table, read without gguf-py's ``GGUFReader``.

``GGUFReader`` builds a numpy view per metadata item, which takes about 6 s on a 150k-token vocabulary (every
Qwen GGUF), and Teeny reads headers many times in a run (checking files, sizes, context length). This reader
walks the same layout with ``struct`` over a memory map, skipping array contents, in a fraction of a second.

Layout (GGUF v2/v3, little- or big-endian): magic ``GGUF``, uint32 version, uint64 tensor count, uint64 metadata
count; each metadata item is a string key, a uint32 value type and the value (a string is a uint64 length and
UTF-8 bytes; an array is a uint32 element type, a uint64 count and the elements); each tensor is a string name,
a uint32 dimension count, uint64 dimensions, a uint32 ggml type and a uint64 offset into the data section, which
starts at the next multiple of ``general.alignment`` (32 by default) after the tensor table.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import struct
from pathlib import Path
from typing import Any

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class GGUFHeaderError(ValueError):
    """The file is not a complete GGUF file; the message says what is wrong."""


@dataclasses.dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # GGUF order (fastest-varying dimension first)
    type: int  # ggml type id
    offset: int  # from the start of the data section
    n_elements: int
    n_bytes: int

    @property
    def type_name(self) -> str:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(self.type).name


@dataclasses.dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]  # scalars and strings by key; an array's value is its element count (see arrays)
    arrays: set[str]  # keys whose metadata value is an array (their ``metadata`` entry is its length)
    tensors: list[GGUFTensor]
    data_start: int
    file_size: int


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Parse ``path``'s header and check that every tensor's data lies inside the file.

    Raises :class:`GGUFHeaderError` for a bad magic or version, a header cut short, an unknown value or tensor
    type, or tensor data past the end of the file."""
    from gguf import GGML_QUANT_SIZES

    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < 24:
            raise GGUFHeaderError(f"{size} bytes, shorter than a GGUF header")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if buf[:4] != b"GGUF":
            raise GGUFHeaderError(f"magic {bytes(buf[:4])!r}, expected b'GGUF'")
        order = "<" if struct.unpack_from("<I", buf, 4)[0] & 0xFFFF else ">"  # a swapped version reads as 2**24+
        version = struct.unpack_from(order + "I", buf, 4)[0]
        if version not in (2, 3):
            raise GGUFHeaderError(f"version {version}, expected 2 or 3")
        n_tensors, n_kv = struct.unpack_from(order + "QQ", buf, 8)
        pos = 24

        def take(fmt: str):
            nonlocal pos
            value = struct.unpack_from(order + fmt, buf, pos)
            pos += struct.calcsize(order + fmt)
            return value[0] if len(value) == 1 else value

        def string() -> str:
            nonlocal pos
            n = take("Q")
            if pos + n > size:
                raise GGUFHeaderError(f"a string of {n} bytes at offset {pos} runs past the end of the file")
            pos += n
            return bytes(buf[pos - n:pos]).decode("utf-8", errors="replace")

        def skip(vtype: int, count: int) -> None:
            nonlocal pos
            if vtype == _STRING:
                for _ in range(count):
                    pos += 8 + struct.unpack_from(order + "Q", buf, pos)[0]
            elif vtype in _SCALARS:
                pos += count * struct.calcsize(_SCALARS[vtype])
            elif vtype == _ARRAY:
                for _ in range(count):
                    inner, n = take("I"), take("Q")
                    skip(inner, n)
            else:
                raise GGUFHeaderError(f"unknown metadata value type {vtype}")

        metadata: dict[str, Any] = {}
        arrays: set[str] = set()
        for _ in range(n_kv):
            key, vtype = string(), take("I")
            if vtype == _STRING:
                metadata[key] = string()
            elif vtype in _SCALARS:
                metadata[key] = take(_SCALARS[vtype])
            elif vtype == _ARRAY:
                inner, count = take("I"), take("Q")
                skip(inner, count)
                metadata[key] = count
                arrays.add(key)
            else:
                raise GGUFHeaderError(f"metadata {key!r} has unknown value type {vtype}")
        raw = []
        for _ in range(n_tensors):
            name, n_dims = string(), take("I")
            shape = tuple(take("Q") for _ in range(n_dims))
            raw.append((name, shape, take("I"), take("Q")))
        if pos > size:
            raise GGUFHeaderError("the tensor table runs past the end of the file")
    except struct.error as exc:
        raise GGUFHeaderError(f"header cut short ({exc})") from None
    except RecursionError:
        raise GGUFHeaderError("metadata arrays nested too deep to be a real GGUF header") from None
    finally:
        buf.close()
    alignment = metadata.get("general.alignment", 32)
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0:
        raise GGUFHeaderError(f"general.alignment is {alignment!r}, expected a positive integer")
    data_start = -(-pos // alignment) * alignment
    tensors = []
    for name, shape, ttype, offset in raw:
        if ttype not in GGML_QUANT_SIZES:
            raise GGUFHeaderError(f"tensor {name!r} has unknown ggml type {ttype}")
        block, type_size = GGML_QUANT_SIZES[ttype]
        n = math.prod(shape)
        n_bytes = n // block * type_size
        if data_start + offset + n_bytes > size:
            raise GGUFHeaderError(f"tensor {name!r} ends at byte {data_start + offset + n_bytes}, past the end of "
                                  f"the file ({size} bytes): the file is cut short")
        tensors.append(GGUFTensor(name, shape, ttype, offset, n, n_bytes))
    return GGUFHeader(version, metadata, arrays, tensors, data_start, size)

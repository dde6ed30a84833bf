"""Calling ``llama_model_quantize`` from Python: type tables, parameters, and one-line errors with the reason."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Any

from teeny_core import TeenyError

# llama.cpp file types a user can ask for (names as llama-quantize spells them)
FILE_TYPES = (
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1",
    "Q4_0", "IQ4_XS", "IQ4_NL", "Q3_K_L", "Q3_K_M", "Q3_K_S", "IQ3_M", "IQ3_S", "IQ3_XS", "IQ3_XXS", "Q2_K",
    "Q2_K_S", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S", "TQ2_0", "TQ1_0",
)
FLOAT_TYPES = ("F32", "F16", "BF16")
# types llama.cpp refuses to produce without an importance matrix (llama-quant.cpp: tensor_requires_imatrix)
REQUIRES_IMATRIX = ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S", "Q2_K_S")
# per-tensor ggml types for the output / token-embedding overrides
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "Q3_K",
                "Q2_K", "IQ4_XS", "IQ4_NL", "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S")

_lock = threading.Lock()  # the log callback is process-global


def ftype_value(name: str) -> int:
    """The ``llama_ftype`` enum value for a file type name; a one-line error lists the valid ones."""
    import llama_cpp

    key = name.upper()
    attr = "LLAMA_FTYPE_ALL_F32" if key == "F32" else f"LLAMA_FTYPE_MOSTLY_{key}"
    if key not in FILE_TYPES or not hasattr(llama_cpp, attr):
        raise TeenyError(f"GGUF type {name!r} is not valid; expected one of {', '.join(FILE_TYPES)}")
    return int(getattr(llama_cpp, attr))


def tensor_type_value(name: str, what: str) -> int:
    import gguf

    if name.upper() not in TENSOR_TYPES:
        raise TeenyError(f"{what} {name!r} is not valid; expected auto or one of {', '.join(TENSOR_TYPES)}")
    return int(gguf.GGMLQuantizationType[name.upper()])


def quantize_file(src: Path, dst: Path, ftype: str, *, nthread: int = 0, output_tensor_type: str = "auto",
                  token_embedding_type: str = "auto", imatrix_means: dict[str, Any] | None = None,
                  pure: bool = False, leave_output_tensor: bool = False,
                  metadata: dict[str, int | str] | None = None, tensor_types: dict[str, str] | None = None) -> list[str]:
    """Quantize GGUF ``src`` into ``dst`` with llama.cpp; return llama.cpp's log lines.

    ``metadata`` adds string/int keys (e.g. ``quantize.imatrix.entries_count``) to the output; ``tensor_types``
    (GGUF tensor name -> ggml type) overrides the file type's choice for those tensors (llama-quantize's
    ``--tensor-type``, here as anchored regexes through ``tt_overrides``). A non-zero return raises a one-line
    :class:`TeenyError` naming the type and llama.cpp's reason.
    """
    import llama_cpp

    from teeny_gguf.imatrix import ImatrixParam

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_value(ftype)
    params.nthread = nthread
    params.pure = pure
    params.quantize_output_tensor = not leave_output_tensor
    if output_tensor_type != "auto":
        params.output_tensor_type = tensor_type_value(output_tensor_type, "output_tensor_type")
    if token_embedding_type != "auto":
        params.token_embedding_type = tensor_type_value(token_embedding_type, "token_embedding_type")
    imatrix_param = ImatrixParam(imatrix_means) if imatrix_means else None
    if imatrix_param is not None:
        params.imatrix = ctypes.cast(imatrix_param.entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    overrides = _kv_overrides(metadata or {})
    if overrides is not None:
        params.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    tensor_overrides = _tensor_overrides(tensor_types or {})
    if tensor_overrides is not None:
        params.tt_overrides = ctypes.cast(tensor_overrides[0],
                                          ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    with _captured_log() as lines:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise TeenyError(failure_message(ftype, lines, has_imatrix=imatrix_param is not None))
    return lines


def failure_message(ftype: str, log_lines: list[str], *, has_imatrix: bool) -> str:
    """One line: which type failed and the most likely reason, from llama.cpp's log."""
    text = "".join(log_lines)
    reason = next((line.split("failed to quantize:", 1)[1].strip() for line in text.splitlines()
                   if "failed to quantize:" in line), "")
    if not has_imatrix and ("requires an imatrix" in reason or "Missing importance matrix" in reason):
        return (f"GGUF quantization to {ftype} failed: {ftype} needs an importance matrix "
                "(use -o imatrix=on with a calibrator, or -o imatrix_file=PATH)")
    if "imatrix size" in reason:
        return f"GGUF quantization to {ftype} failed: the importance matrix does not match this model ({reason})"
    return f"GGUF quantization to {ftype} failed: {reason or 'llama.cpp returned an error (no reason logged)'}"


def _kv_overrides(metadata: dict[str, int | str]):
    import llama_cpp

    if not metadata:
        return None
    items = (llama_cpp.llama_model_kv_override * (len(metadata) + 1))()
    for i, (key, value) in enumerate(metadata.items()):
        items[i].key = key.encode()[:127]
        if isinstance(value, int):
            items[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            items[i].value.val_i64 = value
        else:
            items[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            items[i].value.val_str = str(value).encode()[:127]
    items[len(metadata)].key = b""  # terminator: empty key
    return items


def _tensor_overrides(types: dict[str, str]):
    """``(override array terminated by a null pattern, the pattern buffers it points into)`` or None."""
    import re

    import llama_cpp

    if not types:
        return None
    items = (llama_cpp.llama_model_tensor_override * (len(types) + 1))()
    buffers = []
    for i, (name, type_name) in enumerate(sorted(types.items())):
        buffers.append(ctypes.create_string_buffer(f"^{re.escape(name)}$".encode()))
        items[i].pattern = ctypes.cast(buffers[-1], ctypes.c_char_p)
        items[i].type = tensor_type_value(type_name, "tensor type")
    items[len(types)].pattern = None
    return items, buffers


class _captured_log:
    """Route llama.cpp's log into a list for the duration of a call, then restore llama-cpp-python's logger."""

    def __enter__(self) -> list[str]:
        import llama_cpp

        _lock.acquire()
        self.lines: list[str] = []

        @llama_cpp.llama_log_callback
        def callback(level, text, user_data):
            self.lines.append(text.decode("utf-8", errors="replace"))

        self._callback = callback  # keep the ctypes thunk alive
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
        return self.lines

    def __exit__(self, *exc: Any) -> None:
        import llama_cpp
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        _lock.release()

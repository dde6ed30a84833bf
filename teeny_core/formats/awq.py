"""AutoAWQ "GEMM" checkpoints: packing, unpacking and dequantize-on-load.

Layout (what AutoAWQ, transformers and vLLM read for ``quant_method: awq``, ``version: gemm``), for a linear
with ``out`` output and ``in`` input features, group size ``g`` and 4-bit codes:

- ``qweight`` int32 ``[in, out / 8]``: eight output channels per word, nibble ``i`` holding channel
  ``8 * word + AWQ_ORDER[i]`` (the interleave 0, 2, 4, 6, 1, 3, 5, 7 that the GEMM kernels expect);
- ``qzeros`` int32 ``[in / g, out / 8]``: the integer zero points, packed the same way;
- ``scales`` float16 ``[in / g, out]``.

A weight is ``w[o, i] = scales[i // g, o] * (q[o, i] - zero[o, i // g])`` (computed here in float32, which is
exact for fp16 scales and codes below 2**8). The GEMM layout only defines 4-bit codes: other widths are refused
with a one-line error (quantizers keep them in dequantized ``hf`` checkpoints instead).

torch and safetensors are imported inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from teeny_core.errors import TeenyError

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
"""Nibble ``i`` of a packed word holds output channel ``AWQ_ORDER[i]`` of its block of eight."""

SUPPORTED_BITS = (4,)


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise TeenyError(f"AWQ GEMM packing supports bits=4 only, got bits={bits}; "
                         "keep other widths in a dequantized 'hf' checkpoint")


def _pack_columns(codes, bits: int):
    """Pack int codes [rows, cols] (cols a multiple of 32/bits) into int32 [rows, cols*bits/32], AWQ order."""
    import torch

    _check_bits(bits)
    per_word = 32 // bits
    rows, cols = codes.shape
    if cols % per_word:
        raise TeenyError(f"AWQ packing needs the output width to be a multiple of {per_word}, got {cols}")
    maxq = 2**bits - 1
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > maxq):
        raise TeenyError(f"AWQ codes must lie in 0..{maxq} for bits={bits}")
    blocks = codes.to(torch.int64).reshape(rows, cols // per_word, per_word)
    packed = torch.zeros(rows, cols // per_word, dtype=torch.int64, device=codes.device)
    for slot, channel in enumerate(AWQ_ORDER[:per_word]):
        packed |= blocks[:, :, channel] << (bits * slot)
    # reinterpret the low 32 bits as a signed int32 (values >= 2**31 wrap, exactly as the kernels read them)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32)


def _unpack_columns(packed, bits: int):
    """Inverse of :func:`_pack_columns`: int32 [rows, words] -> int32 codes [rows, words*32/bits]."""
    import torch

    _check_bits(bits)
    per_word = 32 // bits
    rows, words = packed.shape
    wide = packed.to(torch.int64) & 0xFFFFFFFF
    codes = torch.empty(rows, words, per_word, dtype=torch.int32, device=packed.device)
    for slot, channel in enumerate(AWQ_ORDER[:per_word]):
        codes[:, :, channel] = ((wide >> (bits * slot)) & (2**bits - 1)).to(torch.int32)
    return codes.reshape(rows, words * per_word)


def pack_awq(q, bits: int = 4):
    """Integer codes ``q`` [out, in] -> ``qweight`` int32 [in, out*bits/32] in the AWQ GEMM layout."""
    return _pack_columns(q.t().contiguous(), bits)


def unpack_awq(qweight, bits: int = 4):
    """``qweight`` int32 [in, out*bits/32] -> integer codes int32 [out, in]."""
    return _unpack_columns(qweight, bits).t().contiguous()


def pack_zeros(zero, bits: int = 4):
    """Integer zero points [out, groups] (float or int) -> ``qzeros`` int32 [groups, out*bits/32]."""
    import torch

    return _pack_columns(torch.round(zero.float()).to(torch.int32).t().contiguous(), bits)


def unpack_zeros(qzeros, bits: int = 4):
    """``qzeros`` int32 [groups, out*bits/32] -> integer zero points int32 [out, groups]."""
    return _unpack_columns(qzeros, bits).t().contiguous()


def pack_scales(scale):
    """Scales [out, groups] -> fp16 ``scales`` [groups, out]. Quantizers must already use fp16-exact scales."""
    import torch

    return scale.t().contiguous().to(torch.float16)


def unpack_scales(scales):
    """fp16 ``scales`` [groups, out] -> float32 scales [out, groups]."""
    import torch

    return scales.t().contiguous().to(torch.float32)


def dequantize_packed(qweight, qzeros, scales, bits: int = 4):
    """Float32 weight [out, in] from one linear's packed tensors (bit-exact with ``quant.dequantize_weight``)."""
    from teeny_core.quant import dequantize_weight

    q = unpack_awq(qweight, bits)
    zero = unpack_zeros(qzeros, bits)
    scale = unpack_scales(scales)
    out, cols = q.shape
    if scale.shape != zero.shape or scale.shape[0] != out or cols % scale.shape[1]:
        raise TeenyError(f"inconsistent AWQ tensors: qweight gives [{out}, {cols}], "
                         f"scales {list(scale.shape)}, qzeros {list(zero.shape)} (as [out, groups])")
    return dequantize_weight(q, scale, zero.float())


def read_quantization_config(artifact_dir: str | Path) -> dict:
    """The ``quantization_config`` of an hf-awq checkpoint, validated (quant_method awq, version gemm, bits 4)."""
    cfg_path = Path(artifact_dir) / "config.json"
    if not cfg_path.exists():
        raise TeenyError(f"{artifact_dir} has no config.json; not an hf-awq checkpoint")
    qcfg = json.loads(cfg_path.read_text()).get("quantization_config") or {}
    if qcfg.get("quant_method") != "awq":
        raise TeenyError(f"{cfg_path}: quantization_config.quant_method is {qcfg.get('quant_method')!r}, expected 'awq'")
    version = str(qcfg.get("version", "gemm")).lower()
    if version != "gemm":
        raise TeenyError(f"{cfg_path}: AWQ version {version!r} is not supported; expected 'gemm'")
    _check_bits(int(qcfg.get("bits", qcfg.get("w_bit", 4))))
    return qcfg


def read_quantized(artifact_dir: str | Path) -> tuple[Iterator[tuple[str, Any]], dict]:
    """The checkpoint as ``(iterator of (linear name, QuantizedLinear), {every other tensor as stored})``;
    linears are unpacked one at a time as the iterator advances."""
    import torch
    from teeny_core.formats.checkpoint import read_safetensors
    from teeny_core.formats.gptq import safetensors_files
    from teeny_core.quant import QuantizedLinear

    qcfg = read_quantization_config(artifact_dir)
    bits = int(qcfg.get("bits", qcfg.get("w_bit", 4)))
    tensors: dict = {}
    for f in safetensors_files(artifact_dir):
        tensors.update(read_safetensors(f))
    names = sorted(k[: -len(".qweight")] for k in list(tensors) if k.endswith(".qweight"))
    for name in names:
        missing = [s for s in ("qzeros", "scales") if f"{name}.{s}" not in tensors]
        if missing:
            raise TeenyError(f"{artifact_dir}: {name} has a qweight but no {', '.join(missing)}")
    stored = {name: {s: tensors.pop(f"{name}.{s}", None) for s in ("qweight", "qzeros", "scales", "bias")}
              for name in names}

    def linears() -> Iterator[tuple[str, Any]]:
        for name in names:
            t = stored.pop(name)
            q = unpack_awq(t["qweight"], bits)
            zero = unpack_zeros(t["qzeros"], bits).float()
            scale = unpack_scales(t["scales"])
            out, cols = q.shape
            if scale.shape != zero.shape or scale.shape[0] != out or cols % scale.shape[1]:
                raise TeenyError(f"{artifact_dir}: inconsistent AWQ tensors for {name}: qweight gives "
                                 f"[{out}, {cols}], scales {list(scale.shape)}, qzeros {list(zero.shape)} "
                                 "(as [out, groups])")
            g_idx = torch.arange(cols) // (cols // scale.shape[1])
            yield name, QuantizedLinear(q=q, scale=scale, zero=zero, g_idx=g_idx, bits=bits, bias=t["bias"])

    return linears(), tensors


def dequantized_state_dict(artifact_dir: str | Path) -> dict:
    """Every tensor of an hf-awq checkpoint, with each packed linear turned back into ``<name>.weight``.

    Quantized linears (``<name>.qweight``/``.qzeros``/``.scales``) become float32 ``[out, in]`` weights, exactly
    ``scale * (q - zero)``; all other tensors (norms, embeddings, biases, unquantized layers) are returned as stored.
    """
    from teeny_core.quant import with_dequantized

    return with_dequantized(*read_quantized(artifact_dir))

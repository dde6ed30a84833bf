"""The GPTQ checkpoint format (AutoGPTQ / GPTQModel / transformers / vLLM): packing, unpacking, dequantizing.

Per quantized linear ``<name>`` with weight ``[out, in]`` the checkpoint stores

- ``<name>.qweight`` int32 ``[in * bits / 32, out]``: integer codes packed along the *input* dimension,
- ``<name>.qzeros``  int32 ``[groups, out * bits / 32]``: zero points packed along the output dimension,
- ``<name>.scales``  float16 ``[groups, out]``,
- ``<name>.g_idx``   int32 ``[in]``: the group of each input column (act-order makes it non-monotonic),
- ``<name>.bias`` where the linear has one.

Packing is a little-endian bit stream: code ``k`` of a run of 32 codes occupies bits ``k*bits .. k*bits+bits-1``
of ``bits`` consecutive int32 words. For 2, 4 and 8 bits no code crosses a word; 3-bit codes 10 and 21 straddle
two words (the standard AutoGPTQ 3-bit layout). Weights dequantize as ``scale * (q - zero)``.

Zero points: ``checkpoint_format = "gptq"`` (v1, what :func:`pack_zeros` writes by default and what vLLM and
transformers expect) stores ``zero - 1``; readers add 1 back. A v1 zero point must therefore lie in
``1 .. 2**bits - 1``. ``"gptq_v2"`` stores ``zero`` itself. torch is imported inside functions only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from teeny_core.errors import TeenyError

BITS = (2, 3, 4, 8)
CHECKPOINT_FORMATS = ("gptq", "gptq_v2")
_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise TeenyError(f"GPTQ packing supports bits {BITS}, not {bits}")


def misfit(out_features: int, in_features: int, bits: int, group_size: int) -> str:
    """Why a linear of this shape cannot be stored at ``bits`` with ``group_size`` input columns per group
    (-1 or 0: per output channel), or "" when it can: codes pack along the input, zero points along the output."""
    if bits not in BITS:
        return f"bits={bits} is not one of {BITS}"
    if group_size > 0 and in_features % group_size:
        return f"{in_features} input features, not a multiple of group_size={group_size}"
    word = 32 if bits == 3 else 32 // bits
    for what, n in (("input", in_features), ("output", out_features)):
        if n % word:
            return f"{n} {what} features; {bits}-bit packing needs a multiple of {word}"
    return ""


def dynamic_exclusions(names) -> dict[str, dict]:
    """GPTQModel / vLLM ``dynamic`` rules leaving these modules unquantized (a leading ``-:`` excludes a match)."""
    import re

    return {f"-:^{re.escape(name)}$": {} for name in sorted(names)}


def dynamic_rule(dynamic: dict[str, dict] | None, module: str) -> dict | None:
    """The overrides GPTQModel's ``dynamic`` rules give ``module`` (its full name, e.g.
    ``model.layers.0.mlp.down_proj``): the first rule in order whose regex ``re.match``-es the name (anchored at
    its start only, as GPTQModel's ``dynamic_get`` and vLLM's ``get_dynamic_override`` match); ``-:regex`` ->
    None (excluded: kept float), ``+:regex`` or a bare regex -> its overrides; ``{}`` when no rule matches."""
    import re

    for pattern, overrides in (dynamic or {}).items():
        if pattern.startswith("-:"):
            if re.match(pattern[2:], module):
                return None
        elif re.match(pattern.removeprefix("+:"), module):
            return dict(overrides or {})
    return {}


def module_layouts(cfg: dict[str, Any], tensor_names, where: str) -> dict[str, tuple[int, int]]:
    """``{quantized linear: (bits, group_size)}`` of a checkpoint with this ``quantization_config`` and these
    tensor names: the global ``bits``/``group_size`` with each module's ``dynamic`` overrides (only ``bits`` and
    ``group_size`` change how tensors unpack; ``sym``/``desc_act`` are carried by the zero points and ``g_idx``).
    A rule that is not a valid regex or matches no module, a bit-width outside :data:`BITS`, or a packed module
    that a ``-:`` rule excludes is one line naming it."""
    import re

    dynamic = cfg.get("dynamic") or {}
    if not isinstance(dynamic, dict):
        raise TeenyError(f"{where}.dynamic must be a mapping of regex -> overrides, not {type(dynamic).__name__}")
    names = list(tensor_names)
    quantized = sorted(n[: -len(".qweight")] for n in names if n.endswith(".qweight"))
    modules = sorted({n.rpartition(".")[0] for n in names})
    for pattern, overrides in dynamic.items():
        regex = pattern[2:] if pattern.startswith(("-:", "+:")) else pattern
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            raise TeenyError(f"{where}.dynamic rule '{pattern}' is not a valid regex ({exc})") from None
        if not any(compiled.match(m) for m in modules):
            raise TeenyError(f"{where}.dynamic rule '{pattern}' matches no module of the checkpoint (modules are "
                             f"named like {quantized[0] if quantized else modules[0]!r})")
        if not isinstance(overrides, dict):
            raise TeenyError(f"{where}.dynamic rule '{pattern}' must map to a dict of overrides, not {overrides!r}")
    layouts = {}
    for name in quantized:
        rule = dynamic_rule(dynamic, name)
        if rule is None:
            raise TeenyError(f"{where}.dynamic excludes {name!r} (kept float), but the checkpoint stores it packed")
        bits, group = int(rule.get("bits", cfg.get("bits", 4))), int(rule.get("group_size", cfg.get("group_size", -1)))
        if bits not in BITS:
            raise TeenyError(f"{where}: {name!r} has bits={bits} (global bits and dynamic rules); GPTQ "
                             f"checkpoints hold bits {BITS}")
        layouts[name] = (bits, group)
    return layouts


def header_names(files) -> list[str]:
    """Tensor names of safetensors files, read from their headers only (no tensor data, no torch)."""
    names: list[str] = []
    for file in files:
        with open(file, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        names += [k for k in header if k != "__metadata__"]
    return names


def _pack_rows(codes, bits: int):
    """Pack int codes ``[n, m]`` along dim 0 into int32 ``[n * bits / 32, m]`` (little-endian bit stream)."""
    import torch

    _check_bits(bits)
    n, m = codes.shape
    if (n * bits) % 32 or (bits == 3 and n % 32):
        need = 32 if bits == 3 else 32 // bits
        raise TeenyError(f"cannot pack {n} {bits}-bit values into int32 words; the packed dimension must be a "
                         f"multiple of {need}")
    codes = codes.to(torch.int64)
    if int(codes.min()) < 0 or int(codes.max()) >= 2**bits:
        raise TeenyError(f"codes outside 0..{2**bits - 1} cannot be packed at {bits} bits")
    words = torch.zeros((n * bits // 32, m), dtype=torch.int64, device=codes.device)
    for k in range(32):  # position inside each run of 32 codes; the same layout repeats every `bits` words
        offset = k * bits
        word, shift = offset // 32, offset % 32
        run = codes[k::32]
        words[word::bits] |= (run << shift) & 0xFFFFFFFF
        if shift + bits > 32:  # this code straddles into the next word (3-bit only)
            words[word + 1::bits] |= run >> (32 - shift)
    words = torch.where(words >= 2**31, words - 2**32, words)  # reinterpret as signed int32
    return words.to(torch.int32)


def _unpack_rows(packed, bits: int):
    """Inverse of :func:`_pack_rows`: int32 ``[n * bits / 32, m]`` -> int32 codes ``[n, m]``."""
    import torch

    _check_bits(bits)
    words = packed.to(torch.int64) & 0xFFFFFFFF
    n = words.shape[0] * 32 // bits
    if bits == 3 and words.shape[0] % 3:
        raise TeenyError(f"a 3-bit packed tensor needs a multiple of 3 rows, got {words.shape[0]}")
    codes = torch.empty((n, words.shape[1]), dtype=torch.int64, device=packed.device)
    mask = 2**bits - 1
    for k in range(32):
        offset = k * bits
        word, shift = offset // 32, offset % 32
        value = words[word::bits] >> shift
        if shift + bits > 32:
            value = value | (words[word + 1::bits] << (32 - shift))
        codes[k::32] = value & mask
    return codes.to(torch.int32)


def pack_qweight(q, bits: int):
    """Codes ``[out, in]`` -> ``qweight`` int32 ``[in * bits / 32, out]`` (packed along the input dimension)."""
    return _pack_rows(q.t(), bits)


def unpack_qweight(qweight, bits: int):
    """``qweight`` -> codes int32 ``[out, in]``."""
    return _unpack_rows(qweight, bits).t().contiguous()


def pack_zeros(zero, bits: int, checkpoint_format: str = "gptq"):
    """Zero points ``[out, groups]`` -> ``qzeros`` int32 ``[groups, out * bits / 32]``.

    v1 (``"gptq"``) stores ``zero - 1`` and so needs every zero point in ``1 .. 2**bits - 1``.
    """
    import torch

    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise TeenyError(f"checkpoint_format {checkpoint_format!r} is not one of {CHECKPOINT_FORMATS}")
    zero = torch.round(zero.float()).to(torch.int64)
    if checkpoint_format == "gptq":
        if int(zero.min()) < 1:
            raise TeenyError("a zero point of 0 cannot be stored in checkpoint_format 'gptq' (v1 stores zero-1); "
                             "use 'gptq_v2' or quantize with zero points >= 1")
        zero = zero - 1
    return _pack_rows(zero, bits).t().contiguous()


def unpack_zeros(qzeros, bits: int, checkpoint_format: str = "gptq"):
    """``qzeros`` -> zero points int32 ``[out, groups]`` (v1: the stored value plus 1)."""
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise TeenyError(f"checkpoint_format {checkpoint_format!r} is not one of {CHECKPOINT_FORMATS}")
    zero = _unpack_rows(qzeros.t(), bits)
    if checkpoint_format == "gptq":
        zero = zero + 1
    return zero


def default_g_idx(in_features: int, group_size: int, device=None):
    """Contiguous groups: column ``i`` belongs to group ``i // group_size`` (all zeros for per-channel)."""
    import torch

    cols = torch.arange(in_features, dtype=torch.int32, device=device)
    return cols // group_size if group_size > 0 else torch.zeros_like(cols)


def pack_linear(q, scale, zero, g_idx, bits: int, checkpoint_format: str = "gptq") -> dict[str, Any]:
    """The four checkpoint tensors of one linear, from codes ``[out, in]``, scale and zero ``[out, groups]``
    and ``g_idx [in]``."""
    import torch

    return {
        "qweight": pack_qweight(q, bits),
        "qzeros": pack_zeros(zero, bits, checkpoint_format),
        "scales": scale.t().contiguous().to(torch.float16),
        "g_idx": g_idx.to(torch.int32).contiguous(),
    }


def dequantize_linear(qweight, qzeros, scales, g_idx, bits: int, checkpoint_format: str = "gptq"):
    """Float32 weight ``[out, in]`` = ``scale * (q - zero)``, the float16 scale widened to float32."""
    from teeny_core.quant import dequantize_weight

    q = unpack_qweight(qweight, bits)
    zero = unpack_zeros(qzeros, bits, checkpoint_format)
    scale = scales.float().t()
    return dequantize_weight(q, scale, zero.float(), g_idx.long())


def quantization_config(artifact_dir: str | Path) -> dict[str, Any]:
    """The ``quantization_config`` of a GPTQ checkpoint's config.json (or its quantize_config.json)."""
    artifact_dir = Path(artifact_dir)
    cfg_path = artifact_dir / "config.json"
    cfg = json.loads(cfg_path.read_text()).get("quantization_config") if cfg_path.exists() else None
    if cfg is None and (artifact_dir / "quantize_config.json").exists():
        cfg = json.loads((artifact_dir / "quantize_config.json").read_text())
    if not cfg or cfg.get("quant_method", "gptq") != "gptq":
        raise TeenyError(f"{artifact_dir}: no GPTQ quantization_config in config.json")
    return cfg


def safetensors_files(artifact_dir: str | Path) -> list[Path]:
    """The checkpoint's safetensors files (single file or shards listed by the index)."""
    artifact_dir = Path(artifact_dir)
    index = artifact_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [artifact_dir / s for s in shards]
    files = sorted(artifact_dir.glob("*.safetensors"))
    if not files:
        raise TeenyError(f"{artifact_dir}: no .safetensors files")
    return files


def read_quantized(artifact_dir: str | Path) -> tuple[Iterator[tuple[str, Any]], dict[str, Any]]:
    """The checkpoint as ``(iterator of (linear name, QuantizedLinear), {every other tensor as stored})``.

    Linears are unpacked one at a time as the iterator advances, so a caller that packs or dequantizes each in
    turn never holds every layer's int32 codes at once."""
    from teeny_core.formats.checkpoint import read_safetensors

    from teeny_core.quant import QuantizedLinear

    cfg = quantization_config(artifact_dir)
    _check_bits(int(cfg["bits"]))
    fmt = cfg.get("checkpoint_format") or cfg.get("format") or "gptq"
    raw: dict[str, Any] = {}
    for f in safetensors_files(artifact_dir):
        raw.update(read_safetensors(f))
    layouts = module_layouts(cfg, raw, f"{artifact_dir}: quantization_config")
    names = sorted(layouts)
    stored = {name: {s: raw.pop(f"{name}.{s}", None) for s in (*_SUFFIXES, "bias")} for name in names}

    def linears() -> Iterator[tuple[str, Any]]:
        for name in names:
            t = stored.pop(name)
            bits, group_size = layouts[name]
            in_features = t["qweight"].shape[0] * 32 // bits
            g_idx = t["g_idx"] if t["g_idx"] is not None else default_g_idx(in_features, group_size)
            if g_idx.shape[0] != in_features or int(g_idx.max()) >= t["scales"].shape[0] or int(g_idx.min()) < 0:
                raise TeenyError(f"{artifact_dir}: {name}.g_idx does not fit {in_features} columns and "
                                 f"{t['scales'].shape[0]} groups")
            yield name, QuantizedLinear(q=unpack_qweight(t["qweight"], bits),
                                        scale=t["scales"].float().t().contiguous(),
                                        zero=unpack_zeros(t["qzeros"], bits, fmt).float(), g_idx=g_idx.long(),
                                        bits=bits, bias=t["bias"])

    return linears(), raw


def dequantized_state_dict(artifact_dir: str | Path) -> dict[str, Any]:
    """A plain state dict of a GPTQ checkpoint: float32 ``<name>.weight`` for every quantized linear, every other
    tensor (biases, norms, embeddings, unquantized linears) as stored."""
    from teeny_core.quant import with_dequantized

    return with_dequantized(*read_quantized(artifact_dir))

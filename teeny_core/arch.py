"""Declarative descriptions of the decoder architectures Teeny quantizes layer by layer.

One :class:`ArchSpec` per HF ``model_type`` says where the decoder layers live, which linears a layer runs in
which order and which of them share an input (the true-sequential groups GPTQ solves together and AWQ scales
together), which norm or linear produces each group's input (where AWQ folds its scales; Gemma's norms compute
``x * (1 + w)``), the GGUF names of every tensor, how a mixture-of-experts block stores and routes its experts,
and how the layer's positional inputs are built. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses

from teeny_core.errors import TeenyError


@dataclasses.dataclass(frozen=True)
class Group:
    """Linears (names relative to the layer) fed the same input, and the module that produces that input."""

    linears: tuple[str, ...]
    prev: str
    scored: str
    """The module whose output AWQ scores when searching this group's scales ("self_attn", "mlp", or a linear)."""


@dataclasses.dataclass(frozen=True)
class Experts:
    """A mixture-of-experts block.

    In memory the experts are fused 3-D parameters (``gate_up_proj`` [E, 2I, H] = gate over up, ``down_proj``
    [E, H, I]); on disk each expert has its own ``{module}.{e}.gate_proj/up_proj/down_proj.weight``; the walker
    converts between the two. Calibration is routed: the layer runs as the model does and expert ``e`` is
    solved on the tokens its router sends it (GPTQ; RTN rounds every linear but leaves the fused experts in
    the source dtype, as before). Fallback: an expert no calibration token reaches is quantized with
    round-to-nearest (an identity Hessian), as GPTQ does for a linear the calibration never calls.
    """

    module: str  # e.g. "mlp.experts"
    router: str  # e.g. "mlp.gate"; the router and the shared expert's 1-wide gate stay in full precision
    norm: str  # the norm producing every expert's input
    disk_linears: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """One decoder architecture."""

    model_types: tuple[str, ...]
    layer_class: str  # transformers class of one decoder layer (checked when a model is walked)
    groups: tuple[Group, ...]  # in execution order
    gguf_arch: str  # gguf-py's MODEL_ARCH member
    gguf_layer: dict[str, str]  # tensor name inside the layer (without .weight/.bias) -> GGUF name after blk.{i}.
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    norm_offset: float = 0.0  # 1.0 where norms compute x * (1 + w)
    positional: str = "rope"
    """How a layer's positional inputs are built: ``rope`` (one rotary embedding and a causal mask for every
    layer) or ``rope+sliding`` (per layer type, ``config.layer_types``: sliding-window layers get the local
    rotary embedding and a banded causal mask, full-attention layers the global ones). The walker obtains them
    from the model's own top-level forward with every layer replaced by a recorder, so they match the whole
    model bit for bit."""
    experts: Experts | None = None

    def layer_prefix(self, index: int) -> str:
        return f"{self.layers}.{index}"

    def linears(self) -> tuple[str, ...]:
        """Every dense linear of a layer, in execution order."""
        return tuple(name for group in self.groups for name in group.linears)

    def gguf_name(self, hf_name: str) -> str | None:
        """GGUF name of an HF tensor name (``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``)."""
        outside = {self.embed: "token_embd", self.final_norm: "output_norm", self.lm_head: "output"}
        module, _, leaf = hf_name.rpartition(".")
        if module in outside:
            return f"{outside[module]}.{leaf}"
        head = f"{self.layers}."
        if not hf_name.startswith(head):
            return None
        index, _, rest = hf_name[len(head):].partition(".")
        module, _, leaf = rest.rpartition(".")
        if self.experts and module.startswith(f"{self.experts.module}."):  # per-expert tensors are merged in GGUF
            linear = module.rsplit(".", 1)[-1]
            return f"blk.{index}.ffn_{linear.split('_')[0]}_exps.{leaf}"
        name = self.gguf_layer.get(module)
        return f"blk.{index}.{name}.{leaf}" if name else None


_ATTN = Group(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "input_layernorm", "self_attn")
_O = Group(("self_attn.o_proj",), "self_attn.v_proj", "self_attn.o_proj")
_MLP = Group(("mlp.gate_proj", "mlp.up_proj"), "post_attention_layernorm", "mlp")
_DOWN = Group(("mlp.down_proj",), "mlp.up_proj", "mlp.down_proj")

_LLAMA_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}

SPECS: tuple[ArchSpec, ...] = (
    ArchSpec(("llama",), "LlamaDecoderLayer", (_ATTN, _O, _MLP, _DOWN), "LLAMA", _LLAMA_GGUF),
    ArchSpec(("mistral",), "MistralDecoderLayer", (_ATTN, _O, _MLP, _DOWN), "LLAMA", _LLAMA_GGUF),
    ArchSpec(("qwen2",), "Qwen2DecoderLayer", (_ATTN, _O, _MLP, _DOWN), "QWEN2", _LLAMA_GGUF),
    ArchSpec(("gemma3", "gemma3_text"), "Gemma3DecoderLayer",
             (_ATTN, _O, Group(("mlp.gate_proj", "mlp.up_proj"), "pre_feedforward_layernorm", "mlp"), _DOWN),
             "GEMMA3",
             {**_LLAMA_GGUF, "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
              "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
              "post_feedforward_layernorm": "post_ffw_norm"},
             norm_offset=1.0, positional="rope+sliding"),
    ArchSpec(("phi3",), "Phi3DecoderLayer",
             (Group(("self_attn.qkv_proj",), "input_layernorm", "self_attn"),
              Group(("self_attn.o_proj",), "self_attn.qkv_proj", "self_attn.o_proj"),
              Group(("mlp.gate_up_proj",), "post_attention_layernorm", "mlp"),
              Group(("mlp.down_proj",), "mlp.gate_up_proj", "mlp.down_proj")),
             "PHI3",
             {"self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output", "mlp.gate_up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}),
    ArchSpec(("qwen2_moe",), "Qwen2MoeDecoderLayer",
             (_ATTN, _O,
              Group(("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj"), "post_attention_layernorm", "mlp"),
              Group(("mlp.shared_expert.down_proj",), "mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj")),
             "QWEN2MOE",
             {**_LLAMA_GGUF, "mlp.gate": "ffn_gate_inp", "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
              "mlp.shared_expert.up_proj": "ffn_up_shexp", "mlp.shared_expert.down_proj": "ffn_down_shexp",
              "mlp.shared_expert_gate": "ffn_gate_inp_shexp"},
             experts=Experts("mlp.experts", "mlp.gate", "post_attention_layernorm")),
)

_BY_TYPE = {t: spec for spec in SPECS for t in spec.model_types}


def supported() -> list[str]:
    return sorted(_BY_TYPE)


def spec_for(model_type: str | None) -> ArchSpec:
    """The spec of an HF ``model_type``, or a one-line error naming the supported ones."""
    if model_type not in _BY_TYPE:
        raise TeenyError(f"architecture {model_type!r} is not supported for layer-by-layer quantization; "
                         f"supported: {', '.join(supported())}")
    return _BY_TYPE[model_type]
